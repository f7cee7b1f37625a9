/* The downstream side of one worker. It turns each service into a live
 * set of endpoints with c-ares (A and AAAA, or SRV) and keeps the set
 * fresh in the background. Per call it chooses an endpoint (RFC 2782
 * priority, then power-of-two-choices weighted by SRV weight), ejects
 * failing endpoints for a while, and hands the call to the HTTP/1.1 or
 * HTTP/2 pool of its endpoint. Everything here runs on the worker's loop
 * thread. */
#ifndef TUTTI_UPSTREAM_H
#define TUTTI_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "pool.h"
#include "resolver.h"
#include "upcall.h"

/* The pool kind of a service. TLS is on when pool.tls is set, which the
 * TLS kinds require; otherwise HTTPS behaves as HTTP1 and H2 as H2C. */
typedef enum {
    UPSTREAM_HTTP1, /* http:// */
    UPSTREAM_H2C,   /* h2c:// */
    UPSTREAM_HTTPS, /* https://: HTTP/1.1 over TLS */
    UPSTREAM_H2,    /* h2://: HTTP/2 over TLS (ALPN h2) */
} upstream_proto_t;

/* What the dispatcher needs to know of a service. A numeric field left 0
 * takes the default named in its comment. */
typedef struct upstream_service_s {
    const char *name;
    /* Host name or IP literal; with srv, the SRV name such as
     * "_http._tcp.orders.test". */
    const char *host;
    unsigned port; /* ignored with srv: each SRV target has its own */
    upstream_proto_t proto;
    bool srv;
    /* Options of every endpoint's pool; the strings and the TLS context
     * must stay valid until upstream_close. 0 selects the default for
     * max_connections (128), idle_timeout_ms (30000) and
     * connect_timeout_ms (250); ping_interval_ms 0 turns PING off.
     * server_name NULL means host. */
    pool_options_t pool;
    /* Re-resolution period: the answers' smallest TTL clamped to
     * [dns_min_ttl_ms (1000), dns_max_ttl_ms (60000)]. */
    uint64_t dns_min_ttl_ms;
    uint64_t dns_max_ttl_ms;
    /* How long after the last successful resolution a failing refresh may
     * keep serving the last endpoint set (300000). */
    uint64_t dns_max_stale_ms;
    /* Consecutive TE_CONNECT or TE_RESET results that eject an endpoint
     * (3). The ejection lasts eject_base_ms (1000), doubled for each
     * further ejection without a success in between, up to eject_max_ms
     * (30000). */
    unsigned eject_after;
    uint64_t eject_base_ms;
    uint64_t eject_max_ms;
} upstream_service_t;

/* Something the gateway may want to log. The dispatcher never prints. */
typedef enum {
    UPSTREAM_EV_RESOLVE_FAILED, /* first resolution failed */
    UPSTREAM_EV_REFRESH_FAILED, /* refresh failed; the last set is kept */
    UPSTREAM_EV_STALE_EXPIRED,  /* refresh failed past dns_max_stale_ms */
    UPSTREAM_EV_ENDPOINTS,      /* the endpoint set was (re)built */
    UPSTREAM_EV_EJECTED,        /* an endpoint was ejected */
    UPSTREAM_EV_CONNECT_RETRY,  /* a call moved to another endpoint */
} upstream_event_kind_t;

typedef struct upstream_event_s {
    upstream_event_kind_t kind;
    size_t service;      /* index into the services array */
    const char *name;    /* the service's name */
    const char *message; /* one line, e.g. "refresh of x failed: ..." */
} upstream_event_t;

/* Called on the loop thread; |ev| is valid during the call only. It must
 * not call back into the dispatcher. */
typedef void (*upstream_event_cb)(void *arg, const upstream_event_t *ev);

/* Counters over all services, since upstream_new. */
typedef struct upstream_stats_s {
    uint64_t resolutions;      /* successful resolutions, first or refresh */
    uint64_t resolve_failures; /* failed first resolutions */
    uint64_t refresh_failures; /* failed refreshes (stale set kept or not) */
    uint64_t stale_expired;    /* sets dropped after dns_max_stale_ms */
    uint64_t ejections;
    uint64_t connect_retries; /* calls moved to another endpoint */
    uint64_t endpoints;       /* endpoints currently known */
} upstream_stats_t;

typedef struct upstream_options_s {
    resolver_options_t resolver;
    upstream_event_cb on_event; /* NULL: no events */
    void *event_arg;
} upstream_options_t;

typedef struct upstream_s upstream_t;

/* Creates the dispatcher for |nservices| services; |services| must stay
 * valid until upstream_close. |opts| may be NULL (resolv.conf, no
 * events). On error returns TE_INVALID or TE_NOMEM and writes the reason
 * to |err|. */
int upstream_new(uv_loop_t *loop, const upstream_service_t *services,
                 size_t nservices, const upstream_options_t *opts,
                 upstream_t **out, char *err, size_t errlen);

/* Starts |call| to service number |service|. on_done follows exactly once,
 * never from inside this function, unless upstream_cancel is called. The
 * dispatcher replaces call->on_done while the call runs and restores it
 * before calling it. */
void upstream_start(upstream_t *up, size_t service, upcall_t *call);

/* Cancels a started call that has not completed; on_done is not called. */
void upstream_cancel(upstream_t *up, upcall_t *call);

/* Open downstream connections over all services. */
size_t upstream_connections(const upstream_t *up);

void upstream_get_stats(const upstream_t *up, upstream_stats_t *out);

/* Cancels nothing: the caller must have ended every call. Closes the
 * pools and the resolver; the memory is freed once their handles are
 * closed, while the loop runs. */
void upstream_close(upstream_t *up);

#endif
