/* Unit tests for call path templates: compilation, expansion with
 * percent-encoding of every substituted value, and decoding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "errors.h"
#include "template.h"

static char *const PARAMS[] = {"user", "id"};
#define NPARAMS 2

/* Query parameters for the expansion tests, as name/value pairs. */
typedef struct query_s {
    const char *const *pairs;
    size_t npairs;
} query_t;


static const char *lookup_query(void *arg, const char *name)
{
    const query_t *q = arg;
    for (size_t i = 0; i < q->npairs; i++) {
        if (strcmp(q->pairs[2 * i], name) == 0) {
            return q->pairs[2 * i + 1];
        }
    }
    return NULL;
}


/* Compiles |text| against PARAMS, expands it with |values| and |q|, and
 * compares the result with |expected|. */
static void expect_expansion(const char *text, const char *const *values,
                             query_t *q, const char *expected)
{
    template_t t;
    char err[256];
    buf_t out = {0};

    int rc = template_compile(text, PARAMS, NPARAMS, &t, err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_string_equal(err, "");
    rc = template_expand(&t, values, lookup_query, q, &out);
    assert_int_equal(rc, 0);
    assert_string_equal(out.data, expected);
    buf_free(&out);
    template_free(&t);
}


static void expect_compile_error(const char *text, const char *expected)
{
    template_t t;
    char err[256];

    int rc = template_compile(text, PARAMS, NPARAMS, &t, err, sizeof(err));
    assert_int_equal(rc, TE_INVALID);
    assert_string_equal(err, expected);
    assert_null(t.parts);
    assert_int_equal(t.nparts, 0);
}


static void test_template_expand_path_and_query(void **state)
{
    const char *values[] = {"alice", "42"};
    const char *pairs[] = {"limit", "10"};
    query_t q = {pairs, 1};

    expect_expansion("/orders/{id}?user={user}&limit={query.limit}", values, &q,
                     "/orders/42?user=alice&limit=10");
}


static void test_template_parts(void **state)
{
    template_t t;
    char err[256];

    int rc = template_compile("/u/{user}?x={query.x}&y=1", PARAMS, NPARAMS, &t,
                              err, sizeof(err));
    assert_int_equal(rc, 0);
    assert_int_equal(t.nparts, 5);

    assert_int_equal(t.parts[0].kind, TPL_LITERAL);
    assert_string_equal(t.parts[0].text, "/u/");
    assert_false(t.parts[0].in_query);

    assert_int_equal(t.parts[1].kind, TPL_PARAM);
    assert_string_equal(t.parts[1].text, "user");
    assert_int_equal(t.parts[1].param_index, 0);
    assert_false(t.parts[1].in_query);

    assert_int_equal(t.parts[2].kind, TPL_LITERAL);
    assert_string_equal(t.parts[2].text, "?x=");
    assert_true(t.parts[2].in_query);

    assert_int_equal(t.parts[3].kind, TPL_QUERY);
    assert_string_equal(t.parts[3].text, "x");
    assert_true(t.parts[3].in_query);

    assert_int_equal(t.parts[4].kind, TPL_LITERAL);
    assert_string_equal(t.parts[4].text, "&y=1");
    assert_true(t.parts[4].in_query);
    template_free(&t);
}


static void test_template_missing_query_is_empty(void **state)
{
    const char *values[] = {"alice", "42"};
    query_t q = {NULL, 0};

    expect_expansion("/orders?user={user}&limit={query.limit}", values, &q,
                     "/orders?user=alice&limit=");
}


static void test_template_path_traversal_encoded(void **state)
{
    const char *values[] = {"../admin", "1"};
    query_t q = {NULL, 0};

    expect_expansion("/users/{user}", values, &q, "/users/..%2Fadmin");
}


static void test_template_query_injection_encoded(void **state)
{
    const char *values[] = {"a&b=c#d", "1"};
    const char *pairs[] = {"limit", "5&admin=true"};
    query_t q = {pairs, 1};

    expect_expansion("/orders?user={user}&limit={query.limit}", values, &q,
                     "/orders?user=a%26b%3Dc%23d&limit=5%26admin%3Dtrue");
}


static void test_template_crlf_space_percent(void **state)
{
    const char *values[] = {"a b\r\nHost: evil%", "x"};
    query_t q = {NULL, 0};

    expect_expansion("/u/{user}", values, &q,
                     "/u/a%20b%0D%0AHost%3A%20evil%25");
}


static void test_template_encode_bytes(void **state)
{
    buf_t out = {0};

    assert_int_equal(template_encode(&out, "AZaz09-._~"), 0);
    assert_string_equal(out.data, "AZaz09-._~");
    buf_reset(&out);

    assert_int_equal(template_encode(&out, "/?#&=+%"), 0);
    assert_string_equal(out.data, "%2F%3F%23%26%3D%2B%25");
    buf_reset(&out);

    /* U+00E9 in UTF-8, and DEL: upper-case hex digits. */
    assert_int_equal(template_encode(&out, "\xc3\xa9\x7f"), 0);
    assert_string_equal(out.data, "%C3%A9%7F");
    buf_reset(&out);

    assert_int_equal(template_encode(&out, ""), 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}


static void test_template_decode(void **state)
{
    char lower[] = "..%2fadmin";
    assert_int_equal(template_decode(lower, false), 0);
    assert_string_equal(lower, "../admin");

    char upper[] = "..%2Fadmin";
    assert_int_equal(template_decode(upper, false), 0);
    assert_string_equal(upper, "../admin");

    char plus_kept[] = "a+b%20c";
    assert_int_equal(template_decode(plus_kept, false), 0);
    assert_string_equal(plus_kept, "a+b c");

    char plus_space[] = "a+b%2Bc";
    assert_int_equal(template_decode(plus_space, true), 0);
    assert_string_equal(plus_space, "a b+c");

    char utf8[] = "caf%C3%A9";
    assert_int_equal(template_decode(utf8, false), 0);
    assert_string_equal(utf8, "caf\xc3\xa9");
}


static void test_template_decode_errors(void **state)
{
    static const char *const bad[] = {
        "%", "a%", "%4", "%zz", "%4g", "%g4", "a%00b", "%%41",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char s[16];
        snprintf(s, sizeof(s), "%s", bad[i]);
        print_message("decoding \"%s\"\n", bad[i]);
        assert_int_equal(template_decode(s, false), TE_INVALID);
    }
}


static void test_template_compile_unknown_param(void **state)
{
    expect_compile_error("/users/{usr}",
                         "unknown parameter \"{usr}\"; the route has {user}, "
                         "{id}");

    template_t t;
    char err[256];
    int rc = template_compile("/users/{usr}", NULL, 0, &t, err, sizeof(err));
    assert_int_equal(rc, TE_INVALID);
    assert_string_equal(err, "unknown parameter \"{usr}\"; the route has no "
                             "parameters");
}


static void test_template_compile_syntax_errors(void **state)
{
    expect_compile_error("users", "must start with \"/\"");
    expect_compile_error("/a}", "unmatched \"}\" at offset 2");
    expect_compile_error("/a{user", "unclosed \"{\" at offset 2");
    expect_compile_error("/a{us{er}", "unclosed \"{\" at offset 2");
    expect_compile_error("/a/{}",
                         "invalid placeholder \"{}\": expected {name} or "
                         "{query.name}, where a name starts with a letter or "
                         "\"_\" and continues with letters, digits or \"_\"");
    expect_compile_error("/a?x={query.}",
                         "invalid placeholder \"{query.}\": expected {name} "
                         "or {query.name}, where a name starts with a letter "
                         "or \"_\" and continues with letters, digits or "
                         "\"_\"");
    expect_compile_error("/a?x={query.a&b}",
                         "invalid placeholder \"{query.a&b}\": a query "
                         "parameter name may contain only letters, digits, "
                         "\"-\", \".\", \"_\" and \"~\"");
}


static void test_template_compile_bad_literals(void **state)
{
    expect_compile_error("/a b",
                         "literal text must not contain spaces or control "
                         "characters (byte 0x20 at offset 2); percent-encode "
                         "it");
    expect_compile_error("/a\r\n",
                         "literal text must not contain spaces or control "
                         "characters (byte 0x0D at offset 2); percent-encode "
                         "it");
    expect_compile_error("/a#frag",
                         "literal text must not contain \"#\" (offset 2) "
                         "because a fragment is never sent to a server");
    expect_compile_error("/caf\xc3\xa9",
                         "literal text must be ASCII (byte 0xC3 at offset 4); "
                         "percent-encode it");
    expect_compile_error("/a%2", "malformed escape at offset 2: \"%\" must be "
                                 "followed by two hex digits");
}


static void test_template_literal_escapes_kept(void **state)
{
    const char *values[] = {"u", "1"};
    query_t q = {NULL, 0};

    /* Escapes written in the template are sent as written. */
    expect_expansion("/a%2Fb?q=%20", values, &q, "/a%2Fb?q=%20");
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template_expand_path_and_query),
        cmocka_unit_test(test_template_parts),
        cmocka_unit_test(test_template_missing_query_is_empty),
        cmocka_unit_test(test_template_path_traversal_encoded),
        cmocka_unit_test(test_template_query_injection_encoded),
        cmocka_unit_test(test_template_crlf_space_percent),
        cmocka_unit_test(test_template_encode_bytes),
        cmocka_unit_test(test_template_decode),
        cmocka_unit_test(test_template_decode_errors),
        cmocka_unit_test(test_template_compile_unknown_param),
        cmocka_unit_test(test_template_compile_syntax_errors),
        cmocka_unit_test(test_template_compile_bad_literals),
        cmocka_unit_test(test_template_literal_escapes_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
