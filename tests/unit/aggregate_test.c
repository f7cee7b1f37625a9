/* Unit tests for gateway/aggregate.c: status mapping, error objects and
 * downstream body parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "aggregate.h"
#include "errors.h"


static void test_aggregate_status_timeouts(void **state)
{
    assert_int_equal(aggregate_status(KIND_TIMEOUT, 0), 504);
    assert_int_equal(aggregate_status(KIND_DEADLINE, 0), 504);
}


static void test_aggregate_status_client_errors_pass(void **state)
{
    assert_int_equal(aggregate_status(KIND_STATUS, 404), 404);
    assert_int_equal(aggregate_status(KIND_STATUS, 400), 400);
    assert_int_equal(aggregate_status(KIND_STATUS, 429), 429);
    assert_int_equal(aggregate_status(KIND_STATUS, 499), 499);
}


static void test_aggregate_status_server_errors_502(void **state)
{
    assert_int_equal(aggregate_status(KIND_STATUS, 500), 502);
    assert_int_equal(aggregate_status(KIND_STATUS, 503), 502);
    assert_int_equal(aggregate_status(KIND_CONNECT, 0), 502);
    assert_int_equal(aggregate_status(KIND_RESOLVE, 0), 502);
    assert_int_equal(aggregate_status(KIND_RESET, 0), 502);
    assert_int_equal(aggregate_status(KIND_BAD_RESPONSE, 0), 502);
}


static void test_aggregate_status_gateway_kinds(void **state)
{
    assert_int_equal(aggregate_status(KIND_SHUTDOWN, 0), 503);
    assert_int_equal(aggregate_status(KIND_INTERNAL, 0), 500);
}


static void test_aggregate_kind_from_error(void **state)
{
    assert_int_equal(aggregate_kind_from_error(TE_RESOLVE), KIND_RESOLVE);
    assert_int_equal(aggregate_kind_from_error(TE_CONNECT), KIND_CONNECT);
    assert_int_equal(aggregate_kind_from_error(TE_RESET), KIND_RESET);
    assert_int_equal(aggregate_kind_from_error(TE_BAD_RESPONSE),
                     KIND_BAD_RESPONSE);
    assert_int_equal(aggregate_kind_from_error(TE_NOMEM), KIND_INTERNAL);
}


static void test_aggregate_kind_names(void **state)
{
    assert_string_equal(aggregate_kind_name(KIND_TIMEOUT), "timeout");
    assert_string_equal(aggregate_kind_name(KIND_DEADLINE), "deadline");
    assert_string_equal(aggregate_kind_name(KIND_CONNECT), "connect");
    assert_string_equal(aggregate_kind_name(KIND_RESOLVE), "resolve");
    assert_string_equal(aggregate_kind_name(KIND_RESET), "reset");
    assert_string_equal(aggregate_kind_name(KIND_STATUS), "status");
    assert_string_equal(aggregate_kind_name(KIND_BAD_RESPONSE), "bad_response");
    assert_string_equal(aggregate_kind_name(KIND_SHUTDOWN), "shutdown");
}


static void test_aggregate_error_body_with_status(void **state)
{
    json_t *e = aggregate_error_object("profile", KIND_STATUS, 503,
                                       "service users answered 503", 12);
    size_t len = 0;
    char *body = aggregate_error_body(e, &len);
    assert_non_null(body);
    assert_int_equal(len, strlen(body));
    assert_string_equal(body,
                        "{\"error\":{\"call\":\"profile\",\"kind\":\"status\","
                        "\"status\":503,\"message\":\"service users "
                        "answered 503\",\"elapsed_ms\":12}}");
    free(body);
}


static void test_aggregate_error_body_without_status(void **state)
{
    json_t *e = aggregate_error_object("orders", KIND_TIMEOUT, 0,
                                       "call timed out after 200 ms", 200);
    char *body = aggregate_error_body(e, NULL);
    assert_string_equal(body,
                        "{\"error\":{\"call\":\"orders\",\"kind\":\"timeout\","
                        "\"message\":\"call timed out after 200 ms\","
                        "\"elapsed_ms\":200}}");
    free(body);
}


static void test_aggregate_error_invalid_utf8_message(void **state)
{
    json_t *e = aggregate_error_object("x", KIND_RESET, 0, "bad \xff byte", 1);
    const char *msg = json_string_value(json_object_get(e, "message"));
    assert_non_null(msg);
    assert_string_equal(msg, "(message not valid UTF-8)");
    json_decref(e);
}


static void test_aggregate_simple_error(void **state)
{
    size_t len = 0;
    char *body =
        aggregate_simple_error("not_found", "no route for path /x", &len);
    assert_string_equal(body, "{\"error\":{\"kind\":\"not_found\","
                              "\"message\":\"no route for path /x\"}}");
    free(body);
}


static void test_aggregate_check_204_without_body(void **state)
{
    char why[128] = "";
    assert_int_equal(aggregate_check_body(204, "", 0, why, sizeof(why)), 0);
}


static void test_aggregate_check_scalars_and_arrays(void **state)
{
    const char *texts[] = {
        "{\"a\":1}", "[1,2]", "42",   "\"s\"",
        "true",      "null",  " {} ", "123456789012345678901234567890"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char why[128] = "";
        int rc = aggregate_check_body(200, texts[i], strlen(texts[i]), why,
                                      sizeof(why));
        assert_int_equal(rc, 0);
    }
}


static void test_aggregate_check_empty_200_fails(void **state)
{
    char why[128] = "";
    int rc = aggregate_check_body(200, "", 0, why, sizeof(why));
    assert_int_equal(rc, TE_BAD_RESPONSE);
    assert_string_equal(why,
                        "empty response body with status 200; expected JSON");
}


static void test_aggregate_check_invalid_json_fails(void **state)
{
    char why[128] = "";
    int rc = aggregate_check_body(200, "{\"broken\": ", 11, why, sizeof(why));
    assert_int_equal(rc, TE_BAD_RESPONSE);
    assert_non_null(strstr(why, "response body is not valid JSON"));
}


static void test_aggregate_check_trailing_garbage_fails(void **state)
{
    char why[128] = "";
    int rc = aggregate_check_body(200, "{} x", 4, why, sizeof(why));
    assert_int_equal(rc, TE_BAD_RESPONSE);
}


/* jansson 2.14's verdict on |text| with the flags that tutti used before
 * it had its own check: 1 accepted, 0 rejected, -1 rejected for a reason
 * that is no error of JSON (a number beyond a double, \u0000 in a key),
 * which the check accepts (see test_aggregate_check_accepts_beyond_jansson).
 * jansson stops at that first reason, so it cannot tell whether the rest
 * of the text is valid. */
static int jansson_verdict(const char *text, size_t len)
{
    json_error_t jerr;
    json_t *v = json_loadb(
        text, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL,
        &jerr);
    json_decref(v);
    if (v != NULL) {
        return 1;
    }
    if (strncmp(jerr.text, "real number overflow", 20) == 0 ||
        strncmp(jerr.text, "NUL byte in object key", 22) == 0) {
        return -1;
    }
    return 0;
}


/* The check must agree with jansson wherever jansson's verdict is about
 * JSON itself. */
static void assert_check_matches_jansson(const char *text, size_t len)
{
    char why[256] = "";
    int rc = aggregate_check_body(200, text, len, why, sizeof(why));
    int expected = jansson_verdict(text, len);
    if (expected >= 0 && (rc == 0) != (expected == 1)) {
        fail_msg("check_body %s \"%.*s\", jansson %s it",
                 rc == 0 ? "accepted" : "rejected", (int)len, text,
                 expected ? "accepts" : "rejects");
    }
}


static void test_aggregate_check_edge_cases_match_jansson(void **state)
{
    static const char *const texts[] = {
        "1e308",
        "1E+2",
        "1e-400",
        "0.0000e309",
        "01",
        "-01",
        "1.",
        ".5",
        "-",
        "-0",
        "0",
        "1.5e",
        "1e+",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "[1 2]",
        "{,}",
        "[,1]",
        "{\"a\":}",
        "{1:2}",
        "\"\\u0000\"",
        "{\"a\":\"\\u0000\"}",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u00e9\"",
        "\"\\u12G4\"",
        "\"\\x\"",
        "\"\\/\"",
        "\"\xc3\xa9\"",
        "\"\xc3\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xf0\x9f\x98\x80\"",
        "\"\xc0\xaf\"",
        "\"\xe0\x80\xaf\"",
        "\"\x7f\"",
        "\"a\tb\"",
        "\"a\nb\"",
        "tru",
        "truex",
        "true false",
        "nul",
        "nulll",
        "falsey",
        "1 2",
        "  \n 5 \r\n",
        "\xef\xbb\xbf{}",
        "{}}",
        "[]]",
        "\"abc",
        "{\"a\":[{\"b\":null}]}",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        assert_check_matches_jansson(texts[i], strlen(texts[i]));
    }
    /* A NUL byte inside a string and outside one. */
    assert_check_matches_jansson("\"a\0b\"", 5);
    /* jansson 2.14 takes a NUL byte after the value for the end of the
     * text. It is a stray byte, so the client must not get it. */
    char why[128] = "";
    assert_int_equal(aggregate_check_body(200, "1\0", 2, why, sizeof(why)),
                     TE_BAD_RESPONSE);
}


/* jansson cannot hold these values, but they are valid JSON, and the
 * body is copied as written, so the check accepts them. */
static void test_aggregate_check_accepts_beyond_jansson(void **state)
{
    static const char *const texts[] = {
        "1e400",
        "-1e309",
        "2e10000",
        "123456789012345678901234567890e280",
        "{\"a\\u0000\":1}",
        "{\"\\u0000\":{\"\\u0000\":\"\\u0000\"}}",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char why[256] = "";
        int rc = aggregate_check_body(200, texts[i], strlen(texts[i]), why,
                                      sizeof(why));
        if (rc != 0) {
            fail_msg("check_body rejected \"%s\": %s", texts[i], why);
        }
    }
}


/* The reason names the problem and a byte offset, and never copies a
 * byte of the body. */
static void test_aggregate_check_reason_has_no_body_bytes(void **state)
{
    char why[256] = "";
    int rc = aggregate_check_body(200, "[1,\"\xff\"]", 7, why, sizeof(why));
    assert_int_equal(rc, TE_BAD_RESPONSE);
    assert_string_equal(why,
                        "response body is not valid JSON: invalid UTF-8 at "
                        "byte 4");

    size_t n = 100000;
    char *deep = malloc(n);
    assert_non_null(deep);
    memset(deep, '[', n);
    rc = aggregate_check_body(200, deep, n, why, sizeof(why));
    free(deep);
    assert_int_equal(rc, TE_BAD_RESPONSE);
    assert_string_equal(why, "response body is not valid JSON: nesting deeper "
                             "than 2047 levels at byte 2047");
}


static void test_aggregate_check_nesting_matches_jansson(void **state)
{
    static const size_t depths[] = {1, 63, 64, 65, 200, 2047, 2048, 2049};
    for (size_t i = 0; i < sizeof(depths) / sizeof(depths[0]); i++) {
        size_t n = depths[i];
        char *text = malloc(2 * n + 1);
        assert_non_null(text);
        memset(text, '[', n);
        memset(text + n, ']', n);
        text[2 * n] = '\0';
        if (n == 2047) {
            /* The deepest body accepted: the response nests it one level
             * deeper and must still parse. */
            buf_t out = {0};
            assert_int_equal(aggregate_add_result(&out, "r", text, 2 * n), 0);
            assert_int_equal(aggregate_finish(&out, NULL), 0);
            assert_int_equal(jansson_verdict(out.data, out.len), 1);
            buf_free(&out);
        }
        if (n == 2048) {
            /* jansson parses 2048 levels; the check stops one short, so
             * that the response, one level deeper, still parses. */
            char why[256];
            assert_int_equal(jansson_verdict(text, 2 * n), 1);
            assert_int_equal(
                aggregate_check_body(200, text, 2 * n, why, sizeof(why)),
                TE_BAD_RESPONSE);
        } else {
            assert_check_matches_jansson(text, 2 * n);
        }
        free(text);
    }
}


/* Random texts built from JSON fragments, each compared with jansson. The
 * seed is fixed, so a failure repeats. */
static void test_aggregate_check_random_texts_match_jansson(void **state)
{
    static const char *const pieces[] = {
        "{",    "}",    "[",     "]",    ",",      ":",       "\"k\"", "\"",
        " ",    "\n",   "0",     "1",    "-",      ".",       "e",     "E",
        "+",    "9",    "true",  "fals", "null",   "\\u0041", "\\",    "\xc3",
        "\xa9", "\x01", "\"a\"", "1e99", "1e-400", "\\n",     "x",     "\\u",
    };
    size_t npieces = sizeof(pieces) / sizeof(pieces[0]);
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    char text[256];

    for (int round = 0; round < 50000; round++) {
        size_t len = 0;
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        int count = 1 + (int)((seed >> 33) % 12);
        for (int i = 0; i < count; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            const char *piece = pieces[(seed >> 33) % npieces];
            size_t n = strlen(piece);
            if (len + n >= sizeof(text)) {
                break;
            }
            memcpy(text + len, piece, n);
            len += n;
        }
        assert_check_matches_jansson(text, len);
    }
}


static void test_aggregate_build_keeps_bytes(void **state)
{
    buf_t out = {0};
    const char *a = "{\"price\": 0.92, \"n\": 1e400}";
    const char *b = "[12345678901234567890123]";
    assert_int_equal(aggregate_add_result(&out, "a", a, strlen(a)), 0);
    assert_int_equal(aggregate_add_result(&out, "b", b, strlen(b)), 0);
    assert_int_equal(aggregate_add_result(&out, "c", NULL, 0), 0);
    assert_int_equal(aggregate_finish(&out, NULL), 0);
    assert_string_equal(out.data,
                        "{\"a\":{\"price\": 0.92, \"n\": 1e400},"
                        "\"b\":[12345678901234567890123],\"c\":null}");
    buf_free(&out);
}


static void test_aggregate_build_with_errors(void **state)
{
    buf_t out = {0};
    json_t *errors = json_object();
    json_object_set_new(errors, "orders",
                        aggregate_error_object("orders", KIND_TIMEOUT, 0,
                                               "call timed out after 5 ms", 5));
    assert_int_equal(aggregate_add_result(&out, "p", "1", 1), 0);
    assert_int_equal(aggregate_finish(&out, errors), 0);
    assert_string_equal(out.data,
                        "{\"p\":1,\"errors\":{\"orders\":{\"call\":"
                        "\"orders\",\"kind\":\"timeout\",\"message\":"
                        "\"call timed out after 5 ms\",\"elapsed_ms\":5}}}");
    json_decref(errors);
    buf_free(&out);
}


static void test_aggregate_build_only_errors(void **state)
{
    buf_t out = {0};
    json_t *errors = json_object();
    json_object_set_new(errors, "x", json_null());
    assert_int_equal(aggregate_finish(&out, errors), 0);
    assert_string_equal(out.data, "{\"errors\":{\"x\":null}}");
    json_decref(errors);
    buf_free(&out);
}


static void test_aggregate_build_empty(void **state)
{
    buf_t out = {0};
    assert_int_equal(aggregate_finish(&out, NULL), 0);
    assert_string_equal(out.data, "{}");
    buf_free(&out);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aggregate_status_timeouts),
        cmocka_unit_test(test_aggregate_status_client_errors_pass),
        cmocka_unit_test(test_aggregate_status_server_errors_502),
        cmocka_unit_test(test_aggregate_status_gateway_kinds),
        cmocka_unit_test(test_aggregate_kind_from_error),
        cmocka_unit_test(test_aggregate_kind_names),
        cmocka_unit_test(test_aggregate_error_body_with_status),
        cmocka_unit_test(test_aggregate_error_body_without_status),
        cmocka_unit_test(test_aggregate_error_invalid_utf8_message),
        cmocka_unit_test(test_aggregate_simple_error),
        cmocka_unit_test(test_aggregate_check_204_without_body),
        cmocka_unit_test(test_aggregate_check_scalars_and_arrays),
        cmocka_unit_test(test_aggregate_check_empty_200_fails),
        cmocka_unit_test(test_aggregate_check_invalid_json_fails),
        cmocka_unit_test(test_aggregate_check_trailing_garbage_fails),
        cmocka_unit_test(test_aggregate_check_edge_cases_match_jansson),
        cmocka_unit_test(test_aggregate_check_accepts_beyond_jansson),
        cmocka_unit_test(test_aggregate_check_reason_has_no_body_bytes),
        cmocka_unit_test(test_aggregate_check_nesting_matches_jansson),
        cmocka_unit_test(test_aggregate_check_random_texts_match_jansson),
        cmocka_unit_test(test_aggregate_build_keeps_bytes),
        cmocka_unit_test(test_aggregate_build_with_errors),
        cmocka_unit_test(test_aggregate_build_only_errors),
        cmocka_unit_test(test_aggregate_build_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
