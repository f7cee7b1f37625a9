/* Metrics storage and the Prometheus text exposition. */
#include "metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "fanout.h"

static const double duration_bounds[METRICS_NDURATION_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
};

static const uint64_t width_bounds[METRICS_NWIDTH_BUCKETS] = {
    1, 2, 3, 4, 5, 6, 8, 10, 16, 32,
};

static const char *const outcome_names[METRICS_NOUTCOMES] = {
    "ok",
    "error",
    "timeout",
    "cancelled",
};

/* Methods outside this list are counted as "other" when no route matched,
 * so that a client cannot create series without bound. */
static const char *const known_methods[] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
};


/* Adds |n| to a counter that only the calling thread writes. */
static void bump(metrics_counter_t *c, uint64_t n)
{
    uint64_t v = atomic_load_explicit(c, memory_order_relaxed);
    atomic_store_explicit(c, v + n, memory_order_relaxed);
}


static uint64_t read_counter(const metrics_counter_t *c)
{
    return atomic_load_explicit((metrics_counter_t *)c, memory_order_relaxed);
}


metrics_worker_t *metrics_worker_new(void)
{
    return calloc(1, sizeof(metrics_worker_t));
}


void metrics_worker_free(metrics_worker_t *m)
{
    if (m == NULL) {
        return;
    }
    metrics_route_t *r = atomic_load(&m->routes);
    while (r != NULL) {
        metrics_route_t *next = r->next;
        free(r->method);
        free(r->route);
        free(r);
        r = next;
    }
    metrics_service_t *s = atomic_load(&m->services);
    while (s != NULL) {
        metrics_service_t *next = s->next;
        free(s->name);
        free(s);
        s = next;
    }
    free(m);
}


const char *metrics_protocol_name(scheme_t scheme)
{
    switch (scheme) {
    case SCHEME_H2C:
        return "h2c";
    case SCHEME_HTTPS:
        return "https";
    case SCHEME_H2:
        return "h2";
    case SCHEME_HTTP:
    default:
        return "http";
    }
}


static const char *method_label(const char *method, const route_t *route)
{
    if (route != NULL) {
        return route->method;
    }
    for (size_t i = 0; i < sizeof(known_methods) / sizeof(known_methods[0]);
         i++) {
        if (strcmp(method, known_methods[i]) == 0) {
            return known_methods[i];
        }
    }
    return "other";
}


static bool same_string(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strcmp(a, b) == 0;
}


metrics_route_t *metrics_route(metrics_worker_t *m, const char *method,
                               const route_t *route)
{
    const char *label = method_label(method, route);
    const char *path = route != NULL ? route->path : NULL;
    metrics_route_t *head =
        atomic_load_explicit(&m->routes, memory_order_relaxed);

    for (metrics_route_t *r = head; r != NULL; r = r->next) {
        if (strcmp(r->method, label) == 0 && same_string(r->route, path)) {
            return r;
        }
    }
    metrics_route_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    r->method = strdup(label);
    r->route = path != NULL ? strdup(path) : NULL;
    if (r->method == NULL || (path != NULL && r->route == NULL)) {
        free(r->method);
        free(r->route);
        free(r);
        return NULL;
    }
    r->next = head;
    /* Release order, so that the admin thread reads a complete series. */
    atomic_store_explicit(&m->routes, r, memory_order_release);
    return r;
}


metrics_service_t *metrics_service(metrics_worker_t *m, const service_t *s)
{
    const char *protocol = metrics_protocol_name(s->scheme);
    metrics_service_t *head =
        atomic_load_explicit(&m->services, memory_order_relaxed);

    for (metrics_service_t *ms = head; ms != NULL; ms = ms->next) {
        if (ms->protocol == protocol && strcmp(ms->name, s->name) == 0) {
            return ms;
        }
    }
    metrics_service_t *ms = calloc(1, sizeof(*ms));
    if (ms == NULL) {
        return NULL;
    }
    ms->name = strdup(s->name);
    if (ms->name == NULL) {
        free(ms);
        return NULL;
    }
    ms->protocol = protocol;
    ms->next = head;
    atomic_store_explicit(&m->services, ms, memory_order_release);
    return ms;
}


static void observe_duration(metrics_histogram_t *h, uint64_t ns)
{
    double seconds = (double)ns / 1e9;
    size_t i = 0;
    while (i < METRICS_NDURATION_BUCKETS && seconds > duration_bounds[i]) {
        i++;
    }
    bump(&h->buckets[i], 1);
    bump(&h->sum, ns);
}


void metrics_request_started(metrics_worker_t *m)
{
    bump(&m->requests_in_flight, 1);
}


void metrics_request_done(metrics_worker_t *m, const char *method,
                          const route_t *route, int status,
                          uint64_t duration_ns)
{
    /* The gauge is unsigned; adding 2^64 - 1 subtracts one. */
    bump(&m->requests_in_flight, UINT64_MAX);
    metrics_route_t *r = metrics_route(m, method, route);
    if (r == NULL) {
        return;
    }
    if (status >= METRICS_STATUS_MIN &&
        status < METRICS_STATUS_MIN + METRICS_NSTATUS) {
        bump(&r->status[status - METRICS_STATUS_MIN], 1);
    }
    observe_duration(&r->duration, duration_ns);
}


void metrics_fanout_started(metrics_worker_t *m, size_t ncalls)
{
    size_t i = 0;
    while (i < METRICS_NWIDTH_BUCKETS && ncalls > width_bounds[i]) {
        i++;
    }
    bump(&m->width.buckets[i], 1);
    bump(&m->width.sum, ncalls);
    bump(&m->calls_in_flight, ncalls);
}


void metrics_call_done(metrics_worker_t *m, const service_t *s,
                       metrics_outcome_t outcome, uint64_t duration_ns)
{
    bump(&m->calls_in_flight, UINT64_MAX);
    metrics_service_t *ms = metrics_service(m, s);
    if (ms != NULL) {
        observe_duration(&ms->duration[outcome], duration_ns);
    }
}


void metrics_call_cancelled(metrics_worker_t *m, int cause)
{
    if (cause > 0 && cause < METRICS_NCAUSES) {
        bump(&m->cancelled[cause], 1);
    }
}


void metrics_call_wasted(metrics_worker_t *m, uint64_t duration_ns)
{
    bump(&m->wasted_calls, 1);
    bump(&m->wasted_ns, duration_ns);
}


void metrics_partial_response(metrics_worker_t *m)
{
    bump(&m->partial, 1);
}


/* ---- rendering, on the admin thread ---- */

/* A series summed over the workers. */
typedef struct sum_route_s {
    const char *method;
    const char *route;
    uint64_t status[METRICS_NSTATUS];
    uint64_t buckets[METRICS_NDURATION_BUCKETS + 1];
    uint64_t sum_ns;
} sum_route_t;

typedef struct sum_service_s {
    const char *name;
    const char *protocol;
    uint64_t buckets[METRICS_NOUTCOMES][METRICS_NDURATION_BUCKETS + 1];
    uint64_t sum_ns[METRICS_NOUTCOMES];
    uint64_t connections;
} sum_service_t;

typedef struct totals_s {
    sum_route_t *routes;
    size_t nroutes;
    sum_service_t *services;
    size_t nservices;
    uint64_t requests_in_flight;
    uint64_t calls_in_flight;
    uint64_t cancelled[METRICS_NCAUSES];
    uint64_t partial;
    uint64_t wasted_calls;
    uint64_t wasted_ns;
    uint64_t width[METRICS_NWIDTH_BUCKETS + 1];
    uint64_t width_sum;
    uint64_t dns_resolutions;
    uint64_t dns_resolve_failures;
    uint64_t dns_refresh_failures;
    uint64_t dns_stale_expired;
} totals_t;


static sum_route_t *find_route(totals_t *t, const metrics_route_t *r)
{
    for (size_t i = 0; i < t->nroutes; i++) {
        if (strcmp(t->routes[i].method, r->method) == 0 &&
            same_string(t->routes[i].route, r->route)) {
            return &t->routes[i];
        }
    }
    sum_route_t *grown =
        realloc(t->routes, (t->nroutes + 1) * sizeof(*t->routes));
    if (grown == NULL) {
        return NULL;
    }
    t->routes = grown;
    sum_route_t *sr = &t->routes[t->nroutes++];
    memset(sr, 0, sizeof(*sr));
    sr->method = r->method;
    sr->route = r->route;
    return sr;
}


static sum_service_t *find_service(totals_t *t, const metrics_service_t *s)
{
    for (size_t i = 0; i < t->nservices; i++) {
        if (t->services[i].protocol == s->protocol &&
            strcmp(t->services[i].name, s->name) == 0) {
            return &t->services[i];
        }
    }
    sum_service_t *grown =
        realloc(t->services, (t->nservices + 1) * sizeof(*t->services));
    if (grown == NULL) {
        return NULL;
    }
    t->services = grown;
    sum_service_t *ss = &t->services[t->nservices++];
    memset(ss, 0, sizeof(*ss));
    ss->name = s->name;
    ss->protocol = s->protocol;
    return ss;
}


static int add_routes(totals_t *t, const metrics_worker_t *m)
{
    metrics_route_t *r = atomic_load_explicit(&((metrics_worker_t *)m)->routes,
                                              memory_order_acquire);
    for (; r != NULL; r = r->next) {
        sum_route_t *sr = find_route(t, r);
        if (sr == NULL) {
            return TE_NOMEM;
        }
        for (size_t i = 0; i < METRICS_NSTATUS; i++) {
            sr->status[i] += read_counter(&r->status[i]);
        }
        for (size_t i = 0; i <= METRICS_NDURATION_BUCKETS; i++) {
            sr->buckets[i] += read_counter(&r->duration.buckets[i]);
        }
        sr->sum_ns += read_counter(&r->duration.sum);
    }
    return 0;
}


static int add_services(totals_t *t, const metrics_worker_t *m)
{
    metrics_service_t *s = atomic_load_explicit(
        &((metrics_worker_t *)m)->services, memory_order_acquire);
    for (; s != NULL; s = s->next) {
        sum_service_t *ss = find_service(t, s);
        if (ss == NULL) {
            return TE_NOMEM;
        }
        for (size_t o = 0; o < METRICS_NOUTCOMES; o++) {
            for (size_t i = 0; i <= METRICS_NDURATION_BUCKETS; i++) {
                ss->buckets[o][i] += read_counter(&s->duration[o].buckets[i]);
            }
            ss->sum_ns[o] += read_counter(&s->duration[o].sum);
        }
        ss->connections += read_counter(&s->connections);
    }
    return 0;
}


static int add_worker(totals_t *t, const metrics_worker_t *m)
{
    t->requests_in_flight += read_counter(&m->requests_in_flight);
    t->calls_in_flight += read_counter(&m->calls_in_flight);
    for (size_t i = 0; i < METRICS_NCAUSES; i++) {
        t->cancelled[i] += read_counter(&m->cancelled[i]);
    }
    t->partial += read_counter(&m->partial);
    t->wasted_calls += read_counter(&m->wasted_calls);
    t->wasted_ns += read_counter(&m->wasted_ns);
    for (size_t i = 0; i <= METRICS_NWIDTH_BUCKETS; i++) {
        t->width[i] += read_counter(&m->width.buckets[i]);
    }
    t->width_sum += read_counter(&m->width.sum);
    t->dns_resolutions += read_counter(&m->dns_resolutions);
    t->dns_resolve_failures += read_counter(&m->dns_resolve_failures);
    t->dns_refresh_failures += read_counter(&m->dns_refresh_failures);
    t->dns_stale_expired += read_counter(&m->dns_stale_expired);
    if (add_routes(t, m) != 0) {
        return TE_NOMEM;
    }
    return add_services(t, m);
}


/* Appends |s| as a label value: backslash, double quote and line feed
 * are escaped, as the text format requires. */
static int append_label_value(buf_t *out, const char *s)
{
    int rc = 0;
    for (const char *p = s; *p != '\0' && rc == 0; p++) {
        switch (*p) {
        case '\\':
            rc = buf_append_str(out, "\\\\");
            break;
        case '"':
            rc = buf_append_str(out, "\\\"");
            break;
        case '\n':
            rc = buf_append_str(out, "\\n");
            break;
        default:
            rc = buf_append(out, p, 1);
            break;
        }
    }
    return rc;
}


static int append_header(buf_t *out, const char *name, const char *type,
                         const char *help)
{
    return buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                       type);
}


/* Appends "name{labels}" where |labels| is "" or "key=\"value\",..."
 * already escaped. */
static int append_sample_u64(buf_t *out, const char *name, const char *labels,
                             uint64_t value)
{
    if (labels[0] == '\0') {
        return buf_appendf(out, "%s %" PRIu64 "\n", name, value);
    }
    return buf_appendf(out, "%s{%s} %" PRIu64 "\n", name, labels, value);
}


static int append_histogram(buf_t *out, const char *name, const char *labels,
                            const uint64_t *buckets, size_t nbounds,
                            const double *bounds_s, const uint64_t *bounds_n,
                            double sum)
{
    const char *sep = labels[0] != '\0' ? "," : "";
    uint64_t cumulative = 0;
    int rc = 0;

    for (size_t i = 0; i <= nbounds && rc == 0; i++) {
        cumulative += buckets[i];
        if (i == nbounds) {
            rc = buf_appendf(out, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n",
                             name, labels, sep, cumulative);
        } else if (bounds_s != NULL) {
            rc = buf_appendf(out, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n",
                             name, labels, sep, bounds_s[i], cumulative);
        } else {
            rc = buf_appendf(out,
                             "%s_bucket{%s%sle=\"%" PRIu64 "\"} %" PRIu64 "\n",
                             name, labels, sep, bounds_n[i], cumulative);
        }
    }
    if (rc != 0) {
        return rc;
    }
    const char *open = labels[0] != '\0' ? "{" : "";
    const char *close = labels[0] != '\0' ? "}" : "";
    return buf_appendf(out, "%s_sum%s%s%s %.9g\n%s_count%s%s%s %" PRIu64 "\n",
                       name, open, labels, close, sum, name, open, labels,
                       close, cumulative);
}


/* Writes route="...",method="..." into |labels|. */
static int route_labels(buf_t *labels, const sum_route_t *sr)
{
    buf_reset(labels);
    int rc = buf_append_str(labels, "route=\"");
    rc |= append_label_value(labels, sr->route != NULL ? sr->route : "");
    rc |= buf_append_str(labels, "\",method=\"");
    rc |= append_label_value(labels, sr->method);
    rc |= buf_append_str(labels, "\"");
    return rc != 0 ? TE_NOMEM : 0;
}


static int service_labels(buf_t *labels, const sum_service_t *ss)
{
    buf_reset(labels);
    int rc = buf_append_str(labels, "service=\"");
    rc |= append_label_value(labels, ss->name);
    rc |= buf_appendf(labels, "\",protocol=\"%s\"", ss->protocol);
    return rc != 0 ? TE_NOMEM : 0;
}


static int render_requests(const totals_t *t, buf_t *out, buf_t *labels)
{
    int rc = append_header(out, "tutti_requests_total", "counter",
                           "Requests answered, by route, method and status "
                           "(route \"\" when no route matched; status 499 "
                           "when the client went away).");
    for (size_t i = 0; i < t->nroutes && rc == 0; i++) {
        const sum_route_t *sr = &t->routes[i];
        for (size_t s = 0; s < METRICS_NSTATUS && rc == 0; s++) {
            if (sr->status[s] == 0) {
                continue;
            }
            rc = route_labels(labels, sr);
            rc |=
                buf_appendf(labels, ",status=\"%zu\"", s + METRICS_STATUS_MIN);
            rc |= append_sample_u64(out, "tutti_requests_total", labels->data,
                                    sr->status[s]);
        }
    }
    rc |= append_header(out, "tutti_request_duration_seconds", "histogram",
                        "Time from the first byte of a request to its "
                        "completion, by route and method.");
    for (size_t i = 0; i < t->nroutes && rc == 0; i++) {
        const sum_route_t *sr = &t->routes[i];
        rc = route_labels(labels, sr);
        rc |= append_histogram(out, "tutti_request_duration_seconds",
                               labels->data, sr->buckets,
                               METRICS_NDURATION_BUCKETS, duration_bounds, NULL,
                               (double)sr->sum_ns / 1e9);
    }
    return rc != 0 ? TE_NOMEM : 0;
}


static int render_calls(const totals_t *t, buf_t *out, buf_t *labels)
{
    int rc = append_header(out, "tutti_call_duration_seconds", "histogram",
                           "Duration of downstream calls, by service, "
                           "protocol and outcome.");
    for (size_t i = 0; i < t->nservices && rc == 0; i++) {
        const sum_service_t *ss = &t->services[i];
        for (size_t o = 0; o < METRICS_NOUTCOMES && rc == 0; o++) {
            rc = service_labels(labels, ss);
            rc |= buf_appendf(labels, ",outcome=\"%s\"", outcome_names[o]);
            rc |= append_histogram(out, "tutti_call_duration_seconds",
                                   labels->data, ss->buckets[o],
                                   METRICS_NDURATION_BUCKETS, duration_bounds,
                                   NULL, (double)ss->sum_ns[o] / 1e9);
        }
    }
    rc |= append_header(out, "tutti_calls_cancelled_total", "counter",
                        "Downstream calls cancelled while running, by cause "
                        "(calls ended by their own timeout_ms are counted "
                        "as outcome \"timeout\" only).");
    for (int c = CAUSE_DEADLINE; c < METRICS_NCAUSES && rc == 0; c++) {
        char cause[48];
        snprintf(cause, sizeof(cause), "cause=\"%s\"", fanout_cause_name(c));
        rc = append_sample_u64(out, "tutti_calls_cancelled_total", cause,
                               t->cancelled[c]);
    }
    rc |= append_header(out, "tutti_wasted_calls_total", "counter",
                        "Downstream calls whose work was discarded: "
                        "cancelled, ended by their timeout or the deadline, "
                        "or successful in a request that failed or whose "
                        "client went away.");
    rc |=
        append_sample_u64(out, "tutti_wasted_calls_total", "", t->wasted_calls);
    rc |= append_header(out, "tutti_wasted_call_seconds_total", "counter",
                        "Time the wasted calls ran before they ended.");
    rc |= buf_appendf(out, "tutti_wasted_call_seconds_total %.9g\n",
                      (double)t->wasted_ns / 1e9);
    rc |= append_header(out, "tutti_calls_in_flight", "gauge",
                        "Downstream calls running now.");
    rc |=
        append_sample_u64(out, "tutti_calls_in_flight", "", t->calls_in_flight);
    rc |= append_header(out, "tutti_downstream_connections", "gauge",
                        "Open downstream connections, by service and "
                        "protocol, as of the workers' last heartbeat.");
    for (size_t i = 0; i < t->nservices && rc == 0; i++) {
        rc = service_labels(labels, &t->services[i]);
        rc |= append_sample_u64(out, "tutti_downstream_connections",
                                labels->data, t->services[i].connections);
    }
    return rc != 0 ? TE_NOMEM : 0;
}


static int render_fanout(const totals_t *t, const metrics_process_t *proc,
                         buf_t *out)
{
    int rc = append_header(out, "tutti_requests_in_flight", "gauge",
                           "Requests between their first byte and their "
                           "completion.");
    rc |= append_sample_u64(out, "tutti_requests_in_flight", "",
                            t->requests_in_flight);
    rc |= append_header(out, "tutti_partial_responses_total", "counter",
                        "200 answers with failed optional calls "
                        "(Tutti-Partial set).");
    rc |=
        append_sample_u64(out, "tutti_partial_responses_total", "", t->partial);
    rc |= append_header(out, "tutti_fanout_width", "histogram",
                        "Number of downstream calls per fan-out.");
    rc |= append_histogram(out, "tutti_fanout_width", "", t->width,
                           METRICS_NWIDTH_BUCKETS, NULL, width_bounds,
                           (double)t->width_sum);
    rc |= append_header(out, "tutti_requests_shed_total", "counter",
                        "Requests rejected with 503 by load shedding.");
    rc |= append_sample_u64(out, "tutti_requests_shed_total", "",
                            proc->requests_shed);
    rc |= append_header(out, "tutti_inbound_connections", "gauge",
                        "Inbound client connections open now.");
    rc |= append_sample_u64(out, "tutti_inbound_connections", "",
                            proc->connections_inbound);
    return rc != 0 ? TE_NOMEM : 0;
}


static int render_dns_and_reloads(const totals_t *t,
                                  const metrics_process_t *proc, buf_t *out)
{
    int rc = append_header(out, "tutti_dns_resolutions_total", "counter",
                           "Successful DNS resolutions of services, first "
                           "or refresh, as of the workers' last heartbeat.");
    rc |= append_sample_u64(out, "tutti_dns_resolutions_total", "",
                            t->dns_resolutions);
    rc |= append_header(out, "tutti_dns_failures_total", "counter",
                        "Failed DNS resolutions: phase \"first\" left calls "
                        "without endpoints, \"refresh\" kept the last set, "
                        "\"stale_expired\" dropped it.");
    rc |= append_sample_u64(out, "tutti_dns_failures_total", "phase=\"first\"",
                            t->dns_resolve_failures);
    rc |= append_sample_u64(out, "tutti_dns_failures_total",
                            "phase=\"refresh\"", t->dns_refresh_failures);
    rc |= append_sample_u64(out, "tutti_dns_failures_total",
                            "phase=\"stale_expired\"", t->dns_stale_expired);
    rc |= append_header(out, "tutti_config_reloads_total", "counter",
                        "Configuration reloads, by result.");
    rc |= append_sample_u64(out, "tutti_config_reloads_total", "result=\"ok\"",
                            proc->reloads_ok);
    rc |= append_sample_u64(out, "tutti_config_reloads_total",
                            "result=\"failed\"", proc->reloads_failed);
    return rc != 0 ? TE_NOMEM : 0;
}


int metrics_render(metrics_worker_t *const *workers, size_t n,
                   const metrics_process_t *proc, buf_t *out)
{
    totals_t t = {0};
    buf_t labels = {0};
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = add_worker(&t, workers[i]);
    }
    if (rc == 0) {
        rc = render_requests(&t, out, &labels);
    }
    if (rc == 0) {
        rc = render_calls(&t, out, &labels);
    }
    if (rc == 0) {
        rc = render_fanout(&t, proc, out);
    }
    if (rc == 0) {
        rc = render_dns_and_reloads(&t, proc, out);
    }
    buf_free(&labels);
    free(t.routes);
    free(t.services);
    return rc;
}
