/* Unit tests for the precise timers: the heap's order, removal and moves,
 * callbacks that add and remove entries, the lazy arming of the timerfd,
 * and one timer on a real loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ptimer.h"

#define NS_PER_MS 1000000ULL
#define MAX_FIRED 256

typedef struct {
    ptimer_t *pt;
    ptimer_entry_t *entries;
    int fired[MAX_FIRED]; /* entry numbers, in the order they ran */
    size_t nfired;
    int zero_runs; /* busy_callback: runs of entry 0 */
} runs_t;

static runs_t runs;


static int entry_number(const ptimer_entry_t *e)
{
    return (int)(e - runs.entries);
}


static void record(ptimer_entry_t *e)
{
    assert_false(ptimer_queued(e));
    assert_true(runs.nfired < MAX_FIRED);
    runs.fired[runs.nfired++] = entry_number(e);
}


static void start(ptimer_t *pt, ptimer_entry_t *entries, size_t n, ptimer_cb cb)
{
    ptimer_init_detached(pt);
    memset(&runs, 0, sizeof(runs));
    runs.pt = pt;
    runs.entries = entries;
    for (size_t i = 0; i < n; i++) {
        ptimer_entry_init(&entries[i], cb, NULL);
    }
}


static void test_ptimer_order(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[40];
    start(&pt, e, 40, record);

    /* Due times in a scrambled order, two of them equal. */
    for (int i = 0; i < 40; i++) {
        uint64_t due = 1000 + (uint64_t)((i * 17) % 40) * 10;
        assert_int_equal(ptimer_set(&pt, &e[i], due), 0);
        assert_true(ptimer_queued(&e[i]));
    }
    assert_int_equal(ptimer_set(&pt, &e[39], e[0].due_ns), 0);

    ptimer_run(&pt, 999);
    assert_int_equal(runs.nfired, 0);
    ptimer_run(&pt, 5000);
    assert_int_equal(runs.nfired, 40);
    uint64_t last = 0;
    for (size_t i = 0; i < runs.nfired; i++) {
        uint64_t due = e[runs.fired[i]].due_ns;
        assert_true(due >= last);
        last = due;
    }
    assert_int_equal(pt.len, 0);
    ptimer_close(&pt);
}


static void test_ptimer_runs_only_due(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[3];
    start(&pt, e, 3, record);

    ptimer_set(&pt, &e[0], 100);
    ptimer_set(&pt, &e[1], 200);
    ptimer_set(&pt, &e[2], 300);
    ptimer_run(&pt, 199);
    assert_int_equal(runs.nfired, 1);
    assert_int_equal(runs.fired[0], 0);
    /* Exactly at its due time an entry runs. */
    ptimer_run(&pt, 200);
    assert_int_equal(runs.nfired, 2);
    assert_int_equal(runs.fired[1], 1);
    assert_true(ptimer_queued(&e[2]));
    ptimer_close(&pt);
    assert_false(ptimer_queued(&e[2]));
}


static void test_ptimer_remove(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[10];
    start(&pt, e, 10, record);

    for (int i = 0; i < 10; i++) {
        ptimer_set(&pt, &e[i], 100 + (uint64_t)i * 10);
    }
    /* The earliest, one in the middle, the last one, and one twice. */
    ptimer_remove(&pt, &e[0]);
    ptimer_remove(&pt, &e[5]);
    ptimer_remove(&pt, &e[9]);
    ptimer_remove(&pt, &e[9]);
    assert_false(ptimer_queued(&e[0]));
    assert_int_equal(pt.len, 7);
    ptimer_run(&pt, 1000);
    int want[] = {1, 2, 3, 4, 6, 7, 8};
    assert_int_equal(runs.nfired, 7);
    for (size_t i = 0; i < 7; i++) {
        assert_int_equal(runs.fired[i], want[i]);
    }
    ptimer_close(&pt);
}


static void test_ptimer_update(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[4];
    start(&pt, e, 4, record);

    ptimer_set(&pt, &e[0], 100);
    ptimer_set(&pt, &e[1], 200);
    ptimer_set(&pt, &e[2], 300);
    ptimer_set(&pt, &e[3], 400);
    ptimer_set(&pt, &e[0], 350); /* later */
    ptimer_set(&pt, &e[3], 150); /* earlier */
    ptimer_set(&pt, &e[1], 200); /* unchanged */
    assert_int_equal(pt.len, 4);
    ptimer_run(&pt, 1000);
    int want[] = {3, 1, 2, 0};
    assert_int_equal(runs.nfired, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(runs.fired[i], want[i]);
    }
    ptimer_close(&pt);
}


/* Entry 0 re-adds itself twice, at a time already due and then later.
 * Entry 1 removes entry 2 and adds entry 3 at a due time. */
static void busy_callback(ptimer_entry_t *e)
{
    record(e);
    int n = entry_number(e);
    if (n == 0) {
        runs.zero_runs++;
        ptimer_set(runs.pt, e, runs.zero_runs == 1 ? 50 : 5000);
    } else if (n == 1) {
        ptimer_remove(runs.pt, &runs.entries[2]);
        ptimer_set(runs.pt, &runs.entries[3], 90);
    }
}


static void test_ptimer_callback_changes(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[4];
    start(&pt, e, 4, busy_callback);

    ptimer_set(&pt, &e[0], 10);
    ptimer_set(&pt, &e[1], 20);
    ptimer_set(&pt, &e[2], 30);
    uint64_t arms = pt.arms;
    ptimer_run(&pt, 100);
    /* 0 at 10, 1 at 20, 0 again at 50, 3 (added by 1) at 90; 2 was
     * removed by 1. */
    int want[] = {0, 1, 0, 3};
    assert_int_equal(runs.nfired, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(runs.fired[i], want[i]);
    }
    assert_false(ptimer_queued(&e[2]));
    assert_true(ptimer_queued(&e[0]));
    /* Nothing was armed while the callbacks ran; once, for 5000, after. */
    assert_int_equal(pt.arms, arms + 1);
    assert_int_equal(pt.armed_ns, 5000);
    ptimer_close(&pt);
}


static void test_ptimer_lazy_arming(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[5];
    start(&pt, e, 5, record);

    /* The first entry arms; later ones do not; an earlier one does. */
    ptimer_set(&pt, &e[0], 1000);
    assert_int_equal(pt.arms, 1);
    assert_int_equal(pt.armed_ns, 1000);
    ptimer_set(&pt, &e[1], 2000);
    ptimer_set(&pt, &e[2], 1000);
    assert_int_equal(pt.arms, 1);
    ptimer_set(&pt, &e[3], 500);
    assert_int_equal(pt.arms, 2);
    assert_int_equal(pt.armed_ns, 500);

    /* Removing never arms, even the entry armed for, and neither does
     * moving an entry later. */
    ptimer_remove(&pt, &e[3]);
    ptimer_set(&pt, &e[0], 1500);
    assert_int_equal(pt.arms, 2);
    assert_int_equal(pt.armed_ns, 500);

    /* Moving one earlier than the armed time arms. */
    ptimer_set(&pt, &e[1], 400);
    assert_int_equal(pt.arms, 3);
    assert_int_equal(pt.armed_ns, 400);
    ptimer_remove(&pt, &e[1]);

    /* The wake-up at 400 runs nothing and arms for the earliest entry. */
    ptimer_run(&pt, 400);
    assert_int_equal(runs.nfired, 0);
    assert_int_equal(pt.arms, 4);
    assert_int_equal(pt.armed_ns, 1000);

    /* A wake-up before the armed time (clock granularity) keeps it. */
    ptimer_run(&pt, 999);
    assert_int_equal(runs.nfired, 0);
    assert_int_equal(pt.arms, 4);

    /* After the last entry ran nothing is armed, and the next one arms. */
    ptimer_remove(&pt, &e[0]);
    ptimer_run(&pt, 1000);
    assert_int_equal(runs.nfired, 1);
    assert_int_equal(pt.len, 0);
    assert_int_equal(pt.armed_ns, 0);
    assert_int_equal(pt.arms, 4);
    ptimer_set(&pt, &e[4], 3000);
    assert_int_equal(pt.arms, 5);
    assert_int_equal(pt.armed_ns, 3000);
    ptimer_close(&pt);
}


static void test_ptimer_reserve(void **state)
{
    ptimer_t pt;
    ptimer_entry_t e[200];
    start(&pt, e, 200, record);

    for (int i = 0; i < 200; i++) {
        assert_int_equal(ptimer_reserve(&pt), 0);
    }
    assert_true(pt.cap >= 200);
    size_t cap = pt.cap;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(ptimer_set(&pt, &e[i], 200 - (uint64_t)i), 0);
    }
    assert_int_equal(pt.cap, cap);
    ptimer_run(&pt, 1000);
    assert_int_equal(runs.nfired, 200);
    for (size_t i = 0; i < runs.nfired; i++) {
        assert_int_equal(runs.fired[i], 199 - (int)i);
    }
    ptimer_close(&pt);
}


typedef struct {
    uint64_t due;
    uint64_t ran;
    uv_timer_t guard;
} loop_run_t;


static void on_loop_entry(ptimer_entry_t *e)
{
    loop_run_t *r = e->data;
    r->ran = uv_hrtime();
    uv_close((uv_handle_t *)&r->guard, NULL);
    ptimer_close(ptimer_of(r->guard.loop));
}


static void on_guard(uv_timer_t *t)
{
    fail_msg("the ptimer did not fire within 1 s");
}


static void test_ptimer_real_loop(void **state)
{
    uv_loop_t loop;
    ptimer_t pt;
    ptimer_entry_t e;
    loop_run_t r = {0};

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(ptimer_init(&pt, &loop), 0);
    assert_ptr_equal(ptimer_of(&loop), &pt);
    ptimer_entry_init(&e, on_loop_entry, &r);
    uv_timer_init(&loop, &r.guard);
    uv_timer_start(&r.guard, on_guard, 1000, 0);

    r.due = uv_hrtime() + 5 * NS_PER_MS;
    assert_int_equal(ptimer_set(&pt, &e, r.due), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_true(r.ran >= r.due);
    /* A few ms of slack for a busy machine; a libuv timer is up to 2 ms
     * late even on an idle one. */
    assert_true(r.ran - r.due < 3 * NS_PER_MS);
    assert_int_equal(pt.fd, -1);
    assert_int_equal(uv_loop_close(&loop), 0);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ptimer_order),
        cmocka_unit_test(test_ptimer_runs_only_due),
        cmocka_unit_test(test_ptimer_remove),
        cmocka_unit_test(test_ptimer_update),
        cmocka_unit_test(test_ptimer_callback_changes),
        cmocka_unit_test(test_ptimer_lazy_arming),
        cmocka_unit_test(test_ptimer_reserve),
        cmocka_unit_test(test_ptimer_real_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
