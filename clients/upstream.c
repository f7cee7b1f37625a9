/* Per-worker downstream dispatcher: name resolution, then the pools. */
#include "upstream.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "h1.h"
#include "h2.h"
#include "resolver.h"
#include "sockaddr.h"

/* Where a started call sits, for upstream_cancel. */
enum {
    WHERE_NONE = 0,
    WHERE_RESOLVING, /* in svc_state_t.waiters */
    WHERE_FAILED,    /* in upstream_t.failed, reported on the next tick */
    WHERE_POOL,      /* handed to the pool in up_owner */
};

enum {
    SVC_UNRESOLVED = 0,
    SVC_RESOLVING,
    SVC_RESOLVED,
};

typedef struct svc_state_s {
    upstream_t *up;
    size_t index;
    int state;
    struct sockaddr_storage addr;
    h1_pool_t *h1;
    h2_pool_t *h2;
    upcall_t *waiters; /* calls waiting for the first resolution */
} svc_state_t;

struct upstream_s {
    uv_loop_t *loop;
    resolver_t *resolver;
    const upstream_service_t *services;
    size_t nservices;
    svc_state_t *svc;
    upcall_t *failed; /* calls that failed before reaching a pool */
    uv_timer_t failed_timer;
};


/* uv_timer_cb: reports the calls that failed before reaching a pool. The
 * list is detached first because on_done may start or cancel calls. */
static void on_failed_tick(uv_timer_t *t)
{
    upstream_t *up = t->data;
    upcall_t *list = up->failed;
    up->failed = NULL;

    /* Restore submission order; the list was built by prepending. */
    upcall_t *ordered = NULL;
    while (list != NULL) {
        upcall_t *next = list->queue_next;
        list->queue_next = ordered;
        ordered = list;
        list = next;
    }
    while (ordered != NULL) {
        upcall_t *call = ordered;
        ordered = call->queue_next;
        call->queue_next = NULL;
        int err = call->status;
        call->status = 0;
        call->up_where = WHERE_NONE;
        call->phase = UPCALL_DONE;
        call->on_done(call, err);
    }
}


/* Queues |call| to fail with |err| on the next loop iteration, so that
 * on_done is never called from inside upstream_start. The code is kept
 * in call->status until then; on_failed_tick resets it to 0. */
static void fail_later(upstream_t *up, upcall_t *call, int err)
{
    call->status = err;
    call->up_where = WHERE_FAILED;
    call->queue_next = up->failed;
    up->failed = call;
    uv_timer_start(&up->failed_timer, on_failed_tick, 0, 0);
}


static void submit_to_pool(upstream_t *up, svc_state_t *s, upcall_t *call)
{
    const upstream_service_t *svc = &up->services[s->index];
    int rc;

    if (svc->proto == UPSTREAM_H2C) {
        call->up_owner = s->h2;
        rc = h2_pool_submit(s->h2, call);
    } else {
        call->up_owner = s->h1;
        rc = h1_pool_submit(s->h1, call);
    }
    if (rc != 0) {
        if (call->errmsg[0] == '\0') {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "cannot start the call to %s: %s", svc->name, te_kind(rc));
        }
        fail_later(up, call, rc);
        return;
    }
    call->up_where = WHERE_POOL;
}


/* resolver_cb: the first resolution of a service finished. */
static void on_resolved(void *arg, int err, const resolver_result_t *res)
{
    svc_state_t *s = arg;
    upstream_t *up = s->up;
    const upstream_service_t *svc = &up->services[s->index];
    upcall_t *waiters = s->waiters;
    s->waiters = NULL;

    if (err == 0) {
        /* NOTE: only the first address is used, and the answer is kept for
         * the life of the worker. */
        s->addr = res->addrs[0];
        if (svc->proto == UPSTREAM_H2C) {
            s->h2 = h2_pool_new(up->loop, (struct sockaddr *)&s->addr, NULL);
        } else {
            s->h1 = h1_pool_new(up->loop, (struct sockaddr *)&s->addr, NULL);
        }
        if (s->h1 == NULL && s->h2 == NULL) {
            err = TE_NOMEM;
        }
    }
    s->state = err == 0 ? SVC_RESOLVED : SVC_UNRESOLVED;

    while (waiters != NULL) {
        upcall_t *call = waiters;
        waiters = call->queue_next;
        call->queue_next = NULL;
        if (err == TE_CANCELLED) {
            /* The dispatcher is closing; its calls were already ended. */
            continue;
        }
        if (err != 0) {
            snprintf(call->errmsg, sizeof(call->errmsg),
                     "cannot resolve host \"%s\": %s", svc->host, res->errmsg);
            fail_later(up, call, err == TE_NOMEM ? TE_NOMEM : TE_RESOLVE);
            continue;
        }
        sockaddr_describe((struct sockaddr *)&s->addr, call->endpoint,
                          sizeof(call->endpoint));
        submit_to_pool(up, s, call);
    }
}


int upstream_new(uv_loop_t *loop, const upstream_service_t *services,
                 size_t nservices, const char *resolver_servers,
                 upstream_t **out, char *err, size_t errlen)
{
    upstream_t *up = calloc(1, sizeof(*up));
    if (up == NULL) {
        snprintf(err, errlen, "out of memory");
        return TE_NOMEM;
    }
    up->svc = calloc(nservices ? nservices : 1, sizeof(*up->svc));
    if (up->svc == NULL) {
        free(up);
        snprintf(err, errlen, "out of memory");
        return TE_NOMEM;
    }
    int rc = resolver_new(loop, resolver_servers, &up->resolver, err, errlen);
    if (rc != 0) {
        free(up->svc);
        free(up);
        return rc;
    }
    up->loop = loop;
    up->services = services;
    up->nservices = nservices;
    for (size_t i = 0; i < nservices; i++) {
        up->svc[i].up = up;
        up->svc[i].index = i;
    }
    uv_timer_init(loop, &up->failed_timer);
    up->failed_timer.data = up;
    *out = up;
    return 0;
}


void upstream_start(upstream_t *up, size_t service, upcall_t *call)
{
    svc_state_t *s = &up->svc[service];
    const upstream_service_t *svc = &up->services[service];

    call->status = 0;
    call->errmsg[0] = '\0';
    call->queue_next = NULL;
    call->up_owner = NULL;

    if (s->state == SVC_RESOLVED) {
        sockaddr_describe((struct sockaddr *)&s->addr, call->endpoint,
                          sizeof(call->endpoint));
        submit_to_pool(up, s, call);
        return;
    }

    call->phase = UPCALL_RESOLVING;
    call->up_where = WHERE_RESOLVING;
    call->queue_next = s->waiters;
    s->waiters = call;
    if (s->state == SVC_RESOLVING) {
        return;
    }
    s->state = SVC_RESOLVING;
    if (resolver_lookup(up->resolver, svc->host, svc->port, on_resolved, s) !=
        0) {
        resolver_result_t res;
        memset(&res, 0, sizeof(res));
        snprintf(res.errmsg, sizeof(res.errmsg), "out of memory");
        on_resolved(s, TE_NOMEM, &res);
    }
}


static void unlink_call(upcall_t **head, upcall_t *call)
{
    while (*head != NULL) {
        if (*head == call) {
            *head = call->queue_next;
            call->queue_next = NULL;
            return;
        }
        head = &(*head)->queue_next;
    }
}


void upstream_cancel(upstream_t *up, upcall_t *call)
{
    switch (call->up_where) {
    case WHERE_RESOLVING:
        for (size_t i = 0; i < up->nservices; i++) {
            unlink_call(&up->svc[i].waiters, call);
        }
        break;
    case WHERE_FAILED:
        unlink_call(&up->failed, call);
        break;
    case WHERE_POOL:
        for (size_t i = 0; i < up->nservices; i++) {
            if (up->svc[i].h1 != NULL && call->up_owner == up->svc[i].h1) {
                h1_pool_cancel(up->svc[i].h1, call);
            } else if (up->svc[i].h2 != NULL &&
                       call->up_owner == up->svc[i].h2) {
                h2_pool_cancel(up->svc[i].h2, call);
            }
        }
        break;
    default:
        break;
    }
    call->up_where = WHERE_NONE;
    call->phase = UPCALL_CANCELLED;
}


size_t upstream_connections(const upstream_t *up)
{
    size_t n = 0;
    for (size_t i = 0; i < up->nservices; i++) {
        if (up->svc[i].h1 != NULL) {
            n += h1_pool_connections(up->svc[i].h1);
        }
        if (up->svc[i].h2 != NULL) {
            n += h2_pool_connections(up->svc[i].h2);
        }
    }
    return n;
}


/* uv_close_cb for the dispatcher's own timer: the last handle. */
static void on_upstream_closed(uv_handle_t *h)
{
    upstream_t *up = h->data;
    free(up->svc);
    free(up);
}


void upstream_close(upstream_t *up)
{
    resolver_close(up->resolver);
    up->resolver = NULL;
    for (size_t i = 0; i < up->nservices; i++) {
        if (up->svc[i].h1 != NULL) {
            h1_pool_close(up->svc[i].h1);
            up->svc[i].h1 = NULL;
        }
        if (up->svc[i].h2 != NULL) {
            h2_pool_close(up->svc[i].h2);
            up->svc[i].h2 = NULL;
        }
    }
    up->failed = NULL;
    uv_close((uv_handle_t *)&up->failed_timer, on_upstream_closed);
}
