/* One fan-out: every call of a route started at once, each under its own
 * timeout inside the request's deadline, with errgroup semantics: the
 * first failing required call decides the response and cancels the rest.
 *
 * A fan-out lives on one worker's loop and is driven by the clients'
 * callbacks and by one entry in the loop's ptimer (ptimer.h) that tracks
 * the earliest timeout of the calls still running. See
 * docs/ARCHITECTURE.md for the state machine. */
#ifndef TUTTI_FANOUT_H
#define TUTTI_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "config.h"
#include "headers.h"
#include "metrics.h"
#include "template.h"
#include "trace.h"
#include "upstream.h"

typedef struct fanout_s fanout_t;

/* Why calls still running were cancelled. */
typedef enum {
    CAUSE_NONE = 0,
    CAUSE_DEADLINE,     /* the request deadline passed */
    CAUSE_FIRST_ERROR,  /* a required call failed */
    CAUSE_CLIENT_ABORT, /* the client closed its connection */
    CAUSE_SHUTDOWN,     /* the gateway's shutdown grace ran out */
} cancel_cause_t;

const char *fanout_cause_name(cancel_cause_t cause);

typedef struct fanout_request_s {
    const route_t *route;
    const char *const *values; /* decoded route parameter values */
    template_query_fn query;   /* inbound query parameter lookup */
    void *query_arg;
    const char *request_id; /* copied */
    const char *body;       /* inbound body; must outlive the fan-out */
    size_t body_len;
    const char *content_type; /* inbound Content-Type or NULL; copied */
    uint64_t start_ns;        /* uv_hrtime() when the request arrived */
    int64_t budget_ms;        /* deadline in ms from start_ns */
    size_t max_body;          /* per-call response body limit */
    /* The worker's metrics; NULL: not counted. */
    metrics_worker_t *metrics;
    /* The request's trace; each call gets a child span of it. Copied.
     * NULL starts a new trace. */
    const trace_ctx_t *trace;
    /* Inbound fields and X-Forwarded-* values for the header policy, read
     * only inside fanout_start. NULL: no policy fields. */
    const headers_request_t *headers;
    /* "secret_headers", whose values the debug lines of fanout_start
     * redact. */
    char *const *secret_headers;
    size_t nsecret_headers;
    /* The dispatcher's service table of the configuration that |route|
     * belongs to; the caller holds it until fanout_free. NULL: the
     * current table. */
    upstream_table_t *services;
} fanout_request_t;

/* Called once when the response is decided (never for a client abort). */
typedef void (*fanout_answer_cb)(fanout_t *fo, void *arg);

/* Starts every call of the route on |loop|, which must have a ptimer
 * (ptimer_init). Returns NULL on allocation failure. The response
 * callback is never made from inside fanout_start. */
fanout_t *fanout_start(uv_loop_t *loop, upstream_t *up,
                       const fanout_request_t *req, fanout_answer_cb cb,
                       void *arg);

/* Cancels the calls still running. For CAUSE_SHUTDOWN the response (503)
 * is decided and the callback made before this returns, if no response was
 * decided yet; for CAUSE_CLIENT_ABORT no callback follows. */
void fanout_abort(fanout_t *fo, cancel_cause_t cause);

/* The decided response: status, body (ownership passes to the caller on
 * fanout_take_body) and the Tutti-Partial value ("" when complete). */
int fanout_status(const fanout_t *fo);
char *fanout_take_body(fanout_t *fo, size_t *len);
const char *fanout_partial(const fanout_t *fo);
cancel_cause_t fanout_cause(const fanout_t *fo);

/* Describes each call for the access log: name, service, endpoint,
 * status, outcome, kind, duration_ms. Returns a new reference. */
json_t *fanout_calls_json(const fanout_t *fo);

/* Describes each call for the in-flight view: name, service, endpoint
 * (null until known), state (resolving, connecting, waiting, receiving,
 * done or cancelled), required and age_ms at |now| (uv_hrtime()).
 * Returns a new reference. */
json_t *fanout_inflight_json(const fanout_t *fo, uint64_t now);

/* Cancels anything still running and frees the fan-out. No callback
 * follows. */
void fanout_free(fanout_t *fo);

#endif
