/* A loaded configuration together with the TLS client contexts built for
 * it. The workers and every request that started under it hold a
 * reference, and the last holder frees it. So a reload never changes the
 * configuration under a request in flight. */
#ifndef TUTTI_SHARED_CONFIG_H
#define TUTTI_SHARED_CONFIG_H

#include <stdatomic.h>

#include "config.h"
#include "transport.h"

typedef struct tls_ref_s tls_ref_t;

typedef struct shared_config_s {
    config_t *cfg;
    /* One per service, NULL for cleartext services. A context is shared
     * with the configuration it was taken over from, see
     * shared_config_load. */
    tls_context_t **tls;
    tls_ref_t **tls_refs; /* the reference-counted owners of |tls| */
    atomic_size_t refs;
} shared_config_t;

/* Loads and validates |file|, then builds the TLS context of each
 * https:// and h2:// service. A service whose TLS settings (files, server
 * name, verification, ALPN) equal those of a context of |prev| (may be
 * NULL), with each file unchanged on disk (same inode, size and
 * modification time), shares that context, so the dispatcher can keep the
 * service's connections. Returns 0 with |*out| holding one reference, or
 * TE_INVALID or TE_NOMEM after appending one line per problem to |errs|,
 * each "FILE: JSON.PATH: message" as `tutti check` prints them. */
int shared_config_load(const char *file, const shared_config_t *prev,
                       shared_config_t **out, config_errors_t *errs);

/* Adds a reference; safe from any thread. Returns |sc|. */
shared_config_t *shared_config_hold(shared_config_t *sc);

/* Drops a reference and frees the configuration with the last one; safe
 * from any thread. NULL is ignored. */
void shared_config_release(shared_config_t *sc);

#endif
