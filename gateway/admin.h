/* The admin listener: /healthz, /readyz, /metrics, /debug/inflight and
 * POST /admin/reload on a separate libmicrohttpd daemon, run inside the
 * main thread's loop the way each worker runs its own daemon.
 *
 * Nothing here takes a lock on the request path. The admin side reads
 * each worker's metrics and heartbeat with atomic loads. For the in-flight
 * view it sends every worker a uv_async request, keeps the admin request
 * suspended, and each worker hands back a JSON snapshot of its requests
 * through an atomic pointer. */
#ifndef TUTTI_ADMIN_H
#define TUTTI_ADMIN_H

#include <uv.h>

#include "config.h"
#include "worker.h"

/* A worker loop that has not run its heartbeat timer for this long is
 * reported as stuck by /healthz. The heartbeat runs every 250 ms. */
#define ADMIN_HEARTBEAT_STALE_MS 2000

/* ---- worker side ---- */

typedef struct admin_worker_s admin_worker_t;

/* Creates the worker's metrics and its admin link on |w|'s loop: the
 * heartbeat timer and the snapshot handle. Main thread, after the loop is
 * initialised and before the worker's thread starts. Returns 0 or
 * TE_NOMEM. */
int admin_worker_init(worker_t *w);

/* Closes the link's handles so that the worker's loop can end; the admin
 * side stops asking this worker for snapshots. Worker thread. */
void admin_worker_close(worker_t *w);

/* Frees what admin_worker_init made. Main thread, after the worker's
 * thread has ended and after admin_close. */
void admin_worker_free(worker_t *w);

/* ---- admin listener ---- */

/* Starts the listener on cfg->admin_host:admin_port in |loop| (the main
 * loop), serving |workers|, which must stay valid until admin_close. Does
 * nothing when cfg->admin_host is NULL. Returns 0, or TE_INVALID with the
 * reason printed on stderr. */
int admin_start(uv_loop_t *loop, const config_t *cfg, worker_t *workers,
                int nworkers);

/* Makes |cfg| the configuration that /readyz checks. Main thread. */
void admin_set_config(const config_t *cfg);

/* Answers the requests still waiting for snapshots, stops the daemon and
 * closes the handles. Main thread, once every worker's loop has ended. */
void admin_close(void);

#endif
