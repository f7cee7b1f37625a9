/* The admin listener and each worker's side of it. */
#include "admin.h"

#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "buf.h"
#include "errors.h"
#include "lifecycle.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#define NS_PER_MS 1000000ULL
#define HEARTBEAT_INTERVAL_MS 250

/* How long /debug/inflight waits for the workers' snapshots. A worker
 * that has not replied by then is listed under "workers_missing". */
#define SNAPSHOT_TIMEOUT_MS 1000

/* One worker's reply to a snapshot request. */
typedef struct snapshot_s {
    uint64_t round;
    char *json; /* a JSON array of requests; NULL when out of memory */
} snapshot_t;

struct admin_worker_s {
    worker_t *w;
    uv_timer_t heartbeat;
    uv_async_t snapshot_async;
    /* Orders the admin thread's uv_async_send on snapshot_async against
     * its close by the worker: sending on a closed handle is undefined.
     * Only a snapshot request and the worker's stop take it. */
    uv_mutex_t lock;
    bool closed;                        /* under lock */
    atomic_uint_least64_t heartbeat_ns; /* uv_hrtime() of the last beat */
    atomic_uint_least64_t want_round;   /* the snapshot round asked for */
    _Atomic(uv_async_t *) notify;       /* the admin's reply handle */
    _Atomic(snapshot_t *) reply;        /* the worker's latest reply */
};

/* An admin request waiting for the workers' snapshots. */
typedef struct pending_s {
    struct pending_s *next;
    struct MHD_Connection *conn;
    char *body;
    size_t len;
    bool ready; /* body set, connection resumed */
} pending_t;

typedef struct admin_s {
    uv_loop_t *loop;
    const config_t *cfg;
    worker_t *workers;
    int nworkers;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    uv_async_t reply_async; /* a worker stored a snapshot */
    uv_timer_t round_timer; /* SNAPSHOT_TIMEOUT_MS for a round */
    bool running;
    uint64_t round;
    bool round_running;
    int awaiting;   /* workers of the running round yet to reply */
    bool *answered; /* per worker, for the running round */
    json_t *collected;
    pending_t *waiting; /* answered when the running round ends */
    pending_t *queued;  /* arrived during it: served by the next round */
} admin_t;

static admin_t admin;


/* ---- worker side ---- */

/* True when service number |index| of |cfg| has a required call. */
static bool service_required(const config_t *cfg, size_t index)
{
    for (size_t r = 0; r < cfg->nroutes; r++) {
        const route_t *route = &cfg->routes[r];
        for (size_t c = 0; c < route->ncalls; c++) {
            if (route->calls[c].required &&
                route->calls[c].service->index == index) {
                return true;
            }
        }
    }
    return false;
}


/* Copies the per-service state the admin thread cannot read from the
 * dispatcher itself, and starts the first resolution of the services
 * that readiness waits for. */
static void update_services(worker_t *w)
{
    const config_t *cfg = w->cfg;
    metrics_worker_t *m = w->metrics;

    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        upstream_service_info_t info;
        upstream_service_info(w->up, i, &info);
        if (!info.resolved && cfg->admin_host != NULL &&
            service_required(cfg, i)) {
            upstream_resolve(w->up, i);
            upstream_service_info(w->up, i, &info);
        }
        metrics_service_t *ms = metrics_service(m, s);
        if (ms == NULL) {
            continue;
        }
        atomic_store_explicit(&ms->connections, info.connections,
                              memory_order_relaxed);
        atomic_store_explicit(&ms->resolved, info.resolved,
                              memory_order_relaxed);
    }
    /* A service that a reload removed has no connections left here. */
    metrics_service_t *ms =
        atomic_load_explicit(&m->services, memory_order_relaxed);
    for (; ms != NULL; ms = ms->next) {
        const service_t *s = config_service(cfg, ms->name);
        if (s == NULL || metrics_protocol_name(s->scheme) != ms->protocol) {
            atomic_store_explicit(&ms->connections, 0, memory_order_relaxed);
        }
    }
}


static void store_counter(metrics_counter_t *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}


/* uv_timer_cb: proves that the worker's loop runs, and copies what the
 * dispatcher counts into the worker's metrics. */
static void on_heartbeat(uv_timer_t *t)
{
    admin_worker_t *l = t->data;
    worker_t *w = l->w;

    atomic_store_explicit(&l->heartbeat_ns, uv_hrtime(), memory_order_relaxed);
    if (w->up == NULL) {
        return;
    }
    upstream_stats_t st;
    upstream_get_stats(w->up, &st);
    store_counter(&w->metrics->dns_resolutions, st.resolutions);
    store_counter(&w->metrics->dns_resolve_failures, st.resolve_failures);
    store_counter(&w->metrics->dns_refresh_failures, st.refresh_failures);
    store_counter(&w->metrics->dns_stale_expired, st.stale_expired);
    update_services(w);
}


/* uv_async_cb: the admin thread requests the list of requests in flight. */
static void on_snapshot_requested(uv_async_t *a)
{
    admin_worker_t *l = a->data;
    uint64_t round = atomic_load_explicit(&l->want_round, memory_order_acquire);
    json_t *list = server_inflight_json(l->w);
    char *text = list != NULL ? json_dumps(list, JSON_COMPACT) : NULL;
    json_decref(list);

    snapshot_t *snap = malloc(sizeof(*snap));
    if (snap == NULL) {
        free(text);
        return;
    }
    snap->round = round;
    snap->json = text;
    snapshot_t *old =
        atomic_exchange_explicit(&l->reply, snap, memory_order_acq_rel);
    if (old != NULL) {
        free(old->json);
        free(old);
    }
    uv_async_t *notify = atomic_load_explicit(&l->notify, memory_order_acquire);
    if (notify != NULL) {
        uv_async_send(notify);
    }
}


int admin_worker_init(worker_t *w)
{
    w->metrics = metrics_worker_new();
    admin_worker_t *l = calloc(1, sizeof(*l));
    if (w->metrics == NULL || l == NULL || uv_mutex_init(&l->lock) != 0) {
        free(l);
        metrics_worker_free(w->metrics);
        w->metrics = NULL;
        return TE_NOMEM;
    }
    l->w = w;
    atomic_init(&l->heartbeat_ns, uv_hrtime());
    uv_timer_init(&w->loop, &l->heartbeat);
    l->heartbeat.data = l;
    uv_timer_start(&l->heartbeat, on_heartbeat, 0, HEARTBEAT_INTERVAL_MS);
    uv_async_init(&w->loop, &l->snapshot_async, on_snapshot_requested);
    l->snapshot_async.data = l;
    w->admin = l;
    return 0;
}


static void on_link_handle_closed(uv_handle_t *h)
{
}


void admin_worker_close(worker_t *w)
{
    admin_worker_t *l = w->admin;
    if (l == NULL) {
        return;
    }
    uv_mutex_lock(&l->lock);
    bool was_closed = l->closed;
    l->closed = true;
    uv_mutex_unlock(&l->lock);
    if (was_closed) {
        return;
    }
    uv_close((uv_handle_t *)&l->heartbeat, on_link_handle_closed);
    uv_close((uv_handle_t *)&l->snapshot_async, on_link_handle_closed);
}


void admin_worker_free(worker_t *w)
{
    admin_worker_t *l = w->admin;
    if (l != NULL) {
        snapshot_t *snap = atomic_load(&l->reply);
        if (snap != NULL) {
            free(snap->json);
            free(snap);
        }
        uv_mutex_destroy(&l->lock);
        free(l);
        w->admin = NULL;
    }
    metrics_worker_free(w->metrics);
    w->metrics = NULL;
}


/* ---- answers ---- */

static enum MHD_Result queue_text(struct MHD_Connection *conn, unsigned status,
                                  const char *content_type, char *body,
                                  size_t len, const char *allow)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (resp == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (allow != NULL) {
        MHD_add_response_header(resp, "Allow", allow);
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}


/* Queues |body| as JSON; steals the reference. */
static enum MHD_Result queue_json(struct MHD_Connection *conn, unsigned status,
                                  json_t *body, const char *allow)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        return MHD_NO;
    }
    size_t len = strlen(text);
    /* A line feed ends the body, so that curl output reads well. */
    char *with_nl = realloc(text, len + 2);
    if (with_nl == NULL) {
        free(text);
        return MHD_NO;
    }
    with_nl[len] = '\n';
    with_nl[len + 1] = '\0';
    return queue_text(conn, status, "application/json", with_nl, len + 1,
                      allow);
}


static enum MHD_Result queue_error(struct MHD_Connection *conn, unsigned status,
                                   const char *kind, const char *message,
                                   const char *allow)
{
    return queue_json(
        conn, status,
        json_pack("{s:{s:s, s:s}}", "error", "kind", kind, "message", message),
        allow);
}


static enum MHD_Result answer_healthz(struct MHD_Connection *conn)
{
    uint64_t now = uv_hrtime();
    json_t *list = json_array();
    bool healthy = true;

    for (int i = 0; i < admin.nworkers; i++) {
        worker_t *w = &admin.workers[i];
        const char *state = "ok";
        json_int_t age_ms = 0;
        if (atomic_load(&w->loop_ended) != 0) {
            /* A worker stops only when the gateway drains. */
            state = "stopped";
        } else {
            uint64_t beat = atomic_load_explicit(&w->admin->heartbeat_ns,
                                                 memory_order_relaxed);
            age_ms = now > beat ? (json_int_t)((now - beat) / NS_PER_MS) : 0;
            if (age_ms > ADMIN_HEARTBEAT_STALE_MS) {
                state = "stuck";
                healthy = false;
            }
        }
        json_array_append_new(list, json_pack("{s:i, s:s, s:I}", "worker",
                                              w->id, "state", state,
                                              "heartbeat_age_ms", age_ms));
    }
    return queue_json(conn, healthy ? 200 : 503,
                      json_pack("{s:s, s:o}", "status",
                                healthy ? "ok" : "unhealthy", "workers", list),
                      NULL);
}


/* True when worker |w| built an endpoint set for |s| at least once. */
static bool worker_resolved(const worker_t *w, const service_t *s)
{
    const char *protocol = metrics_protocol_name(s->scheme);
    metrics_service_t *ms =
        atomic_load_explicit(&w->metrics->services, memory_order_acquire);
    for (; ms != NULL; ms = ms->next) {
        if (ms->protocol == protocol && strcmp(ms->name, s->name) == 0) {
            return atomic_load_explicit(&ms->resolved, memory_order_relaxed);
        }
    }
    return false;
}


/* Appends one reason per required service that a running worker has not
 * resolved yet. */
static void add_unresolved(json_t *reasons)
{
    const config_t *cfg = admin.cfg;
    char msg[256];

    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        if (!service_required(cfg, i)) {
            continue;
        }
        int missing = 0;
        for (int k = 0; k < admin.nworkers; k++) {
            const worker_t *w = &admin.workers[k];
            if (atomic_load(&((worker_t *)w)->loop_ended) == 0 &&
                !worker_resolved(w, s)) {
                missing++;
            }
        }
        if (missing > 0) {
            snprintf(msg, sizeof(msg),
                     "service %s (%s) has not resolved yet on %d of %d "
                     "workers",
                     s->name, s->host, missing, admin.nworkers);
            json_array_append_new(reasons, json_string(msg));
        }
    }
}


static enum MHD_Result answer_readyz(struct MHD_Connection *conn)
{
    json_t *reasons = json_array();

    if (admin.cfg == NULL) {
        json_array_append_new(reasons,
                              json_string("the configuration is not loaded"));
    }
    if (lifecycle_draining()) {
        json_array_append_new(
            reasons, json_string("draining: the gateway is shutting down"));
    }
    if (admin.cfg != NULL) {
        add_unresolved(reasons);
    }
    if (json_array_size(reasons) == 0) {
        json_decref(reasons);
        return queue_json(conn, 200, json_pack("{s:s}", "status", "ready"),
                          NULL);
    }
    return queue_json(
        conn, 503,
        json_pack("{s:s, s:o}", "status", "not ready", "reasons", reasons),
        NULL);
}


static enum MHD_Result answer_metrics(struct MHD_Connection *conn)
{
    metrics_worker_t **list = calloc((size_t)admin.nworkers, sizeof(*list));
    buf_t out = {0};
    server_overload_stats_t overload;
    metrics_process_t proc = {0};

    if (list == NULL) {
        return MHD_NO;
    }
    for (int i = 0; i < admin.nworkers; i++) {
        list[i] = admin.workers[i].metrics;
    }
    lifecycle_reload_counts(&proc.reloads_ok, &proc.reloads_failed);
    server_get_overload_stats(&overload);
    proc.requests_shed = overload.requests_shed;
    proc.connections_inbound = overload.connections_open;
    int rc = metrics_render(list, (size_t)admin.nworkers, &proc, &out);
    free(list);
    if (rc != 0 || out.data == NULL) {
        buf_free(&out);
        log_msg(LOG_ERROR, NULL, "admin: /metrics failed: out of memory");
        return MHD_NO;
    }
    return queue_text(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
                      out.data, out.len, NULL);
}


static enum MHD_Result answer_reload(struct MHD_Connection *conn)
{
    if (!lifecycle_request_reload()) {
        return queue_error(conn, 503, "draining",
                           "the gateway is shutting down; no reload", NULL);
    }
    /* The reload runs on the main loop after this answer; its outcome is
     * logged and counted in tutti_config_reloads_total. */
    return queue_json(conn, 202,
                      json_pack("{s:s, s:s}", "status", "reload requested",
                                "file",
                                admin.cfg != NULL ? admin.cfg->file : ""),
                      NULL);
}


/* ---- /debug/inflight ---- */

static void on_round_timeout(uv_timer_t *t);


static int compare_age(const void *a, const void *b)
{
    json_int_t x =
        json_integer_value(json_object_get(*(json_t *const *)a, "age_ms"));
    json_int_t y =
        json_integer_value(json_object_get(*(json_t *const *)b, "age_ms"));
    if (x == y) {
        return 0;
    }
    return x < y ? 1 : -1;
}


/* Returns the collected requests, oldest first. */
static json_t *sorted_requests(json_t *collected)
{
    size_t n = json_array_size(collected);
    json_t **items = calloc(n > 0 ? n : 1, sizeof(*items));
    json_t *sorted = json_array();
    if (items == NULL || sorted == NULL) {
        free(items);
        json_decref(sorted);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        items[i] = json_array_get(collected, i);
    }
    qsort(items, n, sizeof(*items), compare_age);
    for (size_t i = 0; i < n; i++) {
        json_array_append(sorted, items[i]);
    }
    free(items);
    return sorted;
}


static void kick_mhd(void);


/* Ends the running round: every request waiting for it is answered with
 * what the workers sent, and the requests that came in meanwhile start
 * the next round. */
static void finish_round(void)
{
    json_t *missing = json_array();
    for (int i = 0; i < admin.nworkers; i++) {
        if (!admin.answered[i] &&
            atomic_load(&admin.workers[i].loop_ended) == 0) {
            json_array_append_new(missing, json_integer(admin.workers[i].id));
        }
    }
    json_t *body = json_pack("{s:o*, s:i, s:o}", "requests",
                             sorted_requests(admin.collected), "workers",
                             admin.nworkers, "workers_missing", missing);
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    json_decref(admin.collected);
    admin.collected = NULL;
    admin.round_running = false;
    uv_timer_stop(&admin.round_timer);

    pending_t *p = admin.waiting;
    admin.waiting = NULL;
    while (p != NULL) {
        pending_t *next = p->next;
        p->next = NULL;
        p->body = text != NULL ? strdup(text) : NULL;
        p->len = p->body != NULL ? strlen(p->body) : 0;
        p->ready = true;
        MHD_resume_connection(p->conn);
        p = next;
    }
    free(text);
    kick_mhd();
}


static void start_round(void)
{
    admin.round++;
    admin.round_running = true;
    admin.awaiting = 0;
    admin.collected = json_array();
    admin.waiting = admin.queued;
    admin.queued = NULL;
    for (int i = 0; i < admin.nworkers; i++) {
        admin_worker_t *l = admin.workers[i].admin;
        admin.answered[i] = false;
        atomic_store_explicit(&l->notify, &admin.reply_async,
                              memory_order_release);
        atomic_store_explicit(&l->want_round, admin.round,
                              memory_order_release);
        uv_mutex_lock(&l->lock);
        if (!l->closed && uv_async_send(&l->snapshot_async) == 0) {
            admin.awaiting++;
        } else {
            admin.answered[i] = true;
        }
        uv_mutex_unlock(&l->lock);
    }
    /* With no worker left to ask, the timer ends the round on the next
     * iteration rather than inside the access handler. */
    uv_timer_start(&admin.round_timer, on_round_timeout,
                   admin.awaiting > 0 ? SNAPSHOT_TIMEOUT_MS : 0, 0);
}


/* uv_timer_cb: some workers did not reply in time. */
static void on_round_timeout(uv_timer_t *t)
{
    if (!admin.round_running) {
        return;
    }
    finish_round();
    if (admin.queued != NULL) {
        start_round();
    }
}


/* Adds the requests of one snapshot to the round's list. */
static void collect(const snapshot_t *snap)
{
    json_t *list = snap->json != NULL ? json_loads(snap->json, 0, NULL) : NULL;
    if (json_is_array(list)) {
        json_array_extend(admin.collected, list);
    }
    json_decref(list);
}


/* uv_async_cb: one or more workers stored a snapshot. */
static void on_snapshot_reply(uv_async_t *a)
{
    for (int i = 0; i < admin.nworkers; i++) {
        admin_worker_t *l = admin.workers[i].admin;
        snapshot_t *snap =
            atomic_exchange_explicit(&l->reply, NULL, memory_order_acq_rel);
        if (snap == NULL) {
            continue;
        }
        if (admin.round_running && snap->round == admin.round &&
            !admin.answered[i]) {
            collect(snap);
            admin.answered[i] = true;
            admin.awaiting--;
        }
        free(snap->json);
        free(snap);
    }
    if (admin.round_running && admin.awaiting == 0) {
        finish_round();
        if (admin.queued != NULL) {
            start_round();
        }
    }
}


static enum MHD_Result start_inflight(struct MHD_Connection *conn,
                                      void **con_cls)
{
    pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return MHD_NO;
    }
    p->conn = conn;
    *con_cls = p;
    MHD_suspend_connection(conn);
    p->next = admin.queued;
    admin.queued = p;
    if (!admin.round_running) {
        start_round();
    }
    return MHD_YES;
}


/* ---- the daemon ---- */

/* MHD_AccessHandlerCallback of the admin daemon. */
static enum MHD_Result on_admin_request(void *cls, struct MHD_Connection *conn,
                                        const char *url, const char *method,
                                        const char *version,
                                        const char *upload_data,
                                        size_t *upload_data_size,
                                        void **con_cls)
{
    pending_t *p = *con_cls;
    if (p != NULL) {
        *upload_data_size = 0;
        if (!p->ready) {
            return MHD_YES;
        }
        if (p->body == NULL) {
            return queue_error(conn, 500, "internal", "out of memory", NULL);
        }
        char *body = p->body;
        p->body = NULL;
        return queue_text(conn, 200, "application/json", body, p->len, NULL);
    }

    bool read_only = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (strcmp(url, "/admin/reload") == 0) {
        if (strcmp(method, "POST") != 0) {
            return queue_error(conn, 405, "method_not_allowed",
                               "use POST /admin/reload", "POST");
        }
        return answer_reload(conn);
    }
    bool known = strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0 ||
                 strcmp(url, "/metrics") == 0 ||
                 strcmp(url, "/debug/inflight") == 0;
    if (!known) {
        return queue_error(conn, 404, "not_found",
                           "unknown admin path; the admin listener serves "
                           "/healthz, /readyz, /metrics, /debug/inflight and "
                           "POST /admin/reload",
                           NULL);
    }
    if (!read_only) {
        return queue_error(conn, 405, "method_not_allowed",
                           "use GET on this admin path", "GET, HEAD");
    }
    if (strcmp(url, "/healthz") == 0) {
        return answer_healthz(conn);
    }
    if (strcmp(url, "/readyz") == 0) {
        return answer_readyz(conn);
    }
    if (strcmp(url, "/metrics") == 0) {
        return answer_metrics(conn);
    }
    return start_inflight(conn, con_cls);
}


/* MHD_RequestCompletedCallback of the admin daemon. */
static void on_admin_completed(void *cls, struct MHD_Connection *conn,
                               void **con_cls,
                               enum MHD_RequestTerminationCode toe)
{
    pending_t *p = *con_cls;
    if (p != NULL) {
        free(p->body);
        free(p);
        *con_cls = NULL;
    }
}


static void schedule_mhd(void);


static void run_mhd(void)
{
    if (admin.mhd == NULL) {
        return;
    }
    MHD_run(admin.mhd);
    schedule_mhd();
}


static void on_mhd_timer(uv_timer_t *t)
{
    run_mhd();
}


static void on_mhd_ready(uv_poll_t *p, int status, int events)
{
    run_mhd();
}


static void schedule_mhd(void)
{
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (admin.mhd != NULL && MHD_get_timeout(admin.mhd, &ms) == MHD_YES) {
        uv_timer_start(&admin.mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&admin.mhd_timer);
    }
}


/* After MHD_resume_connection, MHD handles the connection only on its
 * next run. */
static void kick_mhd(void)
{
    uv_timer_start(&admin.mhd_timer, on_mhd_timer, 0, 0);
}


/* Opens the listening socket; prints the reason and returns -1 on
 * failure. Start-up only, so the blocking getaddrinfo is harmless. */
static int open_listener(const char *host, unsigned port)
{
    struct addrinfo hints = {0};
    struct addrinfo *ai = NULL;
    char portstr[8];

    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    snprintf(portstr, sizeof(portstr), "%u", port);
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "tutti: admin listen address \"%s\": %s\n", host,
                gai_strerror(rc));
        return -1;
    }
    int fd =
        socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
        listen(fd, 64) != 0) {
        int e = errno;
        fprintf(stderr, "tutti: cannot listen on admin address %s:%u: %s\n",
                host, port, uv_strerror(uv_translate_sys_error(e)));
        if (fd >= 0) {
            close(fd);
        }
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}


int admin_start(uv_loop_t *loop, const config_t *cfg, worker_t *workers,
                int nworkers)
{
    if (cfg->admin_host == NULL) {
        return 0;
    }
    admin.answered = calloc((size_t)nworkers, sizeof(*admin.answered));
    if (admin.answered == NULL) {
        fprintf(stderr, "tutti: out of memory\n");
        return TE_INVALID;
    }
    int fd = open_listener(cfg->admin_host, cfg->admin_port);
    if (fd < 0) {
        free(admin.answered);
        admin.answered = NULL;
        return TE_INVALID;
    }
    admin.mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL,
        on_admin_request, NULL, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_NOTIFY_COMPLETED, on_admin_completed, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64, MHD_OPTION_END);
    if (admin.mhd == NULL) {
        fprintf(stderr,
                "tutti: libmicrohttpd failed to start the admin listener "
                "on %s:%u\n",
                cfg->admin_host, (unsigned)cfg->admin_port);
        close(fd);
        free(admin.answered);
        admin.answered = NULL;
        return TE_INVALID;
    }
    admin.loop = loop;
    admin.cfg = cfg;
    admin.workers = workers;
    admin.nworkers = nworkers;
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(admin.mhd, MHD_DAEMON_INFO_EPOLL_FD);
    uv_poll_init(loop, &admin.mhd_poll, info->epoll_fd);
    uv_poll_start(&admin.mhd_poll, UV_READABLE, on_mhd_ready);
    uv_timer_init(loop, &admin.mhd_timer);
    uv_timer_init(loop, &admin.round_timer);
    uv_async_init(loop, &admin.reply_async, on_snapshot_reply);
    admin.running = true;
    schedule_mhd();
    log_event(LOG_INFO, NULL, "admin listening",
              json_pack("{s:s, s:i}", "host", cfg->admin_host, "port",
                        (int)cfg->admin_port));
    return 0;
}


void admin_set_config(const config_t *cfg)
{
    admin.cfg = cfg;
}


void admin_close(void)
{
    if (!admin.running) {
        return;
    }
    admin.running = false;
    /* The workers are gone: the requests still waiting get what came. */
    if (admin.round_running) {
        finish_round();
    }
    while (admin.queued != NULL) {
        start_round();
        finish_round();
    }
    /* Two more runs: the first takes the resumed connections back, the
     * second queues and writes their answers as far as the sockets take
     * them. */
    MHD_run(admin.mhd);
    MHD_run(admin.mhd);
    uv_poll_stop(&admin.mhd_poll);
    MHD_stop_daemon(admin.mhd);
    admin.mhd = NULL;
    uv_close((uv_handle_t *)&admin.mhd_poll, NULL);
    uv_close((uv_handle_t *)&admin.mhd_timer, NULL);
    uv_close((uv_handle_t *)&admin.round_timer, NULL);
    uv_close((uv_handle_t *)&admin.reply_async, NULL);
    free(admin.answered);
    admin.answered = NULL;
}
