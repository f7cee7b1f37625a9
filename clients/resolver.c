/* c-ares on a libuv loop. */
#include "resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <stdbool.h>
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

/* One lookup: A and AAAA of one host, or SRV and then A and AAAA of each
 * target. The result is built in place and reported once. */
typedef struct lookup_s {
    resolver_t *r;
    resolver_cb cb;
    void *arg;
    unsigned port;        /* A/AAAA lookup: the port to fill in */
    int pending;          /* SRV: target lookups still running, plus one */
    bool cancelled;       /* a sub-lookup saw the channel being destroyed */
    const char *name;     /* SRV name, for messages (not owned) */
    char first_error[96]; /* SRV: why the first failing target failed */
    resolver_result_t res;
} lookup_t;

/* One SRV target being resolved. */
typedef struct target_s {
    lookup_t *lk;
    unsigned port;
    uint16_t priority;
    uint16_t weight;
} target_t;


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


int resolver_new(uv_loop_t *loop, const resolver_options_t *ropts,
                 resolver_t **out, char *err, size_t errlen)
{
    const char *servers = ropts != NULL ? ropts->servers : NULL;
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
    int optmask = ARES_OPT_SOCK_STATE_CB;
    if (ropts != NULL && ropts->timeout_ms > 0) {
        opts.timeout = ropts->timeout_ms;
        optmask |= ARES_OPT_TIMEOUTMS;
    }
    if (ropts != NULL && ropts->tries > 0) {
        opts.tries = ropts->tries;
        optmask |= ARES_OPT_TRIES;
    }
    int rc = ares_init_options(&r->channel, &opts, optmask);
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


/* Returns the slot of |res| for an address of SRV |priority|: the next
 * free one, or, once RESOLVER_MAX_ADDRS are kept, the one of the worst
 * priority when it is worse than |priority|; else NULL. The targets of an
 * SRV record resolve in any order, so without the replacement the first
 * addresses to arrive would fill the list and could crowd out the best
 * targets. */
static resolver_addr_t *addr_slot(resolver_result_t *res, uint16_t priority)
{
    if (res->naddrs < RESOLVER_MAX_ADDRS) {
        return &res->addrs[res->naddrs++];
    }
    resolver_addr_t *worst = &res->addrs[0];
    for (size_t i = 1; i < res->naddrs; i++) {
        if (res->addrs[i].priority > worst->priority) {
            worst = &res->addrs[i];
        }
    }
    return worst->priority > priority ? worst : NULL;
}


/* Adds the addresses of |ai| to |res| with |port| and the SRV |priority|
 * and |weight|, and lowers res->ttl_s to their smallest TTL. */
static void add_addrinfo(resolver_result_t *res, const struct ares_addrinfo *ai,
                         unsigned port, uint16_t priority, uint16_t weight)
{
    for (struct ares_addrinfo_node *n = ai != NULL ? ai->nodes : NULL;
         n != NULL; n = n->ai_next) {
        if (n->ai_family != AF_INET && n->ai_family != AF_INET6) {
            continue;
        }
        resolver_addr_t *a = addr_slot(res, priority);
        if (a == NULL) {
            break;
        }
        memset(a, 0, sizeof(*a));
        memcpy(&a->addr, n->ai_addr, n->ai_addrlen);
        if (n->ai_family == AF_INET) {
            ((struct sockaddr_in *)&a->addr)->sin_port = htons(port);
        } else {
            ((struct sockaddr_in6 *)&a->addr)->sin6_port = htons(port);
        }
        a->priority = priority;
        a->weight = weight;
        if (res->ttl_s < 0 || n->ai_ttl < res->ttl_s) {
            res->ttl_s = n->ai_ttl;
        }
    }
}


static bool is_cancel_status(int status)
{
    return status == ARES_EDESTRUCTION || status == ARES_ECANCELLED;
}


/* ares_addrinfo_callback: an A/AAAA lookup finished. */
static void on_addrinfo(void *arg, int status, int timeouts,
                        struct ares_addrinfo *ai)
{
    lookup_t *lk = arg;
    resolver_result_t *res = &lk->res;
    int err = 0;

    if (is_cancel_status(status)) {
        err = TE_CANCELLED;
        snprintf(res->errmsg, sizeof(res->errmsg), "resolver closed");
    } else if (status != ARES_SUCCESS) {
        err = TE_RESOLVE;
        snprintf(res->errmsg, sizeof(res->errmsg), "%s", ares_strerror(status));
    } else {
        add_addrinfo(res, ai, lk->port, 0, 0);
        if (res->naddrs == 0) {
            err = TE_RESOLVE;
            snprintf(res->errmsg, sizeof(res->errmsg), "no addresses");
        }
    }
    if (ai != NULL) {
        ares_freeaddrinfo(ai);
    }
    lk->cb(lk->arg, err, res);
    free(lk);
}


static lookup_t *lookup_new(resolver_t *r, resolver_cb cb, void *arg)
{
    lookup_t *lk = calloc(1, sizeof(*lk));
    if (lk == NULL) {
        return NULL;
    }
    lk->r = r;
    lk->cb = cb;
    lk->arg = arg;
    lk->res.ttl_s = -1;
    return lk;
}


static void start_addrinfo(resolver_t *r, const char *host,
                           ares_addrinfo_callback cb, void *arg)
{
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    ares_getaddrinfo(r->channel, host, NULL, &hints, cb, arg);
}


/* Answers an IP literal without DNS: c-ares 1.18's ares_getaddrinfo sends
 * queries for it. Returns false when |host| is a name. */
static bool answer_literal(const char *host, unsigned port, resolver_cb cb,
                           void *arg)
{
    resolver_result_t res;
    memset(&res, 0, sizeof(res));
    res.ttl_s = -1;

    struct sockaddr_in *sin = (struct sockaddr_in *)&res.addrs[0].addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&res.addrs[0].addr;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
    } else {
        return false;
    }
    res.naddrs = 1;
    cb(arg, 0, &res);
    return true;
}


int resolver_lookup(resolver_t *r, const char *host, unsigned port,
                    resolver_cb cb, void *arg)
{
    if (answer_literal(host, port, cb, arg)) {
        return 0;
    }
    lookup_t *lk = lookup_new(r, cb, arg);
    if (lk == NULL) {
        return TE_NOMEM;
    }
    lk->port = port;
    start_addrinfo(r, host, on_addrinfo, lk);
    schedule_timeout(r);
    return 0;
}


/* Reports an SRV lookup once its last target lookup has ended. */
static void srv_target_done(lookup_t *lk)
{
    if (--lk->pending > 0) {
        return;
    }
    resolver_result_t *res = &lk->res;
    int err = 0;
    if (lk->cancelled) {
        err = TE_CANCELLED;
        snprintf(res->errmsg, sizeof(res->errmsg), "resolver closed");
    } else if (res->naddrs == 0) {
        err = TE_RESOLVE;
    }
    if (err == TE_RESOLVE && res->errmsg[0] == '\0') {
        snprintf(res->errmsg, sizeof(res->errmsg),
                 "no SRV target of %s resolved: %s", lk->name,
                 lk->first_error[0] != '\0' ? lk->first_error : "no addresses");
    }
    lk->cb(lk->arg, err, res);
    free(lk);
}


/* ares_addrinfo_callback: the A/AAAA lookup of one SRV target ended. */
static void on_target_addrinfo(void *arg, int status, int timeouts,
                               struct ares_addrinfo *ai)
{
    target_t *t = arg;
    lookup_t *lk = t->lk;

    if (is_cancel_status(status)) {
        lk->cancelled = true;
    } else if (status != ARES_SUCCESS) {
        if (lk->first_error[0] == '\0') {
            snprintf(lk->first_error, sizeof(lk->first_error), "%s",
                     ares_strerror(status));
        }
    } else {
        add_addrinfo(&lk->res, ai, t->port, t->priority, t->weight);
    }
    if (ai != NULL) {
        ares_freeaddrinfo(ai);
    }
    free(t);
    srv_target_done(lk);
}


/* A target of "." (which c-ares expands to "") means "no service". */
static bool is_root_name(const char *host)
{
    return host[0] == '\0' || strcmp(host, ".") == 0;
}


/* ares_callback: the SRV query ended; resolves each target. */
static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf,
                   int alen)
{
    lookup_t *lk = arg;
    resolver_result_t *res = &lk->res;
    struct ares_srv_reply *srv = NULL;

    if (is_cancel_status(status)) {
        lk->cancelled = true;
        srv_target_done(lk);
        return;
    }
    if (status == ARES_SUCCESS) {
        status = ares_parse_srv_reply(abuf, alen, &srv);
    }
    if (status == ARES_SUCCESS && srv == NULL) {
        status = ARES_ENODATA;
    }
    if (status != ARES_SUCCESS) {
        snprintf(res->errmsg, sizeof(res->errmsg), "SRV lookup of %s: %s",
                 lk->name, ares_strerror(status));
        srv_target_done(lk);
        return;
    }
    if (srv->next == NULL && is_root_name(srv->host)) {
        res->no_service = true;
        snprintf(res->errmsg, sizeof(res->errmsg),
                 "service %s has no targets (SRV target \".\")", lk->name);
        ares_free_data(srv);
        srv_target_done(lk);
        return;
    }
    for (struct ares_srv_reply *s = srv; s != NULL; s = s->next) {
        if (is_root_name(s->host)) {
            continue;
        }
        target_t *t = calloc(1, sizeof(*t));
        if (t == NULL) {
            continue;
        }
        t->lk = lk;
        t->port = s->port;
        t->priority = s->priority;
        t->weight = s->weight;
        lk->pending++;
        start_addrinfo(lk->r, s->host, on_target_addrinfo, t);
    }
    ares_free_data(srv);
    /* Drops the reference this callback held; the targets hold theirs. */
    srv_target_done(lk);
}


int resolver_lookup_srv(resolver_t *r, const char *name, resolver_cb cb,
                        void *arg)
{
    lookup_t *lk = lookup_new(r, cb, arg);
    if (lk == NULL) {
        return TE_NOMEM;
    }
    lk->name = name;
    lk->pending = 1;
    ares_search(r->channel, name, C_IN, T_SRV, on_srv, lk);
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
