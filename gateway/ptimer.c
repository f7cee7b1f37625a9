/* Precise timers: a timerfd and a binary min-heap, see ptimer.h. */
#include "ptimer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000ULL


static bool earlier(const ptimer_entry_t *a, const ptimer_entry_t *b)
{
    return a->due_ns < b->due_ns;
}


static void place(ptimer_t *pt, ptimer_entry_t *e, size_t i)
{
    pt->heap[i] = e;
    e->index = i;
}


static void sift_up(ptimer_t *pt, size_t i)
{
    ptimer_entry_t *e = pt->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(e, pt->heap[parent])) {
            break;
        }
        place(pt, pt->heap[parent], i);
        i = parent;
    }
    place(pt, e, i);
}


static void sift_down(ptimer_t *pt, size_t i)
{
    ptimer_entry_t *e = pt->heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= pt->len) {
            break;
        }
        if (child + 1 < pt->len &&
            earlier(pt->heap[child + 1], pt->heap[child])) {
            child++;
        }
        if (!earlier(pt->heap[child], e)) {
            break;
        }
        place(pt, pt->heap[child], i);
        i = child;
    }
    place(pt, e, i);
}


/* Sets the timerfd to expire at |due_ns|. A time already past expires at
 * once. */
static void arm(ptimer_t *pt, uint64_t due_ns)
{
    pt->armed_ns = due_ns;
    pt->arms++;
    if (pt->fd < 0) {
        return;
    }
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(due_ns / NS_PER_S);
    its.it_value.tv_nsec = (long)(due_ns % NS_PER_S);
    /* An all-zero value would disarm, and 1 ns is as far in the past. */
    if (due_ns == 0) {
        its.it_value.tv_nsec = 1;
        pt->armed_ns = 1;
    }
    /* It fails only for an invalid descriptor or value, which this code
     * never passes. */
    (void)timerfd_settime(pt->fd, TFD_TIMER_ABSTIME, &its, NULL);
}


/* Arms for |due_ns| if that is earlier than what is armed. No entry in the
 * heap is due before the armed time, so such an entry is the earliest. */
static void arm_if_earlier(ptimer_t *pt, uint64_t due_ns)
{
    if (pt->running) {
        return;
    }
    if (pt->armed_ns == 0 || due_ns < pt->armed_ns) {
        arm(pt, due_ns);
    }
}


void ptimer_entry_init(ptimer_entry_t *e, ptimer_cb cb, void *data)
{
    e->due_ns = 0;
    e->index = PTIMER_IDLE;
    e->cb = cb;
    e->data = data;
}


/* Grows the heap to at least |want| slots. */
static int grow(ptimer_t *pt, size_t want)
{
    if (want <= pt->cap) {
        return 0;
    }
    size_t cap = pt->cap > 0 ? pt->cap : 64;
    while (cap < want) {
        cap *= 2;
    }
    ptimer_entry_t **heap = realloc(pt->heap, cap * sizeof(*heap));
    if (heap == NULL) {
        return -ENOMEM;
    }
    pt->heap = heap;
    pt->cap = cap;
    return 0;
}


int ptimer_reserve(ptimer_t *pt)
{
    int rc = grow(pt, pt->reserved + 1);
    if (rc == 0) {
        pt->reserved++;
    }
    return rc;
}


void ptimer_unreserve(ptimer_t *pt)
{
    if (pt->reserved > 0) {
        pt->reserved--;
    }
}


int ptimer_set(ptimer_t *pt, ptimer_entry_t *e, uint64_t due_ns)
{
    if (ptimer_queued(e)) {
        uint64_t old = e->due_ns;
        e->due_ns = due_ns;
        if (due_ns < old) {
            sift_up(pt, e->index);
            arm_if_earlier(pt, due_ns);
        } else if (due_ns > old) {
            sift_down(pt, e->index);
        }
        return 0;
    }
    if (grow(pt, pt->len + 1) != 0) {
        return -ENOMEM;
    }
    e->due_ns = due_ns;
    pt->heap[pt->len] = e;
    e->index = pt->len;
    pt->len++;
    sift_up(pt, e->index);
    arm_if_earlier(pt, due_ns);
    return 0;
}


void ptimer_remove(ptimer_t *pt, ptimer_entry_t *e)
{
    if (!ptimer_queued(e)) {
        return;
    }
    size_t i = e->index;
    e->index = PTIMER_IDLE;
    pt->len--;
    if (i == pt->len) {
        return;
    }
    /* The last entry fills the hole and moves whichever way it must. */
    ptimer_entry_t *last = pt->heap[pt->len];
    place(pt, last, i);
    if (i > 0 && earlier(last, pt->heap[(i - 1) / 2])) {
        sift_up(pt, i);
    } else {
        sift_down(pt, i);
    }
}


void ptimer_run(ptimer_t *pt, uint64_t now_ns)
{
    /* A one-shot timerfd is disarmed once it has expired; when the wake-up
     * comes early, the arming below sets it again. */
    if (pt->armed_ns != 0 && pt->armed_ns <= now_ns) {
        pt->armed_ns = 0;
    }
    bool nested = pt->running;
    pt->running = true;
    while (pt->len > 0 && pt->heap[0]->due_ns <= now_ns) {
        ptimer_entry_t *e = pt->heap[0];
        ptimer_remove(pt, e);
        e->cb(e);
    }
    pt->running = nested;
    if (nested) {
        return;
    }
    if (pt->len > 0) {
        uint64_t next = pt->heap[0]->due_ns;
        if (pt->armed_ns == 0 || next < pt->armed_ns) {
            arm(pt, next);
        }
    }
}


/* uv_poll_cb: the timerfd expired (or the poll failed, which a run and a
 * new arming also cover). */
static void on_timerfd(uv_poll_t *p, int status, int events)
{
    ptimer_t *pt = p->data;
    uint64_t ticks;
    /* Clears the readiness; EAGAIN when a re-arm already reset it. */
    (void)!read(pt->fd, &ticks, sizeof(ticks));
    ptimer_run(pt, uv_hrtime());
}


void ptimer_init_detached(ptimer_t *pt)
{
    memset(pt, 0, sizeof(*pt));
    pt->fd = -1;
}


int ptimer_init(ptimer_t *pt, uv_loop_t *loop)
{
    ptimer_init_detached(pt);
    /* uv_hrtime() reads CLOCK_MONOTONIC, so due times need no conversion. */
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    int rc = uv_poll_init(loop, &pt->poll, fd);
    if (rc != 0) {
        close(fd);
        return rc;
    }
    pt->fd = fd;
    pt->loop = loop;
    pt->poll.data = pt;
    uv_poll_start(&pt->poll, UV_READABLE, on_timerfd);
    loop->data = pt;
    return 0;
}


ptimer_t *ptimer_of(uv_loop_t *loop)
{
    return loop->data;
}


/* uv_close_cb: the poll no longer watches the timerfd. */
static void on_poll_closed(uv_handle_t *h)
{
    ptimer_t *pt = h->data;
    close(pt->fd);
    pt->fd = -1;
}


void ptimer_close(ptimer_t *pt)
{
    for (size_t i = 0; i < pt->len; i++) {
        pt->heap[i]->index = PTIMER_IDLE;
    }
    free(pt->heap);
    pt->heap = NULL;
    pt->len = 0;
    pt->cap = 0;
    pt->reserved = 0;
    pt->armed_ns = 0;
    if (pt->loop == NULL) {
        return;
    }
    if (pt->loop->data == pt) {
        pt->loop->data = NULL;
    }
    pt->loop = NULL;
    if (pt->fd >= 0) {
        uv_close((uv_handle_t *)&pt->poll, on_poll_closed);
    }
}
