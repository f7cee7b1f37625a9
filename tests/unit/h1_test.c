/* Tests for the HTTP/1.1 client pool against a scripted libuv TCP server
 * that runs on 127.0.0.1 in the same loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "errors.h"
#include "h1.h"

/* Upper bound for one wait on the loop, so that a broken test fails
 * instead of hanging. */
#define WAIT_MS 5000

#define MAX_REPLIES 8

/* One scripted reply to one request. */
typedef struct reply_s {
    const char *bytes; /* sent once the request is complete, unless NULL */
    int close_after;   /* close the connection after sending */
    int reset;         /* close with a TCP RST instead of sending */
} reply_t;

typedef struct server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    reply_t replies[MAX_REPLIES];
    int nreplies;
    int next_reply;
    int accepted;                   /* connections accepted */
    int requests;                   /* complete requests received */
    int eofs;                       /* connections the client closed */
    int open_conns;                 /* server-side connections not yet closed */
    int request_slots[MAX_REPLIES]; /* connection slot of each request */
    buf_t last_request;
    struct sconn_s *conns[16];
} server_t;

typedef struct sconn_s {
    uv_tcp_t tcp;
    uv_shutdown_t shutdown_req;
    server_t *server;
    int slot;
    int closing;
    buf_t in;
} sconn_t;

typedef struct write_s {
    uv_write_t req;
    char *data;
} write_t;

typedef struct fixture_s {
    uv_loop_t loop;
    server_t server;
    h1_pool_t *pool;
    struct sockaddr_in addr;
} fixture_t;

/* Result of one client call. */
typedef struct result_s {
    upcall_t call;
    int done;
    int done_order; /* rank in the order calls finished, from 1 */
    int err;
    size_t conns_in_done; /* h1_pool_connections() inside on_done */
    h1_pool_t *pool;
} result_t;

static void on_sconn_close(uv_handle_t *handle)
{
    sconn_t *sc = handle->data;
    sc->server->open_conns--;
    sc->server->conns[sc->slot] = NULL;
    buf_free(&sc->in);
    free(sc);
}


static void sconn_close(sconn_t *sc)
{
    if (sc->closing) {
        return;
    }
    sc->closing = 1;
    uv_close((uv_handle_t *)&sc->tcp, on_sconn_close);
}


static void on_server_write(uv_write_t *req, int status)
{
    write_t *w = (write_t *)req;
    free(w->data);
    free(w);
}


static void server_send(sconn_t *sc, const char *bytes)
{
    write_t *w = calloc(1, sizeof(*w));
    size_t len = strlen(bytes);
    assert_non_null(w);
    w->data = malloc(len);
    assert_non_null(w->data);
    memcpy(w->data, bytes, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned int)len);
    assert_int_equal(
        uv_write(&w->req, (uv_stream_t *)&sc->tcp, &b, 1, on_server_write), 0);
}


/* Returns the length of the first complete request in |in|, or 0. */
static size_t request_length(const buf_t *in)
{
    if (in->data == NULL) {
        return 0;
    }
    const char *end = strstr(in->data, "\r\n\r\n");
    if (end == NULL) {
        return 0;
    }
    size_t head_len = (size_t)(end - in->data) + 4;
    size_t body_len = 0;
    const char *cl = strstr(in->data, "Content-Length: ");
    if (cl != NULL && cl < end) {
        body_len = strtoul(cl + strlen("Content-Length: "), NULL, 10);
    }
    if (in->len < head_len + body_len) {
        return 0;
    }
    return head_len + body_len;
}


static void on_server_shutdown(uv_shutdown_t *req, int status)
{
    sconn_close(req->data);
}


static void on_server_alloc(uv_handle_t *handle, size_t size, uv_buf_t *buf)
{
    static char storage[65536];
    buf->base = storage;
    buf->len = sizeof(storage);
}


static void on_server_read(uv_stream_t *stream, ssize_t nread,
                           const uv_buf_t *buf)
{
    sconn_t *sc = stream->data;
    server_t *srv = sc->server;

    if (nread < 0) {
        srv->eofs++;
        sconn_close(sc);
        return;
    }
    assert_int_equal(buf_append(&sc->in, buf->base, (size_t)nread), 0);
    for (;;) {
        size_t len = request_length(&sc->in);
        if (len == 0) {
            return;
        }
        srv->request_slots[srv->requests] = sc->slot;
        srv->requests++;
        buf_reset(&srv->last_request);
        assert_int_equal(buf_append(&srv->last_request, sc->in.data, len), 0);
        memmove(sc->in.data, sc->in.data + len, sc->in.len - len);
        sc->in.len -= len;
        sc->in.data[sc->in.len] = '\0';

        assert_true(srv->next_reply < srv->nreplies);
        reply_t *r = &srv->replies[srv->next_reply++];
        if (r->reset) {
            sc->closing = 1;
            assert_int_equal(uv_tcp_close_reset(&sc->tcp, on_sconn_close), 0);
            return;
        }
        if (r->bytes != NULL) {
            server_send(sc, r->bytes);
        }
        if (r->close_after) {
            /* The shutdown sends the FIN after the queued reply. */
            uv_read_stop(stream);
            sc->shutdown_req.data = sc;
            assert_int_equal(
                uv_shutdown(&sc->shutdown_req, stream, on_server_shutdown), 0);
            return;
        }
    }
}


static void on_server_connection(uv_stream_t *listener, int status)
{
    server_t *srv = listener->data;
    assert_int_equal(status, 0);
    sconn_t *sc = calloc(1, sizeof(*sc));
    assert_non_null(sc);
    sc->server = srv;
    assert_int_equal(uv_tcp_init(srv->loop, &sc->tcp), 0);
    sc->tcp.data = sc;
    assert_int_equal(uv_accept(listener, (uv_stream_t *)&sc->tcp), 0);
    srv->accepted++;
    srv->open_conns++;
    int slot = 0;
    while (srv->conns[slot] != NULL) {
        slot++;
    }
    sc->slot = slot;
    srv->conns[slot] = sc;
    assert_int_equal(
        uv_read_start((uv_stream_t *)&sc->tcp, on_server_alloc, on_server_read),
        0);
}


static void server_close_conns(server_t *srv)
{
    for (size_t i = 0; i < 16; i++) {
        if (srv->conns[i] != NULL) {
            sconn_close(srv->conns[i]);
        }
    }
}


static void server_script(server_t *srv, const char *bytes, int close_after)
{
    assert_true(srv->nreplies < MAX_REPLIES);
    srv->replies[srv->nreplies].bytes = bytes;
    srv->replies[srv->nreplies].close_after = close_after;
    srv->nreplies++;
}


/* Sends |bytes| on the server side of the only open connection, outside
 * any request. */
static void server_send_unrequested(server_t *srv, const char *bytes)
{
    assert_int_equal(srv->open_conns, 1);
    assert_non_null(srv->conns[0]);
    server_send(srv->conns[0], bytes);
}


/* Scripts a reply that resets the connection instead of answering. */
static void server_script_reset(server_t *srv)
{
    assert_true(srv->nreplies < MAX_REPLIES);
    srv->replies[srv->nreplies].reset = 1;
    srv->nreplies++;
}


/* Runs the loop for about |ms| milliseconds without blocking on it. */
static void run_for(uv_loop_t *loop, uint64_t ms)
{
    uint64_t deadline = uv_now(loop) + ms;
    while (uv_now(loop) < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(loop);
    }
}


/* Runs the loop until *counter reaches |target|, at most WAIT_MS. */
static void run_until(uv_loop_t *loop, const int *counter, int target)
{
    uint64_t deadline = uv_now(loop) + WAIT_MS;
    while (*counter < target && uv_now(loop) < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(loop);
    }
    assert_int_equal(*counter, target);
}


/* Runs the loop until the pool has no open connection, at most WAIT_MS. */
static void run_until_no_connections(uv_loop_t *loop, h1_pool_t *pool)
{
    uint64_t deadline = uv_now(loop) + WAIT_MS;
    while (h1_pool_connections(pool) > 0 && uv_now(loop) < deadline) {
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(loop);
    }
    assert_int_equal(h1_pool_connections(pool), 0);
}


static int calls_finished;

static void on_call_done(upcall_t *call, int err)
{
    result_t *r = call->data;
    r->done++;
    r->done_order = ++calls_finished;
    r->err = err;
    r->conns_in_done = h1_pool_connections(r->pool);
}


static void result_init(result_t *r, fixture_t *f, const char *method,
                        const char *path)
{
    memset(r, 0, sizeof(*r));
    r->pool = f->pool;
    r->call.method = method;
    r->call.path = path;
    r->call.authority = "example.test";
    r->call.max_body = 1 << 20;
    r->call.on_done = on_call_done;
    r->call.data = r;
}


/* Submits the call and runs the loop until on_done. */
static void call_and_wait(fixture_t *f, result_t *r)
{
    assert_int_equal(h1_pool_submit(f->pool, &r->call), 0);
    assert_int_equal(r->done, 0);
    run_until(&f->loop, &r->done, 1);
}


static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);

    server_t *srv = &f->server;
    srv->loop = &f->loop;
    assert_int_equal(uv_tcp_init(&f->loop, &srv->listener), 0);
    srv->listener.data = srv;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &f->addr), 0);
    assert_int_equal(
        uv_tcp_bind(&srv->listener, (const struct sockaddr *)&f->addr, 0), 0);
    assert_int_equal(
        uv_listen((uv_stream_t *)&srv->listener, 16, on_server_connection), 0);
    int len = sizeof(f->addr);
    assert_int_equal(
        uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&f->addr, &len),
        0);
    srv->port = ntohs(f->addr.sin_port);

    f->pool = h1_pool_new(&f->loop, (const struct sockaddr *)&f->addr, NULL);
    assert_non_null(f->pool);
    calls_finished = 0;
    *state = f;
    return 0;
}


static int teardown(void **state)
{
    fixture_t *f = *state;
    if (f->pool != NULL) {
        h1_pool_close(f->pool);
    }
    server_close_conns(&f->server);
    uv_close((uv_handle_t *)&f->server.listener, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    buf_free(&f->server.last_request);
    /* UV_EBUSY here would mean a handle was leaked. */
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}


static void result_free(result_t *r)
{
    buf_free(&r->call.body_out);
}


static void test_h1_content_length(void **state)
{
    fixture_t *f = *state;
    static const upcall_header_t headers[] = {
        {"x-trace", "abc"},
        {"accept", "application/json"},
    };
    result_t r;
    char endpoint[64];

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0);
    result_init(&r, f, "POST", "/items?id=1");
    r.call.headers = headers;
    r.call.nheaders = 2;
    r.call.body = "{\"a\":1}";
    r.call.body_len = 7;
    call_and_wait(f, &r);

    assert_int_equal(r.err, 0);
    assert_int_equal(r.call.status, 200);
    assert_int_equal(r.call.body_out.len, 5);
    assert_string_equal(r.call.body_out.data, "hello");
    assert_int_equal(r.call.phase, UPCALL_DONE);
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%d", f->server.port);
    assert_string_equal(r.call.endpoint, endpoint);
    assert_string_equal(f->server.last_request.data,
                        "POST /items?id=1 HTTP/1.1\r\n"
                        "Host: example.test\r\n"
                        "x-trace: abc\r\n"
                        "accept: application/json\r\n"
                        "Content-Length: 7\r\n"
                        "\r\n"
                        "{\"a\":1}");
    assert_int_equal(r.conns_in_done, 1);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    result_free(&r);
}


static void test_h1_empty_body_sends_length(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 0);
    result_init(&r, f, "POST", "/empty");
    r.call.body = "";
    r.call.body_len = 0;
    call_and_wait(f, &r);

    assert_int_equal(r.err, 0);
    assert_int_equal(r.call.status, 201);
    assert_int_equal(r.call.body_out.len, 0);
    assert_string_equal(f->server.last_request.data,
                        "POST /empty HTTP/1.1\r\nHost: example.test\r\n"
                        "Content-Length: 0\r\n\r\n");
    result_free(&r);
}


static void test_h1_chunked_reuses_connection(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5;name=value\r\nhello\r\n"
                  "6;ext\r\n world\r\n"
                  "0\r\nX-Checksum: 42\r\nX-Other: x\r\n\r\n",
                  0);
    server_script(&f->server,
                  "HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nmissing",
                  0);

    result_init(&first, f, "GET", "/one");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);
    assert_int_equal(first.call.status, 200);
    assert_string_equal(first.call.body_out.data, "hello world");
    assert_int_equal(h1_pool_connections(f->pool), 1);

    result_init(&second, f, "GET", "/two");
    call_and_wait(f, &second);
    assert_int_equal(second.err, 0);
    assert_int_equal(second.call.status, 404);
    assert_string_equal(second.call.body_out.data, "missing");

    assert_int_equal(f->server.accepted, 1);
    assert_int_equal(f->server.requests, 2);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    result_free(&first);
    result_free(&second);
}


static void test_h1_idle_most_recent_first(void **state)
{
    fixture_t *f = *state;
    result_t a;
    result_t b;
    result_t c;

    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3",
                  0);

    /* Two calls at once need two connections. */
    result_init(&a, f, "GET", "/a");
    result_init(&b, f, "GET", "/b");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);
    assert_int_equal(h1_pool_connections(f->pool), 2);
    run_until(&f->loop, &calls_finished, 2);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_int_equal(f->server.accepted, 2);
    assert_int_equal(h1_pool_connections(f->pool), 2);
    assert_int_not_equal(f->server.request_slots[0],
                         f->server.request_slots[1]);

    /* The connection released last carries the next request. The body
     * of each reply is the 1-based index of its request. */
    const result_t *last = a.done_order == 2 ? &a : &b;
    int last_slot = f->server.request_slots[last->call.body_out.data[0] - '1'];
    result_init(&c, f, "GET", "/c");
    call_and_wait(f, &c);
    assert_int_equal(c.err, 0);
    assert_int_equal(f->server.accepted, 2);
    assert_int_equal(f->server.request_slots[2], last_slot);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}


static void test_h1_close_delimited(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server, "HTTP/1.1 200 OK\r\n\r\nuntil the end", 1);
    result_init(&r, f, "GET", "/stream");
    call_and_wait(f, &r);

    assert_int_equal(r.err, 0);
    assert_int_equal(r.call.status, 200);
    assert_string_equal(r.call.body_out.data, "until the end");
    assert_int_equal(r.conns_in_done, 0);
    assert_int_equal(h1_pool_connections(f->pool), 0);
    result_free(&r);
}


static void test_h1_no_body_responses(void **state)
{
    fixture_t *f = *state;
    result_t r204;
    result_t head;
    result_t r304;
    result_t after;

    /* Content-Length on HEAD and 304 gives the representation's size. No
     * body follows, so the client must not wait for one. */
    server_script(&f->server, "HTTP/1.1 204 No Content\r\n\r\n", 0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                  0);
    server_script(&f->server,
                  "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                  0);

    result_init(&r204, f, "DELETE", "/x");
    call_and_wait(f, &r204);
    assert_int_equal(r204.err, 0);
    assert_int_equal(r204.call.status, 204);
    assert_int_equal(r204.call.body_out.len, 0);

    result_init(&head, f, "HEAD", "/x");
    call_and_wait(f, &head);
    assert_int_equal(head.err, 0);
    assert_int_equal(head.call.status, 200);
    assert_int_equal(head.call.body_out.len, 0);

    result_init(&r304, f, "GET", "/x");
    call_and_wait(f, &r304);
    assert_int_equal(r304.err, 0);
    assert_int_equal(r304.call.status, 304);
    assert_int_equal(r304.call.body_out.len, 0);

    result_init(&after, f, "GET", "/x");
    call_and_wait(f, &after);
    assert_int_equal(after.err, 0);
    assert_string_equal(after.call.body_out.data, "ok");

    assert_int_equal(f->server.accepted, 1);
    result_free(&r204);
    result_free(&head);
    result_free(&r304);
    result_free(&after);
}


static void test_h1_interim_response_skipped(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 100 Continue\r\n\r\n"
                  "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                  "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine",
                  0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, 0);
    assert_int_equal(r.call.status, 200);
    assert_string_equal(r.call.body_out.data, "fine");
    assert_int_equal(h1_pool_connections(f->pool), 1);
    result_free(&r);
}


static void test_h1_truncated_length(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                  1);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_int_equal(r.call.status, 200);
    assert_string_equal(r.call.errmsg, "response body truncated: connection "
                                       "closed after 10 of 100 bytes");
    assert_int_equal(h1_pool_connections(f->pool), 0);
    result_free(&r);
}


static void test_h1_truncated_chunked(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "5\r\nhello\r\n",
                  1);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg, "chunked response body truncated: "
                                       "connection closed after 5 bytes");
    assert_int_equal(h1_pool_connections(f->pool), 0);
    result_free(&r);
}


static void test_h1_closed_before_response(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server, NULL, 1);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_RESET);
    assert_int_equal(r.call.status, 0);
    assert_string_equal(r.call.errmsg, "connection closed before the response");
    assert_int_equal(h1_pool_connections(f->pool), 0);
    result_free(&r);
}


static void test_h1_invalid_response(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server, "SMTP ready\r\n\r\n", 0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg,
                        "invalid HTTP response: invalid constant string");
    assert_int_equal(h1_pool_connections(f->pool), 0);
    run_until(&f->loop, &f->server.eofs, 1);
    result_free(&r);
}


static void on_closed_probe(uv_handle_t *handle)
{
    int *closed = handle->data;
    *closed = 1;
}


static void test_h1_connection_refused(void **state)
{
    fixture_t *f = *state;
    uv_tcp_t probe;
    struct sockaddr_in addr;
    int len = sizeof(addr);
    int closed = 0;
    char expected[160];
    result_t r;

    /* A port that was just bound and released has no listener. */
    assert_int_equal(uv_tcp_init(&f->loop, &probe), 0);
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    assert_int_equal(uv_tcp_bind(&probe, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_tcp_getsockname(&probe, (struct sockaddr *)&addr, &len),
                     0);
    probe.data = &closed;
    uv_close((uv_handle_t *)&probe, on_closed_probe);
    run_until(&f->loop, &closed, 1);

    h1_pool_t *pool =
        h1_pool_new(&f->loop, (const struct sockaddr *)&addr, NULL);
    assert_non_null(pool);
    result_init(&r, f, "GET", "/");
    r.pool = pool;
    assert_int_equal(h1_pool_submit(pool, &r.call), 0);
    assert_int_equal(r.call.phase, UPCALL_CONNECTING);
    assert_int_equal(h1_pool_connections(pool), 1);
    run_until(&f->loop, &r.done, 1);

    assert_int_equal(r.err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d failed: connection refused",
             ntohs(addr.sin_port));
    assert_string_equal(r.call.errmsg, expected);
    assert_int_equal(r.call.status, 0);
    assert_int_equal(h1_pool_connections(pool), 0);
    h1_pool_close(pool);
    result_free(&r);
}


static void test_h1_idle_close_reconnects(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
                  0);

    result_init(&first, f, "GET", "/");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);
    assert_int_equal(h1_pool_connections(f->pool), 1);

    /* The server drops the idle connection; the pool notices the EOF. */
    server_close_conns(&f->server);
    run_until_no_connections(&f->loop, f->pool);

    result_init(&second, f, "GET", "/");
    call_and_wait(f, &second);
    assert_int_equal(second.err, 0);
    assert_string_equal(second.call.body_out.data, "b");
    assert_int_equal(f->server.accepted, 2);
    result_free(&first);
    result_free(&second);
}


static void test_h1_connection_close_honoured(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    /* The server keeps its side open: the client must close by itself. */
    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                  "Connection: close\r\n\r\nok",
                  0);
    server_script(&f->server, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                  0);

    result_init(&first, f, "GET", "/");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);
    assert_int_equal(first.conns_in_done, 0);
    run_until(&f->loop, &f->server.eofs, 1);

    result_init(&second, f, "GET", "/");
    call_and_wait(f, &second);
    assert_int_equal(second.err, 0);
    assert_int_equal(second.conns_in_done, 0);
    run_until(&f->loop, &f->server.eofs, 2);
    assert_int_equal(f->server.accepted, 2);
    result_free(&first);
    result_free(&second);
}


static void test_h1_oversized_body(void **state)
{
    fixture_t *f = *state;
    result_t by_length;
    result_t by_chunks;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 0);
    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
                  0);

    result_init(&by_length, f, "GET", "/");
    by_length.call.max_body = 4;
    call_and_wait(f, &by_length);
    assert_int_equal(by_length.err, TE_BAD_RESPONSE);
    assert_string_equal(by_length.call.errmsg,
                        "response body larger than the max_response_body_bytes "
                        "limit of 4 bytes "
                        "(Content-Length: 10)");
    assert_int_equal(by_length.conns_in_done, 0);

    result_init(&by_chunks, f, "GET", "/");
    by_chunks.call.max_body = 4;
    call_and_wait(f, &by_chunks);
    assert_int_equal(by_chunks.err, TE_BAD_RESPONSE);
    assert_string_equal(by_chunks.call.errmsg,
                        "response body larger than the max_response_body_bytes "
                        "limit of 4 bytes");
    assert_int_equal(by_chunks.conns_in_done, 0);
    assert_int_equal(f->server.accepted, 2);
    result_free(&by_length);
    result_free(&by_chunks);
}


static void test_h1_cancel_while_waiting(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server, NULL, 0);
    result_init(&r, f, "GET", "/slow");
    assert_int_equal(h1_pool_submit(f->pool, &r.call), 0);
    run_until(&f->loop, &f->server.requests, 1);
    assert_int_equal(r.call.phase, UPCALL_WAITING);

    h1_pool_cancel(f->pool, &r.call);
    assert_int_equal(r.call.phase, UPCALL_CANCELLED);
    assert_int_equal(h1_pool_connections(f->pool), 0);
    run_until(&f->loop, &f->server.eofs, 1);
    assert_int_equal(r.done, 0);
    result_free(&r);
}


static void test_h1_cancel_while_connecting(void **state)
{
    fixture_t *f = *state;
    result_t r;

    result_init(&r, f, "GET", "/");
    assert_int_equal(h1_pool_submit(f->pool, &r.call), 0);
    assert_int_equal(r.call.phase, UPCALL_CONNECTING);
    h1_pool_cancel(f->pool, &r.call);
    assert_int_equal(h1_pool_connections(f->pool), 0);
    /* Give the aborted connect time to settle; on_done must stay silent. */
    run_for(&f->loop, 50);
    assert_int_equal(r.done, 0);
    assert_int_equal(f->server.requests, 0);
    result_free(&r);
}


static void test_h1_close_while_busy(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server, NULL, 0);
    result_init(&r, f, "GET", "/slow");
    assert_int_equal(h1_pool_submit(f->pool, &r.call), 0);
    run_until(&f->loop, &f->server.requests, 1);

    h1_pool_close(f->pool);
    f->pool = NULL;
    assert_int_equal(r.call.phase, UPCALL_CANCELLED);
    run_until(&f->loop, &f->server.eofs, 1);
    assert_int_equal(r.done, 0);
    result_free(&r);
}


/* Replaces the fixture's pool with one built from |opts|. */
static void use_pool_options(fixture_t *f, const pool_options_t *opts)
{
    h1_pool_close(f->pool);
    f->pool = h1_pool_new(&f->loop, (const struct sockaddr *)&f->addr, opts);
    assert_non_null(f->pool);
}


static void test_h1_queue_fifo_at_cap(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.max_connections = 1};
    result_t a;
    result_t b;
    result_t c;

    use_pool_options(f, &opts);
    /* The pool keeps its own copy of the options. */
    opts.max_connections = 10;
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3",
                  0);
    result_init(&a, f, "GET", "/a");
    result_init(&b, f, "GET", "/b");
    result_init(&c, f, "GET", "/c");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &c.call), 0);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    assert_int_equal(b.call.phase, UPCALL_CONNECTING);
    assert_int_equal(c.call.phase, UPCALL_CONNECTING);

    run_until(&f->loop, &calls_finished, 3);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_int_equal(c.err, 0);
    assert_int_equal(a.done_order, 1);
    assert_int_equal(b.done_order, 2);
    assert_int_equal(c.done_order, 3);
    assert_string_equal(a.call.body_out.data, "1");
    assert_string_equal(b.call.body_out.data, "2");
    assert_string_equal(c.call.body_out.data, "3");
    assert_int_equal(f->server.accepted, 1);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}


static void test_h1_queue_cancel(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.max_connections = 1};
    result_t a;
    result_t b;
    result_t c;

    use_pool_options(f, &opts);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
                  0);
    result_init(&a, f, "GET", "/a");
    result_init(&b, f, "GET", "/b");
    result_init(&c, f, "GET", "/c");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &c.call), 0);
    h1_pool_cancel(f->pool, &b.call);
    assert_int_equal(b.call.phase, UPCALL_CANCELLED);
    assert_int_equal(h1_pool_connections(f->pool), 1);

    run_until(&f->loop, &calls_finished, 2);
    assert_int_equal(a.err, 0);
    assert_int_equal(c.err, 0);
    assert_string_equal(c.call.body_out.data, "2");
    run_for(&f->loop, 20);
    assert_int_equal(b.done, 0);
    assert_int_equal(f->server.requests, 2);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}


static void test_h1_queue_after_close(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.max_connections = 1};
    result_t a;
    result_t b;

    use_pool_options(f, &opts);
    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                  "Connection: close\r\n\r\n1",
                  0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
                  0);
    result_init(&a, f, "GET", "/a");
    result_init(&b, f, "GET", "/b");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);

    /* The first connection closes after its response, so the waiting
     * call gets a new one. */
    run_until(&f->loop, &calls_finished, 2);
    assert_int_equal(a.err, 0);
    assert_int_equal(b.err, 0);
    assert_string_equal(b.call.body_out.data, "2");
    assert_int_equal(a.conns_in_done, 1);
    assert_int_equal(f->server.accepted, 2);
    result_free(&a);
    result_free(&b);
}


static void test_h1_queue_after_cancel(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.max_connections = 1};
    result_t a;
    result_t b;

    use_pool_options(f, &opts);
    server_script(&f->server, NULL, 0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
                  0);
    result_init(&a, f, "GET", "/slow");
    result_init(&b, f, "GET", "/b");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);
    run_until(&f->loop, &f->server.requests, 1);

    h1_pool_cancel(f->pool, &a.call);
    assert_int_equal(b.call.phase, UPCALL_CONNECTING);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    run_until(&f->loop, &b.done, 1);
    assert_int_equal(b.err, 0);
    assert_string_equal(b.call.body_out.data, "2");
    assert_int_equal(a.done, 0);
    assert_int_equal(f->server.accepted, 2);
    result_free(&a);
    result_free(&b);
}


/* Opens a listener whose accept queue is full, so that a further connect
 * gets no answer to its SYN (Linux drops it). Returns the socket, which
 * the caller closes, and fills in its address. */
static int open_full_listener(fixture_t *f, struct sockaddr_in *addr,
                              result_t *filler)
{
    socklen_t len = sizeof(*addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, addr), 0);
    assert_int_equal(bind(fd, (struct sockaddr *)addr, sizeof(*addr)), 0);
    assert_int_equal(listen(fd, 0), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);

    /* With a backlog of 0 the queue has room for one connection, which
     * is never accepted, so the filler's request waits forever. */
    h1_pool_close(f->pool);
    f->pool = h1_pool_new(&f->loop, (const struct sockaddr *)addr, NULL);
    assert_non_null(f->pool);
    result_init(filler, f, "GET", "/filler");
    assert_int_equal(h1_pool_submit(f->pool, &filler->call), 0);
    uint64_t deadline = uv_now(&f->loop) + WAIT_MS;
    while (filler->call.phase != UPCALL_WAITING &&
           uv_now(&f->loop) < deadline) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(&f->loop);
    }
    assert_int_equal(filler->call.phase, UPCALL_WAITING);
    return fd;
}


static void test_h1_connect_timeout(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.connect_timeout_ms = 100};
    struct sockaddr_in addr;
    result_t filler;
    result_t r;
    char expected[160];

    int fd = open_full_listener(f, &addr, &filler);
    h1_pool_t *pool =
        h1_pool_new(&f->loop, (const struct sockaddr *)&addr, &opts);
    assert_non_null(pool);
    result_init(&r, f, "GET", "/");
    r.pool = pool;
    uint64_t start = uv_hrtime();
    assert_int_equal(h1_pool_submit(pool, &r.call), 0);
    run_until(&f->loop, &r.done, 1);
    uint64_t elapsed_ms = (uv_hrtime() - start) / 1000000;

    assert_int_equal(r.err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d timed out after 100 ms",
             ntohs(addr.sin_port));
    assert_string_equal(r.call.errmsg, expected);
    assert_true(elapsed_ms >= 95);
    assert_true(elapsed_ms < 1000);
    assert_int_equal(h1_pool_connections(pool), 0);
    assert_int_equal(filler.done, 0);
    h1_pool_close(pool);
    /* The filler call lives on this stack frame. */
    h1_pool_close(f->pool);
    f->pool = NULL;
    close(fd);
    result_free(&r);
    result_free(&filler);
}


static void test_h1_connect_timeout_clipped(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.connect_timeout_ms = 5000};
    struct sockaddr_in addr;
    result_t filler;
    result_t r;
    char prefix[160];

    int fd = open_full_listener(f, &addr, &filler);
    h1_pool_t *pool =
        h1_pool_new(&f->loop, (const struct sockaddr *)&addr, &opts);
    assert_non_null(pool);
    result_init(&r, f, "GET", "/");
    r.pool = pool;
    r.call.deadline_ns = uv_hrtime() + 80 * 1000000ull;
    assert_int_equal(h1_pool_submit(pool, &r.call), 0);
    run_until(&f->loop, &r.done, 1);

    assert_int_equal(r.err, TE_CONNECT);
    int n = snprintf(prefix, sizeof(prefix),
                     "connect to 127.0.0.1:%d timed out after ",
                     ntohs(addr.sin_port));
    assert_memory_equal(r.call.errmsg, prefix, (size_t)n);
    unsigned long ms = strtoul(r.call.errmsg + n, NULL, 10);
    assert_true(ms >= 1);
    assert_true(ms <= 80);
    h1_pool_close(pool);
    /* The filler call lives on this stack frame. */
    h1_pool_close(f->pool);
    f->pool = NULL;
    close(fd);
    result_free(&r);
    result_free(&filler);
}


static void test_h1_stale_connection_retried(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    /* The server closes the kept-alive connection as the second request
     * arrives, without answering it. */
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    server_script(&f->server, NULL, 1);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
                  0);
    result_init(&first, f, "GET", "/");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);

    result_init(&second, f, "GET", "/");
    call_and_wait(f, &second);
    assert_int_equal(second.err, 0);
    assert_int_equal(second.call.status, 200);
    assert_string_equal(second.call.body_out.data, "b");
    assert_int_equal(f->server.accepted, 2);
    assert_int_equal(f->server.requests, 3);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    result_free(&first);
    result_free(&second);
}


static void test_h1_stale_reset_retried(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    server_script_reset(&f->server);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
                  0);
    result_init(&first, f, "GET", "/");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);

    result_init(&second, f, "DELETE", "/x");
    call_and_wait(f, &second);
    assert_int_equal(second.err, 0);
    assert_string_equal(second.call.body_out.data, "b");
    assert_int_equal(f->server.accepted, 2);
    result_free(&first);
    result_free(&second);
}


static void test_h1_stale_post_not_retried(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    server_script(&f->server, NULL, 1);
    result_init(&first, f, "POST", "/");
    first.call.body = "x";
    first.call.body_len = 1;
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);

    /* The server may have acted on the request, so it is not repeated. */
    result_init(&second, f, "POST", "/");
    second.call.body = "y";
    second.call.body_len = 1;
    call_and_wait(f, &second);
    assert_int_equal(second.err, TE_RESET);
    assert_string_equal(second.call.errmsg,
                        "connection closed before the response");
    assert_int_equal(f->server.accepted, 1);
    assert_int_equal(f->server.requests, 2);
    result_free(&first);
    result_free(&second);
}


static void test_h1_stale_retry_only_once(void **state)
{
    fixture_t *f = *state;
    result_t first;
    result_t second;

    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    server_script(&f->server, NULL, 1);
    server_script(&f->server, NULL, 1);
    result_init(&first, f, "GET", "/");
    call_and_wait(f, &first);
    assert_int_equal(first.err, 0);

    result_init(&second, f, "GET", "/");
    call_and_wait(f, &second);
    assert_int_equal(second.err, TE_RESET);
    assert_string_equal(second.call.errmsg,
                        "connection closed before the response");
    assert_int_equal(f->server.accepted, 2);
    assert_int_equal(f->server.requests, 3);
    assert_int_equal(h1_pool_connections(f->pool), 0);
    result_free(&first);
    result_free(&second);
}


static void test_h1_idle_timeout(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.idle_timeout_ms = 100};
    result_t r;

    use_pool_options(f, &opts);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
                  0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(h1_pool_connections(f->pool), 1);

    uint64_t start = uv_now(&f->loop);
    run_until_no_connections(&f->loop, f->pool);
    uint64_t elapsed_ms = uv_now(&f->loop) - start;
    assert_true(elapsed_ms >= 90);
    assert_true(elapsed_ms < 1000);
    run_until(&f->loop, &f->server.eofs, 1);
    result_free(&r);
}


static void test_h1_keep_alive_timeout_field(void **state)
{
    fixture_t *f = *state;
    result_t r;

    /* A 1 s server timeout leaves the pool half of it. */
    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                  "Keep-Alive: max=100, timeout=1\r\n\r\na",
                  0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.conns_in_done, 1);

    uint64_t start = uv_now(&f->loop);
    run_for(&f->loop, 300);
    assert_int_equal(h1_pool_connections(f->pool), 1);
    run_until_no_connections(&f->loop, f->pool);
    uint64_t elapsed_ms = uv_now(&f->loop) - start;
    assert_true(elapsed_ms >= 490);
    assert_true(elapsed_ms < 900);
    result_free(&r);
}


static void test_h1_keep_alive_timeout_zero(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                  "keep-alive: Timeout = \"0\"\r\n\r\na",
                  0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.conns_in_done, 0);
    run_until(&f->loop, &f->server.eofs, 1);
    result_free(&r);
}


static void test_h1_header_section_limit(void **state)
{
    fixture_t *f = *state;
    buf_t reply = {0};
    result_t r;

    /* 70 fields of about 1000 bytes: over 64 KiB, under the 80 KiB that
     * http_parser enforces by itself. */
    assert_int_equal(buf_append_str(&reply, "HTTP/1.1 200 OK\r\n"), 0);
    for (int i = 0; i < 70; i++) {
        assert_int_equal(buf_appendf(&reply, "X-Fill-%02d: ", i), 0);
        for (int j = 0; j < 100; j++) {
            assert_int_equal(buf_append_str(&reply, "0123456789"), 0);
        }
        assert_int_equal(buf_append_str(&reply, "\r\n"), 0);
    }
    assert_int_equal(buf_append_str(&reply, "Content-Length: 0\r\n\r\n"), 0);
    server_script(&f->server, reply.data, 0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg,
                        "response headers larger than 65536 bytes");
    assert_int_equal(r.conns_in_done, 0);
    buf_free(&reply);
    result_free(&r);
}


static void test_h1_trailer_section_limit(void **state)
{
    fixture_t *f = *state;
    buf_t reply = {0};
    result_t r;

    assert_int_equal(buf_append_str(&reply, "HTTP/1.1 200 OK\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n"
                                            "1\r\na\r\n0\r\n"),
                     0);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(buf_appendf(&reply, "X-Trailer-%d: ", i), 0);
        for (int j = 0; j < 100; j++) {
            assert_int_equal(buf_append_str(&reply, "0123456789"), 0);
        }
        assert_int_equal(buf_append_str(&reply, "\r\n"), 0);
    }
    assert_int_equal(buf_append_str(&reply, "\r\n"), 0);
    server_script(&f->server, reply.data, 0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg,
                        "response trailers larger than 8192 bytes");
    assert_int_equal(r.conns_in_done, 0);
    buf_free(&reply);
    result_free(&r);
}


static void test_h1_length_and_chunked_rejected(void **state)
{
    fixture_t *f = *state;
    result_t r;

    /* Both framings at once may be a response-splitting attempt. */
    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                  0);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg,
                        "invalid HTTP response: unexpected content-length "
                        "header");
    assert_int_equal(r.conns_in_done, 0);
    result_free(&r);
}


static void test_h1_truncated_mid_chunk(void **state)
{
    fixture_t *f = *state;
    result_t r;

    server_script(&f->server,
                  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "a;ext=1\r\nhel",
                  1);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_BAD_RESPONSE);
    assert_string_equal(r.call.errmsg, "chunked response body truncated: "
                                       "connection closed after 3 bytes");
    assert_int_equal(r.conns_in_done, 0);
    result_free(&r);
}


static void test_h1_caller_framing_fields_dropped(void **state)
{
    fixture_t *f = *state;
    static const upcall_header_t headers[] = {
        {"host", "other.test"},    {"Content-Length", "99"},
        {"connection", "upgrade"}, {"transfer-encoding", "chunked"},
        {"x-kept", "1"},
    };
    result_t r;

    server_script(&f->server, "HTTP/1.1 204 No Content\r\n\r\n", 0);
    result_init(&r, f, "PUT", "/x");
    r.call.headers = headers;
    r.call.nheaders = 5;
    r.call.body = "abc";
    r.call.body_len = 3;
    call_and_wait(f, &r);

    assert_int_equal(r.err, 0);
    assert_string_equal(f->server.last_request.data, "PUT /x HTTP/1.1\r\n"
                                                     "Host: example.test\r\n"
                                                     "x-kept: 1\r\n"
                                                     "Content-Length: 3\r\n"
                                                     "\r\n"
                                                     "abc");
    result_free(&r);
}


/* The reply to the call that follows a case in the tests below. */
static const char after_reply[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter";


/* Runs a |method| call and checks that it succeeded with |status| and
 * |body|. */
static void call_expecting(fixture_t *f, result_t *r, const char *method,
                           int status, const char *body)
{
    result_init(r, f, method, "/x");
    call_and_wait(f, r);
    assert_int_equal(r->err, 0);
    assert_int_equal(r->call.status, status);
    assert_int_equal(r->call.body_out.len, strlen(body));
    if (r->call.body_out.len > 0) {
        assert_string_equal(r->call.body_out.data, body);
    }
}


/* Runs a GET, checks that it got after_reply on a new connection, the
 * |accepted|-th of the server, then closes every connection so that the
 * next case starts on a new one. */
static void call_after_on_new_connection(fixture_t *f, int accepted)
{
    result_t after;

    result_init(&after, f, "GET", "/after");
    call_and_wait(f, &after);
    assert_int_equal(after.err, 0);
    assert_int_equal(after.call.status, 200);
    assert_string_equal(after.call.body_out.data, "after");
    assert_int_equal(f->server.accepted, accepted);
    result_free(&after);
    server_close_conns(&f->server);
    run_until_no_connections(&f->loop, f->pool);
}


static void test_h1_unrequested_bytes_close_idle(void **state)
{
    fixture_t *f = *state;
    /* Bytes that reach the idle connection after the call has ended. */
    static const struct {
        const char *method;
        const char *reply;
        const char *unrequested;
        const char *body;
    } cases[] = {
        /* A server that responds to the first request twice. */
        {"GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
         "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected", "first"},
        /* Content-Length on a HEAD response gives the size a GET would
         * get, so the response ends with its header section. The server
         * sends that body after all. */
        {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
         "{\"ok\":true}", ""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        result_t r;

        server_script(&f->server, cases[i].reply, 0);
        server_script(&f->server, after_reply, 0);
        call_expecting(f, &r, cases[i].method, 200, cases[i].body);
        assert_int_equal(h1_pool_connections(f->pool), 1);

        server_send_unrequested(&f->server, cases[i].unrequested);
        run_until_no_connections(&f->loop, f->pool);
        run_until(&f->loop, &f->server.eofs, (int)i + 1);

        call_after_on_new_connection(f, (int)(i + 1) * 2);
        result_free(&r);
    }
}


static void test_h1_bytes_after_response_close(void **state)
{
    fixture_t *f = *state;
    /* Each reply is one write, so the client reads the response and the
     * bytes after it together. */
    static const struct {
        const char *method;
        const char *reply;
        int status;
        const char *body;
    } cases[] = {
        {"GET",
         "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
         "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected",
         200, "first"},
        {"GET",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5\r\nfirst\r\n0\r\n\r\nx",
         200, "first"},
        {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
         200, ""},
        {"DELETE", "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}",
         204, ""},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        result_t r;

        server_script(&f->server, cases[i].reply, 0);
        server_script(&f->server, after_reply, 0);
        call_expecting(f, &r, cases[i].method, cases[i].status, cases[i].body);
        /* Closed before on_done, so no call can be sent on it. */
        assert_int_equal(r.conns_in_done, 0);

        call_after_on_new_connection(f, (int)(i + 1) * 2);
        result_free(&r);
    }
}


/* The transport reads at most this many bytes at a time (READ_SIZE in
 * clients/transport.c). After a read that fills the buffer, libuv reads
 * the socket again before the loop goes on. */
#define TRANSPORT_READ_SIZE 65536

static void test_h1_bytes_after_full_read_close(void **state)
{
    fixture_t *f = *state;
    pool_options_t opts = {.max_connections = 1};
    static const char injected[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected";
    static char reply[TRANSPORT_READ_SIZE + sizeof(injected)];
    result_t a;
    result_t b;

    /* A response of exactly one read buffer, and in the same write a
     * response that no request asked for. The client reads them in two
     * reads of one read phase, so the first read ends exactly with the
     * response. */
    int head_len =
        snprintf(reply, sizeof(reply),
                 "HTTP/1.1 200 OK\r\nContent-Length: %5d\r\n\r\n", 0);
    size_t body_len = TRANSPORT_READ_SIZE - (size_t)head_len;
    assert_int_equal(snprintf(reply, sizeof(reply),
                              "HTTP/1.1 200 OK\r\nContent-Length: %5zu\r\n\r\n",
                              body_len),
                     head_len);
    memset(reply + head_len, 'a', body_len);
    memcpy(reply + TRANSPORT_READ_SIZE, injected, sizeof(injected));

    use_pool_options(f, &opts);
    server_script(&f->server, reply, 0);
    server_script(&f->server, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
                  0);
    result_init(&a, f, "GET", "/a");
    result_init(&b, f, "GET", "/b");
    assert_int_equal(h1_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h1_pool_submit(f->pool, &b.call), 0);
    assert_int_equal(b.call.phase, UPCALL_CONNECTING);

    /* |b| waits in the queue while |a|'s connection is open. It must not
     * be sent on that connection before the second read, or it would take
     * the injected response for its own. */
    run_until(&f->loop, &calls_finished, 2);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.call.body_out.len, body_len);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.call.status, 200);
    assert_string_equal(b.call.body_out.data, "b");
    assert_int_equal(f->server.accepted, 2);
    result_free(&a);
    result_free(&b);
}


static void test_h1_tls_handshake_timeout(void **state)
{
    fixture_t *f = *state;
    tls_options_t tls_opts = {
        .verify = true,
        .alpn = "http/1.1",
    };
    tls_context_t *tls = NULL;
    char err[256] = "";
    char expected[160];
    result_t r;

    /* The scripted server speaks plain HTTP and never answers the
     * ClientHello, so the handshake runs into the connect timeout. The
     * timeout is generous so that a loaded machine still completes the
     * TCP connect itself in time. */
    assert_int_equal(tls_context_new(&tls_opts, &tls, err, sizeof(err)), 0);
    pool_options_t opts = {
        .connect_timeout_ms = 400,
        .tls = tls,
        .server_name = "example.test",
    };
    use_pool_options(f, &opts);
    result_init(&r, f, "GET", "/");
    call_and_wait(f, &r);

    assert_int_equal(r.err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "TLS handshake with example.test (127.0.0.1:%d) timed out "
             "after 400 ms",
             f->server.port);
    assert_string_equal(r.call.errmsg, expected);
    assert_int_equal(f->server.requests, 0);
    assert_int_equal(h1_pool_connections(f->pool), 0);
    h1_pool_close(f->pool);
    f->pool = NULL;
    /* The context must outlive the pool's connections. */
    run_until(&f->loop, &f->server.eofs, 1);
    tls_context_free(tls);
    result_free(&r);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_h1_content_length, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_empty_body_sends_length, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_chunked_reuses_connection,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_idle_most_recent_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_close_delimited, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_no_body_responses, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_interim_response_skipped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_truncated_length, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_truncated_chunked, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_closed_before_response, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_invalid_response, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_connection_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_idle_close_reconnects, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_connection_close_honoured,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_oversized_body, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_cancel_while_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_cancel_while_connecting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_close_while_busy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_queue_fifo_at_cap, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_queue_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_queue_after_close, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_queue_after_cancel, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_connect_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_connect_timeout_clipped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_stale_connection_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_stale_reset_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_stale_post_not_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_stale_retry_only_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_keep_alive_timeout_field, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_keep_alive_timeout_zero, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_header_section_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_trailer_section_limit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_length_and_chunked_rejected,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_truncated_mid_chunk, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_caller_framing_fields_dropped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_unrequested_bytes_close_idle,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_bytes_after_response_close,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_bytes_after_full_read_close,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_tls_handshake_timeout, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
