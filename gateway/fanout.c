/* The fan-out state machine. */
#include "fanout.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "errors.h"
#include "headers.h"
#include "log.h"
#include "ptimer.h"

#define NS_PER_MS 1000000ULL

typedef enum {
    FCALL_PENDING = 0, /* started, no outcome yet */
    FCALL_OK,          /* body checked, kept in raw */
    FCALL_FAILED,      /* error object in error */
    FCALL_CANCELLED,   /* ended by the fan-out, outcome discarded */
} fcall_state_t;

typedef struct fcall_s {
    fanout_t *fo;
    const call_t *conf;
    upcall_t up;
    fcall_state_t state;
    buf_t path;
    char timeout_header[24];
    header_list_t headers;
    /* The id of the call's own span, a child of the gateway's. */
    uint8_t span_id[TRACE_SPAN_LEN];
    uint64_t expire_ns;      /* when the timer ends this call */
    fail_kind_t expire_kind; /* timeout, or deadline when that is earlier */
    uint64_t start_ns;
    uint64_t end_ns;
    int status;       /* downstream status, 0 if none */
    fail_kind_t kind; /* for FCALL_FAILED */
    buf_t raw;        /* FCALL_OK: the body as received */
    json_t *error;
} fcall_t;

struct fanout_s {
    uv_loop_t *loop;
    upstream_t *up;
    const route_t *route;
    char *request_id;
    char *content_type;
    trace_ctx_t trace;
    const char *body;
    size_t body_len;
    uint64_t start_ns;
    uint64_t deadline_ns;
    ptimer_t *timers;     /* the worker's; NULL only when start failed */
    ptimer_entry_t timer; /* the earliest expiry of the calls pending */
    fcall_t *calls;
    size_t ncalls;
    size_t pending;
    bool answered;
    cancel_cause_t cause;
    int status;
    char *answer_body;
    size_t answer_len;
    buf_t partial;
    fanout_answer_cb cb;
    void *cb_arg;
    metrics_worker_t *metrics; /* NULL: not counted */
};

static const char *const cause_names[] = {
    "none", "deadline", "first_error", "client_abort", "shutdown",
};


const char *fanout_cause_name(cancel_cause_t cause)
{
    return cause_names[cause];
}


static int64_t ms_since(const fanout_t *fo, uint64_t t)
{
    return (int64_t)((t - fo->start_ns) / NS_PER_MS);
}


static metrics_outcome_t call_outcome(const fcall_t *fc)
{
    switch (fc->state) {
    case FCALL_OK:
        return METRICS_OUTCOME_OK;
    case FCALL_FAILED:
        if (fc->kind == KIND_TIMEOUT || fc->kind == KIND_DEADLINE) {
            return METRICS_OUTCOME_TIMEOUT;
        }
        return METRICS_OUTCOME_ERROR;
    default:
        return METRICS_OUTCOME_CANCELLED;
    }
}


/* Counts a call that just left FCALL_PENDING. */
static void count_call_end(fanout_t *fo, const fcall_t *fc)
{
    if (fo->metrics != NULL) {
        metrics_call_done(fo->metrics, fc->conf->service, call_outcome(fc),
                          fc->end_ns - fc->start_ns);
    }
}


static void cancel_pending(fanout_t *fo, cancel_cause_t cause)
{
    uint64_t now = uv_hrtime();
    for (size_t i = 0; i < fo->ncalls; i++) {
        fcall_t *fc = &fo->calls[i];
        if (fc->state != FCALL_PENDING) {
            continue;
        }
        upstream_cancel(fo->up, &fc->up);
        fc->state = FCALL_CANCELLED;
        fc->end_ns = now;
        fo->pending--;
        count_call_end(fo, fc);
        if (fo->metrics != NULL) {
            metrics_call_cancelled(fo->metrics, cause);
        }
        if (log_enabled(LOG_DEBUG)) {
            json_t *f = json_pack("{s:s, s:s, s:s}", "call", fc->conf->name,
                                  "service", fc->conf->service->name, "cause",
                                  fanout_cause_name(cause));
            log_event(LOG_DEBUG, fo->request_id, "call cancelled", f);
        }
    }
    if (fo->cause == CAUSE_NONE) {
        fo->cause = cause;
    }
}


static void answer(fanout_t *fo, int status, char *body, size_t len)
{
    fo->answered = true;
    fo->status = status;
    fo->answer_body = body;
    fo->answer_len = len;
    ptimer_remove(fo->timers, &fo->timer);
    if (fo->cb != NULL) {
        fo->cb(fo, fo->cb_arg);
    }
}


/* The first failing required call decides the response, and the calls still
 * running are cancelled, as errgroup.WithContext cancels its context. */
static void answer_error(fanout_t *fo, fcall_t *fc, cancel_cause_t cause)
{
    cancel_pending(fo, cause);
    int status = aggregate_status(fc->kind, fc->status);
    size_t len = 0;
    char *body = aggregate_error_body(json_incref(fc->error), &len);
    answer(fo, status, body, len);
}


/* Builds the 200 body in one pass: each downstream body is copied as
 * received (it was checked to be JSON), so nothing is re-encoded. */
static void answer_success(fanout_t *fo)
{
    buf_t out = {0};
    json_t *errors = NULL;
    int rc = 0;

    for (size_t i = 0; i < fo->ncalls; i++) {
        fcall_t *fc = &fo->calls[i];
        if (fc->state == FCALL_OK) {
            bool no_body =
                fc->status == 204 || strcmp(fc->conf->method, "HEAD") == 0;
            rc |= aggregate_add_result(&out, fc->conf->name,
                                       no_body ? NULL : fc->raw.data,
                                       fc->raw.len);
            continue;
        }
        if (errors == NULL) {
            errors = json_object();
        }
        json_object_set(errors, fc->conf->name, fc->error);
        if (fo->partial.len > 0) {
            buf_append_str(&fo->partial, ",");
        }
        buf_append_str(&fo->partial, fc->conf->name);
    }
    rc |= aggregate_finish(&out, errors);
    if (errors != NULL && rc == 0 && fo->metrics != NULL) {
        metrics_partial_response(fo->metrics);
    }
    json_decref(errors);
    if (rc != 0) {
        buf_free(&out);
        size_t len = 0;
        char *body = aggregate_simple_error("internal", "out of memory", &len);
        answer(fo, 500, body, len);
        return;
    }
    answer(fo, 200, out.data, out.len);
}


static void log_call_failure(fanout_t *fo, fcall_t *fc, const char *message)
{
    json_t *f =
        json_pack("{s:s, s:s, s:s, s:s, s:b, s:s}", "call", fc->conf->name,
                  "service", fc->conf->service->name, "endpoint",
                  fc->up.endpoint, "kind", aggregate_kind_name(fc->kind),
                  "required", fc->conf->required, "error", message);
    if (f != NULL && fc->status > 0) {
        json_object_set_new(f, "status", json_integer(fc->status));
    }
    /* A service that is down fails every call to it. The key limits the
     * lines of each call and kind per second, and the rest are counted. */
    char key[160];
    snprintf(key, sizeof(key), "call failed|%s|%s|%s", fc->conf->service->name,
             fc->conf->name, aggregate_kind_name(fc->kind));
    log_event_limited(LOG_WARN, fo->request_id, "call failed", key, f);
}


/* Records the failure of a pending call and, for a required call, decides
 * the response. */
static void fail_call(fanout_t *fo, fcall_t *fc, fail_kind_t kind,
                      const char *message, cancel_cause_t cause)
{
    fc->state = FCALL_FAILED;
    fc->kind = kind;
    fc->end_ns = uv_hrtime();
    fc->error = aggregate_error_object(fc->conf->name, kind, fc->status,
                                       message, ms_since(fo, fc->end_ns));
    fo->pending--;
    count_call_end(fo, fc);
    log_call_failure(fo, fc, message);
    if (fc->conf->required && !fo->answered) {
        answer_error(fo, fc, cause);
    }
}


static void finish_if_complete(fanout_t *fo)
{
    if (!fo->answered && fo->pending == 0) {
        answer_success(fo);
    }
}


static void schedule_timer(fanout_t *fo)
{
    uint64_t next = 0;
    for (size_t i = 0; i < fo->ncalls; i++) {
        const fcall_t *fc = &fo->calls[i];
        if (fc->state == FCALL_PENDING && (next == 0 || fc->expire_ns < next)) {
            next = fc->expire_ns;
        }
    }
    if (next == 0) {
        ptimer_remove(fo->timers, &fo->timer);
        return;
    }
    /* Calls usually share the deadline, so when a call ends the entry is
     * mostly queued for the earliest expiry already and is left as it is.
     * The slot was reserved in fanout_start, so this cannot fail. */
    if (!ptimer_queued(&fo->timer) || fo->timer.due_ns != next) {
        (void)ptimer_set(fo->timers, &fo->timer, next);
    }
}


/* ptimer_cb: a call's timeout or the request deadline came due. The
 * ptimer runs an entry only once uv_hrtime() has reached its time, so no
 * timeout fires early. */
static void on_timer(ptimer_entry_t *e)
{
    fanout_t *fo = e->data;
    uint64_t now = uv_hrtime();

    /* Deadline expiries first, in call order, so that a required call
     * pending at the deadline decides the response with kind "deadline". */
    for (int pass = 0; pass < 2 && !fo->answered; pass++) {
        for (size_t i = 0; i < fo->ncalls && !fo->answered; i++) {
            fcall_t *fc = &fo->calls[i];
            if (fc->state != FCALL_PENDING || fc->expire_ns > now) {
                continue;
            }
            bool is_deadline = fc->expire_kind == KIND_DEADLINE;
            if ((pass == 0) != is_deadline) {
                continue;
            }
            char msg[128];
            if (is_deadline) {
                snprintf(msg, sizeof(msg), "request deadline of %lld ms passed",
                         (long long)ms_since(fo, fo->deadline_ns));
            } else {
                snprintf(msg, sizeof(msg), "call timed out after %lld ms",
                         (long long)fc->conf->timeout_ms);
            }
            upstream_cancel(fo->up, &fc->up);
            if (is_deadline && fo->metrics != NULL) {
                metrics_call_cancelled(fo->metrics, CAUSE_DEADLINE);
            }
            fail_call(fo, fc, fc->expire_kind, msg,
                      is_deadline ? CAUSE_DEADLINE : CAUSE_FIRST_ERROR);
        }
    }
    if (fo->answered) {
        return;
    }
    finish_if_complete(fo);
    if (!fo->answered) {
        schedule_timer(fo);
    }
}


/* upcall_done_cb: a downstream call ended. */
static void on_call_done(upcall_t *up, int err)
{
    fcall_t *fc = up->data;
    fanout_t *fo = fc->fo;
    char why[200];

    fc->status = up->status;
    if (err != 0) {
        buf_free(&up->body_out);
        fail_call(fo, fc, aggregate_kind_from_error(err), up->errmsg,
                  CAUSE_FIRST_ERROR);
    } else if (up->status < 200 || up->status >= 300) {
        /* A result needs a 2xx. tutti follows no redirect, so a 3xx
         * body is not the service's result either. */
        buf_free(&up->body_out);
        snprintf(why, sizeof(why), "service %s answered %d",
                 fc->conf->service->name, up->status);
        fail_call(fo, fc, KIND_STATUS, why, CAUSE_FIRST_ERROR);
    } else {
        /* A response to HEAD has no body; it counts as JSON null, as a
         * 204 does. */
        int body_status =
            strcmp(fc->conf->method, "HEAD") == 0 ? 204 : up->status;
        int rc = aggregate_check_body(body_status, up->body_out.data,
                                      up->body_out.len, why, sizeof(why));
        if (rc != 0) {
            buf_free(&up->body_out);
            fail_call(fo, fc, KIND_BAD_RESPONSE, why, CAUSE_FIRST_ERROR);
        } else {
            fc->raw = up->body_out;
            up->body_out = (buf_t){0};
            fc->state = FCALL_OK;
            fc->end_ns = uv_hrtime();
            fo->pending--;
            count_call_end(fo, fc);
        }
    }
    if (!fo->answered) {
        finish_if_complete(fo);
    }
    if (!fo->answered) {
        schedule_timer(fo);
    }
}


/* Builds the call's header fields: tutti's own (request id, deadline,
 * trace context), then the service's header policy. */
static int add_call_headers(fanout_t *fo, fcall_t *fc,
                            const fanout_request_t *req, bool send_body)
{
    header_list_t *l = &fc->headers;
    char traceparent[TRACEPARENT_LEN + 1];

    trace_new_span(fc->span_id);
    trace_format_parent(&fo->trace, fc->span_id, traceparent);
    int rc = header_list_add(l, "x-request-id", fo->request_id);
    rc = rc != 0 ? rc
                 : header_list_add(l, "request-timeout-ms", fc->timeout_header);
    rc = rc != 0 ? rc : header_list_add(l, "accept", "application/json");
    if (rc == 0 && send_body && fo->content_type != NULL) {
        rc = header_list_add(l, "content-type", fo->content_type);
    }
    rc = rc != 0 ? rc : header_list_add(l, "traceparent", traceparent);
    if (rc == 0 && req->headers != NULL) {
        rc = headers_build_call(l, &fc->conf->service->options.headers,
                                fc->conf->set_values, req->headers, req->values,
                                req->query, req->query_arg);
    }
    return rc;
}


/* Writes |v| in decimal and a NUL to |out|, which has room for 21 bytes. */
static void format_decimal(uint64_t v, char *out)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++) {
        out[i] = digits[n - 1 - i];
    }
    out[n] = '\0';
}


static int prepare_call(fanout_t *fo, fcall_t *fc, const call_t *conf,
                        const fanout_request_t *req, uint64_t now)
{
    fc->fo = fo;
    fc->conf = conf;
    if (template_expand(&conf->path, req->values, req->query, req->query_arg,
                        &fc->path) != 0) {
        return TE_NOMEM;
    }

    fc->expire_ns = fo->deadline_ns;
    fc->expire_kind = KIND_DEADLINE;
    if (conf->timeout_ms > 0) {
        uint64_t own = now + (uint64_t)conf->timeout_ms * NS_PER_MS;
        if (own < fo->deadline_ns) {
            fc->expire_ns = own;
            fc->expire_kind = KIND_TIMEOUT;
        }
    }
    uint64_t budget = fc->expire_ns > now ? fc->expire_ns - now : 0;
    format_decimal(budget / NS_PER_MS, fc->timeout_header);

    bool send_body = conf->forward_body && req->body_len > 0;
    if (add_call_headers(fo, fc, req, send_body) != 0) {
        return TE_NOMEM;
    }

    upcall_t *up = &fc->up;
    up->method = conf->method;
    up->path = fc->path.data;
    up->authority = conf->service->authority;
    up->max_body = req->max_body;
    up->on_done = on_call_done;
    up->data = fc;
    up->deadline_ns = fc->expire_ns;
    if (send_body) {
        up->body = req->body;
        up->body_len = req->body_len;
    }
    up->headers = fc->headers.items;
    up->nheaders = fc->headers.count;
    return 0;
}


/* Logs the call about to start with its header fields, whose secret
 * values are redacted: the way to see what a service was sent. */
static void log_call_start(const fanout_t *fo, const fcall_t *fc,
                           const fanout_request_t *req)
{
    char span[TRACE_SPAN_HEX];
    trace_hex(fc->span_id, TRACE_SPAN_LEN, span);
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s}", "call", fc->conf->name,
                          "service", fc->conf->service->name, "method",
                          fc->up.method, "path", fc->up.path, "span_id", span);
    if (f != NULL) {
        json_object_set_new(f, "headers",
                            headers_log_json(&fc->headers, req->secret_headers,
                                             req->nsecret_headers));
    }
    log_event(LOG_DEBUG, fo->request_id, "call started", f);
}


/* Starts |fc| on the service table of the request's configuration, so
 * that its service index means what it meant in that configuration. */
static void start_call(fanout_t *fo, upstream_table_t *services, fcall_t *fc)
{
    size_t index = fc->conf->service->index;
    if (services != NULL) {
        upstream_table_start(services, index, &fc->up);
    } else {
        upstream_start(fo->up, index, &fc->up);
    }
}


fanout_t *fanout_start(uv_loop_t *loop, upstream_t *up,
                       const fanout_request_t *req, fanout_answer_cb cb,
                       void *arg)
{
    fanout_t *fo = calloc(1, sizeof(*fo));
    if (fo == NULL) {
        return NULL;
    }
    fo->loop = loop;
    fo->up = up;
    fo->route = req->route;
    fo->cb = cb;
    fo->cb_arg = arg;
    fo->start_ns = req->start_ns;
    fo->deadline_ns = req->start_ns + (uint64_t)req->budget_ms * NS_PER_MS;
    fo->request_id = strdup(req->request_id);
    fo->content_type =
        req->content_type != NULL ? strdup(req->content_type) : NULL;
    if (req->trace != NULL) {
        fo->trace = *req->trace;
    } else {
        trace_begin(&fo->trace, NULL);
    }
    fo->ncalls = req->route->ncalls;
    fo->calls = calloc(fo->ncalls, sizeof(*fo->calls));
    ptimer_entry_init(&fo->timer, on_timer, fo);
    if (fo->request_id == NULL || fo->calls == NULL ||
        (req->content_type != NULL && fo->content_type == NULL)) {
        goto fail;
    }
    /* The worker's ptimer, whose heap keeps a slot for this fan-out. */
    ptimer_t *timers = ptimer_of(loop);
    if (timers == NULL || ptimer_reserve(timers) != 0) {
        goto fail;
    }
    fo->timers = timers;

    uint64_t now = uv_hrtime();
    for (size_t i = 0; i < fo->ncalls; i++) {
        if (prepare_call(fo, &fo->calls[i], &req->route->calls[i], req, now) !=
            0) {
            goto fail;
        }
    }

    /* Every call starts now; none waits for another. A call whose budget
     * is already spent is not sent, and the timer fails it at once. */
    fo->pending = fo->ncalls;
    fo->metrics = req->metrics;
    if (fo->metrics != NULL) {
        metrics_fanout_started(fo->metrics, fo->ncalls);
    }
    for (size_t i = 0; i < fo->ncalls; i++) {
        fcall_t *fc = &fo->calls[i];
        fc->start_ns = now;
        if (log_enabled(LOG_DEBUG)) {
            log_call_start(fo, fc, req);
        }
        if (fc->expire_ns > now) {
            start_call(fo, req->services, fc);
        }
    }
    schedule_timer(fo);
    return fo;

fail:
    fanout_free(fo);
    return NULL;
}


void fanout_abort(fanout_t *fo, cancel_cause_t cause)
{
    if (fo->answered && fo->pending == 0) {
        return;
    }
    if (cause == CAUSE_CLIENT_ABORT) {
        cancel_pending(fo, cause);
        fo->answered = true;
        fo->cause = cause;
        ptimer_remove(fo->timers, &fo->timer);
        return;
    }

    /* Shutdown: the first pending required call names the error. */
    const fcall_t *named = NULL;
    for (size_t i = 0; i < fo->ncalls && named == NULL; i++) {
        if (fo->calls[i].state == FCALL_PENDING &&
            fo->calls[i].conf->required) {
            named = &fo->calls[i];
        }
    }
    cancel_pending(fo, cause);
    if (fo->answered) {
        return;
    }
    size_t len = 0;
    json_t *e = aggregate_error_object(
        named != NULL ? named->conf->name : NULL, KIND_SHUTDOWN, 0,
        "the gateway is shutting down", ms_since(fo, uv_hrtime()));
    char *body = aggregate_error_body(e, &len);
    answer(fo, aggregate_status(KIND_SHUTDOWN, 0), body, len);
}


int fanout_status(const fanout_t *fo)
{
    return fo->status;
}


char *fanout_take_body(fanout_t *fo, size_t *len)
{
    char *b = fo->answer_body;
    *len = fo->answer_len;
    fo->answer_body = NULL;
    fo->answer_len = 0;
    return b;
}


const char *fanout_partial(const fanout_t *fo)
{
    return fo->partial.data != NULL ? fo->partial.data : "";
}


cancel_cause_t fanout_cause(const fanout_t *fo)
{
    return fo->cause;
}


static const char *outcome_name(const fcall_t *fc)
{
    switch (fc->state) {
    case FCALL_OK:
        return "ok";
    case FCALL_CANCELLED:
        return "cancelled";
    case FCALL_FAILED:
        if (fc->kind == KIND_TIMEOUT || fc->kind == KIND_DEADLINE) {
            return "timeout";
        }
        return "error";
    default:
        return "pending";
    }
}


json_t *fanout_calls_json(const fanout_t *fo)
{
    json_t *list = json_array();
    for (size_t i = 0; i < fo->ncalls; i++) {
        const fcall_t *fc = &fo->calls[i];
        uint64_t end = fc->end_ns != 0 ? fc->end_ns : uv_hrtime();
        json_t *c = json_pack(
            "{s:s, s:s, s:s, s:i, s:s, s:I}", "name", fc->conf->name, "service",
            fc->conf->service->name, "endpoint", fc->up.endpoint, "status",
            fc->status, "outcome", outcome_name(fc), "duration_ms",
            (json_int_t)ms_since(fo, end));
        if (c != NULL && fc->state == FCALL_FAILED) {
            json_object_set_new(c, "kind",
                                json_string(aggregate_kind_name(fc->kind)));
        }
        if (c != NULL) {
            char span[TRACE_SPAN_HEX];
            trace_hex(fc->span_id, TRACE_SPAN_LEN, span);
            json_object_set_new(c, "span_id", json_string(span));
        }
        json_array_append_new(list, c);
    }
    return list;
}


static const char *call_state_name(const fcall_t *fc)
{
    switch (fc->state) {
    case FCALL_OK:
    case FCALL_FAILED:
        return "done";
    case FCALL_CANCELLED:
        return "cancelled";
    default:
        break;
    }
    switch (fc->up.phase) {
    case UPCALL_RESOLVING:
        return "resolving";
    case UPCALL_CONNECTING:
        return "connecting";
    case UPCALL_WAITING:
        return "waiting";
    case UPCALL_RECEIVING:
        return "receiving";
    case UPCALL_CANCELLED:
        return "cancelled";
    default:
        /* UPCALL_IDLE or UPCALL_DONE while pending: a call that was never
         * sent (its budget was spent) or whose failure is reported on the
         * next loop iteration. No downstream work is left. */
        return "done";
    }
}


json_t *fanout_inflight_json(const fanout_t *fo, uint64_t now)
{
    json_t *list = json_array();
    for (size_t i = 0; i < fo->ncalls && list != NULL; i++) {
        const fcall_t *fc = &fo->calls[i];
        json_t *c = json_pack(
            "{s:s, s:s, s:s?, s:s, s:b, s:I}", "name", fc->conf->name,
            "service", fc->conf->service->name, "endpoint",
            fc->up.endpoint[0] != '\0' ? fc->up.endpoint : NULL, "state",
            call_state_name(fc), "required", fc->conf->required, "age_ms",
            (json_int_t)((now - fc->start_ns) / NS_PER_MS));
        json_array_append_new(list, c);
    }
    return list;
}


static void free_fanout(fanout_t *fo)
{
    /* calls is NULL when fanout_start could not allocate it. */
    for (size_t i = 0; fo->calls != NULL && i < fo->ncalls; i++) {
        fcall_t *fc = &fo->calls[i];
        buf_free(&fc->path);
        header_list_free(&fc->headers);
        buf_free(&fc->up.body_out);
        buf_free(&fc->raw);
        json_decref(fc->error);
    }
    free(fo->calls);
    free(fo->answer_body);
    buf_free(&fo->partial);
    free(fo->request_id);
    free(fo->content_type);
    free(fo);
}


/* Counts the calls whose downstream work was thrown away: those tutti
 * abandoned (cancelled, or ended by their timeout or the deadline), and
 * the successful ones when the answer was not a 200 (or there was none,
 * after a client abort). */
static void count_wasted(const fanout_t *fo)
{
    for (size_t i = 0; i < fo->ncalls; i++) {
        const fcall_t *fc = &fo->calls[i];
        bool abandoned =
            /* calls is NULL only when ncalls is 0. */
            /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
            fc->state == FCALL_CANCELLED ||
            (fc->state == FCALL_FAILED &&
             (fc->kind == KIND_TIMEOUT || fc->kind == KIND_DEADLINE));
        if (abandoned || (fc->state == FCALL_OK && fo->status != 200)) {
            metrics_call_wasted(fo->metrics, fc->end_ns - fc->start_ns);
        }
    }
}


void fanout_free(fanout_t *fo)
{
    fo->cb = NULL;
    if (fo->pending > 0) {
        cancel_pending(fo, fo->cause != CAUSE_NONE ? fo->cause
                                                   : CAUSE_CLIENT_ABORT);
    }
    if (fo->metrics != NULL) {
        count_wasted(fo);
    }
    if (fo->timers != NULL) {
        ptimer_remove(fo->timers, &fo->timer);
        ptimer_unreserve(fo->timers);
    }
    free_fanout(fo);
}
