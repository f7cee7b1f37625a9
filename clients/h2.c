/* HTTP/2 cleartext client (h2c with prior knowledge) on libuv and nghttp2.
 *
 * Ownership in short: a pool owns its connections, each connection embeds
 * its uv_tcp_t and is freed only in the close callback. Every submitted
 * call gets an h2_stream_t, which nghttp2 also stores as stream user data.
 * Results are never reported from inside nghttp2 or from inside the public
 * functions: a finished stream goes on the pool's finished list, and
 * pool_deliver() calls on_done at the end of a libuv callback (or from a
 * zero-delay timer when the call finished inside h2_pool_submit or
 * h2_pool_cancel). So on_done may submit or cancel calls on the same pool,
 * and nghttp2_session_mem_recv/mem_send never run inside one another. */
#include "h2.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "errors.h"
#include "sockaddr.h"

/* Receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE) and for the
 * whole connection. The RFC 9113 default of 65535 bytes would cap a
 * download at one window per round trip. */
#define H2_STREAM_WINDOW (1 << 20)
#define H2_CONNECTION_WINDOW (16 << 20)

/* nghttp2 output gathered while a write is in flight. Beyond this, frames
 * stay queued inside nghttp2 until the write completes, which bounds memory
 * for large request bodies. */
#define H2_MAX_PENDING_OUTPUT (256 * 1024)

#define H2_READ_BUFFER_SIZE (64 * 1024)

typedef struct h2_conn_s h2_conn_t;
typedef struct h2_stream_s h2_stream_t;

typedef enum {
    STREAM_QUEUED,   /* in conn->queued, waiting for the TCP connection */
    STREAM_OPEN,     /* submitted to nghttp2, result not known yet */
    STREAM_FINISHED, /* in pool->finished, on_done not called yet */
    STREAM_DETACHED, /* delivered or cancelled; no call attached */
} stream_state_t;

/* One submitted call. It is freed once it is detached and nghttp2 no longer
 * refers to it (in_session == 0), see stream_release(). */
struct h2_stream_s {
    upcall_t *call; /* NULL once detached */
    h2_pool_t *pool;
    h2_conn_t *conn; /* valid while queued or open */
    stream_state_t state;
    int in_session;    /* nghttp2 has this as stream user data */
    int remote_ended;  /* END_STREAM received from the server */
    int reset_by_peer; /* RST_STREAM received from the server */
    int32_t id;
    int err; /* result for on_done while finished */
    /* Request body, copied from the call so that the data source callback
     * never follows a call pointer after cancel. */
    const char *body;
    size_t body_len;
    size_t body_sent;
    h2_stream_t *prev; /* links in conn->queued or pool->finished */
    h2_stream_t *next;
    h2_stream_t *session_prev; /* links in conn->streams while in_session */
    h2_stream_t *session_next;
};

typedef struct {
    h2_stream_t *head;
    h2_stream_t *tail;
} stream_list_t;

struct h2_conn_s {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    h2_pool_t *pool;
    nghttp2_session *session; /* NULL until connected */
    h2_conn_t *prev;          /* links in pool->conns */
    h2_conn_t *next;
    stream_list_t queued;
    h2_stream_t *streams; /* streams stored as nghttp2 stream user data */
    buf_t writing;        /* bytes handed to uv_write */
    buf_t pending;        /* output gathered while writing is busy */
    int write_busy;
    int connected;
    int closing;  /* uv_close was called */
    int draining; /* takes no new streams, closes when idle */
    int goaway_received;
    uint32_t goaway_error;
    int goaway_sent;
    uint32_t goaway_sent_error;
    int err; /* result for streams still open when the handle closes */
    char errmsg[sizeof(((upcall_t *)0)->errmsg)];
    char read_buf[H2_READ_BUFFER_SIZE];
};

struct h2_pool_s {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char endpoint[sizeof(((upcall_t *)0)->endpoint)];
    uv_timer_t deliver_timer;
    h2_conn_t *current; /* connection for new streams, NULL if none */
    h2_conn_t *conns;   /* every connection, including draining ones */
    size_t handles;     /* open libuv handles: the timer and conns */
    stream_list_t finished;
    int closing;
};


static void list_push(stream_list_t *list, h2_stream_t *st)
{
    st->prev = list->tail;
    st->next = NULL;
    if (list->tail != NULL) {
        list->tail->next = st;
    } else {
        list->head = st;
    }
    list->tail = st;
}


static void list_remove(stream_list_t *list, h2_stream_t *st)
{
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        list->head = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    } else {
        list->tail = st->prev;
    }
    st->prev = NULL;
    st->next = NULL;
}


static void session_link(h2_conn_t *conn, h2_stream_t *st)
{
    st->session_prev = NULL;
    st->session_next = conn->streams;
    if (conn->streams != NULL) {
        conn->streams->session_prev = st;
    }
    conn->streams = st;
    st->in_session = 1;
}


static void session_unlink(h2_conn_t *conn, h2_stream_t *st)
{
    if (st->session_prev != NULL) {
        st->session_prev->session_next = st->session_next;
    } else {
        conn->streams = st->session_next;
    }
    if (st->session_next != NULL) {
        st->session_next->session_prev = st->session_prev;
    }
    st->session_prev = NULL;
    st->session_next = NULL;
    st->in_session = 0;
}


/* Frees |st| if neither a call nor nghttp2 refers to it any more. */
static void stream_release(h2_stream_t *st)
{
    if (st->state == STREAM_DETACHED && !st->in_session) {
        free(st);
    }
}


static void on_deliver_timer(uv_timer_t *timer);


/* Stores the result of a queued or open stream and schedules on_done.
 * |fmt| may be NULL for success. */
static void stream_finish(h2_stream_t *st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void stream_finish(h2_stream_t *st, int err, const char *fmt, ...)
{
    h2_pool_t *pool = st->pool;
    upcall_t *call = st->call;

    if (st->state == STREAM_QUEUED) {
        list_remove(&st->conn->queued, st);
    }
    st->state = STREAM_FINISHED;
    st->conn = NULL;
    st->err = err;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(call->errmsg, sizeof(call->errmsg), fmt, ap);
        va_end(ap);
    } else {
        call->errmsg[0] = '\0';
    }
    list_push(&pool->finished, st);
    if (!pool->closing) {
        uv_timer_start(&pool->deliver_timer, on_deliver_timer, 0, 0);
    }
}


/* Calls on_done for every finished stream. Runs only at the end of libuv
 * callbacks, never inside nghttp2 or a public function. */
static void pool_deliver(h2_pool_t *pool)
{
    for (;;) {
        /* on_done may close the pool: the calls left are then dropped. */
        if (pool->closing) {
            return;
        }
        h2_stream_t *st = pool->finished.head;
        if (st == NULL) {
            break;
        }
        list_remove(&pool->finished, st);
        upcall_t *call = st->call;
        int err = st->err;
        st->call = NULL;
        st->state = STREAM_DETACHED;
        stream_release(st);
        call->pool_conn = NULL;
        call->phase = UPCALL_DONE;
        call->on_done(call, err);
    }
    uv_timer_stop(&pool->deliver_timer);
}


/* uv_timer_cb: delivers results that were produced inside h2_pool_submit
 * or h2_pool_cancel. */
static void on_deliver_timer(uv_timer_t *timer)
{
    pool_deliver(timer->data);
}


static void pool_maybe_free(h2_pool_t *pool)
{
    /* h2_pool_close() emptied the finished list, and nothing finishes
     * after it. */
    if (pool->closing && pool->handles == 0) {
        free(pool);
    }
}


/* uv_close_cb for the pool's timer. */
static void on_pool_timer_close(uv_handle_t *handle)
{
    h2_pool_t *pool = handle->data;
    pool->handles--;
    pool_maybe_free(pool);
}


/* Detaches the call of |st|, which then gets no on_done, and frees |st|
 * unless nghttp2 still refers to it. */
static void stream_detach(h2_stream_t *st)
{
    if (st->call != NULL) {
        st->call->pool_conn = NULL;
    }
    st->call = NULL;
    st->state = STREAM_DETACHED;
    stream_release(st);
}


/* uv_close_cb for a connection: fails what is still queued or open with
 * the error stored by conn_close(), then frees the connection. */
static void on_conn_close(uv_handle_t *handle)
{
    h2_conn_t *conn = handle->data;
    h2_pool_t *pool = conn->pool;

    /* nghttp2_session_del() calls no callbacks, so the stream list stays
     * as it is while the session goes. */
    nghttp2_session_del(conn->session);
    conn->session = NULL;

    /* After h2_pool_close() every stream is detached already. */
    while (conn->streams != NULL) {
        h2_stream_t *st = conn->streams;
        session_unlink(conn, st);
        if (st->state == STREAM_OPEN) {
            stream_finish(st, conn->err, "%s", conn->errmsg);
        } else {
            stream_release(st);
        }
    }
    while (conn->queued.head != NULL) {
        stream_finish(conn->queued.head, conn->err, "%s", conn->errmsg);
    }

    if (conn->prev != NULL) {
        conn->prev->next = conn->next;
    } else {
        pool->conns = conn->next;
    }
    if (conn->next != NULL) {
        conn->next->prev = conn->prev;
    }
    buf_free(&conn->writing);
    buf_free(&conn->pending);
    free(conn);

    pool->handles--;
    if (pool->closing) {
        pool_maybe_free(pool);
    } else {
        pool_deliver(pool);
    }
}


/* Closes the connection. Streams still queued or open fail with |err| and
 * the message once the handle is closed, so nothing is freed inside an
 * nghttp2 callback. */
static void conn_close(h2_conn_t *conn, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_close(h2_conn_t *conn, int err, const char *fmt, ...)
{
    if (conn->closing) {
        return;
    }
    conn->closing = 1;
    conn->err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(conn->errmsg, sizeof(conn->errmsg), fmt, ap);
    va_end(ap);
    if (conn->pool->current == conn) {
        conn->pool->current = NULL;
    }
    uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}


/* Closes a connection that has nothing left to do: after a GOAWAY in
 * either direction, nghttp2 wants neither to read nor to write once the
 * remaining streams are done. */
static void conn_close_if_idle(h2_conn_t *conn)
{
    if (conn->closing || conn->session == NULL || conn->write_busy) {
        return;
    }
    int idle = !nghttp2_session_want_read(conn->session) &&
               !nghttp2_session_want_write(conn->session);
    if (conn->draining && conn->streams == NULL && conn->queued.head == NULL) {
        idle = 1;
    }
    if (!idle) {
        return;
    }
    if (conn->goaway_sent) {
        conn_close(conn, TE_RESET, "HTTP/2 connection error, GOAWAY sent: %s",
                   nghttp2_http2_strerror(conn->goaway_sent_error));
    } else {
        conn_close(conn, TE_RESET, "connection closed after GOAWAY: %s",
                   nghttp2_http2_strerror(conn->goaway_error));
    }
}


static void on_write(uv_write_t *req, int status);


/* Moves nghttp2's pending frames into the output buffer and starts a write
 * unless one is in flight; on_write() calls this again. */
static void conn_flush(h2_conn_t *conn)
{
    if (conn->closing || conn->session == NULL) {
        return;
    }
    while (conn->pending.len < H2_MAX_PENDING_OUTPUT) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(conn->session, &data);
        if (n < 0) {
            conn_close(conn, TE_RESET, "HTTP/2 send to %s failed: %s",
                       conn->pool->endpoint, nghttp2_strerror((int)n));
            return;
        }
        if (n == 0) {
            break;
        }
        if (buf_append(&conn->pending, data, (size_t)n) != 0) {
            conn_close(conn, TE_NOMEM, "out of memory for HTTP/2 output");
            return;
        }
    }

    if (!conn->write_busy && conn->pending.len > 0) {
        buf_t swap = conn->writing;
        conn->writing = conn->pending;
        conn->pending = swap;
        uv_buf_t out =
            uv_buf_init(conn->writing.data, (unsigned int)conn->writing.len);
        int rv = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, &out, 1,
                          on_write);
        if (rv != 0) {
            conn_close(conn, TE_RESET, "write to %s failed: %s",
                       conn->pool->endpoint, uv_strerror(rv));
            return;
        }
        conn->write_busy = 1;
    }
    conn_close_if_idle(conn);
}


/* uv_write_cb */
static void on_write(uv_write_t *req, int status)
{
    h2_conn_t *conn = req->data;

    conn->write_busy = 0;
    buf_reset(&conn->writing);
    if (conn->closing) {
        return;
    }
    if (status < 0) {
        conn_close(conn, TE_RESET, "write to %s failed: %s",
                   conn->pool->endpoint, uv_strerror(status));
        return;
    }
    conn_flush(conn);
    pool_deliver(conn->pool);
}


/* uv_alloc_cb: the connection's own buffer is enough because on_read()
 * consumes all of it before the next read. */
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    h2_conn_t *conn = handle->data;
    *buf = uv_buf_init(conn->read_buf, sizeof(conn->read_buf));
}


/* uv_read_cb */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    h2_conn_t *conn = stream->data;
    h2_pool_t *pool = conn->pool;

    if (conn->closing) {
        return;
    }
    if (nread > 0) {
        ssize_t rv = nghttp2_session_mem_recv(
            conn->session, (const uint8_t *)buf->base, (size_t)nread);
        if (rv < 0) {
            conn_close(conn, TE_RESET, "HTTP/2 session with %s failed: %s",
                       pool->endpoint, nghttp2_strerror((int)rv));
        } else {
            conn_flush(conn);
        }
    } else if (nread == UV_EOF) {
        if (conn->goaway_received) {
            conn_close(conn, TE_RESET,
                       "connection closed by server after GOAWAY: %s",
                       nghttp2_http2_strerror(conn->goaway_error));
        } else {
            conn_close(conn, TE_RESET, "connection closed by server");
        }
    } else if (nread < 0) {
        conn_close(conn, TE_RESET, "read from %s failed: %s", pool->endpoint,
                   uv_strerror((int)nread));
    }
    pool_deliver(pool);
}


/* Returns the stream of an nghttp2 stream id, or NULL for streams that were
 * never ours. */
static h2_stream_t *find_stream(nghttp2_session *session, int32_t stream_id)
{
    return nghttp2_session_get_stream_user_data(session, stream_id);
}


/* Resets an open stream with CANCEL and fails its call. Returns 0 or
 * NGHTTP2_ERR_CALLBACK_FAILURE when nghttp2 is out of memory. */
static int stream_abort(nghttp2_session *session, h2_stream_t *st, int err,
                        const char *msg)
{
    int rv = nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id,
                                       NGHTTP2_CANCEL);
    stream_finish(st, err, "%s", msg);
    return rv == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}


/* nghttp2_on_begin_headers_callback */
static int on_begin_headers(nghttp2_session *session,
                            const nghttp2_frame *frame, void *user_data)
{
    h2_stream_t *st = find_stream(session, frame->hd.stream_id);
    if (st != NULL && st->state == STREAM_OPEN) {
        st->call->phase = UPCALL_RECEIVING;
    }
    return 0;
}


/* nghttp2_on_header_callback. Only :status is kept because upcall_t has no
 * room for response header fields. */
static int on_header(nghttp2_session *session, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *user_data)
{
    if (frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    h2_stream_t *st = find_stream(session, frame->hd.stream_id);
    if (st == NULL || st->state != STREAM_OPEN) {
        return 0;
    }
    if (namelen != 7 || memcmp(name, ":status", 7) != 0) {
        return 0;
    }
    int status = 0;
    for (size_t i = 0; i < valuelen; i++) {
        if (valuelen != 3 || value[i] < '0' || value[i] > '9') {
            return 0;
        }
        status = status * 10 + (value[i] - '0');
    }
    /* A 1xx block is informational and another header block follows. */
    if (status >= 200) {
        st->call->status = status;
    }
    return 0;
}


/* nghttp2_on_data_chunk_recv_callback. nghttp2 sends WINDOW_UPDATE for the
 * consumed bytes itself, because automatic window updates are on. */
static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags,
                              int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data)
{
    h2_stream_t *st = find_stream(session, stream_id);
    if (st == NULL || st->state != STREAM_OPEN) {
        return 0;
    }
    upcall_t *call = st->call;
    call->phase = UPCALL_RECEIVING;
    if (len > call->max_body || call->body_out.len > call->max_body - len) {
        char msg[sizeof(call->errmsg)];
        snprintf(msg, sizeof(msg), "response body larger than %zu bytes",
                 call->max_body);
        return stream_abort(session, st, TE_BAD_RESPONSE, msg);
    }
    if (buf_append(&call->body_out, data, len) != 0) {
        return stream_abort(session, st, TE_NOMEM,
                            "out of memory for the response body");
    }
    return 0;
}


/* nghttp2_on_frame_recv_callback */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                         void *user_data)
{
    h2_conn_t *conn = user_data;

    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* nghttp2 closes our streams above last_stream_id with
         * REFUSED_STREAM right after this callback. */
        conn->goaway_received = 1;
        conn->goaway_error = frame->goaway.error_code;
        conn->draining = 1;
        if (conn->pool->current == conn) {
            conn->pool->current = NULL;
        }
        return 0;
    }
    h2_stream_t *st = find_stream(session, frame->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            st->remote_ended = 1;
        }
        break;
    case NGHTTP2_RST_STREAM:
        st->reset_by_peer = 1;
        break;
    default:
        break;
    }
    return 0;
}


/* nghttp2_on_frame_send_callback */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                         void *user_data)
{
    h2_conn_t *conn = user_data;

    if (frame->hd.type == NGHTTP2_GOAWAY) {
        conn->goaway_sent = 1;
        conn->goaway_sent_error = frame->goaway.error_code;
        conn->draining = 1;
        if (conn->pool->current == conn) {
            conn->pool->current = NULL;
        }
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    h2_stream_t *st = find_stream(session, frame->hd.stream_id);
    if (st != NULL && st->state == STREAM_OPEN &&
        st->call->phase == UPCALL_CONNECTING) {
        st->call->phase = UPCALL_WAITING;
    }
    return 0;
}


/* nghttp2_on_stream_close_callback: turns the way the stream ended into
 * the call's result. */
static int on_stream_close(nghttp2_session *session, int32_t stream_id,
                           uint32_t error_code, void *user_data)
{
    h2_conn_t *conn = user_data;
    h2_stream_t *st = find_stream(session, stream_id);
    if (st == NULL) {
        return 0;
    }
    session_unlink(conn, st);
    if (st->state != STREAM_OPEN) {
        stream_release(st);
        return 0;
    }

    const char *code = nghttp2_http2_strerror(error_code);
    if (st->remote_ended && error_code == NGHTTP2_NO_ERROR) {
        stream_finish(st, 0, NULL);
    } else if (st->reset_by_peer) {
        stream_finish(st, TE_RESET, "stream reset by server: %s", code);
    } else if (error_code == NGHTTP2_REFUSED_STREAM && conn->goaway_received) {
        stream_finish(st, TE_RESET, "stream refused after GOAWAY: %s", code);
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        stream_finish(st, TE_RESET, "stream could not be opened: %s", code);
    } else {
        /* nghttp2 reset the stream itself, e.g. on a malformed response. */
        stream_finish(st, TE_BAD_RESPONSE,
                      "invalid response, stream reset by client: %s", code);
    }
    return 0;
}


/* nghttp2_data_source_read_callback for request bodies. */
static ssize_t on_body_read(nghttp2_session *session, int32_t stream_id,
                            uint8_t *buf, size_t length, uint32_t *data_flags,
                            nghttp2_data_source *source, void *user_data)
{
    h2_stream_t *st = source->ptr;

    /* The caller may free the body once the call is cancelled or done. */
    if (st->state != STREAM_OPEN) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    size_t n = st->body_len - st->body_sent;
    if (n > length) {
        n = length;
    }
    if (n > 0) {
        memcpy(buf, st->body + st->body_sent, n);
    }
    st->body_sent += n;
    if (st->body_sent == st->body_len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}


static nghttp2_nv make_nv(const char *name, const char *value)
{
    nghttp2_nv nv;
    nv.name = (uint8_t *)name;
    nv.namelen = strlen(name);
    nv.value = (uint8_t *)value;
    nv.valuelen = strlen(value);
    nv.flags = NGHTTP2_NV_FLAG_NONE;
    return nv;
}


/* Returns whether a caller header must not be forwarded: RFC 9113 section
 * 8.2.2 forbids connection-specific fields, :authority replaces Host, and
 * content-length is computed from the body. */
static int skip_header(const char *name)
{
    static const char *const skipped[] = {
        "connection",       "content-length",    "host",    "keep-alive",
        "proxy-connection", "transfer-encoding", "upgrade",
    };
    if (name[0] == ':') {
        return 1;
    }
    for (size_t i = 0; i < sizeof(skipped) / sizeof(skipped[0]); i++) {
        if (strcmp(name, skipped[i]) == 0) {
            return 1;
        }
    }
    return 0;
}


static int te_from_nghttp2(int rv)
{
    switch (rv) {
    case NGHTTP2_ERR_NOMEM:
        return TE_NOMEM;
    case NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE:
        return TE_RESET;
    default:
        return TE_INVALID;
    }
}


/* Submits the request of |st| to nghttp2. Returns 0 or a TE_* code; on
 * success the stream is open and linked into conn->streams. */
static int conn_start_stream(h2_conn_t *conn, h2_stream_t *st)
{
    upcall_t *call = st->call;
    size_t max_nv = 5 + call->nheaders;
    nghttp2_nv *nva = malloc(max_nv * sizeof(*nva));
    if (nva == NULL) {
        return TE_NOMEM;
    }

    size_t n = 0;
    nva[n++] = make_nv(":method", call->method);
    nva[n++] = make_nv(":path", call->path);
    nva[n++] = make_nv(":scheme", "http");
    nva[n++] = make_nv(":authority", call->authority);
    for (size_t i = 0; i < call->nheaders; i++) {
        const upcall_header_t *h = &call->headers[i];
        if (h->name == NULL || h->value == NULL || skip_header(h->name)) {
            continue;
        }
        nva[n++] = make_nv(h->name, h->value);
    }
    char length[24];
    nghttp2_data_provider provider;
    nghttp2_data_provider *body = NULL;
    if (call->body != NULL) {
        snprintf(length, sizeof(length), "%zu", call->body_len);
        nva[n++] = make_nv("content-length", length);
        st->body = call->body;
        st->body_len = call->body_len;
        st->body_sent = 0;
        provider.source.ptr = st;
        provider.read_callback = on_body_read;
        body = &provider;
    }

    /* nghttp2 copies the name/value pairs, so nva can go at once. */
    int32_t id = nghttp2_submit_request(conn->session, NULL, nva, n, body, st);
    free(nva);
    if (id < 0) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "HTTP/2 request submission failed: %s", nghttp2_strerror(id));
        return te_from_nghttp2(id);
    }
    st->id = id;
    st->state = STREAM_OPEN;
    st->conn = conn;
    call->stream_id = id;
    session_link(conn, st);
    return 0;
}


static int conn_start_session(h2_conn_t *conn)
{
    nghttp2_session_callbacks *callbacks;
    int rv = nghttp2_session_callbacks_new(&callbacks);
    if (rv != 0) {
        return rv;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks,
                                                            on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        callbacks, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks,
                                                         on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks,
                                                           on_stream_close);
    rv = nghttp2_session_client_new(&conn->session, callbacks, conn);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) {
        return rv;
    }

    /* nghttp2 sends the client connection preface before these frames. */
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
    };
    rv = nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, settings,
                                 sizeof(settings) / sizeof(settings[0]));
    if (rv != 0) {
        return rv;
    }
    return nghttp2_session_set_local_window_size(
        conn->session, NGHTTP2_FLAG_NONE, 0, H2_CONNECTION_WINDOW);
}


/* uv_connect_cb: starts the session and submits the queued calls. */
static void on_connect(uv_connect_t *req, int status)
{
    h2_conn_t *conn = req->data;
    h2_pool_t *pool = conn->pool;

    /* Closed meanwhile: status is UV_ECANCELED and on_conn_close follows. */
    if (conn->closing) {
        return;
    }
    if (status < 0) {
        conn_close(conn, TE_CONNECT, "connect to %s failed: %s", pool->endpoint,
                   uv_strerror(status));
        return;
    }
    /* A failure here only costs latency, so it is not fatal. */
    uv_tcp_nodelay(&conn->tcp, 1);

    int rv = conn_start_session(conn);
    if (rv != 0) {
        conn_close(conn, te_from_nghttp2(rv), "HTTP/2 session setup failed: %s",
                   nghttp2_strerror(rv));
        return;
    }
    conn->connected = 1;
    rv = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    if (rv != 0) {
        conn_close(conn, TE_RESET, "read from %s failed: %s", pool->endpoint,
                   uv_strerror(rv));
        return;
    }

    while (conn->queued.head != NULL) {
        h2_stream_t *st = conn->queued.head;
        list_remove(&conn->queued, st);
        st->state = STREAM_OPEN;
        rv = conn_start_stream(conn, st);
        if (rv != 0) {
            /* conn_start_stream() has written call->errmsg. */
            char msg[sizeof(st->call->errmsg)];
            snprintf(msg, sizeof(msg), "%s", st->call->errmsg);
            stream_finish(st, rv, "%s", msg);
        }
    }
    conn_flush(conn);
    pool_deliver(pool);
}


/* Creates a connection, starts connecting and makes it the pool's current
 * one. Returns 0 or a TE_* code with |call|->errmsg set. */
static int conn_open(h2_pool_t *pool, upcall_t *call, h2_conn_t **out)
{
    h2_conn_t *conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory for a connection to %s", pool->endpoint);
        return TE_NOMEM;
    }
    int rv = uv_tcp_init(pool->loop, &conn->tcp);
    if (rv != 0) {
        snprintf(call->errmsg, sizeof(call->errmsg), "connect to %s failed: %s",
                 pool->endpoint, uv_strerror(rv));
        free(conn);
        return TE_CONNECT;
    }
    conn->pool = pool;
    conn->tcp.data = conn;
    conn->connect_req.data = conn;
    conn->write_req.data = conn;
    conn->next = pool->conns;
    if (pool->conns != NULL) {
        pool->conns->prev = conn;
    }
    pool->conns = conn;
    pool->handles++;
    pool->current = conn;

    rv = uv_tcp_connect(&conn->connect_req, &conn->tcp,
                        (const struct sockaddr *)&pool->addr, on_connect);
    if (rv != 0) {
        conn_close(conn, TE_CONNECT, "connect to %s failed: %s", pool->endpoint,
                   uv_strerror(rv));
        snprintf(call->errmsg, sizeof(call->errmsg), "%s", conn->errmsg);
        return TE_CONNECT;
    }
    *out = conn;
    return 0;
}


h2_pool_t *h2_pool_new(uv_loop_t *loop, const struct sockaddr *addr,
                       const pool_options_t *opts)
{
    char endpoint[sizeof(((h2_pool_t *)0)->endpoint)];
    size_t addrlen = sockaddr_describe(addr, endpoint, sizeof(endpoint));
    if (addrlen == 0) {
        return NULL;
    }

    h2_pool_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        return NULL;
    }
    if (uv_timer_init(loop, &pool->deliver_timer) != 0) {
        free(pool);
        return NULL;
    }
    pool->loop = loop;
    memcpy(&pool->addr, addr, addrlen);
    memcpy(pool->endpoint, endpoint, sizeof(endpoint));
    pool->deliver_timer.data = pool;
    pool->handles = 1;
    return pool;
}


int h2_pool_submit(h2_pool_t *pool, upcall_t *call)
{
    if (pool == NULL || pool->closing || call == NULL || call->method == NULL ||
        call->path == NULL || call->authority == NULL ||
        call->on_done == NULL ||
        (call->nheaders > 0 && call->headers == NULL)) {
        return TE_INVALID;
    }
    call->status = 0;
    call->errmsg[0] = '\0';
    buf_reset(&call->body_out);
    call->stream_id = 0;
    call->pool_conn = NULL;
    call->phase = UPCALL_CONNECTING;
    snprintf(call->endpoint, sizeof(call->endpoint), "%s", pool->endpoint);

    h2_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory for a stream to %s", pool->endpoint);
        return TE_NOMEM;
    }
    st->call = call;
    st->pool = pool;

    h2_conn_t *conn = pool->current;
    if (conn != NULL && conn->connected &&
        !nghttp2_session_check_request_allowed(conn->session)) {
        /* Stream ids are used up: let the connection drain. */
        conn->draining = 1;
        pool->current = NULL;
        conn_close_if_idle(conn);
        conn = NULL;
    }
    if (conn == NULL) {
        int rv = conn_open(pool, call, &conn);
        if (rv != 0) {
            free(st);
            return rv;
        }
    }

    st->conn = conn;
    call->pool_conn = st;
    if (!conn->connected) {
        st->state = STREAM_QUEUED;
        list_push(&conn->queued, st);
        return 0;
    }
    int rv = conn_start_stream(conn, st);
    if (rv != 0) {
        call->pool_conn = NULL;
        free(st);
        return rv;
    }
    conn_flush(conn);
    return 0;
}


void h2_pool_cancel(h2_pool_t *pool, upcall_t *call)
{
    h2_stream_t *st = call->pool_conn;
    if (st == NULL) {
        return;
    }
    call->pool_conn = NULL;
    call->phase = UPCALL_CANCELLED;

    switch (st->state) {
    case STREAM_QUEUED:
        list_remove(&st->conn->queued, st);
        free(st);
        return;
    case STREAM_FINISHED:
        list_remove(&pool->finished, st);
        st->call = NULL;
        st->state = STREAM_DETACHED;
        stream_release(st);
        return;
    case STREAM_OPEN:
        break;
    case STREAM_DETACHED:
        return;
    }

    /* The stream stays in nghttp2 until the reset is sent, and callbacks
     * for it see the detached state and ignore it. */
    h2_conn_t *conn = st->conn;
    st->call = NULL;
    st->state = STREAM_DETACHED;
    st->conn = NULL;
    if (conn->closing || conn->session == NULL) {
        return;
    }
    /* For a request whose HEADERS are still queued, nghttp2 drops them and
     * closes the stream without sending anything. */
    int rv = nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, st->id,
                                       NGHTTP2_CANCEL);
    if (rv != 0) {
        conn_close(conn, te_from_nghttp2(rv), "HTTP/2 stream reset failed: %s",
                   nghttp2_strerror(rv));
        return;
    }
    conn_flush(conn);
}


size_t h2_pool_connections(const h2_pool_t *pool)
{
    size_t n = 0;
    for (const h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        if (!conn->closing) {
            n++;
        }
    }
    return n;
}


void h2_pool_close(h2_pool_t *pool)
{
    if (pool == NULL || pool->closing) {
        return;
    }
    pool->closing = 1;
    pool->current = NULL;

    /* The caller may free its calls as soon as this returns, so every
     * stream lets go of its call now. */
    while (pool->finished.head != NULL) {
        h2_stream_t *st = pool->finished.head;
        list_remove(&pool->finished, st);
        stream_detach(st);
    }
    for (h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        while (conn->queued.head != NULL) {
            h2_stream_t *st = conn->queued.head;
            list_remove(&conn->queued, st);
            stream_detach(st);
        }
        for (h2_stream_t *st = conn->streams; st != NULL;
             st = st->session_next) {
            stream_detach(st);
        }
        if (!conn->closing) {
            conn->closing = 1;
            uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
        }
    }
    uv_close((uv_handle_t *)&pool->deliver_timer, on_pool_timer_close);
}
