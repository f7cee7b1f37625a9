/* Worker threads: a libuv loop each, with libmicrohttpd run inside it. */
#include "worker.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "errors.h"
#include "log.h"
#include "server.h"

/* After the grace period, requests still running are answered 503; this
 * is how long their answers may take to be written before the worker
 * stops regardless. */
#define FINISH_SLACK_MS 2000

static void schedule_mhd(worker_t *w);


/* uv_timer_cb and uv_poll_cb share this: let MHD do its work, then ask it
 * when it next needs to run. */
static void run_mhd(worker_t *w)
{
    if (w->mhd == NULL) {
        return;
    }
    MHD_run(w->mhd);
    schedule_mhd(w);
}


static void on_mhd_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}


static void on_mhd_ready(uv_poll_t *p, int status, int events)
{
    run_mhd(p->data);
}


static void schedule_mhd(worker_t *w)
{
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (w->mhd != NULL && MHD_get_timeout(w->mhd, &ms) == MHD_YES) {
        uv_timer_start(&w->mhd_timer, on_mhd_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&w->mhd_timer);
    }
}


static void on_handle_closed(uv_handle_t *h)
{
}


/* uv_timer_cb: no request is left (or the slack ran out); stop MHD, close
 * every handle so that uv_run returns. */
static void on_finish(uv_timer_t *t)
{
    worker_t *w = t->data;
    if (w->finished) {
        return;
    }
    w->finished = true;
    uv_poll_stop(&w->mhd_poll);
    if (w->mhd != NULL) {
        MHD_stop_daemon(w->mhd);
        w->mhd = NULL;
    }
    upstream_close(w->up);
    w->up = NULL;
    uv_close((uv_handle_t *)&w->mhd_poll, on_handle_closed);
    uv_close((uv_handle_t *)&w->mhd_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->stop_async, on_handle_closed);
    uv_close((uv_handle_t *)&w->grace_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->finish_timer, on_handle_closed);
}


/* uv_timer_cb: the shutdown grace ran out. */
static void on_grace_over(uv_timer_t *t)
{
    worker_t *w = t->data;
    w->grace_over = true;
    if (w->ninflight > 0) {
        log_msg(LOG_WARN, NULL,
                "shutdown grace of %lld ms ran out; answering 503 to %zu "
                "requests still running",
                (long long)w->cfg->shutdown_grace_ms, w->ninflight);
    }
    server_abort_all(w);
    run_mhd(w);
    uv_timer_start(&w->finish_timer, on_finish, FINISH_SLACK_MS, 0);
}


/* uv_async_cb: the main thread asks this worker to drain and stop. */
static void on_stop(uv_async_t *a)
{
    worker_t *w = a->data;
    if (w->draining) {
        return;
    }
    w->draining = true;
    /* Stop accepting: MHD hands the listening socket back. */
    MHD_socket fd = MHD_quiesce_daemon(w->mhd);
    if (fd != MHD_INVALID_SOCKET) {
        close(fd);
    }
    w->listen_fd = -1;
    log_msg(LOG_INFO, NULL, "draining: %zu requests in flight", w->ninflight);
    if (w->ninflight == 0) {
        uv_timer_start(&w->finish_timer, on_finish, 0, 0);
        return;
    }
    uv_timer_start(&w->grace_timer, on_grace_over,
                   (uint64_t)w->cfg->shutdown_grace_ms, 0);
}


void worker_kick(worker_t *w)
{
    uv_timer_start(&w->mhd_timer, on_mhd_timer, 0, 0);
}


void worker_request_done(worker_t *w)
{
    if (w->draining && w->ninflight == 0) {
        /* Not from here: this runs inside MHD_run, which MHD_stop_daemon
         * must not be called from. */
        uv_timer_start(&w->finish_timer, on_finish, 0, 0);
    }
}


static upstream_proto_t service_proto(scheme_t scheme)
{
    switch (scheme) {
    case SCHEME_H2C:
        return UPSTREAM_H2C;
    case SCHEME_HTTPS:
        return UPSTREAM_HTTPS;
    case SCHEME_H2:
        return UPSTREAM_H2;
    case SCHEME_HTTP:
    default:
        return UPSTREAM_HTTP1;
    }
}


/* The settings arrive validated: only ping_interval_ms may be 0, which
 * the pools read as "no PING". Elsewhere the dispatcher would read 0 as
 * "use the default", which the configuration never passes. */
static uint64_t to_ms(int64_t v)
{
    return v > 0 ? (uint64_t)v : 0;
}


static void build_services(worker_t *w)
{
    const config_t *cfg = w->cfg;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        const service_options_t *o = &s->options;
        w->services[i] = (upstream_service_t){
            .name = s->name,
            .host = s->host,
            .port = s->port,
            .proto = service_proto(s->scheme),
            .srv = s->srv,
            .pool =
                {
                    .max_connections = (size_t)o->max_connections,
                    .idle_timeout_ms = to_ms(o->idle_timeout_ms),
                    .connect_timeout_ms = to_ms(o->connect_timeout_ms),
                    .ping_interval_ms = to_ms(o->ping_interval_ms),
                    .tls = w->tls != NULL ? w->tls[i] : NULL,
                    .server_name = o->server_name,
                },
            .dns_min_ttl_ms = to_ms(o->dns_min_ttl_ms),
            .dns_max_ttl_ms = to_ms(o->dns_max_ttl_ms),
            .dns_max_stale_ms = to_ms(o->dns_max_stale_ms),
            .eject_after =
                o->eject_after > UINT_MAX ? UINT_MAX : (unsigned)o->eject_after,
            .eject_base_ms = to_ms(o->eject_base_ms),
            .eject_max_ms = to_ms(o->eject_max_ms),
        };
    }
}


static int clamp_int(int64_t v)
{
    return v > INT_MAX ? INT_MAX : (int)v;
}


static const char *event_name(upstream_event_kind_t kind)
{
    switch (kind) {
    case UPSTREAM_EV_RESOLVE_FAILED:
        return "resolve_failed";
    case UPSTREAM_EV_REFRESH_FAILED:
        return "refresh_failed";
    case UPSTREAM_EV_STALE_EXPIRED:
        return "stale_expired";
    case UPSTREAM_EV_ENDPOINTS:
        return "endpoints";
    case UPSTREAM_EV_EJECTED:
        return "ejected";
    case UPSTREAM_EV_CONNECT_RETRY:
        return "connect_retry";
    default:
        return "unknown";
    }
}


/* upstream_event_cb: logs discovery and health changes. A connect retry
 * can happen on every call while an endpoint is down, so it is logged at
 * debug level. The ejection that follows is logged as a warning. */
static void on_upstream_event(void *arg, const upstream_event_t *ev)
{
    log_level_t level = LOG_WARN;

    switch (ev->kind) {
    case UPSTREAM_EV_ENDPOINTS:
        level = LOG_INFO;
        break;
    case UPSTREAM_EV_CONNECT_RETRY:
        level = LOG_DEBUG;
        break;
    case UPSTREAM_EV_STALE_EXPIRED:
        level = LOG_ERROR;
        break;
    default:
        break;
    }
    if (!log_enabled(level)) {
        return;
    }
    log_event(level, NULL, ev->message,
              json_pack("{s:s, s:s}", "service", ev->name, "event",
                        event_name(ev->kind)));
}


static int setup(worker_t *w)
{
    char err[256];

    uv_loop_init(&w->loop);
    w->services = calloc(w->cfg->nservices, sizeof(*w->services));
    if (w->services == NULL) {
        return TE_NOMEM;
    }
    build_services(w);
    upstream_options_t opts = {
        .resolver =
            {
                .servers = w->cfg->resolver_servers,
                .timeout_ms = clamp_int(w->cfg->resolver_timeout_ms),
                .tries = clamp_int(w->cfg->resolver_tries),
            },
        .on_event = on_upstream_event,
        .event_arg = w,
    };
    if (upstream_new(&w->loop, w->services, w->cfg->nservices, &opts, &w->up,
                     err, sizeof(err)) != 0) {
        log_msg(LOG_ERROR, NULL, "worker %d: %s", w->id, err);
        return TE_INVALID;
    }
    if (getrandom(&w->id_seed, sizeof(w->id_seed), 0) !=
        (ssize_t)sizeof(w->id_seed)) {
        w->id_seed = uv_hrtime();
    }
    w->id_seed |= 1;

    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME, 0, NULL, NULL,
        server_on_request, w, MHD_OPTION_LISTEN_SOCKET, w->listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, server_on_completed, w,
        MHD_OPTION_UNESCAPE_CALLBACK, server_keep_escaped, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)60, MHD_OPTION_END);
    if (w->mhd == NULL) {
        log_msg(LOG_ERROR, NULL, "worker %d: libmicrohttpd failed to start",
                w->id);
        upstream_close(w->up);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        return TE_INVALID;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    uv_poll_init(&w->loop, &w->mhd_poll, info->epoll_fd);
    w->mhd_poll.data = w;
    uv_poll_start(&w->mhd_poll, UV_READABLE, on_mhd_ready);
    uv_timer_init(&w->loop, &w->mhd_timer);
    w->mhd_timer.data = w;
    uv_timer_init(&w->loop, &w->grace_timer);
    w->grace_timer.data = w;
    uv_timer_init(&w->loop, &w->finish_timer);
    w->finish_timer.data = w;
    schedule_mhd(w);
    return 0;
}


static void worker_main(void *arg)
{
    worker_t *w = arg;
    log_set_worker(w->id);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    atomic_store(&w->loop_ended, 1);
    uv_async_send(w->exited);
}


int worker_start(worker_t *w)
{
    /* The stop handle is set up before the thread exists, so worker_stop
     * is safe as soon as this returns. */
    int rc = setup(w);
    if (rc != 0) {
        return rc;
    }
    uv_async_init(&w->loop, &w->stop_async, on_stop);
    w->stop_async.data = w;
    if (uv_thread_create(&w->thread, worker_main, w) != 0) {
        log_msg(LOG_ERROR, NULL, "worker %d: cannot start its thread", w->id);
        return TE_NOMEM;
    }
    return 0;
}


void worker_stop(worker_t *w)
{
    uv_async_send(&w->stop_async);
}


void worker_join(worker_t *w)
{
    uv_thread_join(&w->thread);
    free(w->services);
    w->services = NULL;
}
