/* HTTP/2 client over cleartext TCP with prior knowledge (h2c), built on
 * nghttp2. One connection per endpoint carries many concurrent streams.
 * All functions run on the owning loop's thread. */
#ifndef TUTTI_H2_H
#define TUTTI_H2_H

#include <sys/socket.h>
#include <uv.h>

#include "pool.h"
#include "upcall.h"

typedef struct h2_pool_s h2_pool_t;

/* Creates a pool for the endpoint |addr| (copied) with |opts| (copied;
 * NULL for defaults). Returns NULL on allocation failure. */
h2_pool_t *h2_pool_new(uv_loop_t *loop, const struct sockaddr *addr,
                       const pool_options_t *opts);

/* Opens a stream for |call|, connecting first if needed. Returns 0, after
 * which on_done follows exactly once unless h2_pool_cancel is called; or a
 * negative TE_* code, in which case on_done is never called. */
int h2_pool_submit(h2_pool_t *pool, upcall_t *call);

/* Cancels a submitted call: its stream is reset with CANCEL and the
 * connection stays up for the other streams. on_done is not called. */
void h2_pool_cancel(h2_pool_t *pool, upcall_t *call);

/* Number of open connections (0 or 1). */
size_t h2_pool_connections(const h2_pool_t *pool);

/* Closes the connection and frees the pool once its handle is closed. */
void h2_pool_close(h2_pool_t *pool);

#endif
