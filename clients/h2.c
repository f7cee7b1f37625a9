/* HTTP/2 client on libuv and nghttp2: cleartext with prior knowledge
 * (h2c) or TLS with ALPN "h2", both through transport_t.
 *
 * Ownership in short: a pool owns its connections, and each connection
 * embeds its libuv handles and is freed only once all of them are closed.
 * Every submitted call gets an h2_stream_t, which nghttp2 also stores as
 * stream user data. A call waits in the pool's FIFO queue until some
 * connection has a free stream slot (the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS); the pool opens another connection when
 * every open one is full, up to max_connections. Streams that the server
 * did not process (above a GOAWAY's last_stream_id, REFUSED_STREAM, or
 * never sent) go back into that queue for another connection.
 *
 * Results are never reported from inside nghttp2 or from inside the public
 * functions: a finished stream goes on the pool's finished list, and
 * pool_settle() calls on_done at the end of a libuv callback (or from a
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
#include "transport.h"

/* Receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE) and for the
 * whole connection. The RFC 9113 default of 65535 bytes would cap a
 * download at one window per round trip. */
#define H2_STREAM_WINDOW (1 << 20)
#define H2_CONNECTION_WINDOW (16 << 20)

/* nghttp2 output gathered while a write is in flight. Beyond this, frames
 * stay queued inside nghttp2 until the write completes, which bounds memory
 * for large request bodies. */
#define H2_MAX_PENDING_OUTPUT (256 * 1024)

/* Streams a connection is expected to take before its first SETTINGS
 * frame arrives. After any SETTINGS frame from the endpoint, its value is
 * used instead. RFC 9113 section 6.5.2 recommends that servers allow at
 * least 100. */
#define H2_ASSUMED_MAX_STREAMS 100

/* Retries per call. A stream reset with REFUSED_STREAM, or never sent
 * because its connection failed first, is retried twice. A stream above
 * the last_stream_id of a GOAWAY with an error code is retried once. */
#define H2_MAX_REFUSED_RETRIES 2
#define H2_MAX_GOAWAY_ERROR_RETRIES 1
/* A graceful GOAWAY (NO_ERROR) is a normal event such as a rollout, or a
 * server that ends each connection after some number of requests. A
 * stream it did not process is re-sent for as long as the call's deadline
 * allows, and at most H2_MAX_GOAWAY_RETRIES_NO_DEADLINE times for a call
 * without a deadline. Such a GOAWAY covers at least the first stream of
 * its connection, which is not re-sent because of it, so the connections
 * these retries cost grow with the number of calls, not with time. */
#define H2_MAX_GOAWAY_RETRIES_NO_DEADLINE 8
/* A graceful GOAWAY with last_stream_id 0, or one that arrives before the
 * connection carried any stream, means that the server processed nothing
 * on that connection. A server that does this to every connection would
 * have the pool reconnect as fast as the loop runs until the deadline.
 * Such a refusal is therefore retried twice per call whatever the
 * deadline, and the call then fails with TE_RESET.
 * The retry is not delayed. A delay would not lower the number of
 * connections a call costs, only hold the call longer, and the calls
 * that wait at the same time share the next connection (pool_grow). The
 * dispatcher's passive health check then moves later calls to other
 * endpoints, if the service has any, after eject_after resets. */
#define H2_MAX_GOAWAY_UNPROCESSED_RETRIES 2

#define H2_DEFAULT_MAX_CONNECTIONS 128
#define H2_DEFAULT_IDLE_TIMEOUT_MS 30000
#define H2_DEFAULT_CONNECT_TIMEOUT_MS 250
#define H2_DEFAULT_PING_INTERVAL_MS 10000

typedef struct h2_conn_s h2_conn_t;
typedef struct h2_stream_s h2_stream_t;

typedef enum {
    STREAM_WAITING,  /* in pool->waiting, no connection yet */
    STREAM_OPEN,     /* submitted to nghttp2 on st->conn */
    STREAM_FINISHED, /* in pool->finished, on_done not called yet */
    STREAM_DETACHED, /* delivered or cancelled; no call attached */
} stream_state_t;

/* One submitted call. It is freed once it is detached and nghttp2 no longer
 * refers to it (in_session == 0), see stream_release(). A retried call
 * keeps its h2_stream_t and gets a new nghttp2 stream. */
struct h2_stream_s {
    upcall_t *call; /* NULL once detached */
    h2_pool_t *pool;
    h2_conn_t *conn; /* valid while open */
    stream_state_t state;
    uint64_t seq;         /* submission order, keeps retries first in line */
    int in_session;       /* nghttp2 has this as stream user data */
    int headers_sent;     /* the request HEADERS frame went out */
    int response_started; /* a response HEADERS or DATA frame arrived */
    int remote_ended;     /* END_STREAM received from the server */
    int reset_by_peer;    /* RST_STREAM received from the server */
    int32_t id;
    int err; /* result for on_done while finished */
    int refused_retries;
    int goaway_retries;             /* after GOAWAY with NO_ERROR */
    int goaway_unprocessed_retries; /* the part of goaway_retries after a
                                     * GOAWAY that processed no stream */
    int goaway_error_retries;       /* after GOAWAY with an error code */
    /* Request body, copied from the call so that the data source callback
     * never follows a call pointer after cancel. */
    const char *body;
    size_t body_len;
    size_t body_sent;
    h2_stream_t *prev; /* links in pool->waiting or pool->finished */
    h2_stream_t *next;
    h2_stream_t *session_prev; /* links in conn->streams while in_session */
    h2_stream_t *session_next;
};

typedef struct {
    h2_stream_t *head;
    h2_stream_t *tail;
} stream_list_t;

struct h2_conn_s {
    transport_t transport; /* TCP, and TLS for h2:// */
    uv_timer_t timer;      /* SETTINGS wait, PING and idle timeout */
    h2_pool_t *pool;
    nghttp2_session *session; /* NULL until connected */
    h2_conn_t *prev;          /* links in pool->conns, oldest first */
    h2_conn_t *next;
    h2_stream_t *streams; /* streams stored as nghttp2 stream user data */
    size_t nstreams;      /* length of the streams list */
    buf_t writing;        /* bytes handed to transport_write */
    buf_t pending;        /* output gathered while writing is busy */
    int handles;          /* the timer and, once started, the transport */
    int transport_started;
    int write_busy;
    int connected;         /* transport connected, session created */
    int settings_received; /* the peer's first SETTINGS arrived */
    int carried_stream;    /* a stream was submitted on it */
    int closing;           /* the handles are being closed */
    int draining;          /* takes no new streams, closes when idle */
    int goaway_received;
    int32_t goaway_last_id;
    uint32_t goaway_error;
    int goaway_sent;
    uint32_t goaway_sent_error;
    int idle_closed; /* the GOAWAY was sent because of the idle timeout */
    uint64_t connect_timeout_ms; /* 0: no limit */
    uint64_t opened_at;          /* uv_now() values, in ms */
    uint64_t idle_since;
    uint64_t ping_base; /* the next PING is due one interval after this */
    uint64_t ping_sent_at;
    int ping_outstanding; /* a PING waits for its ACK */
    int err;              /* result for streams still open at close */
    char errmsg[sizeof(((upcall_t *)0)->errmsg)];
};

struct h2_pool_s {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char endpoint[sizeof(((upcall_t *)0)->endpoint)];
    pool_options_t opts;
    char *server_name; /* copy of opts.server_name */
    uv_timer_t deliver_timer;
    h2_conn_t *conns; /* every connection, including draining ones */
    h2_conn_t *conns_tail;
    size_t handles; /* open libuv handles: the timer and connections */
    stream_list_t waiting;
    size_t nwaiting;
    stream_list_t finished;
    uint64_t next_seq;
    /* The endpoint's SETTINGS_MAX_CONCURRENT_STREAMS as last seen, used
     * to decide how many connections to open before theirs arrive. */
    uint32_t peer_max_streams;
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


/* Inserts |st| into the waiting queue in submission order, so that a
 * retried call goes before calls submitted after it. */
static void waiting_insert(h2_pool_t *pool, h2_stream_t *st)
{
    h2_stream_t *after = pool->waiting.tail;
    while (after != NULL && after->seq > st->seq) {
        after = after->prev;
    }
    if (after == NULL) {
        st->prev = NULL;
        st->next = pool->waiting.head;
        if (pool->waiting.head != NULL) {
            pool->waiting.head->prev = st;
        } else {
            pool->waiting.tail = st;
        }
        pool->waiting.head = st;
    } else {
        st->prev = after;
        st->next = after->next;
        if (after->next != NULL) {
            after->next->prev = st;
        } else {
            pool->waiting.tail = st;
        }
        after->next = st;
    }
    st->state = STREAM_WAITING;
    pool->nwaiting++;
}


static void waiting_remove(h2_pool_t *pool, h2_stream_t *st)
{
    list_remove(&pool->waiting, st);
    pool->nwaiting--;
}


static void session_link(h2_conn_t *conn, h2_stream_t *st)
{
    st->session_prev = NULL;
    st->session_next = conn->streams;
    if (conn->streams != NULL) {
        conn->streams->session_prev = st;
    }
    conn->streams = st;
    conn->nstreams++;
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
    conn->nstreams--;
    if (conn->nstreams == 0) {
        conn->idle_since = uv_now(conn->pool->loop);
        conn->ping_base = conn->idle_since;
    }
}


/* Frees |st| if neither a call nor nghttp2 refers to it any more. */
static void stream_release(h2_stream_t *st)
{
    if (st->state == STREAM_DETACHED && !st->in_session) {
        free(st);
    }
}


static void on_deliver_timer(uv_timer_t *timer);


/* Makes the next loop iteration run pool_settle(). */
static void pool_schedule(h2_pool_t *pool)
{
    if (!pool->closing) {
        uv_timer_start(&pool->deliver_timer, on_deliver_timer, 0, 0);
    }
}


static void stream_vset_result(h2_stream_t *st, int err, const char *fmt,
                               va_list ap)
{
    upcall_t *call = st->call;
    st->err = err;
    if (fmt != NULL) {
        vsnprintf(call->errmsg, sizeof(call->errmsg), fmt, ap);
    } else {
        call->errmsg[0] = '\0';
    }
}


/* Stores the result of a waiting or open stream and schedules on_done.
 * |fmt| may be NULL for success. */
static void stream_finish(h2_stream_t *st, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void stream_finish(h2_stream_t *st, int err, const char *fmt, ...)
{
    h2_pool_t *pool = st->pool;

    if (st->state == STREAM_WAITING) {
        waiting_remove(pool, st);
    }
    st->state = STREAM_FINISHED;
    st->conn = NULL;
    va_list ap;
    va_start(ap, fmt);
    stream_vset_result(st, err, fmt, ap);
    va_end(ap);
    list_push(&pool->finished, st);
    pool_schedule(pool);
}


/* Fails every call in the waiting queue. */
static void pool_fail_waiting(h2_pool_t *pool, int err, const char *msg)
{
    while (pool->waiting.head != NULL) {
        stream_finish(pool->waiting.head, err, "%s", msg);
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
        /* list_remove moved the head off the freed stream. */
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
        list_remove(&pool->finished, st);
        upcall_t *call = st->call;
        int err = st->err;
        st->call = NULL;
        st->state = STREAM_DETACHED;
        stream_release(st);
        /* a finished stream always has its call. */
        /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
        call->pool_conn = NULL;
        call->phase = UPCALL_DONE;
        call->on_done(call, err);
    }
}


static void pool_dispatch(h2_pool_t *pool);
static void conn_arm_timer(h2_conn_t *conn);


/* Starts waiting calls where a stream slot is free, opens connections
 * when needed, re-arms the connection timers and calls on_done for the
 * calls that ended. Runs at the end of every libuv callback. */
static void pool_settle(h2_pool_t *pool)
{
    if (pool->closing) {
        return;
    }
    /* Anything that schedules another pass from here on gets one. */
    uv_timer_stop(&pool->deliver_timer);
    pool_dispatch(pool);
    for (h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        conn_arm_timer(conn);
    }
    pool_deliver(pool);
}


/* uv_timer_cb: runs pool_settle() for results and retries produced inside
 * h2_pool_submit, h2_pool_cancel or nghttp2 callbacks. */
static void on_deliver_timer(uv_timer_t *timer)
{
    pool_settle(timer->data);
}


static void pool_maybe_free(h2_pool_t *pool)
{
    /* h2_pool_close() emptied the finished list, and nothing finishes
     * after it. */
    if (pool->closing && pool->handles == 0) {
        free(pool->server_name);
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


/* Why an open stream ended without a response, for stream_retry(). */
typedef enum {
    END_REFUSED,   /* RST_STREAM(REFUSED_STREAM) from the server */
    END_GOAWAY,    /* above the last_stream_id of a GOAWAY */
    END_NOT_SENT,  /* the request never left this client */
    END_CONN_LOST, /* the connection ended with the request sent */
} stream_end_t;


/* Returns whether the GOAWAY received on |conn| means that the server
 * processed none of its streams: its last_stream_id is 0, which covers no
 * client stream because their ids start at 1, or the connection carried
 * no stream. */
static int conn_goaway_processed_none(const h2_conn_t *conn)
{
    return conn->goaway_last_id == 0 || !conn->carried_stream;
}


/* Counts one more attempt for the call of |st|, whose stream ended for
 * |why| on |conn| or, for a waiting call, whose connection stopped taking
 * streams. END_GOAWAY reads the GOAWAY fields of |conn|. Returns 1 if the
 * call's retry budget allows the attempt, else 0 without counting it. */
static int stream_count_retry(h2_stream_t *st, stream_end_t why,
                              const h2_conn_t *conn)
{
    switch (why) {
    case END_REFUSED:
    case END_NOT_SENT:
        if (st->refused_retries >= H2_MAX_REFUSED_RETRIES) {
            return 0;
        }
        st->refused_retries++;
        return 1;
    case END_GOAWAY:
        break;
    case END_CONN_LOST:
        return 0;
    }
    if (conn->goaway_error != NGHTTP2_NO_ERROR) {
        if (st->goaway_error_retries >= H2_MAX_GOAWAY_ERROR_RETRIES) {
            return 0;
        }
        st->goaway_error_retries++;
        return 1;
    }
    int unprocessed = conn_goaway_processed_none(conn);
    if (unprocessed &&
        st->goaway_unprocessed_retries >= H2_MAX_GOAWAY_UNPROCESSED_RETRIES) {
        return 0;
    }
    if (st->call->deadline_ns == 0 &&
        st->goaway_retries >= H2_MAX_GOAWAY_RETRIES_NO_DEADLINE) {
        return 0;
    }
    st->goaway_retries++;
    if (unprocessed) {
        st->goaway_unprocessed_retries++;
    }
    return 1;
}


/* Fails the call of |st| after the GOAWAY received on |conn| turned its
 * stream away and no other attempt is allowed. */
static void stream_fail_goaway(h2_stream_t *st, const h2_conn_t *conn)
{
    const char *code = nghttp2_http2_strerror(conn->goaway_error);
    if (conn->goaway_error != NGHTTP2_NO_ERROR) {
        stream_finish(st, TE_RESET, "connection closed by GOAWAY: %s", code);
        return;
    }
    /* This refusal is not counted in goaway_retries. */
    int refusals = st->goaway_retries + 1;
    stream_finish(st, TE_RESET, "stream refused by GOAWAY (%s) %d time%s", code,
                  refusals, refusals == 1 ? "" : "s");
}


/* Puts an open stream that the server did not process back into the
 * waiting queue, if its call allows another attempt. Returns 1 if it did.
 * Only streams without any response byte qualify, so a retry never
 * repeats a request the server has responded to. */
static int stream_retry(h2_stream_t *st, stream_end_t why,
                        const h2_conn_t *conn)
{
    upcall_t *call = st->call;
    h2_pool_t *pool = st->pool;

    if (pool->closing || st->state != STREAM_OPEN || st->response_started) {
        return 0;
    }
    if (call->deadline_ns != 0 && uv_hrtime() >= call->deadline_ns) {
        return 0;
    }
    if (!stream_count_retry(st, why, conn)) {
        return 0;
    }

    st->conn = NULL;
    st->id = 0;
    st->headers_sent = 0;
    st->remote_ended = 0;
    st->reset_by_peer = 0;
    call->status = 0;
    call->stream_id = 0;
    buf_reset(&call->body_out);
    call->phase = UPCALL_CONNECTING;
    waiting_insert(pool, st);
    pool_schedule(pool);
    return 1;
}


/* Charges every waiting call one GOAWAY refusal when |conn| received a
 * GOAWAY before it carried any stream. The calls were waiting for that
 * connection, and without the charge a server that sends GOAWAY at the
 * start of every connection would have the pool reconnect without end.
 * A call whose budget is spent fails. */
static void pool_charge_waiting(h2_pool_t *pool, const h2_conn_t *conn)
{
    h2_stream_t *st = pool->waiting.head;
    while (st != NULL) {
        h2_stream_t *next = st->next;
        if (!stream_count_retry(st, END_GOAWAY, conn)) {
            stream_fail_goaway(st, conn);
        }
        st = next;
    }
}


/* Returns whether |method| is idempotent (RFC 9110 section 9.2.2), so
 * that a request the server may have processed can be sent again. */
static int method_is_idempotent(const char *method)
{
    static const char *const idempotent[] = {
        "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE",
    };
    for (size_t i = 0; i < sizeof(idempotent) / sizeof(idempotent[0]); i++) {
        if (strcmp(method, idempotent[i]) == 0) {
            return 1;
        }
    }
    return 0;
}


/* Ends the open streams of a closed connection: requests that never left
 * are retried, the others fail with the connection's error. After a
 * GOAWAY with an error code, the server may have processed the streams up
 * to last_stream_id before it closed. Those that got no response byte are
 * retried within the same once-per-call budget, but only for idempotent
 * methods. */
static void conn_end_streams(h2_conn_t *conn)
{
    int goaway_error =
        conn->goaway_received && conn->goaway_error != NGHTTP2_NO_ERROR;

    while (conn->streams != NULL) {
        h2_stream_t *st = conn->streams;
        /* stream_release unlinked st before freeing it. */
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
        session_unlink(conn, st);
        if (st->state != STREAM_OPEN) {
            stream_release(st);
            continue;
        }
        int above_goaway =
            conn->goaway_received && st->id > conn->goaway_last_id;
        int retried;
        /* separate reasons to retry, kept apart to read. */
        /* NOLINTNEXTLINE(bugprone-branch-clone) */
        if (above_goaway) {
            retried = stream_retry(st, END_GOAWAY, conn);
        } else if (!st->headers_sent) {
            retried = stream_retry(st, END_NOT_SENT, conn);
        } else if (goaway_error && method_is_idempotent(st->call->method)) {
            retried = stream_retry(st, END_GOAWAY, conn);
        } else {
            retried = 0;
        }
        if (retried) {
            continue;
        }
        if (above_goaway || goaway_error) {
            stream_fail_goaway(st, conn);
        } else {
            stream_finish(st, conn->err, "%s", conn->errmsg);
        }
    }
}


/* Runs once every handle of the connection is closed: ends its streams
 * and frees it. */
static void conn_free(h2_conn_t *conn)
{
    h2_pool_t *pool = conn->pool;

    /* nghttp2_session_del() calls no callbacks, so the stream list stays
     * as it is while the session goes. */
    nghttp2_session_del(conn->session);
    conn->session = NULL;
    /* After h2_pool_close() every stream is detached already. */
    conn_end_streams(conn);

    if (conn->prev != NULL) {
        conn->prev->next = conn->next;
    } else {
        pool->conns = conn->next;
    }
    if (conn->next != NULL) {
        conn->next->prev = conn->prev;
    } else {
        pool->conns_tail = conn->prev;
    }
    buf_free(&conn->writing);
    buf_free(&conn->pending);
    free(conn);

    pool->handles--;
    if (pool->closing) {
        pool_maybe_free(pool);
    } else {
        pool_settle(pool);
    }
}


static void conn_handle_closed(h2_conn_t *conn)
{
    conn->handles--;
    if (conn->handles == 0) {
        conn_free(conn);
    }
}


/* uv_close_cb for the connection timer. */
static void on_conn_timer_close(uv_handle_t *handle)
{
    conn_handle_closed(handle->data);
}


/* transport_close_cb */
static void on_transport_close(transport_t *t)
{
    conn_handle_closed(t->data);
}


static void conn_close_handles(h2_conn_t *conn)
{
    conn->closing = 1;
    if (conn->transport_started) {
        transport_close(&conn->transport);
    }
    uv_close((uv_handle_t *)&conn->timer, on_conn_timer_close);
}


/* Closes the connection. Streams still open fail with |err| and the
 * message once the handles are closed, so nothing is freed inside an
 * nghttp2 callback. */
static void conn_close(h2_conn_t *conn, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_close(h2_conn_t *conn, int err, const char *fmt, ...)
{
    if (conn->closing) {
        return;
    }
    conn->err = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(conn->errmsg, sizeof(conn->errmsg), fmt, ap);
    va_end(ap);
    conn_close_handles(conn);

    /* A connection that never became usable means that the endpoint
     * cannot be reached now. The waiting calls fail at once, so the caller
     * can try another endpoint instead of waiting for its deadline, and
     * the pool opens no other connection for them. */
    if (!conn->settings_received) {
        pool_fail_waiting(conn->pool, err == TE_NOMEM ? TE_NOMEM : TE_CONNECT,
                          conn->errmsg);
    }
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
    if (conn->draining && conn->nstreams == 0) {
        idle = 1;
    }
    if (!idle) {
        return;
    }
    if (conn->idle_closed) {
        conn_close(conn, TE_RESET, "idle connection to %s closed",
                   conn->pool->endpoint);
    } else if (conn->goaway_sent) {
        conn_close(conn, TE_RESET, "HTTP/2 connection error, GOAWAY sent: %s",
                   nghttp2_http2_strerror(conn->goaway_sent_error));
    } else if (conn->goaway_received) {
        conn_close(conn, TE_RESET, "connection closed by GOAWAY: %s",
                   nghttp2_http2_strerror(conn->goaway_error));
    } else {
        conn_close(conn, TE_RESET, "HTTP/2 connection to %s ended",
                   conn->pool->endpoint);
    }
}


static void on_write(transport_t *t, int err, void *arg);


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
        int rv = transport_write(&conn->transport, &out, 1, on_write, conn);
        if (rv != 0) {
            conn_close(conn, rv == TE_NOMEM ? TE_NOMEM : TE_RESET,
                       "write to %s failed", conn->pool->endpoint);
            return;
        }
        conn->write_busy = 1;
    }
    conn_close_if_idle(conn);
}


/* transport_write_cb. The transport reports pending writes with
 * TE_RESET while it closes, and the connection is closing then. */
static void on_write(transport_t *t, int err, void *arg)
{
    h2_conn_t *conn = arg;

    conn->write_busy = 0;
    buf_reset(&conn->writing);
    if (conn->closing) {
        return;
    }
    if (err != 0) {
        conn_close(conn, TE_RESET, "write to %s failed", conn->pool->endpoint);
        pool_settle(conn->pool);
        return;
    }
    conn_flush(conn);
    pool_settle(conn->pool);
}


/* transport_read_cb */
static void on_transport_read(transport_t *t, const char *data, size_t len)
{
    h2_conn_t *conn = t->data;
    h2_pool_t *pool = conn->pool;

    if (conn->closing || conn->session == NULL) {
        return;
    }
    ssize_t rv =
        nghttp2_session_mem_recv(conn->session, (const uint8_t *)data, len);
    if (rv < 0) {
        conn_close(conn, TE_RESET, "HTTP/2 session with %s failed: %s",
                   pool->endpoint, nghttp2_strerror((int)rv));
    } else {
        conn_flush(conn);
    }
    pool_settle(pool);
}


/* transport_eof_cb */
static void on_transport_eof(transport_t *t, int err, const char *msg)
{
    h2_conn_t *conn = t->data;
    h2_pool_t *pool = conn->pool;

    if (conn->closing) {
        return;
    }
    if (err != 0) {
        conn_close(conn, TE_RESET, "%s", msg);
    } else if (conn->goaway_received) {
        conn_close(conn, TE_RESET,
                   "connection closed by server after GOAWAY: %s",
                   nghttp2_http2_strerror(conn->goaway_error));
    } else {
        conn_close(conn, TE_RESET, "connection closed by server");
    }
    pool_settle(pool);
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
        st->response_started = 1;
        st->call->phase = UPCALL_RECEIVING;
    }
    return 0;
}


/* Fails the call of |st| at once when the content-length of its final
 * response is above max_body, as HTTP/1.1 does, instead of waiting for
 * DATA that may come slowly or never. nghttp2 has already rejected an
 * invalid or repeated content-length (HTTP messaging checks, on by
 * default in nghttp2 1.52), so |value| is a decimal number below 2^63.
 * A response to HEAD, and a 204 or 304 response, has no body whatever its
 * content-length. An informational (1xx) block leaves call->status at 0.
 * Returns 0 or NGHTTP2_ERR_CALLBACK_FAILURE. */
static int stream_check_content_length(nghttp2_session *session,
                                       h2_stream_t *st, const uint8_t *value,
                                       size_t valuelen)
{
    upcall_t *call = st->call;
    if (call->status < 200 || call->status == 204 || call->status == 304 ||
        strcmp(call->method, "HEAD") == 0) {
        return 0;
    }
    uint64_t length = 0;
    for (size_t i = 0; i < valuelen; i++) {
        if (value[i] < '0' || value[i] > '9' || length > UINT64_MAX / 10) {
            return 0;
        }
        length = length * 10 + (uint64_t)(value[i] - '0');
    }
    if (length <= call->max_body) {
        return 0;
    }
    char msg[sizeof(call->errmsg)];
    snprintf(msg, sizeof(msg), UPCALL_BODY_LIMIT_FMT " (Content-Length: %llu)",
             call->max_body, (unsigned long long)length);
    return stream_abort(session, st, TE_BAD_RESPONSE, msg);
}


/* nghttp2_on_header_callback. Only :status is kept because upcall_t has no
 * room for response header fields, and content-length is checked against
 * max_body. */
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
    if (namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        return stream_check_content_length(session, st, value, valuelen);
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
    /* nghttp2 1.52 checks only that :status is three digits and takes a
     * value below 100 for a final status, so "000" would end the stream
     * as a success with status 0. */
    if (valuelen == 3 && status < 100) {
        char msg[sizeof(st->call->errmsg)];
        snprintf(msg, sizeof(msg), "invalid response: :status %d", status);
        return stream_abort(session, st, TE_BAD_RESPONSE, msg);
    }
    /* A 1xx block is informational and another header block follows. */
    if (status >= 200) {
        st->call->status = status;
    }
    return 0;
}


/* nghttp2_on_data_chunk_recv_callback. nghttp2 sends WINDOW_UPDATE for the
 * received bytes itself, because automatic window updates are on. That
 * includes DATA for streams that are reset or closed, so a cancelled
 * download gives its share of the connection window back. */
static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags,
                              int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data)
{
    h2_stream_t *st = find_stream(session, stream_id);
    if (st == NULL || st->state != STREAM_OPEN) {
        return 0;
    }
    upcall_t *call = st->call;
    st->response_started = 1;
    call->phase = UPCALL_RECEIVING;
    if (len > call->max_body || call->body_out.len > call->max_body - len) {
        char msg[sizeof(call->errmsg)];
        snprintf(msg, sizeof(msg), UPCALL_BODY_LIMIT_FMT, call->max_body);
        return stream_abort(session, st, TE_BAD_RESPONSE, msg);
    }
    if (buf_append(&call->body_out, data, len) != 0) {
        return stream_abort(session, st, TE_NOMEM,
                            "out of memory for the response body");
    }
    return 0;
}


/* Records the peer's SETTINGS: the first one makes the connection usable,
 * and every one may change how many streams it takes. */
static void conn_on_settings(h2_conn_t *conn)
{
    h2_pool_t *pool = conn->pool;
    uint32_t max = nghttp2_session_get_remote_settings(
        conn->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    pool->peer_max_streams = max;
    if (!conn->settings_received) {
        conn->settings_received = 1;
        conn->idle_since = uv_now(pool->loop);
        conn->ping_base = conn->idle_since;
    }
}


/* nghttp2_on_frame_recv_callback */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                         void *user_data)
{
    h2_conn_t *conn = user_data;

    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
            conn_on_settings(conn);
        }
        return 0;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            conn->ping_outstanding = 0;
        }
        return 0;
    case NGHTTP2_GOAWAY: {
        /* nghttp2 closes our streams above last_stream_id with
         * REFUSED_STREAM right after this callback; on_stream_close()
         * sends them to another connection. */
        int first = !conn->goaway_received;
        conn->goaway_received = 1;
        conn->goaway_last_id = frame->goaway.last_stream_id;
        conn->goaway_error = frame->goaway.error_code;
        conn->draining = 1;
        if (first && !conn->carried_stream) {
            pool_charge_waiting(conn->pool, conn);
        }
        return 0;
    }
    default:
        break;
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
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    h2_stream_t *st = find_stream(session, frame->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    st->headers_sent = 1;
    if (st->state == STREAM_OPEN && st->call->phase == UPCALL_CONNECTING) {
        st->call->phase = UPCALL_WAITING;
    }
    return 0;
}


/* Unlinks |st| from the session after nghttp2 closed it or never opened it.
 * A stream with no call left is freed. For an open stream, decides the
 * result: success, another attempt on some connection, or an error. */
static void stream_on_close(h2_conn_t *conn, h2_stream_t *st,
                            uint32_t error_code)
{
    session_unlink(conn, st);
    if (st->state != STREAM_OPEN) {
        stream_release(st);
        return;
    }

    const char *code = nghttp2_http2_strerror(error_code);
    int above_goaway = conn->goaway_received && st->id > conn->goaway_last_id;

    if (st->remote_ended && error_code == NGHTTP2_NO_ERROR) {
        stream_finish(st, 0, NULL);
        return;
    }
    int retried = 0;
    if (above_goaway) {
        retried = stream_retry(st, END_GOAWAY, conn);
    } else if (!st->headers_sent) {
        retried = stream_retry(st, END_NOT_SENT, conn);
    } else if (st->reset_by_peer && error_code == NGHTTP2_REFUSED_STREAM) {
        retried = stream_retry(st, END_REFUSED, conn);
    }
    if (retried) {
        return;
    }

    if (above_goaway) {
        stream_fail_goaway(st, conn);
    } else if (st->reset_by_peer) {
        stream_finish(st, TE_RESET, "stream reset by server: %s", code);
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        stream_finish(st, TE_RESET, "stream could not be opened: %s", code);
    } else {
        /* nghttp2 reset the stream itself, e.g. on a malformed response. */
        stream_finish(st, TE_BAD_RESPONSE,
                      "invalid response, stream reset by client: %s", code);
    }
}


/* nghttp2_on_stream_close_callback */
static int on_stream_close(nghttp2_session *session, int32_t stream_id,
                           uint32_t error_code, void *user_data)
{
    h2_conn_t *conn = user_data;
    h2_stream_t *st = find_stream(session, stream_id);
    if (st == NULL) {
        return 0;
    }
    stream_on_close(conn, st, error_code);
    return 0;
}


/* nghttp2_on_frame_not_send_callback. A request HEADERS frame that could
 * not go out (GOAWAY received meanwhile, or the stream was cancelled
 * before it was sent) may belong to a stream that nghttp2 never opened,
 * and then no on_stream_close follows: the stream ends here. */
static int on_frame_not_send(nghttp2_session *session,
                             const nghttp2_frame *frame, int lib_error_code,
                             void *user_data)
{
    h2_conn_t *conn = user_data;

    if (frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST ||
        nghttp2_session_find_stream(session, frame->hd.stream_id) != NULL) {
        return 0;
    }
    h2_stream_t *st = conn->streams;
    while (st != NULL && st->id != frame->hd.stream_id) {
        st = st->session_next;
    }
    if (st == NULL) {
        return 0;
    }
    stream_on_close(conn, st, NGHTTP2_REFUSED_STREAM);
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


/* Submits the request of |st| to nghttp2. Returns 0 or a TE_* code with
 * call->errmsg set; on success the stream is open and linked into
 * conn->streams. */
static int conn_start_stream(h2_conn_t *conn, h2_stream_t *st)
{
    upcall_t *call = st->call;
    size_t max_nv = 5 + call->nheaders;
    nghttp2_nv *nva = malloc(max_nv * sizeof(*nva));
    if (nva == NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory for a request to %s", conn->pool->endpoint);
        return TE_NOMEM;
    }

    size_t n = 0;
    nva[n++] = make_nv(":method", call->method);
    nva[n++] = make_nv(":path", call->path);
    nva[n++] =
        make_nv(":scheme", conn->pool->opts.tls != NULL ? "https" : "http");
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
    conn->carried_stream = 1;
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
    nghttp2_session_callbacks_set_on_frame_not_send_callback(callbacks,
                                                             on_frame_not_send);
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


/* Returns the peer's current SETTINGS_MAX_CONCURRENT_STREAMS on |conn|,
 * which must have a session. */
static uint32_t conn_max_streams(const h2_conn_t *conn)
{
    return nghttp2_session_get_remote_settings(
        conn->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}


/* Returns whether |conn| can take another stream now. */
static int conn_has_slot(h2_conn_t *conn)
{
    if (conn->closing || !conn->settings_received || conn->draining) {
        return 0;
    }
    if (!nghttp2_session_check_request_allowed(conn->session)) {
        /* Stream ids are used up: let the connection drain. */
        conn->draining = 1;
        conn_close_if_idle(conn);
        return 0;
    }
    /* The current value, so a peer that lowers the limit mid-connection
     * gets no new stream until enough of the open ones have ended. */
    return conn->nstreams < conn_max_streams(conn);
}


/* Returns the connect timeout for a new connection: the configured one,
 * clipped to the latest deadline of the waiting calls, because the
 * connection has no use once all of them have expired. Clipping to the
 * earliest deadline would let a call about to expire fail the others
 * with a connect timeout of a millisecond or two. 0 means no limit.
 * NOTE: the timeout is fixed when the connection opens, so a call that
 * queues on it later with a longer budget still fails with it. */
static uint64_t pool_connect_timeout(h2_pool_t *pool)
{
    uint64_t timeout = pool->opts.connect_timeout_ms;
    uint64_t now = uv_hrtime();
    uint64_t latest_ms = 0;
    for (h2_stream_t *st = pool->waiting.head; st != NULL; st = st->next) {
        uint64_t deadline = st->call->deadline_ns;
        if (deadline == 0) {
            return timeout; /* a call without a deadline: no clip */
        }
        uint64_t left_ms = 1;
        if (deadline > now) {
            left_ms = (deadline - now + 999999) / 1000000;
        }
        if (left_ms > latest_ms) {
            latest_ms = left_ms;
        }
    }
    if (latest_ms > 0 && (timeout == 0 || latest_ms < timeout)) {
        timeout = latest_ms;
    }
    return timeout;
}


static void on_transport_connect(transport_t *t, int err, const char *msg);

static const transport_callbacks_t transport_callbacks = {
    .on_connect = on_transport_connect,
    .on_read = on_transport_read,
    .on_eof = on_transport_eof,
    .on_close = on_transport_close,
};


/* Creates a connection and starts connecting. Returns 0, or a TE_* code
 * after failing the waiting calls with it. */
static int conn_open(h2_pool_t *pool)
{
    char msg[sizeof(((upcall_t *)0)->errmsg)];
    h2_conn_t *conn = calloc(1, sizeof(*conn));
    if (conn == NULL) {
        snprintf(msg, sizeof(msg), "out of memory for a connection to %s",
                 pool->endpoint);
        pool_fail_waiting(pool, TE_NOMEM, msg);
        return TE_NOMEM;
    }
    /* libuv's uv_timer_init() only sets fields and returns 0. */
    uv_timer_init(pool->loop, &conn->timer);
    conn->pool = pool;
    conn->timer.data = conn;
    conn->handles = 1;
    conn->prev = pool->conns_tail;
    if (pool->conns_tail != NULL) {
        pool->conns_tail->next = conn;
    } else {
        pool->conns = conn;
    }
    pool->conns_tail = conn;
    pool->handles++;
    conn->connect_timeout_ms = pool_connect_timeout(pool);
    conn->opened_at = uv_now(pool->loop);

    /* The transport's own timeout covers TCP and TLS, with messages that
     * tell them apart. The connection timer, which ends at the same time,
     * covers the wait for the server's SETTINGS. */
    int rv = transport_connect(
        &conn->transport, pool->loop, (const struct sockaddr *)&pool->addr,
        pool->opts.tls, pool->opts.server_name, conn->connect_timeout_ms,
        &transport_callbacks, conn);
    if (rv != 0) {
        /* conn_close() fails the waiting calls. */
        const char *why = rv == TE_NOMEM           ? "out of memory"
                          : pool->opts.tls != NULL ? "invalid TLS settings"
                                                   : "invalid address";
        conn_close(conn, rv == TE_NOMEM ? TE_NOMEM : TE_CONNECT,
                   "connect to %s failed: %s", pool->endpoint, why);
        return rv;
    }
    conn->transport_started = 1;
    conn->handles++;
    conn_arm_timer(conn);
    return 0;
}


/* Opens connections until the waiting calls fit, counting the streams
 * that connections still connecting are expected to take. Draining
 * connections do not count against max_connections because they take no
 * new streams and close on their own.
 *
 * A connection whose SETTINGS_MAX_CONCURRENT_STREAMS is 0 takes no stream
 * until the server raises the limit (RFC 9113 section 6.5.2: servers
 * should set 0 only for short durations). Such a limit may hold for that
 * connection only, so while one such connection is open the pool still
 * opens connections, but one at a time. Once two are open, the endpoint
 * is taken to accept no streams for now: the pool opens no further
 * connection, and the waiting calls wait for a raised limit or their
 * deadline, as behind any full connection. Without this, each new
 * connection that advertises 0 would look full and the pool would open
 * max_connections of them for one call. */
static void pool_grow(h2_pool_t *pool)
{
    uint64_t assumed = pool->peer_max_streams > 0 ? pool->peer_max_streams : 1;
    uint64_t capacity = 0;
    size_t nconns = 0;
    size_t nconnecting = 0;
    size_t nzero = 0; /* open connections that allow no stream */
    for (h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        if (conn->closing || conn->draining) {
            continue;
        }
        nconns++;
        if (!conn->settings_received) {
            nconnecting++;
            capacity += assumed;
        } else if (conn_max_streams(conn) == 0) {
            nzero++;
        }
    }
    size_t max_conns = pool->opts.max_connections;
    if (nzero > 1 || (nzero == 1 && nconnecting > 0)) {
        return;
    }
    if (nzero == 1 && nconns + 1 < max_conns) {
        max_conns = nconns + 1;
    }
    while (pool->nwaiting > capacity && nconns < max_conns) {
        if (conn_open(pool) != 0) {
            return;
        }
        nconns++;
        capacity += assumed;
    }
}


/* Starts waiting calls, oldest first, on connections with a free stream
 * slot, then opens connections for the calls left. */
static void pool_dispatch(h2_pool_t *pool)
{
    if (pool->closing) {
        return;
    }
    for (h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        int started = 0;
        while (pool->waiting.head != NULL && conn_has_slot(conn)) {
            h2_stream_t *st = pool->waiting.head;
            waiting_remove(pool, st);
            st->state = STREAM_OPEN;
            int rv = conn_start_stream(conn, st);
            if (rv != 0) {
                /* conn_start_stream() has written call->errmsg. */
                char msg[sizeof(st->call->errmsg)];
                snprintf(msg, sizeof(msg), "%s", st->call->errmsg);
                stream_finish(st, rv, "%s", msg);
                continue;
            }
            started = 1;
        }
        if (started) {
            conn_flush(conn);
        }
    }
    pool_grow(pool);
}


/* Sends GOAWAY(NO_ERROR) on a connection that had no stream for
 * idle_timeout_ms; conn_close_if_idle() closes it once that is written. */
static void conn_close_idle(h2_conn_t *conn)
{
    conn->draining = 1;
    conn->idle_closed = 1;
    int rv = nghttp2_submit_goaway(
        conn->session, NGHTTP2_FLAG_NONE,
        nghttp2_session_get_last_proc_stream_id(conn->session),
        NGHTTP2_NO_ERROR, NULL, 0);
    if (rv != 0) {
        conn_close(conn, TE_RESET, "idle connection to %s closed",
                   conn->pool->endpoint);
        return;
    }
    conn_flush(conn);
}


static void conn_send_ping(h2_conn_t *conn)
{
    int rv = nghttp2_submit_ping(conn->session, NGHTTP2_FLAG_NONE, NULL);
    if (rv != 0) {
        conn_close(conn, te_from_nghttp2(rv), "HTTP/2 PING failed: %s",
                   nghttp2_strerror(rv));
        return;
    }
    conn->ping_outstanding = 1;
    conn->ping_sent_at = uv_now(conn->pool->loop);
    conn->ping_base = conn->ping_sent_at;
    conn_flush(conn);
}


/* uv_timer_cb for the connection timer: connect timeout, missing PING
 * ACK, idle timeout and the next PING. */
static void on_conn_timer(uv_timer_t *timer)
{
    h2_conn_t *conn = timer->data;
    h2_pool_t *pool = conn->pool;
    const pool_options_t *opts = &pool->opts;
    uint64_t now = uv_now(pool->loop);

    if (conn->closing) {
        return;
    }
    if (!conn->settings_received) {
        if (conn->connect_timeout_ms > 0 &&
            now >= conn->opened_at + conn->connect_timeout_ms) {
            conn_close(conn, TE_CONNECT,
                       "connect to %s timed out after %llu ms", pool->endpoint,
                       (unsigned long long)conn->connect_timeout_ms);
        }
    } else if (conn->ping_outstanding &&
               now >= conn->ping_sent_at + opts->ping_interval_ms) {
        conn_close(conn, TE_RESET, "no PING ACK from %s within %llu ms",
                   pool->endpoint, (unsigned long long)opts->ping_interval_ms);
    } else if (conn->nstreams == 0 && !conn->draining) {
        if (opts->idle_timeout_ms > 0 &&
            now >= conn->idle_since + opts->idle_timeout_ms) {
            conn_close_idle(conn);
        } else if (opts->ping_interval_ms > 0 && !conn->ping_outstanding &&
                   now >= conn->ping_base + opts->ping_interval_ms) {
            conn_send_ping(conn);
        }
    }
    pool_settle(pool);
}


static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}


/* Starts the connection timer for whichever of its deadlines comes
 * first, or stops it when none applies. */
static void conn_arm_timer(h2_conn_t *conn)
{
    const pool_options_t *opts = &conn->pool->opts;
    uint64_t due = UINT64_MAX;

    if (conn->closing) {
        return;
    }
    if (!conn->settings_received) {
        if (conn->connect_timeout_ms > 0) {
            due = conn->opened_at + conn->connect_timeout_ms;
        }
    } else {
        if (conn->ping_outstanding) {
            due = conn->ping_sent_at + opts->ping_interval_ms;
        }
        if (conn->nstreams == 0 && !conn->draining) {
            if (opts->idle_timeout_ms > 0) {
                due = min_u64(due, conn->idle_since + opts->idle_timeout_ms);
            }
            if (opts->ping_interval_ms > 0 && !conn->ping_outstanding) {
                due = min_u64(due, conn->ping_base + opts->ping_interval_ms);
            }
        }
    }
    if (due == UINT64_MAX) {
        uv_timer_stop(&conn->timer);
        return;
    }
    uint64_t now = uv_now(conn->pool->loop);
    uv_timer_start(&conn->timer, on_conn_timer, due > now ? due - now : 0, 0);
}


/* transport_connect_cb: starts the session. The connection takes streams
 * once the peer's SETTINGS arrive, because only they tell how many. A
 * failed TCP connect or TLS handshake is TE_CONNECT with the transport's
 * message. */
static void on_transport_connect(transport_t *t, int err, const char *msg)
{
    h2_conn_t *conn = t->data;
    h2_pool_t *pool = conn->pool;

    if (conn->closing) {
        return;
    }
    if (err != 0) {
        conn_close(conn, TE_CONNECT, "%s", msg);
        pool_settle(pool);
        return;
    }

    int rv = conn_start_session(conn);
    if (rv != 0) {
        conn_close(conn, te_from_nghttp2(rv), "HTTP/2 session setup failed: %s",
                   nghttp2_strerror(rv));
        pool_settle(pool);
        return;
    }
    conn->connected = 1;
    /* Sends the connection preface and our SETTINGS. */
    conn_flush(conn);
    pool_settle(pool);
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
    if (opts != NULL) {
        pool->opts = *opts;
    } else {
        pool->opts.max_connections = H2_DEFAULT_MAX_CONNECTIONS;
        pool->opts.idle_timeout_ms = H2_DEFAULT_IDLE_TIMEOUT_MS;
        pool->opts.connect_timeout_ms = H2_DEFAULT_CONNECT_TIMEOUT_MS;
        pool->opts.ping_interval_ms = H2_DEFAULT_PING_INTERVAL_MS;
    }
    if (pool->opts.max_connections == 0) {
        pool->opts.max_connections = 1;
    }
    if (pool->opts.server_name != NULL) {
        pool->server_name = strdup(pool->opts.server_name);
        if (pool->server_name == NULL) {
            free(pool);
            return NULL;
        }
    }
    pool->opts.server_name = pool->server_name;
    if (uv_timer_init(loop, &pool->deliver_timer) != 0) {
        free(pool->server_name);
        free(pool);
        return NULL;
    }
    pool->loop = loop;
    memcpy(&pool->addr, addr, addrlen);
    memcpy(pool->endpoint, endpoint, sizeof(endpoint));
    pool->deliver_timer.data = pool;
    pool->handles = 1;
    pool->peer_max_streams = H2_ASSUMED_MAX_STREAMS;
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
    size_t endpoint_len = strnlen(pool->endpoint, sizeof(call->endpoint) - 1);
    memcpy(call->endpoint, pool->endpoint, endpoint_len);
    call->endpoint[endpoint_len] = '\0';

    h2_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "out of memory for a stream to %s", pool->endpoint);
        return TE_NOMEM;
    }
    st->call = call;
    st->pool = pool;
    st->seq = pool->next_seq++;
    call->pool_conn = st;
    waiting_insert(pool, st);
    /* Failures found here reach on_done through the deliver timer. */
    pool_dispatch(pool);
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
    case STREAM_WAITING:
        waiting_remove(pool, st);
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
    /* The freed slot may let a waiting call start. */
    pool_schedule(pool);
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

    /* The caller may free its calls as soon as this returns, so every
     * stream lets go of its call now. */
    while (pool->finished.head != NULL) {
        h2_stream_t *st = pool->finished.head;
        /* list_remove moved the head off st. */
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
        list_remove(&pool->finished, st);
        stream_detach(st);
    }
    while (pool->waiting.head != NULL) {
        h2_stream_t *st = pool->waiting.head;
        /* waiting_remove moved the head off st. */
        /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
        waiting_remove(pool, st);
        stream_detach(st);
    }
    for (h2_conn_t *conn = pool->conns; conn != NULL; conn = conn->next) {
        for (h2_stream_t *st = conn->streams; st != NULL;
             /* stream_detach frees no stream still listed. */
             /* NOLINTNEXTLINE(clang-analyzer-unix.Malloc) */
             st = st->session_next) {
            stream_detach(st);
        }
        if (!conn->closing) {
            conn_close_handles(conn);
        }
    }
    uv_close((uv_handle_t *)&pool->deliver_timer, on_pool_timer_close);
}
