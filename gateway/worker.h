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
#include "transport.h"
#include "upstream.h"

typedef struct req_s req_t;

typedef struct worker_s {
    int id;
    const config_t *cfg;
    int listen_fd;
    uv_thread_t thread;
    uv_loop_t loop;
    struct MHD_Daemon *mhd;
    uv_poll_t mhd_poll;   /* MHD's epoll fd */
    uv_timer_t mhd_timer; /* MHD_get_timeout */
    uv_async_t stop_async;
    uv_timer_t grace_timer;
    uv_timer_t finish_timer;
    upstream_t *up;
    upstream_service_t *services;
    /* One per service, NULL for cleartext services. Created once by the
     * main thread, shared read-only by every worker and freed after they
     * are joined. */
    tls_context_t *const *tls;
    req_t *inflight; /* requests between arrival and completion */
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

/* Prepares |w| (id, cfg, tls, listen_fd, exited set by the caller) and starts
 * its thread. Returns 0 or a TE_* code with the reason logged. */
int worker_start(worker_t *w);

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
