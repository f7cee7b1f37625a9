/* transport.h without sockets or TLS, for the fuzz targets. The fuzz
 * target makes the callbacks that the real transport makes from libuv
 * (connect, read, EOF, write completion). Closing goes through a libuv
 * timer handle, so on_close follows on a later loop iteration, as with
 * the real transport. */
#include "fake_transport.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* One write handed to transport_write and not yet completed. */
struct transport_write_s {
    transport_write_cb done;
    void *arg;
    struct transport_write_s *next;
};

static transport_t *opened[FAKE_TRANSPORT_MAX];
static size_t nopened;


transport_t *fake_transport_get(size_t i)
{
    return i < nopened ? opened[i] : NULL;
}


size_t fake_transport_count(void)
{
    return nopened;
}


void fake_transport_reset(void)
{
    nopened = 0;
}


int fake_transport_closed(const transport_t *t)
{
    return t->closing;
}


void fake_transport_connect(transport_t *t, int err)
{
    if (t->closing || t->connected || t->failed) {
        return;
    }
    if (err == 0) {
        t->connected = true;
        t->cb->on_connect(t, 0, NULL);
    } else {
        t->failed = true;
        t->cb->on_connect(t, TE_CONNECT, "connect refused by the fuzz target");
    }
}


void fake_transport_read(transport_t *t, const char *data, size_t len)
{
    if (t->closing || t->eof_reported || !t->connected || len == 0) {
        return;
    }
    t->cb->on_read(t, data, len);
}


void fake_transport_eof(transport_t *t)
{
    if (t->closing || t->eof_reported || !t->connected) {
        return;
    }
    t->eof_reported = true;
    t->cb->on_eof(t, 0, NULL);
}


int tls_context_new(const tls_options_t *opts, tls_context_t **out, char *err,
                    size_t errlen)
{
    (void)opts;
    *out = NULL;
    if (errlen > 0) {
        err[0] = '\0';
    }
    return TE_INVALID;
}


void tls_context_free(tls_context_t *ctx)
{
    (void)ctx;
}


int transport_connect(transport_t *t, uv_loop_t *loop,
                      const struct sockaddr *addr, tls_context_t *tls,
                      const char *server_name, uint64_t connect_timeout_ms,
                      const transport_callbacks_t *cb, void *data)
{
    (void)addr;
    (void)tls;
    (void)server_name;
    if (nopened == FAKE_TRANSPORT_MAX) {
        return TE_NOMEM;
    }
    memset(t, 0, sizeof(*t));
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    t->cb = cb;
    t->data = data;
    t->connect_timeout_ms = connect_timeout_ms;
    opened[nopened++] = t;
    return 0;
}


static void write_finish(transport_t *t, int err)
{
    struct transport_write_s *w = t->writes_head;

    t->writes_head = w->next;
    if (t->writes_head == NULL) {
        t->writes_tail = NULL;
    }
    transport_write_cb done = w->done;
    void *arg = w->arg;
    free(w);
    if (done != NULL) {
        done(t, err, arg);
    }
}


int transport_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs,
                    transport_write_cb done, void *arg)
{
    (void)bufs;
    (void)nbufs;
    if (t->closing || t->failed) {
        return TE_RESET;
    }
    struct transport_write_s *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return TE_NOMEM;
    }
    w->done = done;
    w->arg = arg;
    if (t->writes_tail != NULL) {
        t->writes_tail->next = w;
    } else {
        t->writes_head = w;
    }
    t->writes_tail = w;
    return 0;
}


size_t transport_try_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs)
{
    if (!t->connected || t->closing || t->failed || t->writes_head != NULL) {
        return 0;
    }
    size_t n = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        n += bufs[i].len;
    }
    return n;
}


void fake_transport_complete_writes(transport_t *t)
{
    while (!t->closing && t->writes_head != NULL) {
        write_finish(t, 0);
    }
}


/* uv_close_cb: fails the pending writes, then calls on_close. */
static void on_timer_close(uv_handle_t *handle)
{
    transport_t *t = handle->data;

    while (t->writes_head != NULL) {
        write_finish(t, TE_RESET);
    }
    /* The owner may free |t| in on_close. */
    for (size_t i = 0; i < nopened; i++) {
        if (opened[i] == t) {
            opened[i] = NULL;
        }
    }
    t->cb->on_close(t);
}


void transport_close(transport_t *t)
{
    if (t->closing) {
        return;
    }
    t->closing = true;
    uv_close((uv_handle_t *)&t->timer, on_timer_close);
}


size_t transport_write_queue_size(const transport_t *t)
{
    (void)t;
    return 0;
}
