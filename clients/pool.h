/* Settings shared by the HTTP/1.1 and HTTP/2 connection pools. One pool
 * serves one endpoint (one address and port) on one worker. */
#ifndef TUTTI_POOL_H
#define TUTTI_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "transport.h"

typedef struct pool_options_s {
    /* Most connections to the endpoint; HTTP/2 opens another connection
     * only when every open one is at the peer's MAX_CONCURRENT_STREAMS.
     * Calls beyond the limit wait in a queue until their deadline. */
    size_t max_connections;
    /* An idle connection is closed after this long. HTTP/1.1 also stays
     * below the server's "Keep-Alive: timeout=N". */
    uint64_t idle_timeout_ms;
    /* TCP connect plus TLS handshake, per address. */
    uint64_t connect_timeout_ms;
    /* HTTP/2: a connection without streams sends PING this often; a PING
     * not acknowledged within the same interval closes it. 0: never. */
    uint64_t ping_interval_ms;
    /* NULL for cleartext (http://, h2c://). Owned by the caller and
     * valid for the pool's life. */
    tls_context_t *tls;
    const char *server_name; /* SNI and verified name when tls is set */
} pool_options_t;

#endif
