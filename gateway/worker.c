/* Worker threads: a libuv loop each, with libmicrohttpd run inside it. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin.h"
#include "errors.h"
#include "log.h"
#include "server.h"

/* After the grace period, requests still running are answered 503; this
 * is how long their answers may take to be written before the worker
 * stops regardless. */
#define FINISH_SLACK_MS 2000

/* Connections accepted per readiness event, so that a flood of new
 * connections cannot starve the requests already running. */
#define ACCEPT_BATCH 64

/* How long accepting pauses when even the spare descriptor cannot make
 * room for one accept: long enough that the loop does not spin, short
 * enough that the gateway serves again soon after descriptors free up. */
#define ACCEPT_PAUSE_MS 100

/* Descriptors kept free below RLIMIT_NOFILE: an inbound connection that
 * would leave fewer is closed at once, so that the downstream connections
 * of the requests already admitted can still be opened. The number is a
 * judgement, not a measurement: a few calls' worth of connections. Under
 * a small limit the headroom is a sixteenth of it, because each worker
 * already has about eight descriptors of its own open. */
#define ACCEPT_FD_HEADROOM 16

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
    worker_stop_accepting(w);
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        w->spare_fd = -1;
    }
    uv_close((uv_handle_t *)&w->accept_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->mhd_poll, on_handle_closed);
    uv_close((uv_handle_t *)&w->mhd_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->stop_async, on_handle_closed);
    uv_close((uv_handle_t *)&w->reload_async, on_handle_closed);
    uv_close((uv_handle_t *)&w->grace_timer, on_handle_closed);
    uv_close((uv_handle_t *)&w->finish_timer, on_handle_closed);
    /* MHD_stop_daemon completed every request, so no fan-out is left. */
    ptimer_close(&w->timers);
    admin_worker_close(w);
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


/* uv_async_cb: the main thread requests that this worker drain and stop. */
static void on_stop(uv_async_t *a)
{
    worker_t *w = a->data;
    if (w->draining) {
        return;
    }
    w->draining = true;
    worker_stop_accepting(w);
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


/* Fills |services| with the dispatcher's view of each service of |sc|.
 * The strings and counters point into sc->cfg. */
static void build_services(const shared_config_t *sc,
                           upstream_service_t *services)
{
    const config_t *cfg = sc->cfg;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        const service_options_t *o = &s->options;
        services[i] = (upstream_service_t){
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
                    .tls = sc->tls[i],
                    .server_name = o->server_name,
                },
            .dns_min_ttl_ms = to_ms(o->dns_min_ttl_ms),
            .dns_max_ttl_ms = to_ms(o->dns_max_ttl_ms),
            .dns_max_stale_ms = to_ms(o->dns_max_stale_ms),
            .eject_after =
                o->eject_after > UINT_MAX ? UINT_MAX : (unsigned)o->eject_after,
            .eject_base_ms = to_ms(o->eject_base_ms),
            .eject_max_ms = to_ms(o->eject_max_ms),
            .active_calls = s->active_calls,
            .max_concurrent_calls =
                o->max_concurrent_calls > 0 ? (long)o->max_concurrent_calls : 0,
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
    json_t *fields = json_pack("{s:s, s:s}", "service", ev->name, "event",
                               event_name(ev->kind));
    if (ev->kind == UPSTREAM_EV_EJECTED) {
        /* An endpoint that keeps failing is ejected again every few
         * calls; one line per second per service is enough. */
        char key[160];
        snprintf(key, sizeof(key), "ejected %s", ev->name);
        log_event_limited(level, NULL, ev->message, key, fields);
        return;
    }
    log_event(level, NULL, ev->message, fields);
}


static void on_accept_ready(uv_poll_t *p, int status, int events);


static void start_accepting(worker_t *w)
{
    if (w->accepting || w->listen_fd < 0 ||
        uv_is_closing((uv_handle_t *)&w->accept_poll)) {
        return;
    }
    if (uv_poll_start(&w->accept_poll, UV_READABLE, on_accept_ready) == 0) {
        w->accepting = true;
    }
}


void worker_stop_accepting(worker_t *w)
{
    uv_timer_stop(&w->accept_timer);
    w->accepting = false;
    if (w->listen_fd < 0) {
        return;
    }
    /* The handle is closed before the socket, because libuv must not
     * watch a descriptor number that may already belong to another
     * file. */
    uv_close((uv_handle_t *)&w->accept_poll, on_handle_closed);
    close(w->listen_fd);
    w->listen_fd = -1;
}


/* uv_timer_cb: the pause at the descriptor limit is over. */
static void on_accept_resume(uv_timer_t *t)
{
    start_accepting(t->data);
}


static long fd_headroom(long limit)
{
    return limit / 16 < ACCEPT_FD_HEADROOM ? limit / 16 : ACCEPT_FD_HEADROOM;
}


/* Logs the connections refused at the descriptor limit, at most once a
 * second, with their count. |err| is the accept error, or 0 when the
 * connection was accepted into the headroom. */
static void note_fd_limit(worker_t *w, int err, long limit)
{
    w->fd_limit_refused++;
    uint64_t now = uv_now(&w->loop);
    if (w->fd_limit_logged_ms != 0 && now - w->fd_limit_logged_ms < 1000) {
        return;
    }
    char limit_text[64];
    snprintf(limit_text, sizeof(limit_text),
             "fewer than %ld descriptors left below the limit of %ld",
             fd_headroom(limit), limit);
    log_msg(LOG_WARN, NULL,
            "too many open files: %s; closed %llu new connections at once "
            "since the last warning; raise the descriptor limit (ulimit -n) "
            "or lower max_connections_inbound",
            err == EMFILE   ? "accept failed with EMFILE"
            : err == ENFILE ? "accept failed with ENFILE (system-wide)"
            : err != 0      ? "accept failed: out of kernel memory"
                            : limit_text,
            (unsigned long long)w->fd_limit_refused);
    w->fd_limit_logged_ms = now;
    w->fd_limit_refused = 0;
}


/* At the descriptor limit: gives up the spare descriptor to accept one
 * waiting connection and close it at once, then takes the spare back.
 * The client sees its connection closed instead of waiting in the listen
 * backlog, and the backlog drains, so the listening socket stops being
 * readable and the loop does not spin. Returns false when even that
 * accept failed, because another thread took the freed descriptor. */
static bool refuse_one(worker_t *w)
{
    if (w->spare_fd >= 0) {
        close(w->spare_fd);
        w->spare_fd = -1;
    }
    int fd = accept4(w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        server_count_refused(true);
    }
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return fd >= 0;
}


/* uv_poll_cb: connections are waiting on the listening socket. */
static void on_accept_ready(uv_poll_t *p, int status, int events)
{
    worker_t *w = p->data;
    bool added = false;
    struct rlimit rl;
    long limit = LONG_MAX;

    /* Read per batch, not once, because prlimit can change it while the
     * gateway runs. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)LONG_MAX) {
        limit = (long)rl.rlim_cur;
    }
    for (int i = 0; i < ACCEPT_BATCH && w->accepting; i++) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof(addr);
        int fd = accept4(w->listen_fd, (struct sockaddr *)&addr, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR || err == ECONNABORTED) {
                continue;
            }
            if (err != EMFILE && err != ENFILE && err != ENOBUFS &&
                err != ENOMEM) {
                break; /* EAGAIN: the backlog is empty */
            }
            note_fd_limit(w, err, limit);
            if (!refuse_one(w)) {
                uv_poll_stop(&w->accept_poll);
                w->accepting = false;
                uv_timer_start(&w->accept_timer, on_accept_resume,
                               ACCEPT_PAUSE_MS, 0);
            }
            continue;
        }
        /* Descriptors are allocated lowest first, so |fd| + 1 are open. */
        if (fd >= limit - fd_headroom(limit)) {
            close(fd);
            server_count_refused(true);
            note_fd_limit(w, 0, limit);
            continue;
        }
        if (!server_admit_connection(w)) {
            close(fd);
            continue;
        }
        /* MHD closes the socket itself when it cannot take it. */
        if (MHD_add_connection(w->mhd, fd, (struct sockaddr *)&addr, len) ==
            MHD_YES) {
            added = true;
        }
    }
    if (added) {
        worker_kick(w);
    }
}


worker_config_t *worker_config_hold(worker_t *w)
{
    w->current->users++;
    return w->current;
}


void worker_config_release(worker_config_t *wc)
{
    if (wc == NULL || --wc->users > 0) {
        return;
    }
    upstream_table_release(wc->table);
    shared_config_release(wc->shared);
    free(wc);
}


/* Makes |sc| the worker's current configuration: creates the dispatcher
 * the first time, else gives it the new service table. Takes over the
 * caller's reference to |sc| on success. Returns 0 or a TE_* code with
 * the reason in |err|. */
static int apply_config(worker_t *w, shared_config_t *sc,
                        upstream_reconfigure_t *counts, char *err,
                        size_t errlen)
{
    const config_t *cfg = sc->cfg;
    worker_config_t *wc = calloc(1, sizeof(*wc));
    upstream_service_t *services =
        calloc(cfg->nservices > 0 ? cfg->nservices : 1, sizeof(*services));
    int rc = TE_NOMEM;

    snprintf(err, errlen, "out of memory");
    if (wc == NULL || services == NULL) {
        goto fail;
    }
    build_services(sc, services);
    if (w->up == NULL) {
        upstream_options_t opts = {
            .resolver =
                {
                    .servers = cfg->resolver_servers,
                    .timeout_ms = clamp_int(cfg->resolver_timeout_ms),
                    .tries = clamp_int(cfg->resolver_tries),
                },
            .on_event = on_upstream_event,
            .event_arg = w,
        };
        rc = upstream_new(&w->loop, services, cfg->nservices, &opts, &w->up,
                          err, errlen);
    } else {
        rc = upstream_reconfigure(w->up, services, cfg->nservices, counts, err,
                                  errlen);
    }
    if (rc != 0) {
        goto fail;
    }
    /* The dispatcher copied what it keeps of the definitions. */
    free(services);
    wc->shared = sc;
    wc->cfg = cfg;
    wc->table = upstream_table_acquire(w->up);
    wc->users = 1;
    worker_config_t *old = w->current;
    w->current = wc;
    w->cfg = cfg;
    worker_config_release(old);
    return 0;

fail:
    free(services);
    free(wc);
    return rc;
}


/* uv_async_cb: the main thread handed over a new configuration. */
static void on_reload(uv_async_t *a)
{
    worker_t *w = a->data;
    upstream_reconfigure_t counts = {0};
    char err[256];

    shared_config_t *sc = atomic_exchange(&w->pending, NULL);
    if (sc == NULL) {
        return;
    }
    if (w->draining) {
        shared_config_release(sc);
        return;
    }
    if (apply_config(w, sc, &counts, err, sizeof(err)) != 0) {
        log_event(
            LOG_ERROR, NULL, "reload failed in a worker",
            json_pack("{s:s, s:s}", "config", sc->cfg->file, "error", err));
        shared_config_release(sc);
        return;
    }
    log_event(LOG_INFO, NULL, "configuration applied",
              json_pack("{s:s, s:I, s:I, s:I}", "config", w->cfg->file,
                        "services_kept", (json_int_t)counts.kept,
                        "services_added", (json_int_t)counts.added,
                        "services_removed", (json_int_t)counts.removed));
}


void worker_reconfigure(worker_t *w, shared_config_t *sc)
{
    shared_config_t *old = atomic_exchange(&w->pending, shared_config_hold(sc));
    shared_config_release(old);
    uv_async_send(&w->reload_async);
}


static int setup(worker_t *w)
{
    char err[256];

    uv_loop_init(&w->loop);
    if (admin_worker_init(w) != 0) {
        log_msg(LOG_ERROR, NULL, "worker %d: out of memory", w->id);
        return TE_NOMEM;
    }
    if (apply_config(w, shared_config_hold(w->initial), NULL, err,
                     sizeof(err)) != 0) {
        shared_config_release(w->initial);
        log_msg(LOG_ERROR, NULL, "worker %d: %s", w->id, err);
        return TE_INVALID;
    }
    if (getrandom(&w->id_seed, sizeof(w->id_seed), 0) !=
        (ssize_t)sizeof(w->id_seed)) {
        w->id_seed = uv_hrtime();
    }
    w->id_seed |= 1;

    /* MHD counts the timeout in whole seconds from the last byte
     * received or sent, so client_timeout_ms is rounded up. The memory
     * limit is the buffer that contains the request line and headers. The
     * connection limit is a backstop: tutti checks the count over all
     * workers before it hands a socket to MHD. */
    const config_t *cfg = w->cfg;
    unsigned int timeout_s =
        (unsigned int)((cfg->client_timeout_ms + 999) / 1000);
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET, 0,
        NULL, NULL, server_on_request, w, MHD_OPTION_NOTIFY_COMPLETED,
        server_on_completed, w, MHD_OPTION_NOTIFY_CONNECTION,
        server_on_connection, w, MHD_OPTION_URI_LOG_CALLBACK, server_on_uri, w,
        MHD_OPTION_UNESCAPE_CALLBACK, server_keep_escaped, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->max_header_bytes,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections_inbound,
        MHD_OPTION_END);
    if (w->mhd == NULL) {
        log_msg(LOG_ERROR, NULL, "worker %d: libmicrohttpd failed to start",
                w->id);
        upstream_close(w->up);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        return TE_INVALID;
    }
    int rc = ptimer_init(&w->timers, &w->loop);
    if (rc != 0) {
        log_msg(LOG_ERROR, NULL, "worker %d: timerfd: %s", w->id,
                strerror(-rc));
        MHD_stop_daemon(w->mhd);
        w->mhd = NULL;
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
    uv_timer_init(&w->loop, &w->accept_timer);
    w->accept_timer.data = w;
    uv_poll_init_socket(&w->loop, &w->accept_poll, w->listen_fd);
    w->accept_poll.data = w;
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    start_accepting(w);
    schedule_mhd(w);
    return 0;
}


static void worker_main(void *arg)
{
    worker_t *w = arg;
    log_set_worker(w->id);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    log_flush_suppressed();
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
    uv_async_init(&w->loop, &w->reload_async, on_reload);
    w->reload_async.data = w;
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
    admin_worker_free(w);
    /* The dispatcher was closed with the loop; what is left is memory. */
    worker_config_release(w->current);
    w->current = NULL;
    shared_config_release(atomic_exchange(&w->pending, NULL));
}
