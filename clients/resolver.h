/* Asynchronous host-name resolution with c-ares, driven by a libuv loop.
 * Nothing here blocks: c-ares sockets are watched with uv_poll and its
 * timeouts with a uv_timer. One resolver per worker loop. */
#ifndef TUTTI_RESOLVER_H
#define TUTTI_RESOLVER_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define RESOLVER_MAX_ADDRS 16

typedef struct resolver_s resolver_t;

typedef struct resolver_result_s {
    struct sockaddr_storage addrs[RESOLVER_MAX_ADDRS];
    size_t naddrs;
    int ttl_s;        /* smallest TTL of the answers, in seconds */
    char errmsg[128]; /* set when the lookup failed */
} resolver_result_t;

/* Called once per lookup. |err| is 0 or TE_RESOLVE (|res->errmsg| says
 * why) or TE_CANCELLED when the resolver is closing. */
typedef void (*resolver_cb)(void *arg, int err, const resolver_result_t *res);

/* Creates a resolver. |servers| is NULL (use /etc/resolv.conf) or a
 * c-ares server list "ip:port,ip:port". On error returns TE_INVALID or
 * TE_NOMEM and writes the reason to |err|. */
int resolver_new(uv_loop_t *loop, const char *servers, resolver_t **out,
                 char *err, size_t errlen);

/* Starts resolving |host| (A and AAAA; /etc/hosts is consulted as usual;
 * IP literals resolve at once) with |port| filled into each address. The
 * callback may run before this function returns only for IP literals.
 * Returns 0 or TE_NOMEM. */
int resolver_lookup(resolver_t *r, const char *host, unsigned port,
                    resolver_cb cb, void *arg);

/* Fails the pending lookups with TE_CANCELLED, closes the handles and
 * frees the resolver once they are closed. */
void resolver_close(resolver_t *r);

#endif
