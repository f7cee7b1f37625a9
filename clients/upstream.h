/* The downstream side of one worker. It turns each service into a live
 * set of endpoints with c-ares (A and AAAA, or SRV) and keeps the set
 * fresh in the background. Per call it chooses an endpoint (RFC 2782
 * priority, then power-of-two-choices weighted by SRV weight), ejects
 * failing endpoints for a while, and hands the call to the HTTP/1.1 or
 * HTTP/2 pool of its endpoint. Everything here runs on the worker's loop
 * thread. */
#ifndef TUTTI_UPSTREAM_H
#define TUTTI_UPSTREAM_H

#include <stdatomic.h>
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
    /* Bulkhead: a call that would make |active_calls| exceed
     * max_concurrent_calls fails with TE_OVERLOADED on the next loop
     * iteration without being sent. The counter may be shared by the
     * dispatchers of several workers, which update it atomically, and must
     * outlive every call counted in it: each call gives back its slot on
     * the counter it took it from. NULL or a limit of 0: no limit. */
    atomic_long *active_calls;
    long max_concurrent_calls;
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
    /* The service's index in the current table, or for a service that a
     * reconfiguration removed, in the last table that contained it. */
    size_t service;
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
    uint64_t overloaded;      /* calls failed by max_concurrent_calls */
    uint64_t endpoints;       /* endpoints currently known */
} upstream_stats_t;

typedef struct upstream_options_s {
    resolver_options_t resolver;
    upstream_event_cb on_event; /* NULL: no events */
    void *event_arg;
} upstream_options_t;

typedef struct upstream_s upstream_t;

/* The services of one configuration, numbered as in it. The dispatcher
 * has a current table; a caller that must keep starting calls under an
 * older configuration holds that configuration's table. */
typedef struct upstream_table_s upstream_table_t;

/* How a reconfiguration matched the new services to the old ones. */
typedef struct upstream_reconfigure_s {
    size_t kept;    /* same definition: state, endpoints and pools kept */
    size_t added;   /* new or changed: a new state */
    size_t removed; /* old states no longer in the current table */
} upstream_reconfigure_t;

/* Creates the dispatcher with |services| as its current table. The
 * definitions are copied, strings included, except pool.tls and
 * active_calls: the TLS context must stay valid while a table that
 * contains the service is held or current, and the counter while a call
 * counted in it runs. |opts| may be NULL (resolv.conf, no events). On
 * error returns TE_INVALID or TE_NOMEM and writes the reason to |err|. */
int upstream_new(uv_loop_t *loop, const upstream_service_t *services,
                 size_t nservices, const upstream_options_t *opts,
                 upstream_t **out, char *err, size_t errlen);

/* Makes |services| the current table, copied as by upstream_new. A service
 * whose definition equals that of a service in the current table (every
 * field, the TLS context compared by pointer, active_calls left out) takes
 * over its state: endpoint set, health and pools with their connections.
 * The others get a new state. A state that no table contains any more is
 * closed. No call runs on it then, because callers keep the table of each
 * call they start until the call ends. |counts| may be NULL. On error
 * returns TE_INVALID or TE_NOMEM, writes the reason to |err| and leaves
 * the current table as it was. */
int upstream_reconfigure(upstream_t *up, const upstream_service_t *services,
                         size_t nservices, upstream_reconfigure_t *counts,
                         char *err, size_t errlen);

/* Returns the current table with a reference for the caller, which must
 * release it with upstream_table_release, also after upstream_close. */
upstream_table_t *upstream_table_acquire(upstream_t *up);
void upstream_table_release(upstream_table_t *t);

/* Starts |call| to service number |service| of table |t|. on_done follows
 * exactly once, never from inside this function, unless upstream_cancel
 * is called. The dispatcher replaces call->on_done while the call runs
 * and restores it before calling it. The caller keeps holding |t| until
 * the call ended or was cancelled. */
void upstream_table_start(upstream_table_t *t, size_t service, upcall_t *call);

/* upstream_table_start on the current table. */
void upstream_start(upstream_t *up, size_t service, upcall_t *call);

/* Cancels a started call that has not completed; on_done is not called. */
void upstream_cancel(upstream_t *up, upcall_t *call);

/* Open downstream connections over all services. */
size_t upstream_connections(const upstream_t *up);

void upstream_get_stats(const upstream_t *up, upstream_stats_t *out);

/* One service of the current table, for the admin listener. */
typedef struct upstream_service_info_s {
    size_t connections; /* open, including those of removed endpoints */
    bool resolved;      /* an endpoint set was built at least once */
} upstream_service_info_t;

void upstream_service_info(const upstream_t *up, size_t service,
                           upstream_service_info_t *out);

/* Starts the first resolution of service number |service| of the current
 * table when none has succeeded or is running, so that the service is
 * known before its first call. After a failed one it waits the pause that
 * calls also wait (dns_min_ttl_ms). No callback is made. */
void upstream_resolve(upstream_t *up, size_t service);

/* Cancels nothing: the caller must have ended every call. Closes the
 * pools and the resolver; the memory is freed once their handles are
 * closed, while the loop runs. */
void upstream_close(upstream_t *up);

#endif
