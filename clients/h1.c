/* HTTP/1.1 client: keep-alive connections to one endpoint over libuv TCP
 * handles, responses parsed with libhttp-parser. */
#include "h1.h"

#include <http_parser.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "sockaddr.h"

/* Size of the read buffer. One buffer serves every connection of a pool,
 * because libuv calls the alloc callback, read(2) and the read callback
 * back to back on the loop thread. */
#define H1_READ_SIZE 65536

typedef enum {
    CONN_CONNECTING, /* TCP connect in progress, a call attached */
    CONN_BUSY,       /* request being written or response being read */
    CONN_IDLE,       /* in the idle list, read only to notice a close */
    CONN_CLOSING,    /* uv_close called, freed in on_conn_close */
} conn_state_t;

typedef struct h1_conn_s h1_conn_t;

struct h1_conn_s {
    uv_tcp_t tcp; /* tcp.data points back to this connection */
    uv_connect_t connect_req;
    uv_write_t write_req;
    h1_pool_t *pool;
    conn_state_t state;
    upcall_t *call;  /* running call, or NULL when idle, cancelled or closing */
    h1_conn_t *prev; /* list of open connections in the pool */
    h1_conn_t *next;
    h1_conn_t *idle_prev; /* idle list, most recently used first */
    h1_conn_t *idle_next;
    buf_t head;  /* request line and header fields, alive until closed */
    int writing; /* write_req is pending, so it cannot be reused */
    int is_head; /* the running request is HEAD, so the response has no body */
    http_parser parser;
    int received;     /* a response byte arrived for the running call */
    int final_head;   /* header fields of the final (non-1xx) response seen */
    int message_done; /* final response complete, and the parser paused */
    int keep_alive;   /* http_should_keep_alive() at the end of the message */
    int callback_err; /* TE_* code from a parser callback that failed */
    uint64_t body_expected; /* Content-Length, or UINT64_MAX if none */
    uint64_t body_received; /* body bytes of the final response so far */
};


struct h1_pool_s {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char endpoint[64]; /* "ip:port", "[ip]:port" for IPv6 */
    h1_conn_t *conns;  /* open connections, closing ones excluded */
    h1_conn_t *idle;   /* head of the idle list */
    size_t nopen;      /* length of |conns| */
    size_t nhandles;   /* handles initialised and not yet closed */
    int closing;       /* h1_pool_close was called */
    char read_buf[H1_READ_SIZE];
};


static int on_message_begin(http_parser *parser);
static int on_headers_complete(http_parser *parser);
static int on_body(http_parser *parser, const char *at, size_t len);
static int on_message_complete(http_parser *parser);

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};


static void idle_remove(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;
    if (conn->idle_prev != NULL) {
        conn->idle_prev->idle_next = conn->idle_next;
    } else {
        pool->idle = conn->idle_next;
    }
    if (conn->idle_next != NULL) {
        conn->idle_next->idle_prev = conn->idle_prev;
    }
    conn->idle_prev = NULL;
    conn->idle_next = NULL;
}


/* Frees the connection, and the pool after its last handle once
 * h1_pool_close was called (uv_close_cb). */
static void on_conn_close(uv_handle_t *handle)
{
    h1_conn_t *conn = handle->data;
    h1_pool_t *pool = conn->pool;

    buf_free(&conn->head);
    free(conn);
    pool->nhandles--;
    if (pool->closing && pool->nhandles == 0) {
        free(pool);
    }
}


/* Starts closing |conn|. The caller has detached its call, if any. libuv
 * cancels a pending connect or write, whose callbacks then see
 * CONN_CLOSING and return. */
static void conn_close(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    if (conn->state == CONN_CLOSING) {
        return;
    }
    if (conn->state == CONN_IDLE) {
        idle_remove(conn);
    }
    if (conn->prev != NULL) {
        conn->prev->next = conn->next;
    } else {
        pool->conns = conn->next;
    }
    if (conn->next != NULL) {
        conn->next->prev = conn->prev;
    }
    conn->prev = NULL;
    conn->next = NULL;
    pool->nopen--;
    conn->state = CONN_CLOSING;
    conn->call = NULL;
    uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}


static void conn_make_idle(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    conn->state = CONN_IDLE;
    conn->idle_prev = NULL;
    conn->idle_next = pool->idle;
    if (pool->idle != NULL) {
        pool->idle->idle_prev = conn;
    }
    pool->idle = conn;
}


/* Detaches the running call, closes the connection and reports |err|,
 * with call->errmsg already written. Calling on_done last keeps the pool
 * consistent if the callback submits, cancels or closes the pool. */
static void fail_call(h1_conn_t *conn, int err)
{
    upcall_t *call = conn->call;

    conn->call = NULL;
    call->pool_conn = NULL;
    call->phase = UPCALL_DONE;
    conn_close(conn);
    call->on_done(call, err);
}


/* Ends the running call successfully. The connection is reused only when
 * the server allows keep-alive, the request write has finished (its
 * buffers point into the call) and no byte followed the response. */
static void complete_call(h1_conn_t *conn, int reusable)
{
    upcall_t *call = conn->call;

    conn->call = NULL;
    call->pool_conn = NULL;
    call->phase = UPCALL_DONE;
    if (reusable && conn->keep_alive && !conn->writing &&
        !conn->pool->closing) {
        conn_make_idle(conn);
    } else {
        conn_close(conn);
    }
    call->on_done(call, 0);
}


static int fail_in_callback(h1_conn_t *conn, int err)
{
    conn->callback_err = err;
    return -1;
}


static int on_message_begin(http_parser *parser)
{
    h1_conn_t *conn = parser->data;

    conn->final_head = 0;
    conn->body_expected = UINT64_MAX;
    conn->body_received = 0;
    return 0;
}


/* Returns 1 to tell http_parser that the response has no body. */
static int on_headers_complete(http_parser *parser)
{
    h1_conn_t *conn = parser->data;
    upcall_t *call = conn->call;
    unsigned int status = parser->status_code;

    if (status == 101) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "invalid HTTP response: 101 Switching Protocols, but no "
                 "upgrade was requested");
        return fail_in_callback(conn, TE_BAD_RESPONSE);
    }
    if (status / 100 == 1) {
        /* Interim response: on_message_complete skips it and the parser
         * goes on with the next response on the connection. */
        return 1;
    }

    call->status = (int)status;
    conn->final_head = 1;
    /* In HTTP/1.1, responses to HEAD, 204 and 304 end with the header
     * section even when they carry Content-Length. http_parser 2.9 would
     * wait for that many body bytes unless this callback returns 1. */
    if (conn->is_head || status == 204 || status == 304) {
        return 1;
    }
    if ((parser->flags & F_CHUNKED) == 0 &&
        parser->content_length != ULLONG_MAX) {
        conn->body_expected = parser->content_length;
        if (parser->content_length > call->max_body) {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "response body larger than %zu bytes "
                     "(Content-Length: %" PRIu64 ")",
                     call->max_body, (uint64_t)parser->content_length);
            return fail_in_callback(conn, TE_BAD_RESPONSE);
        }
    }
    return 0;
}


static int on_body(http_parser *parser, const char *at, size_t len)
{
    h1_conn_t *conn = parser->data;
    upcall_t *call = conn->call;

    if (len > call->max_body || call->body_out.len > call->max_body - len) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "response body larger than %zu bytes", call->max_body);
        return fail_in_callback(conn, TE_BAD_RESPONSE);
    }
    if (buf_append(&call->body_out, at, len) != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory storing the response body");
        return fail_in_callback(conn, TE_NOMEM);
    }
    conn->body_received += len;
    return 0;
}


static int on_message_complete(http_parser *parser)
{
    h1_conn_t *conn = parser->data;

    if (!conn->final_head) {
        return 0; /* end of a 1xx interim response */
    }
    conn->message_done = 1;
    conn->keep_alive = http_should_keep_alive(parser);
    /* Pausing stops http_parser_execute right after the message, so that
     * its return value shows whether stray bytes followed. */
    http_parser_pause(parser, 1);
    return 0;
}


/* Feeds response bytes to the parser and ends the call when the response
 * is complete or invalid. */
static void conn_parse(h1_conn_t *conn, const char *data, size_t len)
{
    upcall_t *call = conn->call;
    size_t parsed;
    enum http_errno herr;

    parsed = http_parser_execute(&conn->parser, &parser_settings, data, len);
    if (conn->message_done) {
        complete_call(conn, parsed == len);
        return;
    }
    herr = HTTP_PARSER_ERRNO(&conn->parser);
    if (herr == HPE_OK) {
        return;
    }
    if (conn->callback_err != 0) {
        fail_call(conn, conn->callback_err);
        return;
    }
    snprintf(call->errmsg, sizeof(call->errmsg), "invalid HTTP response: %s",
             http_errno_description(herr));
    fail_call(conn, TE_BAD_RESPONSE);
}


/* Handles the server's EOF while a call runs. Without Content-Length or
 * chunked framing the EOF is what ends the body. */
static void conn_on_eof(h1_conn_t *conn)
{
    upcall_t *call = conn->call;

    if (!conn->received) {
        /* NOTE: on a reused connection this can be a close by the server
         * that crossed our request; the call is not retried here. */
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "connection closed before the response");
        fail_call(conn, TE_RESET);
        return;
    }

    /* A zero-length execute signals the EOF to http_parser. */
    http_parser_execute(&conn->parser, &parser_settings, NULL, 0);
    if (conn->message_done) {
        complete_call(conn, 0);
        return;
    }

    if (!conn->final_head) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "response truncated: connection closed inside the header "
                 "section");
    } else if (conn->body_expected != UINT64_MAX) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "response body truncated: connection closed after %" PRIu64
                 " of %" PRIu64 " bytes",
                 conn->body_received, conn->body_expected);
    } else {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "chunked response body truncated: connection closed after "
                 "%" PRIu64 " bytes",
                 conn->body_received);
    }
    fail_call(conn, TE_BAD_RESPONSE);
}


/* Allocates the read buffer (uv_alloc_cb). */
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    h1_conn_t *conn = handle->data;

    buf->base = conn->pool->read_buf;
    buf->len = sizeof(conn->pool->read_buf);
}


/* Handles response bytes, EOF and read errors (uv_read_cb). */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    h1_conn_t *conn = stream->data;
    upcall_t *call = conn->call;

    if (nread == 0 || conn->state == CONN_CLOSING) {
        return;
    }
    if (call == NULL) {
        /* Idle connection: an EOF, an error or an unrequested byte all
         * mean it cannot carry another request. */
        conn_close(conn);
        return;
    }
    if (nread == UV_EOF) {
        conn_on_eof(conn);
        return;
    }
    if (nread < 0) {
        if (!conn->received) {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "connection to %s failed before the response: %s",
                     conn->pool->endpoint, uv_strerror((int)nread));
            fail_call(conn, TE_RESET);
        } else {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "response truncated: reading from %s failed: %s",
                     conn->pool->endpoint, uv_strerror((int)nread));
            fail_call(conn, TE_BAD_RESPONSE);
        }
        return;
    }

    if (!conn->received) {
        conn->received = 1;
        call->phase = UPCALL_RECEIVING;
    }
    conn_parse(conn, buf->base, (size_t)nread);
}


/* Marks the request as sent (uv_write_cb). */
static void on_write(uv_write_t *req, int status)
{
    h1_conn_t *conn = req->data;
    upcall_t *call = conn->call;

    conn->writing = 0;
    if (conn->state == CONN_CLOSING || call == NULL) {
        return;
    }
    if (status < 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "sending the request to %s failed: %s", conn->pool->endpoint,
                 uv_strerror(status));
        fail_call(conn, TE_RESET);
        return;
    }
    if (call->phase == UPCALL_CONNECTING) {
        call->phase = UPCALL_WAITING;
    }
}


static int build_head(buf_t *head, const upcall_t *call)
{
    buf_reset(head);
    if (buf_appendf(head, "%s %s HTTP/1.1\r\nHost: %s\r\n", call->method,
                    call->path, call->authority) != 0) {
        return TE_NOMEM;
    }
    for (size_t i = 0; i < call->nheaders; i++) {
        if (buf_appendf(head, "%s: %s\r\n", call->headers[i].name,
                        call->headers[i].value) != 0) {
            return TE_NOMEM;
        }
    }
    /* Content-Length: 0 too, so that a server expecting a body (POST)
     * does not wait for one. */
    if (call->body != NULL &&
        buf_appendf(head, "Content-Length: %zu\r\n", call->body_len) != 0) {
        return TE_NOMEM;
    }
    return buf_append(head, "\r\n", 2);
}


/* Writes the request of the call attached to a connected |conn|. On error,
 * returns a TE_* code with call->errmsg set and leaves |conn| unchanged. */
static int conn_send(h1_conn_t *conn)
{
    upcall_t *call = conn->call;
    uv_buf_t bufs[2];
    unsigned int nbufs = 1;
    int rc;

    rc = build_head(&conn->head, call);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory building the request");
        return rc;
    }
    bufs[0] = uv_buf_init(conn->head.data, (unsigned int)conn->head.len);
    if (call->body != NULL && call->body_len > 0) {
        /* The body is written from the caller's memory, which stays valid
         * until on_done or cancel, and either one stops the write first. */
        bufs[1] = uv_buf_init((char *)call->body, (unsigned int)call->body_len);
        nbufs = 2;
    }

    http_parser_init(&conn->parser, HTTP_RESPONSE);
    conn->parser.data = conn;
    conn->is_head = strcmp(call->method, "HEAD") == 0;
    conn->received = 0;
    conn->final_head = 0;
    conn->message_done = 0;
    conn->keep_alive = 0;
    conn->callback_err = 0;
    conn->body_expected = UINT64_MAX;
    conn->body_received = 0;

    conn->write_req.data = conn;
    rc = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, bufs, nbufs,
                  on_write);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "sending the request to %s failed: %s", conn->pool->endpoint,
                 uv_strerror(rc));
        return TE_RESET;
    }
    conn->writing = 1;
    conn->state = CONN_BUSY;
    return 0;
}


/* Starts reading and sends the request once TCP is up (uv_connect_cb). */
static void on_connect(uv_connect_t *req, int status)
{
    h1_conn_t *conn = req->data;
    upcall_t *call = conn->call;
    int rc;

    if (conn->state == CONN_CLOSING || call == NULL) {
        return; /* cancelled, or the pool is closing */
    }
    if (status < 0) {
        snprintf(call->errmsg, sizeof(call->errmsg), "connect to %s failed: %s",
                 conn->pool->endpoint, uv_strerror(status));
        fail_call(conn, TE_CONNECT);
        return;
    }

    /* Requests go out in one write and wait for the response, so Nagle's
     * delay would only add latency. A failure here costs speed, not
     * correctness, so it is not fatal. */
    (void)uv_tcp_nodelay(&conn->tcp, 1);

    rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "reading from %s failed: %s", conn->pool->endpoint,
                 uv_strerror(rc));
        fail_call(conn, TE_CONNECT);
        return;
    }
    rc = conn_send(conn);
    if (rc != 0) {
        fail_call(conn, rc);
    }
}


/* Opens a connection for |call|. On error, returns a TE_* code with
 * call->errmsg set, and nothing is left attached to the call. */
static int conn_open(h1_pool_t *pool, upcall_t *call)
{
    h1_conn_t *conn;
    int rc;

    conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory opening a connection to %s", pool->endpoint);
        return TE_NOMEM;
    }
    rc = uv_tcp_init(pool->loop, &conn->tcp);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg), "connect to %s failed: %s",
                 pool->endpoint, uv_strerror(rc));
        free(conn);
        return TE_CONNECT;
    }
    conn->tcp.data = conn;
    conn->pool = pool;
    conn->state = CONN_CONNECTING;
    pool->nhandles++;

    conn->next = pool->conns;
    if (pool->conns != NULL) {
        pool->conns->prev = conn;
    }
    pool->conns = conn;
    pool->nopen++;

    conn->connect_req.data = conn;
    rc = uv_tcp_connect(&conn->connect_req, &conn->tcp,
                        (const struct sockaddr *)&pool->addr, on_connect);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg), "connect to %s failed: %s",
                 pool->endpoint, uv_strerror(rc));
        conn_close(conn);
        return TE_CONNECT;
    }
    conn->call = call;
    call->pool_conn = conn;
    return 0;
}


h1_pool_t *h1_pool_new(uv_loop_t *loop, const struct sockaddr *addr,
                       const pool_options_t *opts)
{
    char endpoint[sizeof(((h1_pool_t *)0)->endpoint)];
    size_t addrlen = sockaddr_describe(addr, endpoint, sizeof(endpoint));
    if (addrlen == 0) {
        return NULL;
    }

    h1_pool_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        return NULL;
    }
    pool->loop = loop;
    memcpy(&pool->addr, addr, addrlen);
    memcpy(pool->endpoint, endpoint, sizeof(endpoint));
    return pool;
}


int h1_pool_submit(h1_pool_t *pool, upcall_t *call)
{
    h1_conn_t *conn;
    int rc;

    if (call->method == NULL || call->path == NULL || call->authority == NULL ||
        call->on_done == NULL || (call->body == NULL && call->body_len > 0) ||
        call->body_len > UINT32_MAX) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "invalid request: method, path, authority and on_done are "
                 "required, and a body must be smaller than 4 GiB");
        return TE_INVALID;
    }
    if (pool->closing) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "connection pool for %s is closed", pool->endpoint);
        return TE_INVALID;
    }

    call->status = 0;
    call->errmsg[0] = '\0';
    call->pool_conn = NULL;
    buf_reset(&call->body_out);
    snprintf(call->endpoint, sizeof(call->endpoint), "%s", pool->endpoint);

    conn = pool->idle;
    if (conn == NULL) {
        call->phase = UPCALL_CONNECTING;
        return conn_open(pool, call);
    }

    idle_remove(conn);
    conn->state = CONN_BUSY;
    conn->call = call;
    call->phase = UPCALL_CONNECTING;
    rc = conn_send(conn);
    if (rc != 0) {
        conn_close(conn);
        return rc;
    }
    call->pool_conn = conn;
    return 0;
}


void h1_pool_cancel(h1_pool_t *pool, upcall_t *call)
{
    h1_conn_t *conn = call->pool_conn;

    if (conn == NULL || conn->call != call) {
        return; /* finished, never started, or already cancelled */
    }
    conn->call = NULL;
    call->pool_conn = NULL;
    call->phase = UPCALL_CANCELLED;
    conn_close(conn);
}


size_t h1_pool_connections(const h1_pool_t *pool)
{
    return pool->nopen;
}


void h1_pool_close(h1_pool_t *pool)
{
    pool->closing = 1;
    while (pool->conns != NULL) {
        h1_conn_t *conn = pool->conns;
        upcall_t *call = conn->call;
        if (call != NULL) {
            conn->call = NULL;
            call->pool_conn = NULL;
            call->phase = UPCALL_CANCELLED;
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "connection pool for %s closed", pool->endpoint);
        }
        conn_close(conn);
    }
    if (pool->nhandles == 0) {
        free(pool);
    }
}
