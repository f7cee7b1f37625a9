/* Drain flag, reload entry point and reload counters, shared by threads. */
#include "lifecycle.h"

#include <stdatomic.h>
#include <stddef.h>

static atomic_bool draining;
static atomic_uint_fast64_t reloads_ok;
static atomic_uint_fast64_t reloads_failed;

/* The async handle lives on the main loop. The mutex orders every
 * uv_async_send against lifecycle_close, because sending on a closed
 * handle is undefined; it is taken only for a reload, never per request. */
static uv_async_t reload_async;
static uv_mutex_t reload_lock;
static bool reload_open;
static void (*reload_handler)(void);


bool lifecycle_draining(void)
{
    return atomic_load_explicit(&draining, memory_order_acquire);
}


void lifecycle_start_draining(void)
{
    atomic_store_explicit(&draining, true, memory_order_release);
}


/* uv_async_cb: one or more reload requests reached the main loop. */
static void on_reload_requested(uv_async_t *a)
{
    if (reload_handler != NULL && !lifecycle_draining()) {
        reload_handler();
    }
}


bool lifecycle_request_reload(void)
{
    bool sent = false;

    if (lifecycle_draining()) {
        return false;
    }
    uv_mutex_lock(&reload_lock);
    if (reload_open) {
        sent = uv_async_send(&reload_async) == 0;
    }
    uv_mutex_unlock(&reload_lock);
    return sent;
}


void lifecycle_reload_counts(uint64_t *ok, uint64_t *failed)
{
    if (ok != NULL) {
        *ok = atomic_load_explicit(&reloads_ok, memory_order_relaxed);
    }
    if (failed != NULL) {
        *failed = atomic_load_explicit(&reloads_failed, memory_order_relaxed);
    }
}


int lifecycle_init(uv_loop_t *loop, void (*on_reload)(void))
{
    int rc = uv_mutex_init(&reload_lock);
    if (rc != 0) {
        return rc;
    }
    rc = uv_async_init(loop, &reload_async, on_reload_requested);
    if (rc != 0) {
        uv_mutex_destroy(&reload_lock);
        return rc;
    }
    reload_handler = on_reload;
    uv_mutex_lock(&reload_lock);
    reload_open = true;
    uv_mutex_unlock(&reload_lock);
    return 0;
}


void lifecycle_close(void)
{
    uv_mutex_lock(&reload_lock);
    if (!reload_open) {
        uv_mutex_unlock(&reload_lock);
        return;
    }
    reload_open = false;
    uv_mutex_unlock(&reload_lock);
    uv_close((uv_handle_t *)&reload_async, NULL);
}


void lifecycle_count_reload(bool ok)
{
    atomic_fetch_add_explicit(ok ? &reloads_ok : &reloads_failed, 1,
                              memory_order_relaxed);
}
