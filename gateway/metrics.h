/* Per-worker counters, gauges and histograms for the admin listener's
 * /metrics, summed over the workers when the endpoint is scraped.
 *
 * Each worker writes only its own metrics_worker_t, with relaxed atomic
 * loads and stores (one writer, so no read-modify-write instruction is
 * needed), and the admin thread reads them with relaxed loads. Nothing on
 * the request path takes a lock. A series (one route, or one service) is
 * created by its worker on first use and published by a release store of
 * the list head. Series are removed only by metrics_worker_free, so the
 * reader may walk the list at any time before that. */
#ifndef TUTTI_METRICS_H
#define TUTTI_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"

/* Statuses 100 to 599 are counted one by one. */
#define METRICS_STATUS_MIN 100
#define METRICS_NSTATUS 500

/* Upper bounds of the duration buckets, in seconds, and of the fan-out
 * width buckets, in calls; each histogram also has a +Inf bucket. */
#define METRICS_NDURATION_BUCKETS 12
#define METRICS_NWIDTH_BUCKETS 10

/* How a downstream call ended, as the call duration histogram labels it. */
typedef enum {
    METRICS_OUTCOME_OK = 0,
    METRICS_OUTCOME_ERROR,     /* status >= 400, connect, reset, bad body */
    METRICS_OUTCOME_TIMEOUT,   /* its own timeout or the request deadline */
    METRICS_OUTCOME_CANCELLED, /* abandoned by the fan-out, result unused */
    METRICS_NOUTCOMES,
} metrics_outcome_t;

/* Number of cancel_cause_t values, CAUSE_NONE included. */
#define METRICS_NCAUSES 5

typedef atomic_uint_least64_t metrics_counter_t;

typedef struct metrics_histogram_s {
    /* Per bucket, not cumulative; the last one is +Inf. */
    metrics_counter_t buckets[METRICS_NDURATION_BUCKETS + 1];
    metrics_counter_t sum; /* nanoseconds for durations, calls for width */
} metrics_histogram_t;

/* The requests of one route, or the requests that matched no route with
 * one method. */
typedef struct metrics_route_s {
    struct metrics_route_s *next;
    char *method;
    char *route; /* the route path as configured; NULL: no route matched */
    metrics_counter_t status[METRICS_NSTATUS];
    metrics_histogram_t duration;
} metrics_route_t;

/* The calls to one service. */
typedef struct metrics_service_s {
    struct metrics_service_s *next;
    char *name;
    const char *protocol; /* "http", "h2c", "https" or "h2" */
    metrics_histogram_t duration[METRICS_NOUTCOMES];
    metrics_counter_t connections; /* gauge, set by the worker's heartbeat */
    atomic_bool resolved;          /* an endpoint set was built once */
} metrics_service_t;

typedef struct metrics_worker_s {
    _Atomic(metrics_route_t *) routes;
    _Atomic(metrics_service_t *) services;
    metrics_counter_t requests_in_flight; /* gauge */
    metrics_counter_t calls_in_flight;    /* gauge */
    metrics_counter_t cancelled[METRICS_NCAUSES];
    metrics_counter_t partial;
    metrics_counter_t wasted_calls;
    metrics_counter_t wasted_ns;
    metrics_histogram_t width;
    /* Copied from upstream_get_stats by the worker's heartbeat. */
    metrics_counter_t dns_resolutions;
    metrics_counter_t dns_resolve_failures;
    metrics_counter_t dns_refresh_failures;
    metrics_counter_t dns_stale_expired;
} metrics_worker_t;

/* Returns a zeroed metrics_worker_t, or NULL when out of memory. */
metrics_worker_t *metrics_worker_new(void);

/* Frees |m| and its series; no thread may read it any more. */
void metrics_worker_free(metrics_worker_t *m);

/* The label value of a service's scheme, e.g. "h2c". */
const char *metrics_protocol_name(scheme_t scheme);

/* ---- called by the worker that owns |m| ---- */

/* Returns the series of |route| (NULL: no route matched |method|),
 * creating it on first use; NULL when out of memory. */
metrics_route_t *metrics_route(metrics_worker_t *m, const char *method,
                               const route_t *route);

/* Returns the series of service |s|, creating it on first use; NULL when
 * out of memory. */
metrics_service_t *metrics_service(metrics_worker_t *m, const service_t *s);

void metrics_request_started(metrics_worker_t *m);

/* Counts one completed request under |status| (499 for a client that
 * went away) and observes its duration. */
void metrics_request_done(metrics_worker_t *m, const char *method,
                          const route_t *route, int status,
                          uint64_t duration_ns);

/* One fan-out started |ncalls| calls. */
void metrics_fanout_started(metrics_worker_t *m, size_t ncalls);

/* One call left the running state with |outcome| after |duration_ns|. */
void metrics_call_done(metrics_worker_t *m, const service_t *s,
                       metrics_outcome_t outcome, uint64_t duration_ns);

/* A running call was cancelled for |cause| (a cancel_cause_t). */
void metrics_call_cancelled(metrics_worker_t *m, int cause);

/* Counts a call whose work was thrown away: it was cancelled or timed
 * out, or it succeeded but the request got an error or no response. */
void metrics_call_wasted(metrics_worker_t *m, uint64_t duration_ns);

void metrics_partial_response(metrics_worker_t *m);

/* ---- called by the admin thread ---- */

/* Process-wide counters that other modules keep. */
typedef struct metrics_process_s {
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    uint64_t requests_shed;
    uint64_t connections_inbound; /* gauge */
} metrics_process_t;

/* Appends the Prometheus text exposition (format 0.0.4) of the sum over
 * |n| workers, and of |proc|, to |out|. Returns 0 or TE_NOMEM. */
int metrics_render(metrics_worker_t *const *workers, size_t n,
                   const metrics_process_t *proc, buf_t *out);

#endif
