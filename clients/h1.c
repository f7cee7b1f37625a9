/* HTTP/1.1 client: keep-alive connections to one endpoint through the
 * transport (TCP, or TLS for https), responses parsed with
 * libhttp-parser. */
#include "h1.h"

#include <http_parser.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errors.h"
#include "sockaddr.h"

/* Limits on the header section and on the trailer section of one
 * response. The count is the status text, field names and values plus
 * H1_LINE_OVERHEAD per field line, so optional whitespace is left out.
 * libhttp-parser 2.9 also rejects a header section over its compiled-in
 * HTTP_MAX_HEADER_SIZE (80 KiB), counting every byte. */
#define H1_MAX_HEADER_BYTES 65536
#define H1_MAX_TRAILER_BYTES 8192
#define H1_LINE_OVERHEAD 4 /* ": " and CRLF */

#define H1_DEFAULT_MAX_CONNECTIONS 128
#define H1_DEFAULT_IDLE_TIMEOUT_MS 30000
#define H1_DEFAULT_CONNECT_TIMEOUT_MS 250

/* Bits of upcall_t.stream_id. HTTP/1.1 has no stream ids, so the pool
 * keeps its own state of a call there; submit resets it. */
#define CALL_QUEUED 0x1  /* in the pool's queue, waiting for a connection */
#define CALL_FAILING 0x2 /* in the pool's failed list, on_done pending */
#define CALL_RETRIED 0x4 /* already re-sent once on a new connection */
/* With CALL_FAILING, the bits from CALL_ERR_SHIFT up hold -err. */
#define CALL_ERR_SHIFT 8

/* A connection is not reused while bytes may follow its last response:
 * no request was outstanding for them, so the next call would take them
 * for its response. Bytes in the same read as the end of a response close
 * the connection at once (conn_parse). The rest of that read phase (libuv
 * reads the socket again after a full buffer, TLS may hold more records)
 * passes in CONN_SETTLING, where a byte or EOF closes the connection. The
 * transport keeps reading an idle connection, so a byte or EOF closes it
 * there too (on_read, on_eof). This costs no system call, whereas a
 * recv(MSG_PEEK) before each reuse would add one per call.
 * NOTE: bytes not yet read when the connection is reused go unseen. Such
 * bytes reached the socket after the loop last read it, or lie beyond the
 * 32 reads that libuv 1.44 makes per read phase, or form a TLS record not
 * yet complete. Bytes that arrive after the next request went out are taken
 * as its response, because HTTP/1.1 matches responses to requests only by
 * their order. */
typedef enum {
    CONN_CONNECTING, /* TCP connect or TLS handshake, a call attached */
    CONN_BUSY,       /* request being written or response being read */
    CONN_SETTLING,   /* response complete, in the settling list until the
                        loop's read phase ends (on_settle_check) */
    CONN_IDLE,       /* in the idle list, read only to notice a close */
    CONN_CLOSING,    /* closing, freed once its handles are closed */
} conn_state_t;

typedef struct h1_conn_s h1_conn_t;

struct h1_conn_s {
    transport_t transport; /* transport.data points back here */
    uv_timer_t timer;      /* idle timeout; timer.data points back here */
    /* uv_now() at which the connection, while idle, is closed. The timer
     * is not stopped when the connection is taken for a call, so that a
     * busy connection costs no timer operation per call. When it fires
     * early (the connection was busy in between), it is re-armed. */
    uint64_t idle_deadline_ms;
    int handles; /* the transport and the timer, until each is closed */
    h1_pool_t *pool;
    conn_state_t state;
    upcall_t *call;  /* running call, or NULL when none runs */
    h1_conn_t *prev; /* list of open connections in the pool */
    h1_conn_t *next;
    h1_conn_t *idle_prev; /* idle list, most recently used first, or */
    h1_conn_t *idle_next; /* settling list, oldest first */
    unsigned long served; /* calls completed, so > 0 means reused */
    /* Idle limit derived from the server's "Keep-Alive: timeout=N", or
     * UINT64_MAX when the server sent none. */
    uint64_t server_idle_ms;
    buf_t head;  /* request line and header fields, alive until closed */
    int writing; /* the request write is pending, so the call's body is
                  * still in use and the connection cannot be reused */
    int is_head; /* the running request is HEAD, so the response has no body */
    http_parser parser;
    int received;     /* a response byte arrived for the running call */
    int final_head;   /* header fields of the final (non-1xx) response seen */
    int message_done; /* final response complete, and the parser paused */
    int keep_alive;   /* http_should_keep_alive() at the end of the message */
    int callback_err; /* TE_* code from a parser callback that failed */
    uint64_t body_expected; /* Content-Length, or UINT64_MAX if none */
    uint64_t body_received; /* body bytes of the final response so far */
    /* Header and trailer fields of the message being parsed, which
     * http_parser may hand over in pieces. */
    int in_trailers;      /* the header section has ended */
    int in_value;         /* the last piece was part of a field value */
    size_t section_bytes; /* size of the current section so far */
    char field[16];       /* field name, long enough for "keep-alive" */
    size_t field_len;     /* full length, even when longer than |field| */
    char value[64];
    size_t value_len;
    uint64_t pending_idle_ms; /* from this message's Keep-Alive field */
};


struct h1_pool_s {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char endpoint[64]; /* "ip:port", "[ip]:port" for IPv6 */
    pool_options_t opts;
    h1_conn_t *conns;         /* open connections, closing ones excluded */
    h1_conn_t *idle;          /* head of the idle list */
    h1_conn_t *settling;      /* head of the settling list */
    h1_conn_t *settling_tail; /* its last entry, for appending */
    size_t nopen;             /* length of |conns| */
    size_t nhandles;          /* handles initialised and not yet closed */
    int closing;              /* h1_pool_close was called */
    upcall_t *queue_head;     /* calls waiting for a connection, oldest first */
    upcall_t *queue_tail;
    /* Calls that failed while being started from inside the pool; a
     * zero-delay timer reports them so that on_done never runs inside
     * submit or cancel. The timer also keeps nhandles above zero until
     * h1_pool_close, so the pool is only ever freed in a close callback. */
    upcall_t *failed;
    uv_timer_t failed_timer;
    /* Active while a connection settles. A check handle runs in the same
     * loop iteration, right after the I/O callbacks, and costs no system
     * call. A zero-delay timer would run only in the next iteration. */
    uv_check_t settle_check;
};


static int on_message_begin(http_parser *parser);
static int on_status(http_parser *parser, const char *at, size_t len);
static int on_header_field(http_parser *parser, const char *at, size_t len);
static int on_header_value(http_parser *parser, const char *at, size_t len);
static int on_headers_complete(http_parser *parser);
static int on_body(http_parser *parser, const char *at, size_t len);
static int on_message_complete(http_parser *parser);

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_connect(transport_t *t, int err, const char *msg);
static void on_read(transport_t *t, const char *data, size_t len);
static void on_eof(transport_t *t, int err, const char *msg);
static void on_transport_close(transport_t *t);

static const transport_callbacks_t transport_callbacks = {
    .on_connect = on_connect,
    .on_read = on_read,
    .on_eof = on_eof,
    .on_close = on_transport_close,
};

static int conn_open(h1_pool_t *pool, upcall_t *call);
static void pool_dispatch(h1_pool_t *pool);


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


static void settling_push(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    conn->idle_prev = pool->settling_tail;
    conn->idle_next = NULL;
    if (pool->settling_tail != NULL) {
        pool->settling_tail->idle_next = conn;
    } else {
        pool->settling = conn;
    }
    pool->settling_tail = conn;
}


static void settling_remove(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    if (conn->idle_prev != NULL) {
        conn->idle_prev->idle_next = conn->idle_next;
    } else {
        pool->settling = conn->idle_next;
    }
    if (conn->idle_next != NULL) {
        conn->idle_next->idle_prev = conn->idle_prev;
    } else {
        pool->settling_tail = conn->idle_prev;
    }
    conn->idle_prev = NULL;
    conn->idle_next = NULL;
}


static void queue_push(h1_pool_t *pool, upcall_t *call)
{
    call->stream_id |= CALL_QUEUED;
    call->queue_next = NULL;
    if (pool->queue_tail != NULL) {
        pool->queue_tail->queue_next = call;
    } else {
        pool->queue_head = call;
    }
    pool->queue_tail = call;
}


static upcall_t *queue_pop(h1_pool_t *pool)
{
    upcall_t *call = pool->queue_head;

    pool->queue_head = call->queue_next;
    if (pool->queue_head == NULL) {
        pool->queue_tail = NULL;
    }
    call->queue_next = NULL;
    call->stream_id &= ~CALL_QUEUED;
    return call;
}


/* Unlinks a queued call. The queue is singly linked, so this is linear in
 * its length; only cancellations of waiting calls pay for it. */
static void queue_remove(h1_pool_t *pool, upcall_t *call)
{
    upcall_t *prev = NULL;

    for (upcall_t *c = pool->queue_head; c != NULL; c = c->queue_next) {
        if (c != call) {
            prev = c;
            continue;
        }
        if (prev != NULL) {
            prev->queue_next = c->queue_next;
        } else {
            pool->queue_head = c->queue_next;
        }
        if (pool->queue_tail == c) {
            pool->queue_tail = prev;
        }
        break;
    }
    call->queue_next = NULL;
    call->stream_id &= ~CALL_QUEUED;
}


static void failed_remove(h1_pool_t *pool, upcall_t *call)
{
    upcall_t **link = &pool->failed;

    while (*link != NULL && *link != call) {
        link = &(*link)->queue_next;
    }
    if (*link != NULL) {
        *link = call->queue_next;
    }
    call->queue_next = NULL;
    call->stream_id = 0;
}


/* Reports the calls in pool->failed (uv_timer_cb). */
static void on_failed_timer(uv_timer_t *timer)
{
    h1_pool_t *pool = timer->data;

    /* on_done may submit, cancel or close the pool; the list is reread
     * each time, and the pool stays allocated until its timer is closed. */
    while (pool->failed != NULL) {
        upcall_t *call = pool->failed;
        int err = -(call->stream_id >> CALL_ERR_SHIFT);

        pool->failed = call->queue_next;
        call->queue_next = NULL;
        call->stream_id = 0;
        call->pool_conn = NULL;
        call->phase = UPCALL_DONE;
        call->on_done(call, err);
    }
}


/* Fails |call| (errmsg already written) from the loop rather than from
 * the current stack, which may be inside submit or cancel. */
static void fail_later(h1_pool_t *pool, upcall_t *call, int err)
{
    call->stream_id = CALL_FAILING | (-err << CALL_ERR_SHIFT);
    call->pool_conn = NULL;
    call->queue_next = pool->failed;
    pool->failed = call;
    uv_timer_start(&pool->failed_timer, on_failed_timer, 0, 0);
}


/* Frees the pool after its last handle once h1_pool_close was called. */
static void pool_handle_closed(h1_pool_t *pool)
{
    pool->nhandles--;
    if (pool->closing && pool->nhandles == 0) {
        free(pool);
    }
}


/* uv_close_cb for the pool's failed_timer and settle_check. */
static void on_pool_handle_close(uv_handle_t *handle)
{
    pool_handle_closed(handle->data);
}


/* Frees the connection after its transport and its timer are closed. */
static void conn_handle_closed(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    conn->handles--;
    if (conn->handles == 0) {
        buf_free(&conn->head);
        free(conn);
    }
    pool_handle_closed(pool);
}


/* transport_close_cb */
static void on_transport_close(transport_t *t)
{
    conn_handle_closed(t->data);
}


/* uv_close_cb for the idle timer. */
static void on_conn_timer_close(uv_handle_t *handle)
{
    conn_handle_closed(handle->data);
}


/* Starts closing |conn|. The caller has detached its call, if any, and
 * calls pool_dispatch when queued calls may use the freed slot. A pending
 * write then completes with TE_RESET and sees CONN_CLOSING. */
static void conn_close(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    if (conn->state == CONN_CLOSING) {
        return;
    }
    if (conn->state == CONN_IDLE) {
        idle_remove(conn);
    } else if (conn->state == CONN_SETTLING) {
        settling_remove(conn);
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
    uv_close((uv_handle_t *)&conn->timer, on_conn_timer_close);
    transport_close(&conn->transport);
}


/* Closes an idle connection when its idle time is over (uv_timer_cb). */
static void on_conn_timer(uv_timer_t *timer)
{
    h1_conn_t *conn = timer->data;
    h1_pool_t *pool = conn->pool;

    if (conn->state != CONN_IDLE) {
        return; /* conn_make_idle arms the timer again */
    }
    uint64_t now = uv_now(pool->loop);
    if (now < conn->idle_deadline_ms) {
        uv_timer_start(timer, on_conn_timer, conn->idle_deadline_ms - now, 0);
        return;
    }
    conn_close(conn);
    pool_dispatch(pool);
}


/* Returns how long |conn| may stay idle: the pool's idle timeout, or less
 * when the server's Keep-Alive timeout is shorter. */
static uint64_t conn_idle_ms(const h1_conn_t *conn)
{
    uint64_t idle_ms = conn->pool->opts.idle_timeout_ms;

    return conn->server_idle_ms < idle_ms ? conn->server_idle_ms : idle_ms;
}


/* Puts the settled |conn| in the idle list with its idle timer. The
 * caller then lets a queued call have it. */
static void conn_make_idle(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;
    uint64_t idle_ms = conn_idle_ms(conn);

    conn->state = CONN_IDLE;
    conn->idle_prev = NULL;
    conn->idle_next = pool->idle;
    if (pool->idle != NULL) {
        pool->idle->idle_prev = conn;
    }
    pool->idle = conn;
    conn->idle_deadline_ms = uv_now(pool->loop) + idle_ms;
    /* A timer still armed from an earlier idle period fires no later than
     * this one needs, unless the server shortened its Keep-Alive. */
    if (!uv_is_active((uv_handle_t *)&conn->timer) ||
        uv_timer_get_due_in(&conn->timer) > idle_ms) {
        uv_timer_start(&conn->timer, on_conn_timer, idle_ms, 0);
    }
}


/* Moves the connections that finished a response during this loop
 * iteration's I/O callbacks to the idle list, then starts queued calls
 * on them (uv_check_cb). A byte or EOF read after a response ended has
 * closed its connection, so the ones left have received nothing since. */
static void on_settle_check(uv_check_t *check)
{
    h1_pool_t *pool = check->data;

    uv_check_stop(check);
    while (pool->settling != NULL) {
        h1_conn_t *conn = pool->settling;
        settling_remove(conn);
        conn_make_idle(conn);
    }
    pool_dispatch(pool);
}


/* Holds |conn|, whose response ended inside a read callback, out of the
 * idle list until on_settle_check: the transport may still deliver bytes
 * read in the same read phase (the rest of a full read buffer, further
 * TLS records), and those must close the connection, not reach the next
 * call. A connection the server allows no idle time is closed. */
static void conn_settle(h1_conn_t *conn)
{
    h1_pool_t *pool = conn->pool;

    if (conn_idle_ms(conn) == 0) {
        conn_close(conn);
        pool_dispatch(pool);
        return;
    }
    conn->state = CONN_SETTLING;
    settling_push(conn);
    uv_check_start(&pool->settle_check, on_settle_check);
}


/* Detaches the running call, closes the connection and reports |err|,
 * with call->errmsg already written. Calling on_done last keeps the pool
 * consistent if the callback submits, cancels or closes the pool. */
static void fail_call(h1_conn_t *conn, int err)
{
    upcall_t *call = conn->call;
    h1_pool_t *pool = conn->pool;

    conn->call = NULL;
    call->pool_conn = NULL;
    call->phase = UPCALL_DONE;
    conn_close(conn);
    pool_dispatch(pool);
    call->on_done(call, err);
}


/* Ends the running call successfully. The connection is kept only when
 * the server allows keep-alive, the request write has finished (its
 * buffers point into the call) and no byte followed the response in the
 * same read; it is reused once it has settled. */
static void complete_call(h1_conn_t *conn, int reusable)
{
    upcall_t *call = conn->call;
    h1_pool_t *pool = conn->pool;

    conn->call = NULL;
    conn->served++;
    call->pool_conn = NULL;
    call->phase = UPCALL_DONE;
    if (reusable && conn->keep_alive && !conn->writing && !pool->closing) {
        conn_settle(conn);
    } else {
        conn_close(conn);
        pool_dispatch(pool);
    }
    call->on_done(call, 0);
}


/* Methods that RFC 9110, section 9.2.2, defines as idempotent. */
static int method_is_idempotent(const char *method)
{
    static const char *const methods[] = {"GET",    "HEAD",    "PUT",
                                          "DELETE", "OPTIONS", "TRACE"};

    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(method, methods[i]) == 0) {
            return 1;
        }
    }
    return 0;
}


/* Ends the running call, which failed before any response byte with
 * call->errmsg written. A server may close a keep-alive connection just
 * as a request goes out on it. So on a reused connection the call is sent
 * once more, on a new connection, if its method is idempotent: the server
 * may have processed the first copy before closing. */
static void fail_before_response(h1_conn_t *conn, int err)
{
    upcall_t *call = conn->call;
    h1_pool_t *pool = conn->pool;
    int rc;

    if (conn->served == 0 || conn->received ||
        (call->stream_id & CALL_RETRIED) != 0 || pool->closing ||
        !method_is_idempotent(call->method) ||
        (call->deadline_ns != 0 && uv_hrtime() >= call->deadline_ns)) {
        fail_call(conn, err);
        return;
    }

    conn->call = NULL;
    call->pool_conn = NULL;
    conn_close(conn);
    call->stream_id |= CALL_RETRIED;
    call->phase = UPCALL_CONNECTING;
    call->errmsg[0] = '\0';
    rc = conn_open(pool, call);
    if (rc != 0) {
        call->phase = UPCALL_DONE;
        pool_dispatch(pool);
        call->on_done(call, rc);
    }
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
    conn->in_trailers = 0;
    conn->in_value = 0;
    conn->section_bytes = 0;
    conn->field_len = 0;
    conn->value_len = 0;
    conn->pending_idle_ms = UINT64_MAX;
    return 0;
}


/* Adds |len| bytes to the size of the current header or trailer section
 * and fails the parse when the section is over its limit. */
static int count_section_bytes(h1_conn_t *conn, size_t len)
{
    upcall_t *call = conn->call;
    size_t limit =
        conn->in_trailers ? H1_MAX_TRAILER_BYTES : H1_MAX_HEADER_BYTES;

    conn->section_bytes += len;
    if (conn->section_bytes <= limit) {
        return 0;
    }
    snprintf(call->errmsg, sizeof(call->errmsg),
             "response %s larger than %zu bytes",
             conn->in_trailers ? "trailers" : "headers", limit);
    return fail_in_callback(conn, TE_BAD_RESPONSE);
}


static int on_status(http_parser *parser, const char *at, size_t len)
{
    return count_section_bytes(parser->data, len);
}


/* Returns the idle time the pool allows a connection whose server sent
 * "Keep-Alive: timeout=|seconds|". The server's timer starts before ours
 * (when it sent the response), and our last request must reach the server
 * before its timer fires. One second of margin is an estimate that covers
 * both inside a cluster. Above 2 s the pool keeps N*1000 - 1000 ms, and
 * for 2 s or less, where that margin would leave too little, half. */
static uint64_t idle_ms_for_server_timeout(uint64_t seconds)
{
    uint64_t ms = seconds * 1000;

    return ms > 2000 ? ms - 1000 : ms / 2;
}


/* Returns the timeout=N parameter of a Keep-Alive field value in seconds,
 * or UINT64_MAX when there is none or it is not a number. */
static uint64_t parse_keep_alive_timeout(const char *v, size_t len)
{
    static const char name[] = "timeout";
    size_t i = 0;

    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        size_t start = i;
        while (i < len && v[i] != '=' && v[i] != ',' && v[i] != ' ' &&
               v[i] != '\t') {
            i++;
        }
        size_t name_len = i - start;
        while (i < len && (v[i] == ' ' || v[i] == '\t')) {
            i++;
        }
        if (i < len && v[i] == '=') {
            i++;
            while (i < len && (v[i] == ' ' || v[i] == '\t')) {
                i++;
            }
            int quoted = i < len && v[i] == '"';
            if (quoted) {
                i++;
            }
            uint64_t seconds = 0;
            size_t digits = 0;
            /* Nine digits exceed any useful timeout and cannot overflow. */
            while (i < len && v[i] >= '0' && v[i] <= '9' && digits < 9) {
                seconds = seconds * 10 + (uint64_t)(v[i] - '0');
                digits++;
                i++;
            }
            if (name_len == sizeof(name) - 1 &&
                strncasecmp(v + start, name, name_len) == 0 && digits > 0) {
                return seconds;
            }
        }
        while (i < len && v[i] != ',') {
            i++;
        }
    }
    return UINT64_MAX;
}


/* Acts on a complete header field. Only Keep-Alive matters here; the
 * framing fields are handled by http_parser. */
static void end_field(h1_conn_t *conn)
{
    static const char keep_alive[] = "keep-alive";

    if (!conn->in_trailers && conn->field_len == sizeof(keep_alive) - 1 &&
        strncasecmp(conn->field, keep_alive, conn->field_len) == 0 &&
        conn->value_len <= sizeof(conn->value)) {
        uint64_t seconds =
            parse_keep_alive_timeout(conn->value, conn->value_len);
        if (seconds != UINT64_MAX) {
            conn->pending_idle_ms = idle_ms_for_server_timeout(seconds);
        }
    }
    conn->in_value = 0;
    conn->field_len = 0;
    conn->value_len = 0;
}


static int on_header_field(http_parser *parser, const char *at, size_t len)
{
    h1_conn_t *conn = parser->data;

    if (conn->in_value) {
        end_field(conn);
    }
    if (conn->field_len == 0 &&
        count_section_bytes(conn, H1_LINE_OVERHEAD) != 0) {
        return -1;
    }
    if (conn->field_len < sizeof(conn->field)) {
        size_t n = sizeof(conn->field) - conn->field_len;
        memcpy(conn->field + conn->field_len, at, len < n ? len : n);
    }
    conn->field_len += len;
    return count_section_bytes(conn, len);
}


static int on_header_value(http_parser *parser, const char *at, size_t len)
{
    h1_conn_t *conn = parser->data;

    if (!conn->in_value) {
        conn->in_value = 1;
        conn->value_len = 0;
    }
    if (conn->value_len < sizeof(conn->value)) {
        size_t n = sizeof(conn->value) - conn->value_len;
        memcpy(conn->value + conn->value_len, at, len < n ? len : n);
    }
    conn->value_len += len;
    return count_section_bytes(conn, len);
}


/* Returns 1 to tell http_parser that the response has no body. */
static int on_headers_complete(http_parser *parser)
{
    h1_conn_t *conn = parser->data;
    upcall_t *call = conn->call;
    unsigned int status = parser->status_code;

    if (conn->in_value) {
        end_field(conn);
    }
    /* Fields from here on are trailers, counted on their own. */
    conn->in_trailers = 1;
    conn->section_bytes = 0;

    if (status == 101) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "invalid HTTP response: 101 Switching Protocols, but no "
                 "upgrade was requested");
        return fail_in_callback(conn, TE_BAD_RESPONSE);
    }
    /* http_parser 2.9 takes one to three digits, so "HTTP/1.1 2 OK" gives
     * status 2; RFC 9110 status codes run from 100. */
    if (status < 100) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "invalid HTTP response: status code %u", status);
        return fail_in_callback(conn, TE_BAD_RESPONSE);
    }
    if (status / 100 == 1) {
        /* Interim response: on_message_complete skips it and the parser
         * goes on with the next response on the connection. */
        return 1;
    }

    call->status = (int)status;
    conn->final_head = 1;
    conn->server_idle_ms = conn->pending_idle_ms;
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
                     UPCALL_BODY_LIMIT_FMT " (Content-Length: %" PRIu64 ")",
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
        snprintf(call->errmsg, sizeof(call->errmsg), UPCALL_BODY_LIMIT_FMT,
                 call->max_body);
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
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "connection closed before the response");
        fail_before_response(conn, TE_RESET);
        return;
    }

    /* A zero-length execute signals the EOF to http_parser. */
    http_parser_execute(&conn->parser, &parser_settings, NULL, 0);
    if (conn->message_done) {
        complete_call(conn, 0);
        return;
    }

    if (conn->callback_err != 0) {
        fail_call(conn, conn->callback_err);
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


/* transport_read_cb: response bytes, or unrequested bytes on a settling
 * or idle connection. */
static void on_read(transport_t *t, const char *data, size_t len)
{
    h1_conn_t *conn = t->data;
    upcall_t *call = conn->call;

    if (len == 0 || conn->state == CONN_CLOSING) {
        return;
    }
    if (call == NULL) {
        /* No request is outstanding, so these bytes belong to no call,
         * and a later call would take them for its response. Closing the
         * connection is no error of any call. */
        h1_pool_t *pool = conn->pool;
        conn_close(conn);
        pool_dispatch(pool);
        return;
    }
    if (!conn->received) {
        conn->received = 1;
        call->phase = UPCALL_RECEIVING;
    }
    conn_parse(conn, data, len);
}


/* transport_eof_cb: the server closed (|err| 0) or the connection failed
 * (TE_RESET, with the transport's reason in |msg|). */
static void on_eof(transport_t *t, int err, const char *msg)
{
    h1_conn_t *conn = t->data;
    upcall_t *call = conn->call;

    if (conn->state == CONN_CLOSING) {
        return;
    }
    if (call == NULL) {
        /* A settling or idle connection the server closed: it is
         * dropped here so that no request goes out on it. */
        h1_pool_t *pool = conn->pool;
        conn_close(conn);
        pool_dispatch(pool);
        return;
    }
    if (err == 0) {
        conn_on_eof(conn);
        return;
    }
    if (!conn->received) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "connection failed before the response: %s", msg);
        fail_before_response(conn, TE_RESET);
    } else {
        snprintf(call->errmsg, sizeof(call->errmsg), "response truncated: %s",
                 msg);
        fail_call(conn, TE_BAD_RESPONSE);
    }
}


/* transport_write_cb: the request is sent, or the write failed. */
static void on_write(transport_t *t, int err, void *arg)
{
    h1_conn_t *conn = arg;
    upcall_t *call = conn->call;

    conn->writing = 0;
    if (conn->state == CONN_CLOSING || call == NULL) {
        return;
    }
    if (err != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "sending the request to %s failed: connection reset",
                 conn->pool->endpoint);
        if (conn->received) {
            fail_call(conn, TE_RESET);
        } else {
            fail_before_response(conn, TE_RESET);
        }
        return;
    }
    if (call->phase == UPCALL_CONNECTING) {
        call->phase = UPCALL_WAITING;
    }
}


/* Returns whether the pool writes the field |name| itself, so that the
 * caller's copy must be dropped rather than sent twice. */
static int is_pool_field(const char *name)
{
    /* The first letter rules out most fields without a comparison. */
    switch (name[0] | 0x20) {
    case 'h':
        return strcasecmp(name, "host") == 0;
    case 'c':
        return strcasecmp(name, "content-length") == 0 ||
               strcasecmp(name, "connection") == 0;
    case 't':
        return strcasecmp(name, "transfer-encoding") == 0;
    default:
        return 0;
    }
}


/* Copies |n| bytes of |src| to |p| and returns the end of the copy. */
static char *put(char *p, const char *src, size_t n)
{
    memcpy(p, src, n);
    return p + n;
}


/* Builds the request line and header section: the length first, then
 * plain copies into one allocation, because this runs for every call and
 * printf-style formatting cost more than the copying itself. */
static int build_head(buf_t *head, const upcall_t *call)
{
    size_t method_len = strlen(call->method);
    size_t path_len = strlen(call->path);
    size_t authority_len = strlen(call->authority);
    /* "M P HTTP/1.1\r\nHost: A\r\n" and the final CRLF. */
    size_t total = method_len + 1 + path_len + 17 + authority_len + 2 + 2;
    char length_line[48] = "";
    size_t length_len = 0;

    for (size_t i = 0; i < call->nheaders; i++) {
        if (!is_pool_field(call->headers[i].name)) {
            total += strlen(call->headers[i].name) + 2 +
                     strlen(call->headers[i].value) + 2;
        }
    }
    /* Content-Length: 0 too, so that a server expecting a body (POST)
     * does not wait for one. */
    if (call->body != NULL) {
        length_len =
            (size_t)snprintf(length_line, sizeof(length_line),
                             "Content-Length: %zu\r\n", call->body_len);
        total += length_len;
    }

    buf_reset(head);
    if (buf_reserve(head, total) != 0) {
        return TE_NOMEM;
    }
    char *p = head->data;
    p = put(p, call->method, method_len);
    *p++ = ' ';
    p = put(p, call->path, path_len);
    p = put(p, " HTTP/1.1\r\nHost: ", 17);
    p = put(p, call->authority, authority_len);
    p = put(p, "\r\n", 2);
    for (size_t i = 0; i < call->nheaders; i++) {
        const upcall_header_t *h = &call->headers[i];
        if (is_pool_field(h->name)) {
            continue;
        }
        p = put(p, h->name, strlen(h->name));
        p = put(p, ": ", 2);
        p = put(p, h->value, strlen(h->value));
        p = put(p, "\r\n", 2);
    }
    p = put(p, length_line, length_len);
    p = put(p, "\r\n", 2);
    *p = '\0';
    head->len = (size_t)(p - head->data);
    return 0;
}


/* Attaches |call| to the connected |conn| and writes its request. On
 * error, returns a TE_* code with call->errmsg set, detaches the call and
 * leaves closing |conn| to the caller; TE_RESET then means that nothing
 * was written, so another connection may carry the call. */
static int conn_start(h1_conn_t *conn, upcall_t *call)
{
    uv_buf_t bufs[2];
    unsigned int nbufs = 1;
    int rc;

    conn->call = call;
    conn->state = CONN_BUSY;
    call->pool_conn = conn;
    call->phase = UPCALL_CONNECTING;

    rc = build_head(&conn->head, call);
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory building the request");
        goto fail;
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

    /* Most requests fit in the socket buffer at once; only a rest left
     * over goes through a write request and on_write. */
    size_t sent = transport_try_write(&conn->transport, bufs, nbufs);
    unsigned int first = 0;
    while (first < nbufs && sent >= bufs[first].len) {
        sent -= bufs[first].len;
        first++;
    }
    if (first == nbufs) {
        conn->writing = 0;
        call->phase = UPCALL_WAITING;
        return 0;
    }
    bufs[first].base += sent;
    bufs[first].len -= sent;
    rc = transport_write(&conn->transport, bufs + first, nbufs - first,
                         on_write, conn);
    if (rc == TE_NOMEM) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory sending the request to %s",
                 conn->pool->endpoint);
        goto fail;
    }
    if (rc != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "sending the request to %s failed: connection closed",
                 conn->pool->endpoint);
        rc = TE_RESET;
        goto fail;
    }
    conn->writing = 1;
    return 0;

fail:
    conn->call = NULL;
    call->pool_conn = NULL;
    return rc;
}


/* transport_connect_cb: sends the request once TCP (and TLS) is up. */
static void on_connect(transport_t *t, int err, const char *msg)
{
    h1_conn_t *conn = t->data;
    upcall_t *call = conn->call;
    int rc;

    if (conn->state == CONN_CLOSING || call == NULL) {
        return; /* cancelled, or the pool is closing */
    }
    if (err != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg), "%s", msg);
        fail_call(conn, TE_CONNECT);
        return;
    }
    /* A context that also offers "h2" could let the server pick it, and
     * then HTTP/1.1 bytes would reach an HTTP/2 server. */
    if (t->alpn[0] != '\0' && strcmp(t->alpn, "http/1.1") != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "TLS server %s selected ALPN protocol \"%s\", expected "
                 "\"http/1.1\"",
                 conn->pool->endpoint, t->alpn);
        fail_call(conn, TE_CONNECT);
        return;
    }
    rc = conn_start(conn, call);
    if (rc != 0) {
        conn->call = call; /* fail_call detaches it again */
        fail_call(conn, rc);
    }
}


/* Returns the connect timeout for |call|: the pool's, but never past the
 * call's deadline, so that the caller still has time to try another
 * address. At least 1 ms, because the transport reads 0 as no limit. */
static uint64_t connect_timeout_for(const h1_pool_t *pool, const upcall_t *call)
{
    uint64_t ms = pool->opts.connect_timeout_ms;

    if (call->deadline_ns != 0) {
        uint64_t now = uv_hrtime();
        uint64_t left_ms = 0;
        if (call->deadline_ns > now) {
            left_ms = (call->deadline_ns - now + 999999) / 1000000;
        }
        if (left_ms < ms) {
            ms = left_ms;
        }
    }
    return ms > 0 ? ms : 1;
}


/* Opens a connection for |call|: TCP, and TLS when the pool has a TLS
 * context. The transport enforces the connect timeout and reports it, or
 * any connect or TLS failure, to on_connect. On error, returns a TE_* code
 * with call->errmsg set, and nothing is left attached to the call. */
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
    rc = transport_connect(
        &conn->transport, pool->loop, (const struct sockaddr *)&pool->addr,
        pool->opts.tls, pool->opts.server_name, connect_timeout_for(pool, call),
        &transport_callbacks, conn);
    if (rc != 0) {
        /* Nothing was started, so there is no handle to close. */
        snprintf(call->errmsg, sizeof(call->errmsg), "connect to %s failed: %s",
                 pool->endpoint,
                 rc == TE_NOMEM ? "out of memory"
                                : "invalid address or TLS settings");
        free(conn);
        return rc == TE_NOMEM ? TE_NOMEM : TE_CONNECT;
    }
    /* uv_timer_init cannot fail: it only fills in the handle. */
    (void)uv_timer_init(pool->loop, &conn->timer);
    conn->timer.data = conn;
    conn->handles = 2;
    conn->pool = pool;
    conn->state = CONN_CONNECTING;
    conn->server_idle_ms = UINT64_MAX;
    pool->nhandles += 2;

    conn->next = pool->conns;
    if (pool->conns != NULL) {
        pool->conns->prev = conn;
    }
    pool->conns = conn;
    pool->nopen++;

    conn->call = call;
    call->pool_conn = conn;
    call->phase = UPCALL_CONNECTING;
    return 0;
}


/* Starts |call| on the most recently used idle connection, or on a new
 * one. An idle connection whose write fails at once is closed and the
 * next one tried, since nothing of the request went out. The caller has
 * checked that a connection is idle or that the cap allows a new one. */
static int pool_start(h1_pool_t *pool, upcall_t *call)
{
    while (pool->idle != NULL) {
        h1_conn_t *conn = pool->idle;
        int rc;

        idle_remove(conn);
        rc = conn_start(conn, call);
        if (rc == 0) {
            return 0;
        }
        conn_close(conn);
        if (rc != TE_RESET) {
            return rc;
        }
    }
    return conn_open(pool, call);
}


/* Returns whether a call can start now: a connection is idle, or the cap
 * allows a new one and none is settling. A settling connection becomes
 * idle before the loop polls again, so a call waits for it in the queue
 * rather than opening a connection that the pool does not need. */
static int pool_can_start(const h1_pool_t *pool)
{
    return pool->idle != NULL ||
           (pool->settling == NULL && pool->nopen < pool->opts.max_connections);
}


/* Starts queued calls while pool_can_start allows it. A call that cannot
 * start fails from the loop, never from here, because this runs inside
 * submit and cancel too. */
static void pool_dispatch(h1_pool_t *pool)
{
    while (pool->queue_head != NULL && !pool->closing && pool_can_start(pool)) {
        upcall_t *call = queue_pop(pool);
        int rc = pool_start(pool, call);
        if (rc != 0) {
            fail_later(pool, call, rc);
        }
    }
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
    if (opts != NULL) {
        pool->opts = *opts;
    }
    /* A zero limit or timeout would make the pool unusable, so it means
     * the default. */
    if (pool->opts.max_connections == 0) {
        pool->opts.max_connections = H1_DEFAULT_MAX_CONNECTIONS;
    }
    if (pool->opts.idle_timeout_ms == 0) {
        pool->opts.idle_timeout_ms = H1_DEFAULT_IDLE_TIMEOUT_MS;
    }
    if (pool->opts.connect_timeout_ms == 0) {
        pool->opts.connect_timeout_ms = H1_DEFAULT_CONNECT_TIMEOUT_MS;
    }
    /* Neither init can fail: they only fill in the handle. */
    (void)uv_timer_init(loop, &pool->failed_timer);
    pool->failed_timer.data = pool;
    (void)uv_check_init(loop, &pool->settle_check);
    pool->settle_check.data = pool;
    pool->nhandles = 2;
    return pool;
}


int h1_pool_submit(h1_pool_t *pool, upcall_t *call)
{
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
    call->stream_id = 0;
    call->queue_next = NULL;
    buf_reset(&call->body_out);
    size_t endpoint_len = strnlen(pool->endpoint, sizeof(call->endpoint) - 1);
    memcpy(call->endpoint, pool->endpoint, endpoint_len);
    call->endpoint[endpoint_len] = '\0';

    /* Earlier waiting calls go first. */
    if (pool->queue_head != NULL || !pool_can_start(pool)) {
        call->phase = UPCALL_CONNECTING;
        queue_push(pool, call);
        return 0;
    }
    return pool_start(pool, call);
}


void h1_pool_cancel(h1_pool_t *pool, upcall_t *call)
{
    h1_conn_t *conn = call->pool_conn;

    if ((call->stream_id & CALL_QUEUED) != 0) {
        queue_remove(pool, call);
        call->phase = UPCALL_CANCELLED;
        return;
    }
    if ((call->stream_id & CALL_FAILING) != 0) {
        failed_remove(pool, call);
        call->phase = UPCALL_CANCELLED;
        return;
    }
    if (conn == NULL || conn->call != call) {
        return; /* finished, never started, or already cancelled */
    }
    conn->call = NULL;
    call->pool_conn = NULL;
    call->phase = UPCALL_CANCELLED;
    conn_close(conn);
    pool_dispatch(pool);
}


size_t h1_pool_connections(const h1_pool_t *pool)
{
    return pool->nopen;
}


/* Marks a call that never reached on_done as cancelled by the close. */
static void cancel_for_close(h1_pool_t *pool, upcall_t *call)
{
    call->pool_conn = NULL;
    call->queue_next = NULL;
    call->stream_id = 0;
    call->phase = UPCALL_CANCELLED;
    snprintf(call->errmsg, sizeof(call->errmsg),
             "connection pool for %s closed", pool->endpoint);
}


void h1_pool_close(h1_pool_t *pool)
{
    pool->closing = 1;
    while (pool->conns != NULL) {
        h1_conn_t *conn = pool->conns;
        upcall_t *call = conn->call;
        if (call != NULL) {
            conn->call = NULL;
            cancel_for_close(pool, call);
        }
        conn_close(conn);
    }
    while (pool->queue_head != NULL) {
        cancel_for_close(pool, queue_pop(pool));
    }
    while (pool->failed != NULL) {
        upcall_t *call = pool->failed;
        pool->failed = call->queue_next;
        cancel_for_close(pool, call);
    }
    uv_close((uv_handle_t *)&pool->failed_timer, on_pool_handle_close);
    uv_close((uv_handle_t *)&pool->settle_check, on_pool_handle_close);
}
