/* Route matching: method and path to a route and its parameter values. */
#ifndef TUTTI_ROUTER_H
#define TUTTI_ROUTER_H

#include <stddef.h>

#include "buf.h"
#include "config.h"

#define ROUTER_MAX_PARAMS 16

typedef enum {
    ROUTER_MATCH = 0,
    ROUTER_NOT_FOUND, /* no route has this path */
    ROUTER_NO_METHOD, /* the path exists under other methods */
    ROUTER_BAD_PATH,  /* malformed escape, NUL, or a "." / ".." value */
    ROUTER_NOMEM,     /* allocation failed (the gateway replies 500) */
} router_result_t;

typedef struct router_match_s {
    const route_t *route;
    /* Decoded parameter values, in route->params order; they point into
     * |storage|, which the caller frees with buf_free. */
    const char *values[ROUTER_MAX_PARAMS];
    buf_t storage;
} router_match_t;

/* Matches |method| and the raw (still percent-encoded) |path| against the
 * configuration. A literal segment beats a parameter at the same position.
 * |m| must be zeroed before its first use (router_match_t m = {0}); a
 * later call reuses m->storage. On ROUTER_NO_METHOD, |allow| (may be
 * NULL) is reset and receives the allowed methods as "GET, POST". */
router_result_t router_match(const config_t *cfg, const char *method,
                             const char *path, router_match_t *m, buf_t *allow);

#endif
