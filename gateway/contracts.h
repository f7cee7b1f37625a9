/* Pact contracts emitted from a routing configuration: one Pact file
 * (specification V4) per downstream service, with tutti as the consumer,
 * describing every request the gateway sends to that service and the
 * response it needs back. Service teams verify their service against the
 * file with `pact verifier`. */
#ifndef TUTTI_CONTRACTS_H
#define TUTTI_CONTRACTS_H

#include <stddef.h>

#include <jansson.h>

#include "config.h"

/* The consumer name in every emitted pact. */
#define CONTRACTS_CONSUMER "tutti"

/* Builds the pact of |svc|: one interaction per (route, call) pair that
 * calls it, in configuration order. Returns a new reference, or NULL when
 * memory runs out. */
json_t *contracts_build(const config_t *cfg, const service_t *svc);

/* Writes "tutti-<service>.json" into |dir| for every service of |cfg|,
 * creating |dir| and its parents when missing. On error returns
 * TE_INVALID (or TE_NOMEM) and writes the reason, naming the path, to
 * |err|. */
int contracts_write(const config_t *cfg, const char *dir, char *err,
                    size_t errlen);

#endif
