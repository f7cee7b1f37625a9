/* Process-wide lifecycle state that several threads read: whether a drain
 * has started, and the configuration reload entry point with its
 * counters. Every function here is safe from any thread and takes no lock
 * on the request path. */
#ifndef TUTTI_LIFECYCLE_H
#define TUTTI_LIFECYCLE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

/* Returns true once SIGTERM or SIGINT started the drain. From then on
 * /readyz returns 503 and every response carries Connection: close. The
 * flag never goes back to false. */
bool lifecycle_draining(void);

/* Sets the drain flag. Called by the main thread on the first signal. */
void lifecycle_start_draining(void);

/* Asks the main thread to re-read the --config file, as SIGHUP does. The
 * reload runs asynchronously on the main loop; its outcome is logged and
 * counted in lifecycle_reload_counts. Requests made before the main loop
 * gets to them are coalesced into one reload. Returns false, and does
 * nothing, once the gateway is draining or stopping. */
bool lifecycle_request_reload(void);

/* Configuration reloads since start-up: applied (|ok|) and rejected
 * because the file was invalid (|failed|). Either pointer may be NULL. */
void lifecycle_reload_counts(uint64_t *ok, uint64_t *failed);

/* Main thread only. Installs |on_reload|, which the main loop calls for
 * each lifecycle_request_reload, and returns 0 or a negative UV_E* code.
 * lifecycle_close stops taking requests and closes the handle; after it,
 * lifecycle_request_reload returns false. */
int lifecycle_init(uv_loop_t *loop, void (*on_reload)(void));
void lifecycle_close(void);

/* Main thread only: counts one applied or one rejected reload. */
void lifecycle_count_reload(bool ok);

#endif
