/* The downstream side of one worker: resolves each service's host with
 * c-ares and hands calls to the HTTP/1.1 or HTTP/2 pool of its endpoint.
 * Everything here runs on the worker's loop thread. */
#ifndef TUTTI_UPSTREAM_H
#define TUTTI_UPSTREAM_H

#include <stddef.h>
#include <uv.h>

#include "upcall.h"

typedef enum {
    UPSTREAM_HTTP1, /* http:// */
    UPSTREAM_H2C,   /* h2c:// */
} upstream_proto_t;

/* What the dispatcher needs to know of a service. */
typedef struct upstream_service_s {
    const char *name;
    const char *host;
    unsigned port;
    upstream_proto_t proto;
} upstream_service_t;

typedef struct upstream_s upstream_t;

/* Creates the dispatcher for |nservices| services; |services| must stay
 * valid until upstream_close. |resolver_servers| as in resolver_new. On
 * error writes the reason to |err|. */
int upstream_new(uv_loop_t *loop, const upstream_service_t *services,
                 size_t nservices, const char *resolver_servers,
                 upstream_t **out, char *err, size_t errlen);

/* Starts |call| to service number |service|. on_done follows exactly once,
 * never from inside this function, unless upstream_cancel is called. */
void upstream_start(upstream_t *up, size_t service, upcall_t *call);

/* Cancels a started call that has not completed; on_done is not called. */
void upstream_cancel(upstream_t *up, upcall_t *call);

/* Open downstream connections over all services. */
size_t upstream_connections(const upstream_t *up);

/* Cancels nothing: the caller must have ended every call. Closes the
 * pools and the resolver; the memory is freed once their handles are
 * closed, while the loop runs. */
void upstream_close(upstream_t *up);

#endif
