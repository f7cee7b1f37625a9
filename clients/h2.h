/* HTTP/2 client built on nghttp2, over cleartext TCP with prior knowledge
 * (h2c) or TLS with ALPN "h2" (pool_options_t.tls set). One pool serves
 * one endpoint with up to max_connections connections, each carrying as
 * many concurrent streams as the peer's SETTINGS_MAX_CONCURRENT_STREAMS
 * allows. All functions run on the owning loop's thread. */
#ifndef TUTTI_H2_H
#define TUTTI_H2_H

#include <sys/socket.h>
#include <uv.h>

#include "pool.h"
#include "upcall.h"

typedef struct h2_pool_s h2_pool_t;

/* Creates a pool for the endpoint |addr| (copied) with |opts| (copied,
 * including the server_name string; the tls context must outlive the
 * pool). NULL |opts| means max_connections 128, idle_timeout_ms 30000,
 * connect_timeout_ms 250, ping_interval_ms 10000 and cleartext. In
 * |opts|, idle_timeout_ms, connect_timeout_ms and ping_interval_ms 0 mean
 * never, and max_connections 0 means 1. Returns NULL on allocation
 * failure. */
h2_pool_t *h2_pool_new(uv_loop_t *loop, const struct sockaddr *addr,
                       const pool_options_t *opts);

/* Starts a stream for |call| on a connection with a free stream slot. If
 * every connection is full, the pool opens another one, up to
 * max_connections. While a connection advertises
 * SETTINGS_MAX_CONCURRENT_STREAMS 0, the pool opens one at a time, and
 * none while two of them do. Beyond that the call waits in a FIFO queue,
 * with phase UPCALL_CONNECTING, until a slot frees or the caller cancels
 * it, because waiting alone never fails a call. A stream that the server
 * did not process (REFUSED_STREAM, above a GOAWAY's last_stream_id) is
 * sent again, within limits and while call->deadline_ns has not passed.
 * A GOAWAY that processed none of a connection's streams counts against a
 * limit of two retries per call whatever the deadline.
 *
 * Returns 0, after which on_done follows exactly once unless
 * h2_pool_cancel is called; or TE_INVALID / TE_NOMEM, in which case
 * on_done is never called. Errors in on_done: TE_CONNECT when no
 * connection to the endpoint could be made (refused, connect_timeout_ms
 * clipped to the waiting calls' deadlines, TLS failure) or it closed
 * before the server's SETTINGS; TE_RESET for a reset stream, a stream
 * refused by GOAWAY more often than the limits allow, or a lost
 * connection; TE_BAD_RESPONSE for an invalid or oversized response,
 * including a content-length above call->max_body. */
int h2_pool_submit(h2_pool_t *pool, upcall_t *call);

/* Cancels a submitted call: a waiting call leaves the queue, an open
 * stream is reset with CANCEL and the connection stays up for the other
 * streams. on_done is not called. */
void h2_pool_cancel(h2_pool_t *pool, upcall_t *call);

/* Number of connections that are connecting or open, including those
 * draining after a GOAWAY. */
size_t h2_pool_connections(const h2_pool_t *pool);

/* Closes every connection and frees the pool once their handles are
 * closed. No on_done follows for the calls still running. */
void h2_pool_close(h2_pool_t *pool);

#endif
