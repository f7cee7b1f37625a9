/* Inbound requests on libmicrohttpd, inside the worker's loop. */
#include "server.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "aggregate.h"
#include "buf.h"
#include "errors.h"
#include "fanout.h"
#include "headers.h"
#include "lifecycle.h"
#include "log.h"
#include "router.h"
#include "trace.h"

#define REQUEST_ID_MAX 128

/* Characters of an RFC 9110 token, for messages (a printf format). */
#define TOKEN_CHARS "only letters, digits and !#$%%&'*+-.^_`|~"

/* Overload state of the whole gateway. Each worker updates it with one
 * atomic operation per request or connection, which is not a lock, so
 * max_in_flight and max_connections_inbound hold over all workers
 * exactly, however unevenly SO_REUSEPORT spreads the connections. A share
 * per worker would need no shared cache line, but would shed requests on
 * a busy worker while another sits idle. */
static atomic_long requests_in_flight;
static atomic_long connections_open;
static atomic_uint_least64_t requests_shed;
static atomic_uint_least64_t connections_refused_limit;
static atomic_uint_least64_t connections_refused_fd;

/* tutti's state of one inbound connection, from MHD's
 * MHD_CONNECTION_NOTIFY_STARTED to MHD_CONNECTION_NOTIFY_CLOSED: the
 * client-abort watch and the peer address as text.
 *
 * A suspended MHD connection is not polled by MHD, so the watch is how
 * tutti learns that the client went away while a fan-out runs. It polls
 * only for a hang-up (EPOLLRDHUP, EPOLLHUP, EPOLLERR), never for readable
 * data, so it costs no system call per request and a pipelined request
 * does not wake it. */
typedef struct client_watch_s {
    uv_poll_t poll;
    req_t *running;     /* the request suspended on this connection, or NULL */
    bool active;        /* the poll is started */
    char peer_text[64]; /* for X-Forwarded-For, formatted once */
    /* The head deadline: from the connection's start, or from the end of
     * its previous request, the next request head must arrive within
     * client_timeout_ms. libmicrohttpd 0.9.75 times out silence only, so
     * without it a client sending one byte at a time keeps its connection.
     * The timer is not touched per request: when it fires it re-arms
     * itself for the time left, or shuts the socket down. */
    uv_timer_t head_timer;
    uint64_t head_since_ns; /* start of the wait for the next head */
    uint64_t timeout_ms;    /* client_timeout_ms */
    int fd;
    bool in_request;  /* a whole request arrived and is not completed */
    bool peer_closed; /* the client closed before its request was whole */
    /* What server_on_uri found in the current request's target. */
    int query_bad_byte;  /* a byte of the query that is not visible
                            ASCII, or -1 */
    size_t query_bad_at; /* its offset in the target */
    size_t query_args;   /* arguments in the query */
    size_t query_args_allowed;
    bool query_args_cut; /* too many for the buffer, so MHD got none */
    int open_handles;    /* poll and timer not yet closed */
} client_watch_t;

/* Returns the watch of |conn|, or NULL when it could not be set up. */
static client_watch_t *connection_watch(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci != NULL ? ci->socket_context : NULL;
}


typedef enum {
    REQ_BODY = 0, /* reading the inbound body */
    REQ_RUNNING,  /* fan-out in flight, MHD connection suspended */
    REQ_ANSWERED, /* answer decided, waiting for MHD to send it */
} req_state_t;

/* A string decoded for one request (query parameter values). */
typedef struct req_str_s {
    struct req_str_s *next;
    char text[];
} req_str_t;

struct req_s {
    worker_t *w;
    /* The configuration the request started under, held until it is
     * freed: routes, limits and the service table of its calls. */
    worker_config_t *wc;
    struct MHD_Connection *conn;
    req_t *prev;
    req_t *next;
    req_state_t state;
    uint64_t start_ns;
    char request_id[REQUEST_ID_MAX + 1];
    char method[CONFIG_METHOD_MAX + 1];
    enum { BAD_METHOD_NONE = 0, BAD_METHOD_SYNTAX, BAD_METHOD_LONG } bad_method;
    char *path;
    router_match_t match;
    const route_t *route;
    int64_t budget_ms;
    buf_t body;
    bool body_too_large;
    bool close_after; /* answer with Connection: close */
    bool queued;      /* MHD_queue_response was called */
    fanout_t *fo;
    client_watch_t *watch; /* its connection's, while the request runs */
    bool client_gone;
    bool suspended;
    bool holds_slot;  /* counted in requests_in_flight */
    bool retry_after; /* answer with Retry-After: 1 */
    int status;
    char *answer;
    size_t answer_len;
    buf_t extra; /* "Allow" value, or the Tutti-Partial list */
    req_str_t *strings;
    trace_ctx_t trace;
    /* Every inbound field; the strings belong to MHD and live as long as
     * the request. */
    upcall_header_t *inbound;
    size_t ninbound;
    size_t inbound_cap;
    const char *unsafe_field; /* a field whose value has a control byte */
    const char *bad_name;     /* a field name that is not a token */
    size_t nhost;             /* Host fields */
    const char *host;         /* the value of the last one */
    char *authority;          /* of an absolute-form target, else NULL */
    bool inbound_nomem;
};


size_t server_keep_escaped(void *cls, struct MHD_Connection *conn, char *s)
{
    return strlen(s);
}


static uint64_t next_random(worker_t *w)
{
    /* xorshift64*: request ids need uniqueness, not secrecy. */
    uint64_t x = w->id_seed;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->id_seed = x;
    return x * 0x2545F4914F6CDD1DULL;
}


/* Returns the length of |s| when it is a valid request id, else 0. */
static size_t valid_request_id(const char *s)
{
    size_t n = strnlen(s, REQUEST_ID_MAX + 1);
    if (n == 0 || n > REQUEST_ID_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x21 || s[i] > 0x7e) {
            return 0;
        }
    }
    return n;
}


/* Writes |v| as 16 lowercase hex digits. */
static void hex64(uint64_t v, char out[16])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 0xf];
        v >>= 4;
    }
}


static void set_request_id(req_t *r)
{
    const char *in =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t n = in != NULL ? valid_request_id(in) : 0;
    if (n > 0) {
        memcpy(r->request_id, in, n + 1);
        return;
    }
    hex64(next_random(r->w), r->request_id);
    hex64(next_random(r->w), r->request_id + 16);
    r->request_id[32] = '\0';
}


/* Decides a gateway-level error answer (not from a fan-out). */
static void answer_simple(req_t *r, int status, const char *kind,
                          const char *message)
{
    r->state = REQ_ANSWERED;
    r->status = status;
    free(r->answer);
    r->answer = aggregate_simple_error(kind, message, &r->answer_len);
    log_event(LOG_INFO, r->request_id, "request rejected",
              json_pack("{s:i, s:s, s:s}", "status", status, "kind", kind,
                        "error", message));
}


static enum MHD_Result queue_answer(req_t *r)
{
    char *body = r->answer;
    size_t len = r->answer_len;
    r->answer = NULL;
    r->answer_len = 0;
    if (body == NULL) {
        body = aggregate_simple_error("internal", "out of memory", &len);
        r->status = 500;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    if (r->extra.len > 0) {
        MHD_add_response_header(
            resp, r->status == 405 ? "Allow" : "Tutti-Partial", r->extra.data);
    }
    if (r->retry_after) {
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    }
    if (r->w->draining || r->close_after || lifecycle_draining()) {
        MHD_add_response_header(resp, "Connection", "close");
    }
    r->queued = true;
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return rc;
}


static void unlink_inflight(req_t *r)
{
    worker_t *w = r->w;
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else if (w->inflight == r) {
        w->inflight = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    r->prev = NULL;
    r->next = NULL;
}


static void req_free(req_t *r)
{
    worker_config_release(r->wc);
    free(r->inbound);
    buf_free(&r->match.storage);
    buf_free(&r->body);
    buf_free(&r->extra);
    free(r->answer);
    free(r->path);
    free(r->authority);
    while (r->strings != NULL) {
        req_str_t *s = r->strings;
        r->strings = s->next;
        free(s);
    }
    free(r);
}


/* Detaches |r| from its connection's watch, because the request no
 * longer waits for its fan-out. MHD notices a later hang-up itself. */
static void unwatch_client(req_t *r)
{
    if (r->watch != NULL) {
        r->watch->running = NULL;
        r->watch = NULL;
    }
}


static void resume(req_t *r)
{
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
        worker_kick(r->w);
    }
}


/* fanout_answer_cb: the fan-out decided its answer. */
static void on_fanout_answer(fanout_t *fo, void *arg)
{
    req_t *r = arg;
    unwatch_client(r);
    r->state = REQ_ANSWERED;
    r->status = fanout_status(fo);
    r->answer = fanout_take_body(fo, &r->answer_len);
    /* A 503 other than the shutdown one comes from a bulkhead
     * (max_concurrent_calls), which frees up as calls end. */
    r->retry_after = r->status == 503 && fanout_cause(fo) != CAUSE_SHUTDOWN;
    const char *partial = fanout_partial(fo);
    if (partial[0] != '\0') {
        buf_append_str(&r->extra, partial);
    }
    resume(r);
}


/* uv_poll_cb: the client hung up or its socket failed. A running request
 * on the connection is a client abort. */
static void on_client_hangup(uv_poll_t *p, int status, int events)
{
    client_watch_t *cw = p->data;

    /* The poll is level-triggered and the hang-up stays reported, so it
     * stops here. MHD notices the close itself when it next reads. A
     * request suspended later starts the poll again (watch_client). */
    uv_poll_stop(p);
    cw->active = false;
    req_t *r = cw->running;
    if (r == NULL || r->state != REQ_RUNNING) {
        /* A request that has not fully arrived can never be completed
         * now. libmicrohttpd reads its edge-triggered socket once per
         * event, so when the FIN came with the last bytes it would hold
         * the connection, and a max_in_flight slot, until
         * client_timeout_ms; the shutdown wakes it at once. A whole
         * request goes on to its response. */
        if (!cw->in_request) {
            cw->peer_closed = true;
            shutdown(cw->fd, SHUT_RDWR);
        }
        return;
    }
    unwatch_client(r);
    r->client_gone = true;
    fanout_abort(r->fo, CAUSE_CLIENT_ABORT);
    r->state = REQ_ANSWERED;
    r->status = 499;
    r->answer = aggregate_simple_error("client_abort", "client went away",
                                       &r->answer_len);
    resume(r);
}


/* Links the running |r| to its connection's watch, and restarts the poll
 * when an earlier hang-up stopped it, so that the hang-up is reported
 * again at once. */
static void watch_client(req_t *r)
{
    client_watch_t *cw = connection_watch(r->conn);
    if (cw == NULL) {
        return;
    }
    cw->running = r;
    r->watch = cw;
    if (!cw->active &&
        uv_poll_start(&cw->poll, UV_DISCONNECT, on_client_hangup) == 0) {
        cw->active = true;
    }
}


static const char *lookup_query(void *arg, const char *name)
{
    req_t *r = arg;
    const char *raw =
        MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
    if (raw == NULL) {
        return NULL;
    }
    size_t n = strlen(raw);
    req_str_t *s = malloc(sizeof(*s) + n + 1);
    if (s == NULL) {
        return NULL;
    }
    memcpy(s->text, raw, n + 1);
    s->next = r->strings;
    r->strings = s;
    /* reject_bad_url rejected every value that cannot be decoded. Should
     * that check and the decoder ever disagree, the value is left out
     * rather than sent half-decoded. */
    if (template_decode(s->text, true) != 0) {
        return NULL;
    }
    return s->text;
}


/* The X-Forwarded-* and tracestate values of one request's calls. */
typedef struct policy_values_s {
    buf_t forwarded_for;
    buf_t proto;
    buf_t host;
    buf_t tracestate;
} policy_values_t;


/* Fills |hr| for the header policy of |r|'s calls; the strings are in
 * |pv|, which the caller frees. Returns 0 or TE_NOMEM. */
static int prepare_policy(req_t *r, headers_request_t *hr, policy_values_t *pv)
{
    const config_t *cfg = r->wc->cfg;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *peer = ci != NULL ? ci->client_addr : NULL;
    const client_watch_t *cw = connection_watch(r->conn);
    char own_text[64];
    const char *peer_text = cw != NULL ? cw->peer_text : own_text;

    if (cw == NULL) {
        headers_peer_text(peer, own_text, sizeof(own_text));
    }
    bool trusted =
        headers_cidr_match(cfg->trusted_proxies, cfg->ntrusted_proxies, peer);
    int rc = headers_forwarded(r->inbound, r->ninbound, peer_text, trusted,
                               &pv->forwarded_for, &pv->proto, &pv->host);
    /* tracestate belongs to the traceparent it came with, so a trace
     * started here carries none (W3C Trace Context, 3.3). */
    int found = 0;
    if (rc == 0 && r->trace.continued) {
        found = headers_join(r->inbound, r->ninbound, "tracestate",
                             &pv->tracestate);
    }
    if (rc != 0 || found < 0) {
        return TE_NOMEM;
    }
    *hr = (headers_request_t){
        .inbound = r->inbound,
        .ninbound = r->ninbound,
        .forwarded_for = pv->forwarded_for.data,
        .forwarded_proto = pv->proto.data,
        .forwarded_host = pv->host.data,
        .tracestate = found > 0 ? pv->tracestate.data : NULL,
    };
    return 0;
}


static void start_fanout(req_t *r)
{
    worker_t *w = r->w;
    headers_request_t hr;
    policy_values_t pv = {0};
    if (r->inbound_nomem || prepare_policy(r, &hr, &pv) != 0) {
        answer_simple(r, 500, "internal", "out of memory");
        buf_free(&pv.forwarded_for);
        buf_free(&pv.proto);
        buf_free(&pv.host);
        buf_free(&pv.tracestate);
        return;
    }
    fanout_request_t fr = {
        .route = r->route,
        .values = r->match.values,
        .query = lookup_query,
        .query_arg = r,
        .request_id = r->request_id,
        .body = r->body.data,
        .body_len = r->body.len,
        .content_type = MHD_lookup_connection_value(
            r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
        .start_ns = r->start_ns,
        .budget_ms = r->budget_ms,
        .max_body = r->wc->cfg->max_response_body_bytes,
        .metrics = w->metrics,
        .trace = &r->trace,
        .headers = &hr,
        .secret_headers = r->wc->cfg->secret_headers,
        .nsecret_headers = r->wc->cfg->nsecret_headers,
        .services = r->wc->table,
    };
    r->fo = fanout_start(&w->loop, w->up, &fr, on_fanout_answer, r);
    buf_free(&pv.forwarded_for);
    buf_free(&pv.proto);
    buf_free(&pv.host);
    buf_free(&pv.tracestate);
    if (r->fo == NULL) {
        answer_simple(r, 500, "internal", "out of memory");
        return;
    }
    r->state = REQ_RUNNING;
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    watch_client(r);
}


/* Reads Request-Timeout-Ms; returns false when it is present but not a
 * non-negative integer. */
static bool apply_timeout_header(req_t *r)
{
    const char *v = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                                "Request-Timeout-Ms");
    if (v == NULL) {
        return true;
    }
    while (*v == ' ' || *v == '\t') {
        v++;
    }
    if (v[0] < '0' || v[0] > '9') {
        return false;
    }
    char *end = NULL;
    errno = 0;
    long long ms = strtoll(v, &end, 10);
    /* Optional whitespace may follow a field value (RFC 9110, 5.5). */
    while (*end == ' ' || *end == '\t') {
        end++;
    }
    /* Digits past LLONG_MAX only mean "longer than the route allows". */
    if ((errno != 0 && !(errno == ERANGE && ms == LLONG_MAX)) || *end != '\0' ||
        ms < 0) {
        return false;
    }
    if (ms < r->budget_ms) {
        r->budget_ms = ms;
    }
    return true;
}


typedef struct framing_s {
    const char *length; /* first Content-Length value */
    bool conflicting;   /* another Content-Length with a different value */
    bool chunked;       /* a Transfer-Encoding field is present */
    int codings;        /* Transfer-Encoding fields */
    const char *coding; /* a Transfer-Encoding value other than chunked */
} framing_t;


/* Returns |s|, or a placeholder when it contains a byte that is not
 * printable ASCII, so that an error message stays valid UTF-8 and never
 * carries a control byte to a terminal. */
static const char *printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f) {
            return "(not printable)";
        }
    }
    return s;
}


/* MHD_KeyValueIterator over the request headers. */
static enum MHD_Result on_framing_header(void *cls, enum MHD_ValueKind kind,
                                         const char *key, const char *value)
{
    framing_t *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->length == NULL) {
            f->length = value;
        } else if (strcmp(f->length, value) != 0) {
            f->conflicting = true;
        }
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->chunked = true;
        f->codings++;
        if (strcasecmp(value, "chunked") != 0 && f->coding == NULL) {
            f->coding = value;
        }
    }
    return MHD_YES;
}


/* Rejects a request whose body length is ambiguous: Content-Length given
 * twice with different values, or together with Transfer-Encoding. RFC
 * 9112, 6.3 makes both an error, because a proxy and a server could split
 * such a stream into requests differently (request smuggling).
 * libmicrohttpd 0.9.75 accepts both, so the check is made here. */
static bool reject_ambiguous_framing(req_t *r, const char *version)
{
    framing_t f = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, on_framing_header, &f);
    if (f.codings > 1 ||
        (f.chunked && strcmp(version, MHD_HTTP_VERSION_1_0) == 0)) {
        /* Two Transfer-Encoding fields mean "chunked, chunked", which
         * libmicrohttpd would read as one chunked body. RFC 9112, 6.1:
         * Transfer-Encoding in HTTP/1.0 is faulty framing. */
        r->close_after = true;
        answer_simple(r, 400, "bad_request",
                      f.codings > 1 ? "Transfer-Encoding is given more than "
                                      "once; send it once, as chunked"
                                    : "Transfer-Encoding is not allowed in "
                                      "HTTP/1.0; send Content-Length");
        return true;
    }
    if (f.coding != NULL) {
        /* RFC 9112, 6.1: a body in a coding other than chunked has no
         * length here. libmicrohttpd 0.9.75 waits for such a body until
         * the client timeout. */
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "Transfer-Encoding \"%.80s\" is not supported; send the "
                 "body with Content-Length or Transfer-Encoding: chunked",
                 printable(f.coding));
        r->close_after = true;
        answer_simple(r, 400, "bad_request", msg);
        return true;
    }
    if (!f.conflicting && !(f.chunked && f.length != NULL)) {
        return false;
    }
    r->close_after = true;
    answer_simple(r, 400, "bad_request",
                  f.conflicting ? "conflicting Content-Length headers"
                                : "both Content-Length and Transfer-Encoding "
                                  "are set; send only one");
    return true;
}


static void route_request(req_t *r, const char *url)
{
    const config_t *cfg = r->wc->cfg;
    char msg[256];

    router_result_t rr =
        router_match(cfg, r->method, url, &r->match, &r->extra);
    switch (rr) {
    case ROUTER_NOT_FOUND:
        snprintf(msg, sizeof(msg), "no route for path %.200s", url);
        answer_simple(r, 404, "not_found", msg);
        return;
    case ROUTER_NO_METHOD:
        snprintf(msg, sizeof(msg),
                 "method %s is not allowed on %.150s; "
                 "allowed: %s",
                 r->method, url, r->extra.data);
        answer_simple(r, 405, "method_not_allowed", msg);
        return;
    case ROUTER_NOMEM:
        answer_simple(r, 500, "internal", "out of memory");
        return;
    case ROUTER_BAD_PATH:
        buf_reset(&r->extra);
        snprintf(msg, sizeof(msg),
                 "invalid path %.200s: malformed "
                 "percent-encoding or a \".\" or \"..\" segment",
                 url);
        answer_simple(r, 400, "bad_request", msg);
        return;
    default:
        break;
    }
    buf_reset(&r->extra);
    r->route = r->match.route;
    r->budget_ms = r->route->deadline_ms;

    if (!apply_timeout_header(r)) {
        answer_simple(r, 400, "bad_request",
                      "invalid Request-Timeout-Ms header: expected a "
                      "non-negative integer of milliseconds");
        return;
    }
    const char *cl = MHD_lookup_connection_value(
        r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL) {
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > cfg->max_request_body_bytes) {
            snprintf(msg, sizeof(msg),
                     "request body of %llu bytes is larger than the "
                     "max_request_body_bytes limit of %zu bytes",
                     n, cfg->max_request_body_bytes);
            answer_simple(r, 413, "payload_too_large", msg);
        }
    }
}


/* Takes a slot of max_in_flight for |r|, or answers 503 at once. The
 * slot is taken before the limit is checked, so that two workers can
 * never both take the last one. */
static bool admit_request(req_t *r)
{
    long max = (long)r->w->cfg->max_in_flight;
    if (atomic_fetch_add_explicit(&requests_in_flight, 1,
                                  memory_order_relaxed) < max) {
        r->holds_slot = true;
        return true;
    }
    atomic_fetch_sub_explicit(&requests_in_flight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&requests_shed, 1, memory_order_relaxed);

    /* Not answer_simple: its log line per request would add to the load
     * being shed. The access line records the 503. */
    char msg[160];
    snprintf(msg, sizeof(msg),
             "the gateway is at its max_in_flight of %ld requests; retry "
             "later",
             max);
    r->state = REQ_ANSWERED;
    r->status = 503;
    r->retry_after = true;
    r->answer = aggregate_simple_error("overloaded", msg, &r->answer_len);
    return false;
}


/* What reject_bad_url learns from the query arguments. */
typedef struct query_scan_s {
    size_t len;          /* of the query, with its "?", "&" and "=" */
    const char *bad_key; /* the first argument with an invalid name or value */
    const char *problem; /* what is wrong with it */
} query_scan_t;


/* Returns what is wrong with a query argument's name or value as sent,
 * or NULL. A service must receive exactly the text the client meant, so
 * a value that cannot be decoded is rejected, not passed on re-encoded. */
static const char *query_text_problem(const char *s)
{
    /* libmicrohttpd has turned each "+" into a space already. A raw byte
     * is caught earlier by server_on_uri, unless the connection has no
     * watch (out of memory), so this check is the fallback. */
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p >= 0x7f) {
            return "it contains a byte that is not visible ASCII; "
                   "percent-encode it";
        }
        if (*p == '#') {
            return "it contains \"#\"; a request target has no fragment, so "
                   "percent-encode it as %23";
        }
        if (*p != '%') {
            continue;
        }
        int byte = percent_escape_value((const char *)p);
        if (byte < 0) {
            return "malformed percent-encoding; write a literal \"%\" as "
                   "%25";
        }
        if (byte == 0) {
            return "it contains %00 (NUL), which cannot be sent to a service";
        }
        p += 2;
    }
    return NULL;
}


/* MHD_KeyValueIterator over the query arguments, which are kept as sent
 * (server_keep_escaped): adds each one's length to the query's and finds
 * the first that cannot be decoded. */
static enum MHD_Result on_query_argument(void *cls, enum MHD_ValueKind kind,
                                         const char *key, const char *value)
{
    query_scan_t *q = cls;
    q->len += 1 + strlen(key) + (value != NULL ? 1 + strlen(value) : 0);
    if (q->bad_key == NULL) {
        q->problem = query_text_problem(key);
        if (q->problem == NULL && value != NULL) {
            q->problem = query_text_problem(value);
        }
        if (q->problem != NULL) {
            q->bad_key = key;
        }
    }
    return MHD_YES;
}


/* Responds 414 when the path and query exceed max_url_bytes, and 400 when
 * the path contains a byte that is not visible ASCII or a query argument
 * cannot be decoded. A request line that does not fit in
 * max_header_bytes never gets here: MHD responds 414 itself. */
static bool reject_bad_url(req_t *r, const char *url)
{
    char msg[240];
    query_scan_t q = {.len = strlen(url)};
    size_t max = (size_t)r->w->cfg->max_url_bytes;
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, on_query_argument,
                              &q);
    if (q.len > max) {
        snprintf(msg, sizeof(msg),
                 "the URL of %zu bytes is longer than the max_url_bytes "
                 "limit of %zu bytes",
                 q.len, max);
        answer_simple(r, 414, "uri_too_long", msg);
        return true;
    }
    /* RFC 3986 allows only visible ASCII in a URI, so a client must
     * percent-encode any other byte; libmicrohttpd 0.9.75 passes such
     * bytes through. The byte is named by its value, so the message stays
     * valid UTF-8. */
    for (const unsigned char *p = (const unsigned char *)url; *p != '\0'; p++) {
        if (*p == '#') {
            snprintf(msg, sizeof(msg),
                     "invalid path: \"#\" at offset %zu; a request target "
                     "has no fragment, so percent-encode it as %%23",
                     (size_t)(p - (const unsigned char *)url));
            answer_simple(r, 400, "bad_request", msg);
            return true;
        }
        if (*p <= 0x20 || *p >= 0x7f) {
            snprintf(msg, sizeof(msg),
                     "invalid path: byte 0x%02X at offset %zu is not visible "
                     "ASCII; percent-encode it",
                     *p, (size_t)(p - (const unsigned char *)url));
            answer_simple(r, 400, "bad_request", msg);
            return true;
        }
    }
    if (q.bad_key != NULL) {
        snprintf(msg, sizeof(msg), "invalid query parameter \"%.80s\": %s",
                 printable(q.bad_key), q.problem);
        answer_simple(r, 400, "bad_request", msg);
        return true;
    }
    return false;
}


/* Each query argument takes a record of about 56 bytes in
 * libmicrohttpd's per-connection buffer (max_header_bytes), next to the
 * request line and the header fields. When the records fill the buffer,
 * libmicrohttpd 0.9.75 has no room left for its own error response and
 * leaves the connection without one until client_timeout_ms. The records
 * may therefore take half of what the target leaves of the buffer, at 64
 * bytes each. */
static size_t query_args_allowed(size_t max_header_bytes, size_t uri_len)
{
    return uri_len < max_header_bytes ? (max_header_bytes - uri_len) / 128 : 0;
}


void *server_on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    worker_t *w = cls;
    client_watch_t *cw = connection_watch(conn);
    const char *query = strchr(uri, '?');
    if (cw == NULL) {
        return NULL;
    }
    cw->query_bad_byte = -1;
    cw->query_args = 0;
    cw->query_args_cut = false;
    if (query == NULL) {
        return NULL;
    }
    cw->query_args = 1;
    for (const unsigned char *p = (const unsigned char *)query + 1; *p; p++) {
        if (*p == '&') {
            cw->query_args++;
        } else if ((*p <= 0x20 || *p >= 0x7f) && cw->query_bad_byte < 0) {
            /* libmicrohttpd turns "+" into a space before the access
             * handler runs, so a raw space can only be caught here. */
            cw->query_bad_byte = *p;
            cw->query_bad_at = (size_t)(p - (const unsigned char *)uri);
        }
    }
    cw->query_args_allowed =
        query_args_allowed((size_t)w->cfg->max_header_bytes, strlen(uri));
    if (cw->query_args > cw->query_args_allowed) {
        /* libmicrohttpd splits the query after this callback returns, in
         * the same buffer: an empty query leaves it room to call
         * server_on_request, which then responds 414. */
        cw->query_args_cut = true;
        ((char *)query)[1] = '\0';
    }
    return NULL;
}


/* Responds 400 to a raw byte in the query, and 414 to a query with more
 * arguments than the connection's buffer has room for, as server_on_uri
 * noted them on |cw|. */
static bool reject_raw_query(req_t *r, const client_watch_t *cw)
{
    char msg[240];
    if (cw == NULL) {
        return false;
    }
    if (cw->query_args_cut) {
        snprintf(msg, sizeof(msg),
                 "the query has %zu arguments, more than the %zu that "
                 "max_header_bytes (%lld) leaves room for with this URL; "
                 "send fewer arguments or raise max_header_bytes",
                 cw->query_args, cw->query_args_allowed,
                 (long long)r->wc->cfg->max_header_bytes);
        answer_simple(r, 414, "uri_too_long", msg);
        return true;
    }
    if (cw->query_bad_byte >= 0) {
        snprintf(msg, sizeof(msg),
                 "invalid query: byte 0x%02X at offset %zu is not visible "
                 "ASCII; percent-encode it",
                 (unsigned)cw->query_bad_byte, cw->query_bad_at);
        answer_simple(r, 400, "bad_request", msg);
        return true;
    }
    return false;
}


/* True when |v|, of length |n|, is a valid Host value or authority:
 * uri-host [":" port] (RFC 9110, 7.2). The host is an IPv6 literal in
 * brackets, or a name or IPv4 address of unreserved, percent-encoded and
 * sub-delim characters (no %00). The port is a number up to 65535. */
static bool host_valid(const char *v, size_t n)
{
    static const char name_punct[] = "-._~!$&'()*+,;=";
    size_t i = 0;
    if (n > 0 && v[0] == '[') {
        while (i < n && v[i] != ']') {
            i++;
        }
        if (i == n || i < 3) {
            return false;
        }
        for (size_t k = 1; k < i; k++) {
            unsigned char c = (unsigned char)v[k];
            if (!isxdigit(c) && c != ':' && c != '.') {
                return false;
            }
        }
        i++;
    } else {
        for (; i < n && v[i] != ':'; i++) {
            unsigned char c = (unsigned char)v[i];
            if (c == '%') {
                if (i + 2 >= n || percent_escape_value(v + i) <= 0) {
                    return false;
                }
                i += 2;
            } else if (!isalnum(c) && strchr(name_punct, c) == NULL) {
                return false;
            }
        }
        if (i == 0) {
            return false;
        }
    }
    if (i == n) {
        return true;
    }
    if (v[i] != ':' || n - i - 1 > 5) {
        return false;
    }
    unsigned long port = 0;
    for (size_t k = i + 1; k < n; k++) {
        if (v[k] < '0' || v[k] > '9') {
            return false;
        }
        port = port * 10 + (unsigned long)(v[k] - '0');
    }
    return port <= 65535;
}


/* Finds the path of the request target |url|, which libmicrohttpd passes
 * without its query. The origin form "/items/1" is the path itself. The
 * absolute form "http://host/items/1", which RFC 9112, 3.2.2 obliges a
 * server to accept, gives its path ("/" when it has none), and its host
 * replaces the Host field. Any other form, such as "*", gets 400. */
static bool reject_bad_target(req_t *r, const char *url, const char **path)
{
    *path = url;
    if (url[0] == '/') {
        return false;
    }
    size_t scheme = 0;
    if (strncasecmp(url, "http://", 7) == 0) {
        scheme = 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        scheme = 8;
    }
    const char *host = url + scheme;
    size_t n = strcspn(host, "/");
    /* RFC 9110, 4.2.4: user information in an http URI is an error, and
     * host_valid allows no "@". */
    if (scheme > 0 && host_valid(host, n)) {
        r->authority = strndup(host, n);
        if (r->authority == NULL) {
            answer_simple(r, 500, "internal", "out of memory");
            return true;
        }
        for (size_t i = 0; i < r->ninbound; i++) {
            if (strcasecmp(r->inbound[i].name, MHD_HTTP_HEADER_HOST) == 0) {
                r->inbound[i].value = r->authority;
            }
        }
        *path = host[n] == '/' ? host + n : "/";
        return false;
    }
    char msg[240];
    snprintf(msg, sizeof(msg),
             "invalid request target \"%.100s\": send a path that starts "
             "with \"/\", or an absolute http:// URL with a host",
             printable(url));
    answer_simple(r, 400, "bad_request", msg);
    return true;
}


/* MHD_KeyValueIteratorN over the request headers: records each field,
 * counts the Host fields and notes the first field whose name is not a
 * token or whose value contains a control byte other than tab.
 * libmicrohttpd 0.9.75 passes a bare CR and other control bytes inside a
 * value through to the application, and ends a value at a NUL. */
static enum MHD_Result on_inbound_field(void *cls, enum MHD_ValueKind kind,
                                        const char *key, size_t key_size,
                                        const char *value, size_t value_size)
{
    req_t *r = cls;
    if (value == NULL) {
        value = "";
        value_size = 0;
    }
    if (r->bad_name == NULL && !headers_is_token(key)) {
        r->bad_name = key;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0) {
        r->nhost++;
        r->host = value;
    }
    /* X-Request-Id is never copied as sent: an invalid one is replaced
     * by a generated id. */
    if (r->unsafe_field == NULL && !headers_value_safe(value, value_size) &&
        strcasecmp(key, "X-Request-Id") != 0) {
        r->unsafe_field = key;
    }
    if (r->ninbound == r->inbound_cap) {
        size_t cap = r->inbound_cap > 0 ? 2 * r->inbound_cap : 16;
        upcall_header_t *items = realloc(r->inbound, cap * sizeof(*items));
        if (items == NULL) {
            r->inbound_nomem = true;
            return MHD_NO;
        }
        r->inbound = items;
        r->inbound_cap = cap;
    }
    r->inbound[r->ninbound++] = (upcall_header_t){key, value};
    return MHD_YES;
}


/* Responds 400, with the connection closed, to a head that RFC 9112 makes
 * an error. A field name must be a token (RFC 9112, 5.1): whitespace
 * before the colon hides a field that another parser may read, and
 * libmicrohttpd 0.9.75 glues a folded line onto a field name. A value
 * must have no control byte: CR or LF could end a field early if the
 * value were copied onto a call, and an HTTP/2 service resets a stream
 * that carries any other. An HTTP/1.1 request needs exactly one valid
 * Host field (RFC 9112, 3.2). */
static bool reject_bad_fields(req_t *r, const char *version)
{
    char msg[240];
    if (r->bad_name != NULL) {
        const char *name = printable(r->bad_name);
        if (strpbrk(r->bad_name, " \t") != NULL) {
            snprintf(msg, sizeof(msg),
                     "invalid header field name \"%.80s\": it contains "
                     "whitespace; remove any space before the colon and "
                     "do not fold header lines",
                     name);
        } else {
            snprintf(msg, sizeof(msg),
                     "invalid header field name \"%.80s\": a name may "
                     "contain " TOKEN_CHARS,
                     name);
        }
    } else if (r->unsafe_field != NULL) {
        snprintf(msg, sizeof(msg),
                 "invalid value of header %.100s: it contains a control "
                 "character (a byte below 0x20 other than tab, or DEL "
                 "0x7F)",
                 r->unsafe_field);
    } else if (r->nhost > 1) {
        snprintf(msg, sizeof(msg),
                 "the request has %zu Host header fields; send exactly one",
                 r->nhost);
    } else if (r->nhost == 1 && !host_valid(r->host, strlen(r->host))) {
        snprintf(msg, sizeof(msg),
                 "invalid Host header \"%.100s\": expected HOST[:PORT], such "
                 "as api.example.com or 10.0.0.1:8080",
                 printable(r->host));
    } else if (r->nhost == 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0) {
        snprintf(msg, sizeof(msg),
                 "the request has no Host header field, which %.20s requires; "
                 "send one",
                 printable(version));
    } else {
        return false;
    }
    r->close_after = true;
    answer_simple(r, 400, "bad_request", msg);
    return true;
}


/* Returns a copy of the request target |url| for logs and /debug/inflight,
 * with each byte that is not visible ASCII percent-encoded, so that a log
 * line stays valid UTF-8 (such a target is rejected with 400 anyway). */
static char *log_safe_copy(const char *url)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        n += *p > 0x20 && *p < 0x7f ? 1 : 3;
    }
    char *out = malloc(n + 1);
    if (out == NULL) {
        return NULL;
    }
    char *o = out;
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p > 0x20 && *p < 0x7f) {
            *o++ = (char)*p;
        } else {
            o += sprintf(o, "%%%02X", *p);
        }
    }
    *o = '\0';
    return out;
}


/* Responds 400 to a method that is not an RFC 9110 token, and 501 to one
 * longer than any route may have. */
static bool reject_bad_method(req_t *r, const char *method)
{
    char msg[200];
    if (r->bad_method == BAD_METHOD_NONE) {
        return false;
    }
    if (r->bad_method == BAD_METHOD_LONG) {
        snprintf(msg, sizeof(msg),
                 "method %.20s... is not implemented: a method has at most "
                 "%d characters",
                 method, CONFIG_METHOD_MAX);
        answer_simple(r, 501, "not_implemented", msg);
    } else {
        snprintf(msg, sizeof(msg),
                 "invalid method \"%.40s\": a method may contain " TOKEN_CHARS,
                 printable(method));
        answer_simple(r, 400, "bad_request", msg);
    }
    return true;
}


static req_t *req_new(worker_t *w, struct MHD_Connection *conn, const char *url,
                      const char *method)
{
    req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    r->w = w;
    r->wc = worker_config_hold(w);
    r->conn = conn;
    r->start_ns = uv_hrtime();
    r->path = log_safe_copy(url);
    /* reject_bad_method rejects a method that is not a token or does not
     * fit, and logs and metrics show "-" for it. */
    size_t method_len = strlen(method);
    bool token = headers_is_token(method);
    if (token && method_len < sizeof(r->method)) {
        memcpy(r->method, method, method_len + 1);
    } else {
        r->bad_method = token ? BAD_METHOD_LONG : BAD_METHOD_SYNTAX;
        strcpy(r->method, "-");
    }
    set_request_id(r);
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, on_inbound_field, r);
    trace_begin(&r->trace,
                headers_single(r->inbound, r->ninbound, "traceparent"));

    r->next = w->inflight;
    if (w->inflight != NULL) {
        w->inflight->prev = r;
    }
    w->inflight = r;
    w->ninflight++;
    if (w->metrics != NULL) {
        metrics_request_started(w->metrics);
    }
    return r;
}


/* The whole request, head and body, has arrived: the head timer of its
 * connection stops counting until the request completes, so a request
 * waiting for its calls is never cut. Until then the timer bounds the
 * head and the body together. */
static void mark_request_received(struct MHD_Connection *conn)
{
    client_watch_t *cw = connection_watch(conn);
    if (cw != NULL) {
        cw->in_request = true;
    }
}


enum MHD_Result server_on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    worker_t *w = cls;
    req_t *r = *con_cls;

    if (r == NULL) {
        /* The hang-up may be seen before libmicrohttpd reads the bytes
         * that came with it; such a request is never served. */
        const client_watch_t *cw = connection_watch(conn);
        if (cw != NULL && cw->peer_closed) {
            return MHD_NO;
        }
        r = req_new(w, conn, url, method);
        if (r == NULL) {
            return MHD_NO;
        }
        *con_cls = r;
        /* The method, framing and field checks come first. After them
         * tutti closes the connection itself, whatever libmicrohttpd
         * does after an error decided from the head. */
        const char *path = url;
        if (!reject_bad_method(r, method) &&
            !reject_ambiguous_framing(r, version) &&
            !reject_bad_fields(r, version) && admit_request(r) &&
            !reject_raw_query(r, cw) && !reject_bad_url(r, url) &&
            !reject_bad_target(r, url, &path)) {
            route_request(r, path);
        }
        if (r->state == REQ_ANSWERED) {
            mark_request_received(conn);
            return queue_answer(r);
        }
        return MHD_YES;
    }

    if (r->state == REQ_ANSWERED) {
        mark_request_received(conn);
        *upload_data_size = 0;
        if (r->client_gone) {
            /* The client closed its side: nothing is sent, and the access
             * line records 499, as for any client abort. */
            return MHD_NO;
        }
        return r->queued ? MHD_YES : queue_answer(r);
    }
    if (*upload_data_size > 0) {
        /* Past the limit the rest of the body is read and dropped, and the
         * 413 goes out once the body has ended: libmicrohttpd 0.9.75 sends
         * no answer queued while a chunked body is still arriving. */
        size_t max = r->wc->cfg->max_request_body_bytes;
        if (!r->body_too_large && r->body.len + *upload_data_size > max) {
            r->body_too_large = true;
            buf_free(&r->body);
        }
        if (!r->body_too_large &&
            buf_append(&r->body, upload_data, *upload_data_size) != 0) {
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    mark_request_received(conn);
    if (r->body_too_large && r->state == REQ_BODY) {
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "request body is larger than the max_request_body_bytes "
                 "limit of %zu bytes",
                 r->wc->cfg->max_request_body_bytes);
        r->close_after = true;
        answer_simple(r, 413, "payload_too_large", msg);
        return queue_answer(r);
    }
    if (r->state == REQ_BODY) {
        start_fanout(r);
        if (r->state == REQ_ANSWERED) {
            return queue_answer(r);
        }
    }
    return MHD_YES;
}


/* Adds the request's trace id, the gateway's span id and, for a trace
 * continued from the client, the client's span id. */
static void add_trace_fields(json_t *f, const trace_ctx_t *trace)
{
    char trace_id[TRACE_ID_HEX];
    char span_id[TRACE_SPAN_HEX];

    trace_hex(trace->trace_id, TRACE_ID_LEN, trace_id);
    json_object_set_new(f, "trace_id", json_string(trace_id));
    trace_hex(trace->span_id, TRACE_SPAN_LEN, span_id);
    json_object_set_new(f, "span_id", json_string(span_id));
    if (trace->continued) {
        trace_hex(trace->parent_id, TRACE_SPAN_LEN, span_id);
        json_object_set_new(f, "parent_span_id", json_string(span_id));
    }
}


/* Names how libmicrohttpd ended a request other than by sending the
 * whole response, for the access line. */
static const char *termination_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_WITH_ERROR:
        return "error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED:
        return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN:
        return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR:
        return "read_error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
        return "client_abort";
    default:
        return "other";
    }
}


/* Writes the access line. When the response was not sent whole, the line
 * records how the request ended in "not_sent", so that a status decided
 * before a failed write is not taken for a delivered one. */
static void log_access(req_t *r, enum MHD_RequestTerminationCode toe)
{
    /* The line is built only when it is written: below the info level
     * its JSON would cost a few microseconds per request for nothing. */
    if (!log_enabled(LOG_INFO)) {
        return;
    }
    uint64_t now = uv_hrtime();
    json_t *f =
        json_pack("{s:s, s:s, s:s?, s:i, s:f}", "method", r->method, "path",
                  r->path != NULL ? r->path : "", "route",
                  r->route != NULL ? r->route->path : NULL, "status", r->status,
                  "duration_ms", (double)(now - r->start_ns) / 1e6);
    if (f != NULL) {
        add_trace_fields(f, &r->trace);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            json_object_set_new(f, "not_sent",
                                json_string(termination_name(toe)));
        }
    }
    if (f != NULL && r->fo != NULL) {
        cancel_cause_t cause = fanout_cause(r->fo);
        if (cause != CAUSE_NONE) {
            json_object_set_new(f, "cancel_cause",
                                json_string(fanout_cause_name(cause)));
        }
        json_object_set_new(f, "calls", fanout_calls_json(r->fo));
    }
    log_event(LOG_INFO, r->request_id, "access", f);
}


void server_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    worker_t *w = cls;
    req_t *r = *con_cls;
    if (r == NULL) {
        return;
    }
    *con_cls = NULL;

    if (r->client_gone || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        /* 499: the client closed the connection before the answer was
         * written, as nginx logs it. */
        if (r->status == 0 || r->client_gone ||
            toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ||
            toe == MHD_REQUEST_TERMINATED_READ_ERROR) {
            r->status = 499;
        }
        if (r->fo != NULL && !r->client_gone) {
            fanout_abort(r->fo, CAUSE_CLIENT_ABORT);
        }
    }
    log_access(r, toe);
    if (r->fo != NULL) {
        fanout_free(r->fo);
        r->fo = NULL;
    }
    if (w->metrics != NULL) {
        metrics_request_done(w->metrics, r->method, r->route, r->status,
                             uv_hrtime() - r->start_ns);
    }
    unlink_inflight(r);
    w->ninflight--;
    if (r->holds_slot) {
        atomic_fetch_sub_explicit(&requests_in_flight, 1, memory_order_relaxed);
    }
    unwatch_client(r);
    req_free(r);
    client_watch_t *cw = connection_watch(conn);
    if (cw != NULL) {
        cw->in_request = false;
        cw->head_since_ns = uv_hrtime();
    }
    worker_request_done(w);
}


static const char *req_state_name(req_state_t state)
{
    switch (state) {
    case REQ_BODY:
        return "reading_body";
    case REQ_RUNNING:
        return "running";
    default:
        return "answered";
    }
}


json_t *server_inflight_json(worker_t *w)
{
    uint64_t now = uv_hrtime();
    json_t *list = json_array();

    for (req_t *r = w->inflight; r != NULL && list != NULL; r = r->next) {
        json_t *item =
            json_pack("{s:s, s:i, s:s, s:s, s:s?, s:s, s:I}", "request_id",
                      r->request_id, "worker", w->id, "method", r->method,
                      "path", r->path != NULL ? r->path : "", "route",
                      r->route != NULL ? r->route->path : NULL, "state",
                      req_state_name(r->state), "age_ms",
                      (json_int_t)((now - r->start_ns) / 1000000));
        if (item != NULL) {
            json_object_set_new(item, "calls",
                                r->fo != NULL ? fanout_inflight_json(r->fo, now)
                                              : json_array());
        }
        json_array_append_new(list, item);
    }
    return list;
}


void server_abort_all(worker_t *w)
{
    /* fanout_abort answers synchronously and resumes the connection, which
     * does not unlink anything from the list until MHD runs again. */
    for (req_t *r = w->inflight; r != NULL; r = r->next) {
        if (r->state == REQ_RUNNING && r->fo != NULL) {
            fanout_abort(r->fo, CAUSE_SHUTDOWN);
        }
    }
}


/* uv_close_cb of a connection's watch: its poll and its timer. */
static void on_client_watch_closed(uv_handle_t *h)
{
    client_watch_t *cw = h->data;
    if (--cw->open_handles == 0) {
        free(cw);
    }
}


/* uv_timer_cb: closes a connection whose next request head is late.
 * shutdown() makes libmicrohttpd read an end of file and close the
 * connection itself, as it does when the client closes. */
static void on_head_timer(uv_timer_t *t)
{
    client_watch_t *cw = t->data;
    uint64_t timeout_ns = cw->timeout_ms * 1000000;
    uint64_t waited = uv_hrtime() - cw->head_since_ns;
    if (cw->in_request) {
        uv_timer_start(t, on_head_timer, cw->timeout_ms, 0);
    } else if (waited < timeout_ns) {
        uv_timer_start(t, on_head_timer,
                       (timeout_ns - waited + 999999) / 1000000, 0);
    } else {
        shutdown(cw->fd, SHUT_RDWR);
    }
}


/* Starts watching the new connection |conn| for a hang-up. Returns the
 * watch, or NULL (logged) when the socket cannot be watched. */
static client_watch_t *client_watch_new(worker_t *w,
                                        struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    client_watch_t *cw = calloc(1, sizeof(*cw));
    if (cw == NULL) {
        log_msg(LOG_WARN, NULL,
                "cannot watch a client socket: out of memory; a client "
                "abort on it will be noticed only at the response");
        return NULL;
    }
    int rc = ci != NULL
                 ? uv_poll_init_socket(&w->loop, &cw->poll, ci->connect_fd)
                 : UV_EBADF;
    if (rc != 0) {
        free(cw);
        log_msg(LOG_WARN, NULL,
                "cannot watch a client socket: %s; a client abort on it "
                "will be noticed only at the response",
                uv_strerror(rc));
        return NULL;
    }
    cw->poll.data = cw;
    cw->open_handles = 1;
    cw->fd = ci->connect_fd;
    cw->timeout_ms = (uint64_t)w->cfg->client_timeout_ms;
    cw->head_since_ns = uv_hrtime();
    if (uv_timer_init(&w->loop, &cw->head_timer) == 0) {
        cw->head_timer.data = cw;
        cw->open_handles = 2;
        uv_timer_start(&cw->head_timer, on_head_timer, cw->timeout_ms, 0);
    }
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    headers_peer_text(ci != NULL ? ci->client_addr : NULL, cw->peer_text,
                      sizeof(cw->peer_text));
    if (uv_poll_start(&cw->poll, UV_DISCONNECT, on_client_hangup) == 0) {
        cw->active = true;
    }
    return cw;
}


/* Closes the watch of a connection that MHD is closing. MHD calls
 * MHD_CONNECTION_NOTIFY_CLOSED before it closes the socket, and uv_close
 * takes the descriptor out of the loop's epoll set at once, so a new
 * connection may reuse the descriptor number right away. */
static void client_watch_close(client_watch_t *cw)
{
    if (cw->running != NULL) {
        cw->running->watch = NULL;
        cw->running = NULL;
    }
    uv_close((uv_handle_t *)&cw->poll, on_client_watch_closed);
    if (cw->open_handles == 2) {
        uv_close((uv_handle_t *)&cw->head_timer, on_client_watch_closed);
    }
}


void server_on_connection(void *cls, struct MHD_Connection *conn,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    worker_t *w = cls;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add_explicit(&connections_open, 1, memory_order_relaxed);
        *socket_context = client_watch_new(w, conn);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub_explicit(&connections_open, 1, memory_order_relaxed);
        if (*socket_context != NULL) {
            client_watch_close(*socket_context);
            *socket_context = NULL;
        }
    }
}


bool server_admit_connection(const worker_t *w)
{
    long open = atomic_load_explicit(&connections_open, memory_order_relaxed);
    if (open < (long)w->cfg->max_connections_inbound) {
        return true;
    }
    server_count_refused(false);
    return false;
}


void server_count_refused(bool at_fd_limit)
{
    atomic_fetch_add_explicit(at_fd_limit ? &connections_refused_fd
                                          : &connections_refused_limit,
                              1, memory_order_relaxed);
}


void server_get_overload_stats(server_overload_stats_t *out)
{
    long n = atomic_load_explicit(&requests_in_flight, memory_order_relaxed);
    out->requests_in_flight = n > 0 ? (uint64_t)n : 0;
    out->requests_shed =
        atomic_load_explicit(&requests_shed, memory_order_relaxed);
    n = atomic_load_explicit(&connections_open, memory_order_relaxed);
    out->connections_open = n > 0 ? (uint64_t)n : 0;
    out->connections_refused_limit =
        atomic_load_explicit(&connections_refused_limit, memory_order_relaxed);
    out->connections_refused_fd =
        atomic_load_explicit(&connections_refused_fd, memory_order_relaxed);
}
