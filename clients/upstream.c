/* Per-worker downstream dispatcher: endpoint discovery, load balancing,
 * passive health, then the pools. */
#include "upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "h1.h"
#include "h2.h"
#include "sockaddr.h"

#define DEFAULT_MAX_CONNECTIONS 128
#define DEFAULT_IDLE_TIMEOUT_MS 30000
#define DEFAULT_CONNECT_TIMEOUT_MS 250
#define DEFAULT_DNS_MIN_TTL_MS 1000
#define DEFAULT_DNS_MAX_TTL_MS 60000
#define DEFAULT_DNS_MAX_STALE_MS 300000
#define DEFAULT_EJECT_AFTER 3
#define DEFAULT_EJECT_BASE_MS 1000
#define DEFAULT_EJECT_MAX_MS 30000

/* Where a started call sits, for upstream_cancel. */
enum {
    WHERE_NONE = 0,
    WHERE_RESOLVING, /* in svc_state_t.waiters */
    WHERE_FAILED,    /* in upstream_t.failed, reported on the next tick */
    WHERE_RETRY,     /* in upstream_t.retry, resubmitted on the next tick */
    WHERE_POOL,      /* in the pool of its route's endpoint */
};

enum {
    SVC_UNRESOLVED = 0, /* no endpoint set: the next call resolves */
    SVC_RESOLVING,      /* first resolution running, calls wait */
    SVC_FAILED,         /* first resolution failed; calls fail until
                         * failed_until */
    SVC_READY,          /* endpoint set known; refreshed in the background */
};

typedef struct svc_state_s svc_state_t;

/* One address and port of a service, with its own pool. */
typedef struct endpoint_s {
    svc_state_t *svc;
    uint64_t id; /* unique in the dispatcher; survives refreshes */
    struct sockaddr_storage addr;
    char desc[64]; /* "ip:port" */
    uint16_t priority;
    uint16_t weight;
    h1_pool_t *h1; /* created on first use */
    h2_pool_t *h2;
    size_t outstanding;     /* calls in the pool */
    unsigned failures;      /* consecutive TE_CONNECT / TE_RESET results */
    unsigned ejections;     /* consecutive ejections without a success */
    uint64_t ejected_until; /* uv_now() ms; 0 or past: admitted */
    bool removed;           /* gone from DNS; closed once outstanding is 0 */
    struct endpoint_s *next_retired;
} endpoint_t;

/* FIFO of calls linked through queue_next. */
typedef struct callq_s {
    upcall_t *head;
    upcall_t *tail;
} callq_t;

/* One service's discovery, health and pools. A state belongs to no single
 * configuration: a reload keeps it for every service whose definition did
 * not change, so its connections survive, and it is closed once no service
 * table contains it. By then no call uses it, because each caller holds
 * the table its calls were started from until they end. */
struct svc_state_s {
    upstream_t *up;
    size_t index; /* position in the newest table that contains it */
    const upstream_service_t *conf; /* &def */
    /* The definition, with name, host and pool.server_name copied, so it
     * outlives the caller's array. Its active_calls is unused: admission
     * counts on the definition of the table the call was started from. */
    upstream_service_t def;
    pool_options_t pool; /* conf->pool with defaults filled in */
    uint64_t min_ttl_ms;
    uint64_t max_ttl_ms;
    uint64_t max_stale_ms;
    unsigned eject_after;
    uint64_t eject_base_ms;
    uint64_t eject_max_ms;

    int state;
    bool refreshing;
    endpoint_t *eps[RESOLVER_MAX_ADDRS]; /* the current set */
    size_t neps;
    uint64_t confirmed_at; /* uv_now() of the last good resolution */
    uint64_t failed_until; /* SVC_FAILED: uv_now() until which calls fail */
    char failmsg[160];
    callq_t waiters; /* calls waiting for the first resolution */
    uv_timer_t refresh_timer;

    size_t ntables;      /* service tables that contain this state */
    bool retired;        /* in no table any more: closing */
    bool lookup_pending; /* a resolver callback is still due */
    bool timer_closed;
    svc_state_t *next; /* upstream_t.states */
};

/* The services of one configuration, numbered as in it. */
struct upstream_table_s {
    upstream_t *up;
    size_t refs; /* the dispatcher while current, plus each acquirer */
    size_t nservices;
    svc_state_t **svc;
    /* Shallow copies of the definitions, for the bulkhead counter of the
     * configuration that the table's calls were started under.
     * NOTE: each configuration counts on its own, so right after a reload
     * a service can see the calls of old requests plus up to
     * max_concurrent_calls new ones. */
    upstream_service_t *defs;
};

/* The dispatcher's state of one running call, in call->up_owner. */
#define ROUTE_INLINE_TRIED 4

typedef struct route_s {
    svc_state_t *svc;
    atomic_long *counted; /* the bulkhead counter holding a slot, or NULL */
    endpoint_t *ep;       /* WHERE_POOL: the endpoint whose pool has the call */
    unsigned attempts;
    /* Ids of the endpoints tried, in order: |inline_tried| until more
     * than ROUTE_INLINE_TRIED were tried, then an array of its own, so a
     * call that stays on its first endpoint costs no room for
     * RESOLVER_MAX_ADDRS ids. */
    uint64_t *tried;
    size_t ntried;
    size_t tried_cap;
    uint64_t inline_tried[ROUTE_INLINE_TRIED];
} route_t;

struct upstream_s {
    uv_loop_t *loop;
    resolver_t *resolver;
    upstream_event_cb on_event;
    void *event_arg;
    upstream_table_t *current;
    size_t ntables;      /* tables not yet freed, current or not */
    svc_state_t *states; /* every state not yet freed, retired or not */
    callq_t failed;      /* calls that end on the next tick */
    callq_t retry;       /* calls to resubmit on the next tick */
    endpoint_t *retired; /* removed endpoints with calls still running */
    uv_timer_t tick_timer;
    int open_handles;
    bool closing;
    uint64_t next_endpoint_id;
    uint64_t rng;
    upstream_stats_t stats;
};

static void on_pool_done(upcall_t *call, int err);
static void on_tick(uv_timer_t *t);
static void start_resolution(svc_state_t *s);
static void free_state(svc_state_t *s);


static void callq_push(callq_t *q, upcall_t *call)
{
    call->queue_next = NULL;
    if (q->tail != NULL) {
        q->tail->queue_next = call;
    } else {
        q->head = call;
    }
    q->tail = call;
}


static upcall_t *callq_pop(callq_t *q)
{
    upcall_t *call = q->head;
    if (call != NULL) {
        q->head = call->queue_next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        call->queue_next = NULL;
    }
    return call;
}


static void callq_remove(callq_t *q, upcall_t *call)
{
    upcall_t *prev = NULL;
    for (upcall_t *c = q->head; c != NULL; prev = c, c = c->queue_next) {
        if (c != call) {
            continue;
        }
        if (prev != NULL) {
            prev->queue_next = c->queue_next;
        } else {
            q->head = c->queue_next;
        }
        if (q->tail == c) {
            q->tail = prev;
        }
        c->queue_next = NULL;
        return;
    }
}


static size_t callq_length(const callq_t *q)
{
    size_t n = 0;
    for (const upcall_t *c = q->head; c != NULL; c = c->queue_next) {
        n++;
    }
    return n;
}


/* xorshift64*: selection needs speed and spread, not secrecy. */
static uint64_t next_random(upstream_t *up)
{
    up->rng ^= up->rng >> 12;
    up->rng ^= up->rng << 25;
    up->rng ^= up->rng >> 27;
    return up->rng * 0x2545F4914F6CDD1DULL;
}


static void emit(upstream_t *up, upstream_event_kind_t kind,
                 const svc_state_t *s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void emit(upstream_t *up, upstream_event_kind_t kind,
                 const svc_state_t *s, const char *fmt, ...)
{
    if (up->on_event == NULL) {
        return;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    upstream_event_t ev = {
        .kind = kind,
        .service = s->index,
        .name = s->conf->name,
        .message = msg,
    };
    up->on_event(up->event_arg, &ev);
}


static void schedule_tick(upstream_t *up)
{
    if (!up->closing) {
        uv_timer_start(&up->tick_timer, on_tick, 0, 0);
    }
}


/* Ends |call| in the caller's hands: restores its on_done and frees the
 * route. The caller of this function then calls on_done or not. */
static void release_route(upcall_t *call)
{
    route_t *rt = call->up_owner;
    if (rt != NULL && rt->counted != NULL) {
        atomic_fetch_sub_explicit(rt->counted, 1, memory_order_relaxed);
    }
    if (rt != NULL && rt->tried != rt->inline_tried) {
        free(rt->tried);
    }
    free(call->up_owner);
    call->up_owner = NULL;
    call->on_done = call->up_user_done;
    call->up_user_done = NULL;
}


/* Queues |call| to fail with |err| on the next tick, so that on_done is
 * never called from inside upstream_start or upstream_cancel. The code is
 * kept in call->status until then. */
static void fail_later(upstream_t *up, upcall_t *call, int err)
{
    release_route(call);
    call->status = err;
    call->up_where = WHERE_FAILED;
    callq_push(&up->failed, call);
    schedule_tick(up);
}


static void finish_now(upcall_t *call, int err)
{
    release_route(call);
    call->up_where = WHERE_NONE;
    call->phase = UPCALL_DONE;
    call->on_done(call, err);
}


/* ---- endpoints ---- */

static bool same_address(const struct sockaddr_storage *a,
                         const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) {
        return false;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port &&
               x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0 &&
           x->sin6_scope_id == y->sin6_scope_id;
}


static bool uses_h2(const svc_state_t *s)
{
    return s->conf->proto == UPSTREAM_H2C || s->conf->proto == UPSTREAM_H2;
}


static void endpoint_close_pool(endpoint_t *ep)
{
    if (ep->h1 != NULL) {
        h1_pool_close(ep->h1);
        ep->h1 = NULL;
    }
    if (ep->h2 != NULL) {
        h2_pool_close(ep->h2);
        ep->h2 = NULL;
    }
}


/* Takes |ep| out of service: at once if no call runs on it, else once the
 * last one ends (in-flight calls are never cancelled by a DNS change). */
static void endpoint_retire(upstream_t *up, endpoint_t *ep)
{
    ep->removed = true;
    ep->next_retired = up->retired;
    up->retired = ep;
    schedule_tick(up);
}


/* Closes and frees the retired endpoints that no call uses any more. Runs
 * on the tick, outside every pool callback. */
static void reap_retired(upstream_t *up)
{
    endpoint_t **pp = &up->retired;
    while (*pp != NULL) {
        endpoint_t *ep = *pp;
        if (ep->outstanding > 0) {
            pp = &ep->next_retired;
            continue;
        }
        *pp = ep->next_retired;
        endpoint_close_pool(ep);
        free(ep);
    }
}


static int endpoint_pool_submit(endpoint_t *ep, upcall_t *call)
{
    svc_state_t *s = ep->svc;
    upstream_t *up = s->up;
    const struct sockaddr *sa = (const struct sockaddr *)&ep->addr;

    if (uses_h2(s)) {
        if (ep->h2 == NULL) {
            ep->h2 = h2_pool_new(up->loop, sa, &s->pool);
        }
        if (ep->h2 == NULL) {
            return TE_NOMEM;
        }
        return h2_pool_submit(ep->h2, call);
    }
    if (ep->h1 == NULL) {
        ep->h1 = h1_pool_new(up->loop, sa, &s->pool);
    }
    if (ep->h1 == NULL) {
        return TE_NOMEM;
    }
    return h1_pool_submit(ep->h1, call);
}


static size_t endpoint_connections(const endpoint_t *ep)
{
    size_t n = 0;
    if (ep->h1 != NULL) {
        n += h1_pool_connections(ep->h1);
    }
    if (ep->h2 != NULL) {
        n += h2_pool_connections(ep->h2);
    }
    return n;
}


/* ---- health ---- */

static bool is_ejected(const endpoint_t *ep, uint64_t now)
{
    return ep->ejected_until > now;
}


/* Records the result of one call on |ep|: consecutive connect failures
 * and resets eject it, a success readmits it for good. */
static void record_result(endpoint_t *ep, int err)
{
    svc_state_t *s = ep->svc;
    upstream_t *up = s->up;

    if (err == 0) {
        ep->failures = 0;
        ep->ejections = 0;
        return;
    }
    if (err != TE_CONNECT && err != TE_RESET) {
        return;
    }
    ep->failures++;
    if (s->eject_after == 0 || ep->failures < s->eject_after) {
        return;
    }
    if (s->neps < 2) {
        /* The only endpoint would be chosen anyway. */
        ep->failures = 0;
        return;
    }
    ep->failures = 0;
    uint64_t ms = s->eject_base_ms;
    for (unsigned i = 0; i < ep->ejections && ms < s->eject_max_ms; i++) {
        ms *= 2;
    }
    if (ms > s->eject_max_ms) {
        ms = s->eject_max_ms;
    }
    ep->ejections++;
    ep->ejected_until = uv_now(up->loop) + ms;
    up->stats.ejections++;
    emit(up, UPSTREAM_EV_EJECTED, s,
         "endpoint %s of service %s ejected for %llu ms after %u "
         "consecutive failures (ejection %u in a row)",
         ep->desc, s->conf->name, (unsigned long long)ms, s->eject_after,
         ep->ejections);
}


/* ---- selection ---- */

static bool was_tried(const route_t *rt, const endpoint_t *ep)
{
    for (size_t i = 0; i < rt->ntried; i++) {
        if (rt->tried[i] == ep->id) {
            return true;
        }
    }
    return false;
}


/* Appends |ep| to the endpoints |rt| tried. When the array cannot grow,
 * |ep| is left out, so a later retry may choose it again. */
static void remember_tried(route_t *rt, const endpoint_t *ep)
{
    if (was_tried(rt, ep) || rt->ntried >= RESOLVER_MAX_ADDRS) {
        return;
    }
    if (rt->ntried == rt->tried_cap) {
        size_t cap = 2 * rt->tried_cap;
        /* tried_cap starts at ROUTE_INLINE_TRIED, never 0. */
        /* NOLINTNEXTLINE(clang-analyzer-optin.portability.UnixAPI) */
        uint64_t *ids = malloc(cap * sizeof(*ids));
        if (ids == NULL) {
            return;
        }
        memcpy(ids, rt->tried, rt->ntried * sizeof(*ids));
        if (rt->tried != rt->inline_tried) {
            free(rt->tried);
        }
        rt->tried = ids;
        rt->tried_cap = cap;
    }
    rt->tried[rt->ntried++] = ep->id;
}


/* Whether |ep| may be chosen for |rt|. With |untried_only| it must not
 * have been tried yet; otherwise it must differ from the last one. */
static bool is_allowed(const route_t *rt, const endpoint_t *ep,
                       bool untried_only)
{
    if (rt == NULL || rt->ntried == 0) {
        return true;
    }
    if (untried_only) {
        return !was_tried(rt, ep);
    }
    return rt->tried[rt->ntried - 1] != ep->id;
}


/* RFC 2782: records of weight 0 should have a very small chance of
 * selection when others weigh more, which scaling the others by 100
 * gives. A/AAAA endpoints all weigh the same. */
static uint64_t selection_weight(const svc_state_t *s, const endpoint_t *ep)
{
    if (!s->conf->srv) {
        return 1;
    }
    return ep->weight == 0 ? 1 : (uint64_t)ep->weight * 100;
}


/* Draws one of the |n| candidates at random, weighted. */
static endpoint_t *draw_weighted(upstream_t *up, const svc_state_t *s,
                                 endpoint_t **cand, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += selection_weight(s, cand[i]);
    }
    /* The caller passes n > 0 and each weight is at least 1. */
    /* cppcheck-suppress zerodiv */
    uint64_t pick = next_random(up) % total;
    for (size_t i = 0; i < n; i++) {
        uint64_t w = selection_weight(s, cand[i]);
        if (pick < w) {
            return cand[i];
        }
        pick -= w;
    }
    return cand[n - 1];
}


/* Chooses an endpoint for a call, or NULL when none is allowed. */
static endpoint_t *choose_from(svc_state_t *s, const route_t *rt,
                               bool untried_only)
{
    upstream_t *up = s->up;
    uint64_t now = uv_now(up->loop);
    endpoint_t *cand[RESOLVER_MAX_ADDRS];
    size_t n = 0;
    bool have_best = false;
    uint16_t best = 0;
    endpoint_t *soonest = NULL;

    for (size_t i = 0; i < s->neps; i++) {
        endpoint_t *ep = s->eps[i];
        if (!is_allowed(rt, ep, untried_only)) {
            continue;
        }
        if (is_ejected(ep, now)) {
            if (soonest == NULL || ep->ejected_until < soonest->ejected_until) {
                soonest = ep;
            }
            continue;
        }
        if (!have_best || ep->priority < best) {
            have_best = true;
            best = ep->priority;
        }
    }
    if (!have_best) {
        /* Every allowed endpoint is ejected: never eject them all, use the
         * one that comes back first. */
        return soonest;
    }
    for (size_t i = 0; i < s->neps; i++) {
        endpoint_t *ep = s->eps[i];
        if (ep->priority == best && !is_ejected(ep, now) &&
            is_allowed(rt, ep, untried_only)) {
            cand[n++] = ep;
        }
    }
    /* Power of two choices: two weighted draws, the one with fewer calls
     * running wins. */
    endpoint_t *a = draw_weighted(up, s, cand, n);
    endpoint_t *b = draw_weighted(up, s, cand, n);
    return b->outstanding < a->outstanding ? b : a;
}


static endpoint_t *choose_endpoint(svc_state_t *s, const route_t *rt)
{
    endpoint_t *ep = choose_from(s, rt, true);
    if (ep == NULL) {
        ep = choose_from(s, rt, false);
    }
    return ep;
}


/* ---- calls ---- */

static void handle_result(upcall_t *call, int err, bool inside_start);


/* Hands |call| to an endpoint's pool. |inside_start|: called from
 * upstream_start, where on_done must not be called. */
static void submit(svc_state_t *s, upcall_t *call, bool inside_start)
{
    upstream_t *up = s->up;
    route_t *rt = call->up_owner;
    endpoint_t *ep = choose_endpoint(s, rt);

    if (ep == NULL) {
        if (call->errmsg[0] == '\0') {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "service %s has no endpoints", s->conf->name);
        }
        fail_later(up, call, TE_CONNECT);
        return;
    }
    rt->ep = ep;
    rt->attempts++;
    remember_tried(rt, ep);
    memcpy(call->endpoint, ep->desc, sizeof(call->endpoint));
    call->errmsg[0] = '\0';
    call->status = 0;
    call->on_done = on_pool_done;
    call->up_where = WHERE_POOL;
    ep->outstanding++;

    int rc = endpoint_pool_submit(ep, call);
    if (rc != 0) {
        if (call->errmsg[0] == '\0') {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "cannot start the call to %s at %s: %s", s->conf->name,
                     ep->desc, te_kind(rc));
        }
        handle_result(call, rc, inside_start);
    }
}


/* Whether a call that could not connect may try another endpoint. */
static bool may_retry(svc_state_t *s, const upcall_t *call, const route_t *rt)
{
    if (s->state != SVC_READY || rt->attempts >= s->neps) {
        return false;
    }
    if (call->deadline_ns != 0 && uv_hrtime() >= call->deadline_ns) {
        return false;
    }
    return choose_endpoint(s, rt) != NULL;
}


/* A pool ended |call| with |err| (or rejected it at submit). Records the
 * endpoint's health, then moves the call to another endpoint after a
 * connect failure, or ends it. */
static void handle_result(upcall_t *call, int err, bool inside_start)
{
    route_t *rt = call->up_owner;
    endpoint_t *ep = rt->ep;
    svc_state_t *s = rt->svc;
    upstream_t *up = s->up;

    rt->ep = NULL;
    ep->outstanding--;
    record_result(ep, err);
    if (ep->removed && ep->outstanding == 0) {
        schedule_tick(up);
    }
    if (err == TE_CONNECT && may_retry(s, call, rt)) {
        up->stats.connect_retries++;
        emit(up, UPSTREAM_EV_CONNECT_RETRY, s,
             "service %s: %s; trying another endpoint", s->conf->name,
             call->errmsg);
        call->phase = UPCALL_CONNECTING;
        call->up_where = WHERE_RETRY;
        callq_push(&up->retry, call);
        schedule_tick(up);
        return;
    }
    if (inside_start) {
        fail_later(up, call, err);
        return;
    }
    finish_now(call, err);
}


/* upcall_done_cb installed while a call runs in a pool. */
static void on_pool_done(upcall_t *call, int err)
{
    handle_result(call, err, false);
}


/* uv_timer_cb: deferred work, outside of upstream_start, upstream_cancel
 * and the pools' callbacks. Only the calls queued before the tick are
 * handled, so a caller that restarts failing calls cannot spin here. */
static void on_tick(uv_timer_t *t)
{
    upstream_t *up = t->data;

    reap_retired(up);

    size_t nretry = callq_length(&up->retry);
    for (size_t i = 0; i < nretry && !up->closing; i++) {
        upcall_t *call = callq_pop(&up->retry);
        if (call == NULL) {
            break;
        }
        route_t *rt = call->up_owner;
        if (!may_retry(rt->svc, call, rt)) {
            finish_now(call, TE_CONNECT);
            continue;
        }
        submit(rt->svc, call, false);
    }

    size_t nfailed = callq_length(&up->failed);
    for (size_t i = 0; i < nfailed && !up->closing; i++) {
        upcall_t *call = callq_pop(&up->failed);
        if (call == NULL) {
            break;
        }
        int err = call->status;
        call->status = 0;
        call->up_where = WHERE_NONE;
        call->phase = UPCALL_DONE;
        call->on_done(call, err);
    }
}


/* ---- resolution ---- */

static uint64_t refresh_delay_ms(const svc_state_t *s, int ttl_s)
{
    if (ttl_s < 0) {
        /* An IP literal: re-reading it costs nothing and cannot change. */
        return s->max_ttl_ms;
    }
    uint64_t ms = ttl_s > 0 ? (uint64_t)ttl_s * 1000 : 0;
    if (ms < s->min_ttl_ms) {
        ms = s->min_ttl_ms;
    }
    if (ms > s->max_ttl_ms) {
        ms = s->max_ttl_ms;
    }
    return ms;
}


/* How long before its deadline a call still waiting for the first
 * resolution fails with TE_RESOLVE, so that the caller's own deadline
 * timer, due later, does not turn a DNS timeout into a deadline error. */
#define RESOLVE_BUDGET_MARGIN_NS 2000000ULL

static void fail_overdue_waiters(svc_state_t *s);
static void on_refresh_due(uv_timer_t *t);


/* Arms the service timer for the earliest deadline among the calls that
 * wait for the first resolution. c-ares 1.18 has no per-query timeout,
 * so the lookup itself goes on and its answer serves later calls. */
static void arm_resolve_budget(svc_state_t *s)
{
    uint64_t first = 0;
    for (upcall_t *c = s->waiters.head; c != NULL; c = c->queue_next) {
        if (c->deadline_ns != 0 && (first == 0 || c->deadline_ns < first)) {
            first = c->deadline_ns;
        }
    }
    if (first == 0) {
        uv_timer_stop(&s->refresh_timer);
        return;
    }
    uint64_t now = uv_hrtime();
    uint64_t due =
        first > RESOLVE_BUDGET_MARGIN_NS ? first - RESOLVE_BUDGET_MARGIN_NS : 0;
    uint64_t ms = due > now ? (due - now + 999999) / 1000000 : 0;
    uv_timer_start(&s->refresh_timer, on_refresh_due, ms, 0);
}


/* Fails the waiting calls whose budget ran out before the first
 * resolution finished. Runs from a timer, so on_done may be called. */
static void fail_overdue_waiters(svc_state_t *s)
{
    uint64_t now = uv_hrtime();
    callq_t keep = {0};
    upcall_t *call = callq_pop(&s->waiters);

    while (call != NULL) {
        if (call->deadline_ns != 0 &&
            call->deadline_ns <= now + RESOLVE_BUDGET_MARGIN_NS) {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "DNS lookup of %s \"%s\" did not finish within the "
                     "call's time budget",
                     s->conf->srv ? "SRV name" : "host", s->conf->host);
            finish_now(call, TE_RESOLVE);
        } else {
            callq_push(&keep, call);
        }
        call = callq_pop(&s->waiters);
    }
    s->waiters = keep;
    arm_resolve_budget(s);
}


/* uv_timer_cb: the answers' TTL ran out, or, during the first resolution,
 * a waiting call's budget. */
static void on_refresh_due(uv_timer_t *t)
{
    svc_state_t *s = t->data;
    if (s->state == SVC_RESOLVING) {
        fail_overdue_waiters(s);
        return;
    }
    if (s->state == SVC_READY && !s->refreshing) {
        s->refreshing = true;
        start_resolution(s);
    }
}


static void arm_refresh(svc_state_t *s, uint64_t ms)
{
    uv_timer_start(&s->refresh_timer, on_refresh_due, ms, 0);
}


/* Replaces the endpoint set with the addresses of |res|. Endpoints that
 * stay keep their pools and health; removed ones are retired. */
static void apply_endpoints(svc_state_t *s, const resolver_result_t *res)
{
    upstream_t *up = s->up;
    endpoint_t *next[RESOLVER_MAX_ADDRS];
    size_t nnext = 0;
    size_t added = 0;

    for (size_t i = 0; i < res->naddrs; i++) {
        const resolver_addr_t *a = &res->addrs[i];
        bool duplicate = false;
        for (size_t j = 0; j < nnext; j++) {
            if (same_address(&next[j]->addr, &a->addr)) {
                duplicate = true;
            }
        }
        if (duplicate) {
            continue;
        }
        endpoint_t *ep = NULL;
        for (size_t j = 0; j < s->neps; j++) {
            if (s->eps[j] != NULL && same_address(&s->eps[j]->addr, &a->addr)) {
                ep = s->eps[j];
                s->eps[j] = NULL;
                break;
            }
        }
        if (ep == NULL) {
            ep = calloc(1, sizeof(*ep));
            if (ep == NULL) {
                continue;
            }
            ep->svc = s;
            ep->id = ++up->next_endpoint_id;
            memcpy(&ep->addr, &a->addr, sizeof(ep->addr));
            sockaddr_describe((const struct sockaddr *)&ep->addr, ep->desc,
                              sizeof(ep->desc));
            added++;
        }
        ep->priority = a->priority;
        ep->weight = a->weight;
        next[nnext++] = ep;
    }
    size_t removed = 0;
    for (size_t j = 0; j < s->neps; j++) {
        if (s->eps[j] != NULL) {
            endpoint_retire(up, s->eps[j]);
            removed++;
        }
    }
    up->stats.endpoints -= s->neps;
    /* next[0..nnext) was filled above; next is an array of pointers. */
    /* cppcheck-suppress uninitvar */
    memcpy(s->eps, next, nnext * sizeof(next[0]));
    s->neps = nnext;
    up->stats.endpoints += nnext;
    if (added > 0 || removed > 0) {
        emit(up, UPSTREAM_EV_ENDPOINTS, s,
             "service %s: %zu endpoints (%zu added, %zu removed)",
             s->conf->name, nnext, added, removed);
    }
}


static void drop_endpoints(svc_state_t *s)
{
    for (size_t j = 0; j < s->neps; j++) {
        endpoint_retire(s->up, s->eps[j]);
        s->eps[j] = NULL;
    }
    s->up->stats.endpoints -= s->neps;
    s->neps = 0;
}


/* The first resolution failed: every waiting call fails at once, and so
 * do new calls until dns_min_ttl_ms has passed. */
static void fail_waiters(svc_state_t *s, int err, const resolver_result_t *res)
{
    upstream_t *up = s->up;

    if (res->no_service) {
        snprintf(s->failmsg, sizeof(s->failmsg), "%s", res->errmsg);
    } else {
        snprintf(s->failmsg, sizeof(s->failmsg), "cannot resolve %s \"%s\": %s",
                 s->conf->srv ? "SRV name" : "host", s->conf->host,
                 res->errmsg);
    }
    s->state = SVC_FAILED;
    s->failed_until = uv_now(up->loop) + s->min_ttl_ms;
    up->stats.resolve_failures++;
    emit(up, UPSTREAM_EV_RESOLVE_FAILED, s, "service %s: %s", s->conf->name,
         s->failmsg);

    upcall_t *call = callq_pop(&s->waiters);
    while (call != NULL) {
        snprintf(call->errmsg, sizeof(call->errmsg), "%s", s->failmsg);
        fail_later(up, call, err == TE_NOMEM ? TE_NOMEM : TE_RESOLVE);
        call = callq_pop(&s->waiters);
    }
}


/* A refresh failed: keep the last good set while it is fresh enough. */
static void refresh_failed(svc_state_t *s, const resolver_result_t *res)
{
    upstream_t *up = s->up;
    uint64_t now = uv_now(up->loop);
    uint64_t age = now - s->confirmed_at;

    up->stats.refresh_failures++;
    if (age < s->max_stale_ms) {
        emit(up, UPSTREAM_EV_REFRESH_FAILED, s,
             "refresh of %s failed: %s; keeping %zu endpoints confirmed "
             "%llu ms ago",
             s->conf->host, res->errmsg, s->neps, (unsigned long long)age);
        arm_refresh(s, s->min_ttl_ms);
        return;
    }
    up->stats.stale_expired++;
    emit(up, UPSTREAM_EV_STALE_EXPIRED, s,
         "refresh of %s failed: %s; dropping %zu endpoints last confirmed "
         "%llu ms ago",
         s->conf->host, res->errmsg, s->neps, (unsigned long long)age);
    drop_endpoints(s);
    s->state = SVC_UNRESOLVED;
}


/* resolver_cb: a first resolution or a refresh of a service ended. */
static void on_resolved(void *arg, int err, const resolver_result_t *res)
{
    svc_state_t *s = arg;
    upstream_t *up = s->up;
    bool refresh = s->refreshing;

    s->refreshing = false;
    s->lookup_pending = false;
    if (s->retired) {
        /* No table contains the service any more; the lookup was all that
         * kept the state. */
        if (s->timer_closed) {
            free_state(s);
        }
        return;
    }
    if (err == TE_CANCELLED || up->closing) {
        /* The dispatcher is closing; its calls were already ended. */
        return;
    }
    if (err != 0 || res->naddrs == 0) {
        if (refresh) {
            refresh_failed(s, res);
        } else {
            fail_waiters(s, err, res);
        }
        return;
    }
    up->stats.resolutions++;
    apply_endpoints(s, res);
    if (s->neps == 0) {
        resolver_result_t nomem = {.errmsg = "out of memory"};
        if (refresh) {
            refresh_failed(s, &nomem);
        } else {
            fail_waiters(s, TE_NOMEM, &nomem);
        }
        return;
    }
    s->state = SVC_READY;
    s->confirmed_at = uv_now(up->loop);
    arm_refresh(s, refresh_delay_ms(s, res->ttl_s));

    /* Failures are deferred because this runs inside upstream_start when
     * the host is an IP literal or in /etc/hosts. */
    upcall_t *call = callq_pop(&s->waiters);
    while (call != NULL) {
        submit(s, call, true);
        call = callq_pop(&s->waiters);
    }
}


static void start_resolution(svc_state_t *s)
{
    upstream_t *up = s->up;
    int rc;

    /* Set first: the callback may run before the lookup call returns. */
    s->lookup_pending = true;
    if (s->conf->srv) {
        rc = resolver_lookup_srv(up->resolver, s->conf->host, on_resolved, s);
    } else {
        rc = resolver_lookup(up->resolver, s->conf->host, s->conf->port,
                             on_resolved, s);
    }
    if (rc != 0) {
        resolver_result_t res = {.ttl_s = -1, .errmsg = "out of memory"};
        on_resolved(s, TE_NOMEM, &res);
    }
}


/* ---- service states and tables ---- */

static uint64_t or_default(uint64_t v, uint64_t def)
{
    return v != 0 ? v : def;
}


static int check_service(const upstream_service_t *conf, size_t index,
                         char *err, size_t errlen)
{
    if (conf->host == NULL || conf->name == NULL) {
        snprintf(err, errlen, "service %zu: name and host are required", index);
        return TE_INVALID;
    }
    bool tls = conf->proto == UPSTREAM_HTTPS || conf->proto == UPSTREAM_H2;
    if (tls && conf->pool.tls == NULL) {
        snprintf(err, errlen, "service %s: a TLS scheme needs pool.tls",
                 conf->name);
        return TE_INVALID;
    }
    return 0;
}


static void free_state_strings(svc_state_t *s)
{
    free((char *)s->def.name);
    free((char *)s->def.host);
    free((char *)s->def.pool.server_name);
}


/* Copies |conf| into |s| and fills in the defaults. Returns 0 or
 * TE_NOMEM. */
static int setup_service(svc_state_t *s, const upstream_service_t *conf)
{
    s->def = *conf;
    s->def.active_calls = NULL;
    s->def.name = strdup(conf->name);
    s->def.host = strdup(conf->host);
    s->def.pool.server_name =
        conf->pool.server_name != NULL ? strdup(conf->pool.server_name) : NULL;
    if (s->def.name == NULL || s->def.host == NULL ||
        (conf->pool.server_name != NULL && s->def.pool.server_name == NULL)) {
        free_state_strings(s);
        return TE_NOMEM;
    }
    conf = &s->def;
    s->conf = conf;
    s->pool = conf->pool;
    s->pool.max_connections =
        or_default(conf->pool.max_connections, DEFAULT_MAX_CONNECTIONS);
    s->pool.idle_timeout_ms =
        or_default(conf->pool.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS);
    s->pool.connect_timeout_ms =
        or_default(conf->pool.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
    if (s->pool.tls != NULL && s->pool.server_name == NULL) {
        s->pool.server_name = conf->host;
    }
    s->min_ttl_ms = or_default(conf->dns_min_ttl_ms, DEFAULT_DNS_MIN_TTL_MS);
    s->max_ttl_ms = or_default(conf->dns_max_ttl_ms, DEFAULT_DNS_MAX_TTL_MS);
    if (s->max_ttl_ms < s->min_ttl_ms) {
        s->max_ttl_ms = s->min_ttl_ms;
    }
    s->max_stale_ms =
        or_default(conf->dns_max_stale_ms, DEFAULT_DNS_MAX_STALE_MS);
    s->eject_after =
        conf->eject_after != 0 ? conf->eject_after : DEFAULT_EJECT_AFTER;
    s->eject_base_ms = or_default(conf->eject_base_ms, DEFAULT_EJECT_BASE_MS);
    s->eject_max_ms = or_default(conf->eject_max_ms, DEFAULT_EJECT_MAX_MS);
    if (s->eject_max_ms < s->eject_base_ms) {
        s->eject_max_ms = s->eject_base_ms;
    }
    return 0;
}


static bool same_string(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strcmp(a, b) == 0;
}


/* Whether a state made from |a| may serve |b| unchanged: every setting
 * equal, the TLS context being the same object. The bulkhead counter is
 * left out because each configuration has its own.
 * NOTE: a field added to upstream_service_t must be compared here, or a
 * reload that changes only that field keeps the old state. */
static bool same_definition(const upstream_service_t *a,
                            const upstream_service_t *b)
{
    const pool_options_t *p = &a->pool;
    const pool_options_t *q = &b->pool;

    return same_string(a->name, b->name) && same_string(a->host, b->host) &&
           a->port == b->port && a->proto == b->proto && a->srv == b->srv &&
           p->max_connections == q->max_connections &&
           p->idle_timeout_ms == q->idle_timeout_ms &&
           p->connect_timeout_ms == q->connect_timeout_ms &&
           p->ping_interval_ms == q->ping_interval_ms && p->tls == q->tls &&
           same_string(p->server_name, q->server_name) &&
           a->dns_min_ttl_ms == b->dns_min_ttl_ms &&
           a->dns_max_ttl_ms == b->dns_max_ttl_ms &&
           a->dns_max_stale_ms == b->dns_max_stale_ms &&
           a->eject_after == b->eject_after &&
           a->eject_base_ms == b->eject_base_ms &&
           a->eject_max_ms == b->eject_max_ms &&
           a->max_concurrent_calls == b->max_concurrent_calls;
}


static void maybe_free_dispatcher(upstream_t *up)
{
    if (up->closing && up->open_handles == 0 && up->ntables == 0) {
        free(up);
    }
}


static void release_handle(upstream_t *up)
{
    up->open_handles--;
    maybe_free_dispatcher(up);
}


static void free_state(svc_state_t *s)
{
    upstream_t *up = s->up;
    svc_state_t **pp = &up->states;
    while (*pp != NULL && *pp != s) {
        pp = &(*pp)->next;
    }
    if (*pp == s) {
        *pp = s->next;
    }
    free_state_strings(s);
    free(s);
}


/* uv_close_cb for a service's refresh timer. */
static void on_refresh_timer_closed(uv_handle_t *h)
{
    svc_state_t *s = h->data;
    upstream_t *up = s->up;

    s->timer_closed = true;
    if (!s->lookup_pending) {
        free_state(s);
    }
    release_handle(up);
}


/* Frees the routes of calls the caller left behind, so nothing leaks. */
static void drop_queue(callq_t *q)
{
    upcall_t *call = callq_pop(q);
    while (call != NULL) {
        release_route(call);
        call->up_where = WHERE_NONE;
        call = callq_pop(q);
    }
}


/* Closes the pools of |s|, including endpoints that DNS removed earlier,
 * and its timer; the state is freed once the timer is closed and no
 * lookup is due. */
static void close_state(svc_state_t *s)
{
    upstream_t *up = s->up;

    s->retired = true;
    drop_queue(&s->waiters);
    for (size_t j = 0; j < s->neps; j++) {
        endpoint_close_pool(s->eps[j]);
        free(s->eps[j]);
        s->eps[j] = NULL;
    }
    up->stats.endpoints -= s->neps;
    s->neps = 0;
    endpoint_t **pp = &up->retired;
    while (*pp != NULL) {
        endpoint_t *ep = *pp;
        if (ep->svc != s) {
            pp = &ep->next_retired;
            continue;
        }
        *pp = ep->next_retired;
        endpoint_close_pool(ep);
        free(ep);
    }
    uv_close((uv_handle_t *)&s->refresh_timer, on_refresh_timer_closed);
}


static void free_table(upstream_table_t *t)
{
    upstream_t *up = t->up;

    if (!up->closing) {
        for (size_t i = 0; i < t->nservices; i++) {
            svc_state_t *s = t->svc[i];
            if (--s->ntables == 0) {
                close_state(s);
            }
        }
    }
    free(t->svc);
    free(t->defs);
    free(t);
    up->ntables--;
    maybe_free_dispatcher(up);
}


/* Discards a table that prepare_table made and commit_table did not take:
 * frees the states it created, none of which has a handle yet. */
static void discard_table(upstream_table_t *t, bool *created)
{
    for (size_t i = 0; i < t->nservices; i++) {
        if (created != NULL && created[i] && t->svc[i] != NULL) {
            free_state_strings(t->svc[i]);
            free(t->svc[i]);
        }
    }
    free(created);
    free(t->svc);
    free(t->defs);
    free(t);
}


/* Builds a table for |services|, taking over the state of each service of
 * |prev| (may be NULL) with the same definition and allocating the others,
 * without starting any handle, so that a failure changes nothing. Sets
 * |*created| to a flag per service: true for a new state. */
static int prepare_table(upstream_t *up, const upstream_service_t *services,
                         size_t nservices, const upstream_table_t *prev,
                         upstream_table_t **out, bool **created, char *err,
                         size_t errlen)
{
    for (size_t i = 0; i < nservices; i++) {
        int rc = check_service(&services[i], i, err, errlen);
        if (rc != 0) {
            return rc;
        }
    }
    size_t nprev = prev != NULL ? prev->nservices : 0;
    size_t n = nservices > 0 ? nservices : 1;
    upstream_table_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return TE_NOMEM;
    }
    t->up = up;
    t->refs = 1;
    t->nservices = nservices;
    t->svc = calloc(n, sizeof(*t->svc));
    t->defs = calloc(n, sizeof(*t->defs));
    bool *fresh = calloc(n, sizeof(*fresh));
    bool *matched = calloc(nprev > 0 ? nprev : 1, sizeof(*matched));
    if (t->svc == NULL || t->defs == NULL || fresh == NULL || matched == NULL) {
        goto nomem;
    }
    memcpy(t->defs, services, nservices * sizeof(*services));
    for (size_t i = 0; i < nservices; i++) {
        for (size_t j = 0; j < nprev && t->svc[i] == NULL; j++) {
            if (!matched[j] &&
                same_definition(prev->svc[j]->conf, &services[i])) {
                matched[j] = true;
                t->svc[i] = prev->svc[j];
            }
        }
        if (t->svc[i] != NULL) {
            continue;
        }
        svc_state_t *s = calloc(1, sizeof(*s));
        if (s == NULL || setup_service(s, &services[i]) != 0) {
            free(s);
            goto nomem;
        }
        s->up = up;
        t->svc[i] = s;
        fresh[i] = true;
    }
    free(matched);
    *created = fresh;
    *out = t;
    return 0;

nomem:
    free(matched);
    discard_table(t, fresh);
    snprintf(err, errlen, "out of memory");
    return TE_NOMEM;
}


/* Starts the new states of a prepared table and counts them in |counts|
 * against |nprev| services of the table it replaces. */
static void commit_table(upstream_t *up, upstream_table_t *t, bool *created,
                         size_t nprev, upstream_reconfigure_t *counts)
{
    for (size_t i = 0; i < t->nservices; i++) {
        svc_state_t *s = t->svc[i];
        s->index = i;
        s->ntables++;
        if (!created[i]) {
            counts->kept++;
            continue;
        }
        counts->added++;
        uv_timer_init(up->loop, &s->refresh_timer);
        s->refresh_timer.data = s;
        /* A pending refresh alone must not keep the loop running. */
        uv_unref((uv_handle_t *)&s->refresh_timer);
        up->open_handles++;
        s->next = up->states;
        up->states = s;
    }
    counts->removed = nprev - counts->kept;
    free(created);
    up->ntables++;
}


/* ---- public functions ---- */

int upstream_new(uv_loop_t *loop, const upstream_service_t *services,
                 size_t nservices, const upstream_options_t *opts,
                 upstream_t **out, char *err, size_t errlen)
{
    upstream_reconfigure_t counts = {0};
    upstream_table_t *t = NULL;
    bool *created = NULL;
    upstream_t *up = calloc(1, sizeof(*up));
    if (up == NULL) {
        snprintf(err, errlen, "out of memory");
        return TE_NOMEM;
    }
    int rc =
        prepare_table(up, services, nservices, NULL, &t, &created, err, errlen);
    if (rc != 0) {
        free(up);
        return rc;
    }
    rc = resolver_new(loop, opts != NULL ? &opts->resolver : NULL,
                      &up->resolver, err, errlen);
    if (rc != 0) {
        discard_table(t, created);
        free(up);
        return rc;
    }
    up->loop = loop;
    if (opts != NULL) {
        up->on_event = opts->on_event;
        up->event_arg = opts->event_arg;
    }
    up->rng = (uv_hrtime() ^ (uint64_t)(uintptr_t)up) | 1;
    commit_table(up, t, created, 0, &counts);
    up->current = t;
    uv_timer_init(loop, &up->tick_timer);
    up->tick_timer.data = up;
    up->open_handles++;
    *out = up;
    return 0;
}


int upstream_reconfigure(upstream_t *up, const upstream_service_t *services,
                         size_t nservices, upstream_reconfigure_t *counts,
                         char *err, size_t errlen)
{
    upstream_reconfigure_t c = {0};
    upstream_table_t *t = NULL;
    bool *created = NULL;
    int rc = prepare_table(up, services, nservices, up->current, &t, &created,
                           err, errlen);
    if (rc != 0) {
        return rc;
    }
    commit_table(up, t, created, up->current->nservices, &c);
    upstream_table_t *old = up->current;
    up->current = t;
    upstream_table_release(old);
    if (counts != NULL) {
        *counts = c;
    }
    return 0;
}


upstream_table_t *upstream_table_acquire(upstream_t *up)
{
    up->current->refs++;
    return up->current;
}


void upstream_table_release(upstream_table_t *t)
{
    if (t != NULL && --t->refs == 0) {
        free_table(t);
    }
}


/* Takes a bulkhead slot of |def| for the call routed by |rt|. Returns
 * false when the service is at max_concurrent_calls. The slot is taken
 * before the limit is checked, so two workers can never both take the
 * last one. */
static bool admit_call(const upstream_service_t *def, route_t *rt)
{
    atomic_long *active = def->active_calls;
    long max = def->max_concurrent_calls;
    if (active == NULL || max <= 0) {
        return true;
    }
    if (atomic_fetch_add_explicit(active, 1, memory_order_relaxed) >= max) {
        atomic_fetch_sub_explicit(active, 1, memory_order_relaxed);
        return false;
    }
    rt->counted = active;
    return true;
}


void upstream_table_start(upstream_table_t *t, size_t service, upcall_t *call)
{
    upstream_t *up = t->up;
    svc_state_t *s = t->svc[service];
    const upstream_service_t *def = &t->defs[service];

    call->status = 0;
    call->errmsg[0] = '\0';
    call->queue_next = NULL;
    call->up_user_done = call->on_done;
    call->up_owner = NULL;

    route_t *rt = calloc(1, sizeof(*rt));
    if (rt == NULL) {
        call->up_user_done = NULL;
        snprintf(call->errmsg, sizeof(call->errmsg), "out of memory");
        call->status = TE_NOMEM;
        call->up_where = WHERE_FAILED;
        callq_push(&up->failed, call);
        schedule_tick(up);
        return;
    }
    rt->svc = s;
    rt->tried = rt->inline_tried;
    rt->tried_cap = ROUTE_INLINE_TRIED;
    call->up_owner = rt;
    if (!admit_call(def, rt)) {
        up->stats.overloaded++;
        snprintf(call->errmsg, sizeof(call->errmsg),
                 "service %s is at its max_concurrent_calls of %ld",
                 s->conf->name, def->max_concurrent_calls);
        fail_later(up, call, TE_OVERLOADED);
        return;
    }

    if (s->state == SVC_FAILED && uv_now(up->loop) >= s->failed_until) {
        s->state = SVC_UNRESOLVED;
    }
    switch (s->state) {
    case SVC_READY:
        submit(s, call, true);
        return;
    case SVC_FAILED:
        snprintf(call->errmsg, sizeof(call->errmsg), "%s", s->failmsg);
        fail_later(up, call, TE_RESOLVE);
        return;
    default:
        break;
    }
    call->phase = UPCALL_RESOLVING;
    call->up_where = WHERE_RESOLVING;
    callq_push(&s->waiters, call);
    if (s->state != SVC_RESOLVING) {
        s->state = SVC_RESOLVING;
        start_resolution(s);
    }
    if (s->state == SVC_RESOLVING) {
        arm_resolve_budget(s);
    }
}


void upstream_start(upstream_t *up, size_t service, upcall_t *call)
{
    upstream_table_start(up->current, service, call);
}


void upstream_cancel(upstream_t *up, upcall_t *call)
{
    route_t *rt = call->up_owner;

    switch (call->up_where) {
    case WHERE_RESOLVING:
        callq_remove(&rt->svc->waiters, call);
        break;
    case WHERE_FAILED:
        callq_remove(&up->failed, call);
        break;
    case WHERE_RETRY:
        callq_remove(&up->retry, call);
        break;
    case WHERE_POOL: {
        endpoint_t *ep = rt->ep;
        if (ep->h1 != NULL) {
            h1_pool_cancel(ep->h1, call);
        } else if (ep->h2 != NULL) {
            h2_pool_cancel(ep->h2, call);
        }
        ep->outstanding--;
        if (ep->removed && ep->outstanding == 0) {
            schedule_tick(up);
        }
        break;
    }
    default:
        break;
    }
    if (call->up_where != WHERE_FAILED && call->up_where != WHERE_NONE) {
        release_route(call);
    }
    call->up_where = WHERE_NONE;
    call->phase = UPCALL_CANCELLED;
}


size_t upstream_connections(const upstream_t *up)
{
    size_t n = 0;
    for (const svc_state_t *s = up->states; s != NULL; s = s->next) {
        for (size_t j = 0; j < s->neps; j++) {
            n += endpoint_connections(s->eps[j]);
        }
    }
    for (const endpoint_t *ep = up->retired; ep != NULL;
         ep = ep->next_retired) {
        n += endpoint_connections(ep);
    }
    return n;
}


void upstream_get_stats(const upstream_t *up, upstream_stats_t *out)
{
    *out = up->stats;
}


void upstream_service_info(const upstream_t *up, size_t service,
                           upstream_service_info_t *out)
{
    const svc_state_t *s = up->current->svc[service];
    size_t n = 0;

    for (size_t j = 0; j < s->neps; j++) {
        n += endpoint_connections(s->eps[j]);
    }
    for (const endpoint_t *ep = up->retired; ep != NULL;
         ep = ep->next_retired) {
        if (ep->svc == s) {
            n += endpoint_connections(ep);
        }
    }
    out->connections = n;
    /* confirmed_at stays set after a stale set is dropped. */
    out->resolved = s->state == SVC_READY || s->confirmed_at != 0;
}


void upstream_resolve(upstream_t *up, size_t service)
{
    svc_state_t *s = up->current->svc[service];

    if (up->closing) {
        return;
    }
    if (s->state == SVC_FAILED && uv_now(up->loop) >= s->failed_until) {
        s->state = SVC_UNRESOLVED;
    }
    if (s->state == SVC_UNRESOLVED) {
        s->state = SVC_RESOLVING;
        start_resolution(s);
    }
}


/* uv_close_cb for the tick timer. */
static void on_tick_timer_closed(uv_handle_t *h)
{
    release_handle(h->data);
}


void upstream_close(upstream_t *up)
{
    up->closing = true;
    /* Pending lookups end here, with TE_CANCELLED, before any state is
     * closed. */
    resolver_close(up->resolver);
    up->resolver = NULL;
    for (svc_state_t *s = up->states; s != NULL; s = s->next) {
        if (!s->retired) {
            close_state(s);
        }
    }
    while (up->retired != NULL) {
        endpoint_t *ep = up->retired;
        up->retired = ep->next_retired;
        endpoint_close_pool(ep);
        free(ep);
    }
    drop_queue(&up->retry);
    up->failed.head = NULL;
    up->failed.tail = NULL;
    upstream_table_t *t = up->current;
    up->current = NULL;
    upstream_table_release(t);
    uv_close((uv_handle_t *)&up->tick_timer, on_tick_timer_closed);
}
