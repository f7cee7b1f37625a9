/* Precise timers: one timerfd per loop and a binary min-heap of entries.
 *
 * A libuv timer counts whole milliseconds against the loop's cached time,
 * so it fires up to about 2 ms after its due time. A ptimer keeps its
 * entries' due times in nanoseconds of uv_hrtime() (CLOCK_MONOTONIC) and
 * wakes the loop with a timerfd armed at an absolute time, watched by a
 * uv_poll.
 *
 * The timerfd is set lazily: only when an entry added or moved becomes
 * earlier than the armed time, or nothing is armed. Removing an entry or
 * moving it later leaves the armed time as it is. The wake-up that follows
 * then runs nothing and arms for the earliest entry. So while entries are
 * removed before they come due, a worker makes about one timerfd_settime
 * per deadline length, not one per request.
 *
 * An entry runs only once uv_hrtime() >= its due time. Used on the loop's
 * thread only. */
#ifndef TUTTI_PTIMER_H
#define TUTTI_PTIMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* The heap index of an entry that is not queued. */
#define PTIMER_IDLE SIZE_MAX

typedef struct ptimer_s ptimer_t;
typedef struct ptimer_entry_s ptimer_entry_t;

/* Runs once each time the entry comes due. The entry is no longer queued
 * when it runs, and the callback may add it again or change others. */
typedef void (*ptimer_cb)(ptimer_entry_t *e);

struct ptimer_entry_s {
    uint64_t due_ns; /* uv_hrtime() at which it runs */
    size_t index;    /* position in the heap, PTIMER_IDLE when not queued */
    ptimer_cb cb;
    void *data;
};

struct ptimer_s {
    uv_loop_t *loop; /* NULL: detached, see ptimer_init_detached */
    int fd;          /* the timerfd, -1 when detached or closed */
    uv_poll_t poll;
    ptimer_entry_t **heap;
    size_t len;
    size_t cap;
    size_t reserved;   /* heap slots promised by ptimer_reserve */
    uint64_t armed_ns; /* the timerfd's expiry, 0 when not armed */
    bool running;      /* inside ptimer_run: arming waits for its end */
    uint64_t arms;     /* timerfd_settime calls (or arms, when detached) */
};

/* Creates the timerfd and its poll on |loop| and makes |pt| the loop's
 * ptimer (loop->data, see ptimer_of). Returns 0 or a negative errno. */
int ptimer_init(ptimer_t *pt, uv_loop_t *loop);

/* A ptimer with no timerfd and no loop, for tests: arming only records
 * armed_ns and counts arms, and ptimer_run is called by hand. */
void ptimer_init_detached(ptimer_t *pt);

/* The ptimer that ptimer_init attached to |loop|, or NULL. */
ptimer_t *ptimer_of(uv_loop_t *loop);

/* Prepares an entry that is not queued. */
void ptimer_entry_init(ptimer_entry_t *e, ptimer_cb cb, void *data);

/* Makes room in the heap for one more entry, so that ptimer_set cannot
 * fail for it until the matching ptimer_unreserve. Returns 0 or -ENOMEM. */
int ptimer_reserve(ptimer_t *pt);
void ptimer_unreserve(ptimer_t *pt);

/* Queues |e| at |due_ns|, or moves it there if it is queued. Returns 0, or
 * -ENOMEM when the heap cannot grow (the entry is then not queued), which
 * cannot happen while every queued entry has its slot reserved. */
int ptimer_set(ptimer_t *pt, ptimer_entry_t *e, uint64_t due_ns);

/* Takes |e| out of the queue if it is there. Never touches the timerfd. */
void ptimer_remove(ptimer_t *pt, ptimer_entry_t *e);

static inline bool ptimer_queued(const ptimer_entry_t *e)
{
    return e->index != PTIMER_IDLE;
}

/* Runs every entry due at |now_ns|, earliest first, then arms for the
 * earliest entry left. The timerfd's poll calls it with uv_hrtime(). */
void ptimer_run(ptimer_t *pt, uint64_t now_ns);

/* Closes the poll and the timerfd; entries still queued never run. The
 * loop must run once more to finish closing the poll. */
void ptimer_close(ptimer_t *pt);

#endif
