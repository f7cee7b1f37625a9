/* c-ares on a libuv loop. */
#include "resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* One uv_poll per socket c-ares has open. */
typedef struct resolver_sock_s {
    uv_poll_t poll;
    ares_socket_t fd;
    resolver_t *r;
    struct resolver_sock_s *next;
} resolver_sock_t;

struct resolver_s {
    uv_loop_t *loop;
    ares_channel channel;
    uv_timer_t timer;
    resolver_sock_t *socks;
    int closing;
    int open_handles;
};

typedef struct lookup_s {
    resolver_t *r;
    resolver_cb cb;
    void *arg;
    unsigned port;
} lookup_t;


static void release_if_done(resolver_t *r)
{
    if (r->closing && r->open_handles == 0) {
        free(r);
    }
}


static void on_handle_closed(uv_handle_t *h)
{
    resolver_t *r = h->data;
    if ((void *)h != (void *)&r->timer) {
        free(h);
    }
    r->open_handles--;
    release_if_done(r);
}


static void on_timeout(uv_timer_t *t);


static void schedule_timeout(resolver_t *r)
{
    struct timeval tv;
    struct timeval *next = ares_timeout(r->channel, NULL, &tv);
    if (next == NULL) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t ms =
        (uint64_t)next->tv_sec * 1000 + (uint64_t)next->tv_usec / 1000;
    uv_timer_start(&r->timer, on_timeout, ms, 0);
}


/* uv_timer_cb: c-ares's retransmission and query timeouts. */
static void on_timeout(uv_timer_t *t)
{
    resolver_t *r = t->data;
    ares_process_fd(r->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    schedule_timeout(r);
}


/* uv_poll_cb: a c-ares socket is readable or writable. */
static void on_sock_ready(uv_poll_t *p, int status, int events)
{
    resolver_sock_t *s = p->data;
    resolver_t *r = s->r;
    ares_socket_t rfd = ARES_SOCKET_BAD;
    ares_socket_t wfd = ARES_SOCKET_BAD;

    if (status < 0 || (events & UV_READABLE)) {
        rfd = s->fd;
    }
    if (status < 0 || (events & UV_WRITABLE)) {
        wfd = s->fd;
    }
    ares_process_fd(r->channel, rfd, wfd);
    schedule_timeout(r);
}


/* ares_sock_state_cb: c-ares opened, changed or closed a socket. */
static void on_sock_state(void *data, ares_socket_t fd, int readable,
                          int writable)
{
    resolver_t *r = data;
    resolver_sock_t **pp = &r->socks;
    while (*pp != NULL && (*pp)->fd != fd) {
        pp = &(*pp)->next;
    }
    resolver_sock_t *s = *pp;

    if (!readable && !writable) {
        if (s != NULL) {
            *pp = s->next;
            uv_poll_stop(&s->poll);
            s->poll.data = r;
            uv_close((uv_handle_t *)&s->poll, on_handle_closed);
        }
        return;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL) {
            return;
        }
        if (uv_poll_init_socket(r->loop, &s->poll, fd) != 0) {
            free(s);
            return;
        }
        s->fd = fd;
        s->r = r;
        s->poll.data = s;
        s->next = r->socks;
        r->socks = s;
        r->open_handles++;
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, on_sock_ready);
}


int resolver_new(uv_loop_t *loop, const char *servers, resolver_t **out,
                 char *err, size_t errlen)
{
    resolver_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return TE_NOMEM;
    }
    r->loop = loop;

    struct ares_options opts;
    memset(&opts, 0, sizeof(opts));
    opts.sock_state_cb = on_sock_state;
    opts.sock_state_cb_data = r;
    int rc = ares_init_options(&r->channel, &opts, ARES_OPT_SOCK_STATE_CB);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares initialisation failed: %s",
                 ares_strerror(rc));
        free(r);
        return TE_INVALID;
    }
    if (servers != NULL) {
        rc = ares_set_servers_ports_csv(r->channel, servers);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "invalid resolver servers \"%s\": %s",
                     servers, ares_strerror(rc));
            ares_destroy(r->channel);
            free(r);
            return TE_INVALID;
        }
    }
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    r->open_handles = 1;
    *out = r;
    return 0;
}


/* ares_addrinfo_callback: the lookup finished. */
static void on_addrinfo(void *arg, int status, int timeouts,
                        struct ares_addrinfo *ai)
{
    lookup_t *lk = arg;
    resolver_result_t res;
    memset(&res, 0, sizeof(res));
    res.ttl_s = -1;

    int err = 0;
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        err = TE_CANCELLED;
        snprintf(res.errmsg, sizeof(res.errmsg), "resolver closed");
    } else if (status != ARES_SUCCESS) {
        err = TE_RESOLVE;
        snprintf(res.errmsg, sizeof(res.errmsg), "%s", ares_strerror(status));
    } else {
        for (struct ares_addrinfo_node *n = ai != NULL ? ai->nodes : NULL;
             n != NULL && res.naddrs < RESOLVER_MAX_ADDRS; n = n->ai_next) {
            if (n->ai_family != AF_INET && n->ai_family != AF_INET6) {
                continue;
            }
            struct sockaddr_storage *ss = &res.addrs[res.naddrs++];
            memcpy(ss, n->ai_addr, n->ai_addrlen);
            if (n->ai_family == AF_INET) {
                ((struct sockaddr_in *)ss)->sin_port = htons(lk->port);
            } else {
                ((struct sockaddr_in6 *)ss)->sin6_port = htons(lk->port);
            }
            if (res.ttl_s < 0 || n->ai_ttl < res.ttl_s) {
                res.ttl_s = n->ai_ttl;
            }
        }
        if (res.naddrs == 0) {
            err = TE_RESOLVE;
            snprintf(res.errmsg, sizeof(res.errmsg), "no addresses");
        }
    }
    if (ai != NULL) {
        ares_freeaddrinfo(ai);
    }
    lk->cb(lk->arg, err, &res);
    free(lk);
}


int resolver_lookup(resolver_t *r, const char *host, unsigned port,
                    resolver_cb cb, void *arg)
{
    lookup_t *lk = calloc(1, sizeof(*lk));
    if (lk == NULL) {
        return TE_NOMEM;
    }
    lk->r = r;
    lk->cb = cb;
    lk->arg = arg;
    lk->port = port;

    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ares_getaddrinfo(r->channel, host, NULL, &hints, on_addrinfo, lk);
    schedule_timeout(r);
    return 0;
}


void resolver_close(resolver_t *r)
{
    r->closing = 1;
    /* Fails pending lookups with ARES_EDESTRUCTION and closes c-ares's
     * sockets, which reports each through on_sock_state. */
    ares_destroy(r->channel);
    while (r->socks != NULL) {
        resolver_sock_t *s = r->socks;
        r->socks = s->next;
        uv_poll_stop(&s->poll);
        s->poll.data = r;
        uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    }
    uv_close((uv_handle_t *)&r->timer, on_handle_closed);
}
