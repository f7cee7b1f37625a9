/* A worker: one thread, one libuv loop, its own libmicrohttpd daemon on a
 * SO_REUSEPORT listening socket, and its own downstream connections.
 * Nothing on the request path is shared with another worker. */
#ifndef TUTTI_WORKER_H
#define TUTTI_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>
#include <uv.h>

#include "config.h"
#include "metrics.h"
#include "ptimer.h"
#include "shared_config.h"
#include "transport.h"
#include "upstream.h"

typedef struct req_s req_t;

/* The configuration as one worker uses it: a shared configuration and the
 * dispatcher's service table built from it. The worker holds its current
 * one, and each request holds the one it started under until it is freed,
 * so a reload never changes the routes, limits or services of a request
 * in flight. Used on the worker's thread only. */
typedef struct worker_config_s {
    shared_config_t *shared;
    const config_t *cfg; /* shared->cfg */
    upstream_table_t *table;
    size_t users; /* requests holding it, plus one while it is current */
} worker_config_t;

typedef struct worker_s {
    int id;
    /* The configuration that new requests use: current->cfg. Code that
     * serves one request reads the configuration that request holds. */
    const config_t *cfg;
    /* Set by the caller before worker_start; the worker takes its own
     * reference. */
    shared_config_t *initial;
    worker_config_t *current;
    /* Handed over by worker_reconfigure; on_reload takes it. */
    _Atomic(shared_config_t *) pending;
    uv_async_t reload_async;
    int listen_fd;
    uv_thread_t thread;
    uv_loop_t loop;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;   /* MHD's epoll fd */
    uv_timer_t mhd_timer; /* MHD_get_timeout */
    /* The fan-outs' timeouts and deadlines, at nanosecond precision. The
     * loop's data field points to it (ptimer_of). */
    ptimer_t timers;
    uv_async_t stop_async;
    uv_timer_t grace_timer;
    uv_timer_t finish_timer;
    /* tutti accepts on listen_fd itself and hands each socket to MHD
     * (MHD_add_connection), so that it can refuse connections quickly at
     * max_connections_inbound and at the file-descriptor limit. */
    uv_poll_t accept_poll;
    uv_timer_t accept_timer; /* resumes accepting after a pause at EMFILE */
    bool accepting;          /* accept_poll is started */
    int spare_fd; /* /dev/null, closed to accept and close one connection
                   * when the process is out of descriptors; -1 if lost */
    uint64_t fd_limit_logged_ms; /* uv_now() of the last EMFILE warning */
    uint64_t fd_limit_refused;   /* connections refused since then */
    upstream_t *up;
    req_t *inflight; /* requests between arrival and completion */
    /* Written by this worker only, read by the admin listener. */
    metrics_worker_t *metrics;
    struct admin_worker_s *admin; /* heartbeat and in-flight snapshots */
    size_t ninflight;
    bool draining; /* stop requested: answers carry Connection: close */
    bool grace_over;
    bool finished;
    uint64_t next_request_id;
    uint64_t id_seed;
    uv_async_t *exited;    /* main thread's, signalled when the loop ends */
    atomic_int loop_ended; /* set by the worker before signalling exited */
    int start_error;
} worker_t;

/* Prepares |w| (id, initial, listen_fd, exited set by the caller) and
 * starts its thread. Returns 0 or a TE_* code with the reason logged. */
int worker_start(worker_t *w);

/* Hands |sc| to the worker, which takes its own reference and makes it
 * current for new requests on its next loop iteration. Services whose
 * definition did not change keep their connections. Safe from any thread
 * until worker_stop; a configuration handed over earlier and not yet
 * applied is dropped. */
void worker_reconfigure(worker_t *w, shared_config_t *sc);

/* Returns the current configuration with a reference for one request.
 * Worker thread only. */
worker_config_t *worker_config_hold(worker_t *w);

/* Drops a reference from worker_config_hold. Worker thread only, or after
 * worker_join. */
void worker_config_release(worker_config_t *wc);

/* Stops accepting connections and closes the listening socket; the
 * connections already accepted carry on. Worker thread only. */
void worker_stop_accepting(worker_t *w);

/* Asks the worker to drain and stop; safe from any thread. */
void worker_stop(worker_t *w);

/* Waits for the thread to end and releases what it owned. */
void worker_join(worker_t *w);

/* Runs MHD on the next loop iteration: after MHD_resume_connection the
 * resumed connection is processed only when MHD_run is called again. */
void worker_kick(worker_t *w);

/* Called by the server module after a request completes. */
void worker_request_done(worker_t *w);

#endif
