/* Asynchronous name resolution with c-ares, driven by a libuv loop.
 * Nothing here blocks: c-ares sockets are watched with uv_poll and its
 * timeouts with a uv_timer. One resolver per worker loop. */
#ifndef TUTTI_RESOLVER_H
#define TUTTI_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Most addresses one lookup returns, over all SRV targets. */
#define RESOLVER_MAX_ADDRS 64

typedef struct resolver_s resolver_t;

typedef struct resolver_options_s {
    /* c-ares server list "ip:port,ip:port", or NULL to use
     * /etc/resolv.conf. /etc/hosts and the search list apply either way. */
    const char *servers;
    int timeout_ms; /* first try of a query (ARES_OPT_TIMEOUTMS); 0: c-ares */
    int tries;      /* tries per server (ARES_OPT_TRIES); 0: c-ares */
} resolver_options_t;

typedef struct resolver_addr_s {
    struct sockaddr_storage addr; /* with the port filled in */
    uint16_t priority;            /* SRV priority; 0 for A/AAAA lookups */
    uint16_t weight;              /* SRV weight; 0 for A/AAAA lookups */
} resolver_addr_t;

typedef struct resolver_result_s {
    resolver_addr_t addrs[RESOLVER_MAX_ADDRS];
    size_t naddrs;
    /* Smallest TTL of the address records, in seconds; -1 for an IP
     * literal, which never changes. For SRV the SRV record's own TTL is
     * not included, because c-ares 1.18's ares_parse_srv_reply does not
     * return it. */
    int ttl_s;
    /* The SRV answer was a single record with target ".": the service is
     * explicitly not available (RFC 2782). err is TE_RESOLVE. */
    bool no_service;
    char errmsg[160]; /* set when the lookup failed */
} resolver_result_t;

/* Called once per lookup. |err| is 0 or TE_RESOLVE (|res->errmsg| gives
 * why) or TE_CANCELLED when the resolver is closing. */
typedef void (*resolver_cb)(void *arg, int err, const resolver_result_t *res);

/* Creates a resolver; |opts| may be NULL for the defaults. On error
 * returns TE_INVALID or TE_NOMEM and writes the reason to |err|. */
int resolver_new(uv_loop_t *loop, const resolver_options_t *opts,
                 resolver_t **out, char *err, size_t errlen);

/* Starts resolving |host| (A and AAAA; IP literals resolve without a
 * query) with |port| filled into each address. The callback may run
 * before this function returns, for IP literals and /etc/hosts entries.
 * Returns 0 or TE_NOMEM. */
int resolver_lookup(resolver_t *r, const char *host, unsigned port,
                    resolver_cb cb, void *arg);

/* Starts resolving the SRV name |name| (e.g. "_http._tcp.orders.test")
 * and then the A and AAAA records of each target. Targets that do not
 * resolve are left out; the lookup fails only if none resolves. |name|
 * must stay valid until the callback. The callback may run before this
 * function returns when c-ares cannot send the query. Returns 0 or
 * TE_NOMEM. */
int resolver_lookup_srv(resolver_t *r, const char *name, resolver_cb cb,
                        void *arg);

/* Fails the pending lookups with TE_CANCELLED, closes the handles and
 * frees the resolver once they are closed. */
void resolver_close(resolver_t *r);

#endif
