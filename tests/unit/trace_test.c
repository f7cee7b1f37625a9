/* Unit tests for W3C traceparent parsing and trace id generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "errors.h"
#include "trace.h"

#define VALID "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


static void test_trace_parse_valid(void **state)
{
    trace_ctx_t ctx = {0};
    char hex[TRACE_ID_HEX];

    assert_int_equal(trace_parse(VALID, &ctx), 0);
    trace_hex(ctx.trace_id, TRACE_ID_LEN, hex);
    assert_string_equal(hex, "4bf92f3577b34da6a3ce929d0e0e4736");
    trace_hex(ctx.parent_id, TRACE_SPAN_LEN, hex);
    assert_string_equal(hex, "00f067aa0ba902b7");
    assert_int_equal(ctx.flags, 1);
}


static void test_trace_parse_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "00",
        /* upper-case hex */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        /* all-zero trace id and parent id */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        /* version ff is forbidden */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* version 00 must end after the flags */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        /* wrong separators and non-hex digits */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        /* a later version continues only after a "-" */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        trace_ctx_t ctx = {0};
        if (trace_parse(bad[i], &ctx) != TE_INVALID) {
            fail_msg("accepted \"%s\"", bad[i]);
        }
    }
    trace_ctx_t ctx = {0};
    assert_int_equal(trace_parse(NULL, &ctx), TE_INVALID);
}


static void test_trace_parse_later_version(void **state)
{
    trace_ctx_t ctx = {0};

    assert_int_equal(
        trace_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
                    "-future",
                    &ctx),
        0);
    /* Only the sampled bit is defined for version 00. */
    assert_int_equal(ctx.flags, 1);
    assert_int_equal(
        trace_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                    &ctx),
        0);
    assert_int_equal(ctx.flags, 0);
}


static void test_trace_begin_continues(void **state)
{
    trace_ctx_t ctx;
    char out[TRACEPARENT_LEN + 1];
    uint8_t span[TRACE_SPAN_LEN];
    static const uint8_t zero[TRACE_SPAN_LEN] = {0};

    trace_begin(&ctx, VALID);
    assert_true(ctx.continued);
    assert_memory_not_equal(ctx.span_id, zero, TRACE_SPAN_LEN);
    assert_memory_not_equal(ctx.span_id, ctx.parent_id, TRACE_SPAN_LEN);

    trace_new_span(span);
    trace_format_parent(&ctx, span, out);
    assert_int_equal(strlen(out), TRACEPARENT_LEN);
    assert_memory_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_string_equal(out + 52, "-01");
    /* The call's own span is the parent id its service receives. */
    char hex[TRACE_SPAN_HEX];
    trace_hex(span, TRACE_SPAN_LEN, hex);
    assert_memory_equal(out + 36, hex, 16);
    trace_ctx_t back = {0};
    assert_int_equal(trace_parse(out, &back), 0);
}


static void test_trace_begin_new_trace(void **state)
{
    trace_ctx_t a;
    trace_ctx_t b;
    static const uint8_t zero[TRACE_ID_LEN] = {0};
    char out[TRACEPARENT_LEN + 1];

    trace_begin(&a, NULL);
    trace_begin(&b, "garbage");
    assert_false(a.continued);
    assert_false(b.continued);
    assert_memory_not_equal(a.trace_id, zero, TRACE_ID_LEN);
    assert_memory_not_equal(a.trace_id, b.trace_id, TRACE_ID_LEN);
    assert_memory_not_equal(a.span_id, b.span_id, TRACE_SPAN_LEN);
    assert_memory_equal(a.parent_id, zero, TRACE_SPAN_LEN);
    assert_int_equal(a.flags, 1);

    trace_format_parent(&a, a.span_id, out);
    trace_ctx_t back = {0};
    assert_int_equal(trace_parse(out, &back), 0);
    assert_memory_equal(back.trace_id, a.trace_id, TRACE_ID_LEN);
}


static void test_trace_spans_differ(void **state)
{
    uint8_t spans[64][TRACE_SPAN_LEN];

    for (size_t i = 0; i < 64; i++) {
        trace_new_span(spans[i]);
        for (size_t j = 0; j < i; j++) {
            assert_memory_not_equal(spans[i], spans[j], TRACE_SPAN_LEN);
        }
    }
}


static void test_trace_unknown_flags_cleared(void **state)
{
    trace_ctx_t ctx;
    trace_begin(&ctx,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff");
    assert_true(ctx.continued);
    assert_int_equal(ctx.flags, 1);
    trace_begin(&ctx,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe");
    assert_true(ctx.continued);
    assert_int_equal(ctx.flags, 0);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_unknown_flags_cleared),
        cmocka_unit_test(test_trace_parse_valid),
        cmocka_unit_test(test_trace_parse_invalid),
        cmocka_unit_test(test_trace_parse_later_version),
        cmocka_unit_test(test_trace_begin_continues),
        cmocka_unit_test(test_trace_begin_new_trace),
        cmocka_unit_test(test_trace_spans_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
