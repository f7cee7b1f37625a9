/* HTTP/1.1 client: a keep-alive connection pool to one endpoint, over TCP
 * or TLS (https), responses parsed with libhttp-parser. One request in
 * flight per connection, no pipelining. A connection is not reused when a
 * byte or EOF arrives while no request is outstanding on it: after the end
 * of a response in the same read phase, or while it is idle. All
 * functions run on the owning loop's thread. */
#ifndef TUTTI_H1_H
#define TUTTI_H1_H

#include <sys/socket.h>
#include <uv.h>

#include "pool.h"
#include "upcall.h"

typedef struct h1_pool_s h1_pool_t;

/* Creates a pool for the endpoint |addr| (copied) with |opts| (copied;
 * NULL for defaults). A zero max_connections, idle_timeout_ms or
 * connect_timeout_ms takes its default: 128, 30000 ms, 250 ms. With
 * opts->tls set, connections use TLS with opts->server_name; the context
 * should offer ALPN "http/1.1". Returns NULL on allocation failure. */
h1_pool_t *h1_pool_new(uv_loop_t *loop, const struct sockaddr *addr,
                       const pool_options_t *opts);

/* Starts |call| on an idle connection, or on a new one, or queues it
 * (first in, first out) when max_connections are open and busy. It also
 * queues while a connection whose response just ended waits for the end
 * of the loop's read phase. The call then starts in the same loop
 * iteration, on that connection unless bytes that followed the response
 * closed it. A queued call has no timer of its own: the caller cancels it
 * at its deadline.
 * A call that fails before any response byte on a reused connection is
 * sent once more on a new connection if its method is idempotent.
 * Returns 0, after which on_done follows exactly once unless
 * h1_pool_cancel is called; or a negative TE_* code, in which case
 * on_done is never called. Errors in on_done: TE_CONNECT (connect, TLS
 * or connect timeout), TE_RESET (closed or reset before the response),
 * TE_BAD_RESPONSE (invalid, truncated or oversized response), TE_NOMEM. */
int h1_pool_submit(h1_pool_t *pool, upcall_t *call);

/* Cancels a submitted call that has not completed: a queued call leaves
 * the queue, a running call's connection is closed (never returned to the
 * pool), and on_done is not called. */
void h1_pool_cancel(h1_pool_t *pool, upcall_t *call);

/* Number of open connections (connecting, busy and idle). */
size_t h1_pool_connections(const h1_pool_t *pool);

/* Closes every connection and frees the pool once their handles are
 * closed. Calls still running are failed with TE_CANCELLED first (their
 * on_done is not called). */
void h1_pool_close(h1_pool_t *pool);

#endif
