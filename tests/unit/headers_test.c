/* Unit tests for the header policy: name and value checks, placeholder
 * expansion, networks, X-Forwarded-* and the fields built for a call. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "errors.h"
#include "headers.h"

static char *const PARAMS[] = {"user"};

#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))


static const char *lookup_query(void *arg, const char *name)
{
    return strcmp(name, "q") == 0 ? arg : NULL;
}


static void test_headers_token_and_reserved(void **state)
{
    assert_true(headers_is_token("X-User"));
    assert_true(headers_is_token("a!#$%&'*+-.^_`|~9"));
    assert_false(headers_is_token(""));
    assert_false(headers_is_token("X User"));
    assert_false(headers_is_token("X:User"));
    assert_false(headers_is_token(":authority"));

    static const char *const reserved[] = {
        "Connection",
        "keep-alive",
        "TE",
        "Upgrade",
        "Transfer-Encoding",
        "Proxy-Authorization",
        "proxy-x",
        "Host",
        "content-length",
        "X-Request-Id",
        "Request-Timeout-Ms",
        "traceparent",
        "tracestate",
        "X-Forwarded-For",
        "x-forwarded-host",
    };
    for (size_t i = 0; i < NFIELDS(reserved); i++) {
        if (headers_reserved_reason(reserved[i]) == NULL) {
            fail_msg("%s is not reserved", reserved[i]);
        }
    }
    assert_null(headers_reserved_reason("authorization"));
    assert_null(headers_reserved_reason("x-tenant"));
}


static void test_headers_value_safe(void **state)
{
    assert_true(headers_value_safe("plain value\t", 12));
    assert_false(headers_value_safe("a\rb", 3));
    assert_false(headers_value_safe("a\nb", 3));
    assert_false(headers_value_safe("a\0b", 3));
}


static void expect_compile_error(const char *text, const char *expected)
{
    template_t t;
    char err[256];
    assert_int_equal(
        headers_compile_value(text, PARAMS, 1, &t, err, sizeof(err)),
        TE_INVALID);
    assert_string_equal(err, expected);
    assert_null(t.parts);
}


static void test_headers_compile_errors(void **state)
{
    expect_compile_error("a\r\nInjected: 1",
                         "a header value must not contain CR or LF (offset "
                         "1), which would end the field early");
    expect_compile_error("a\nb", "a header value must not contain CR or LF "
                                 "(offset 1), which would end the field "
                                 "early");
    expect_compile_error("a\x01",
                         "a header value must not contain control characters "
                         "(byte 0x01 at offset 1)");
    expect_compile_error("{usr}",
                         "unknown parameter \"{usr}\"; the route has {user}");
    expect_compile_error("{user", "unclosed \"{\" at offset 0");
    expect_compile_error("x}", "unmatched \"}\" at offset 1");
    expect_compile_error("{query.a b}",
                         "invalid placeholder \"{query.a b}\": a query "
                         "parameter name may contain only letters, digits, "
                         "\"-\", \".\", \"_\" and \"~\"");

    template_t t;
    char err[256];
    /* Syntax only: any parameter name is accepted. */
    assert_int_equal(
        headers_compile_value("{anything}", NULL, 0, &t, err, sizeof(err)), 0);
    template_free(&t);
}


static void test_headers_expand_encodes(void **state)
{
    template_t t;
    char err[256];
    buf_t out = {0};
    const char *values[] = {"al ice\r\nX-Evil: 1"};

    assert_int_equal(headers_compile_value("user={user}; q={query.q}; static",
                                           PARAMS, 1, &t, err, sizeof(err)),
                     0);
    assert_int_equal(headers_expand_value(&t, values, lookup_query,
                                          (void *)"50%\x7f\xc3\xa9", &out),
                     0);
    assert_string_equal(out.data, "user=al ice%0D%0AX-Evil: 1; "
                                  "q=50%25%7F%C3%A9; static");
    assert_true(headers_value_safe(out.data, out.len));
    buf_free(&out);

    /* A missing query parameter expands to nothing. */
    assert_int_equal(headers_expand_value(&t, values, lookup_query, NULL, &out),
                     0);
    assert_non_null(strstr(out.data, "q=; "));
    buf_free(&out);
    template_free(&t);
}


static struct sockaddr_in v4(const char *text)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    assert_int_equal(inet_pton(AF_INET, text, &sa.sin_addr), 1);
    return sa;
}


static struct sockaddr_in6 v6(const char *text)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    assert_int_equal(inet_pton(AF_INET6, text, &sa.sin6_addr), 1);
    return sa;
}


static void test_headers_cidr(void **state)
{
    cidr_t nets[3];

    assert_int_equal(headers_parse_cidr("10.0.0.0/8", &nets[0]), 0);
    assert_int_equal(headers_parse_cidr("fd00::/8", &nets[1]), 0);
    assert_int_equal(headers_parse_cidr("192.168.1.7", &nets[2]), 0);
    assert_int_equal(nets[2].prefix, 32);

    cidr_t bad;
    static const char *const invalid[] = {
        "",       "10.0.0.0/33", "::/129",      "10.0.0.0/", "10.0.0/8",
        "host/8", "10.0.0.0/-1", "10.0.0.0/8x", "[::1]/128",
    };
    for (size_t i = 0; i < NFIELDS(invalid); i++) {
        if (headers_parse_cidr(invalid[i], &bad) != TE_INVALID) {
            fail_msg("accepted \"%s\"", invalid[i]);
        }
    }

    struct sockaddr_in in = v4("10.1.2.3");
    struct sockaddr_in out = v4("11.1.2.3");
    struct sockaddr_in exact = v4("192.168.1.7");
    struct sockaddr_in6 in6 = v6("fd12::1");
    struct sockaddr_in6 out6 = v6("fe80::1");
    struct sockaddr_in6 mapped = v6("::ffff:10.9.9.9");
    assert_true(headers_cidr_match(nets, 3, (struct sockaddr *)&in));
    assert_false(headers_cidr_match(nets, 3, (struct sockaddr *)&out));
    assert_true(headers_cidr_match(nets, 3, (struct sockaddr *)&exact));
    assert_true(headers_cidr_match(nets, 3, (struct sockaddr *)&in6));
    assert_false(headers_cidr_match(nets, 3, (struct sockaddr *)&out6));
    assert_true(headers_cidr_match(nets, 3, (struct sockaddr *)&mapped));
    assert_false(headers_cidr_match(nets, 0, (struct sockaddr *)&in));
    assert_false(headers_cidr_match(nets, 3, NULL));

    cidr_t odd;
    assert_int_equal(headers_parse_cidr("10.0.0.128/25", &odd), 0);
    struct sockaddr_in hi = v4("10.0.0.200");
    struct sockaddr_in lo = v4("10.0.0.100");
    assert_true(headers_cidr_match(&odd, 1, (struct sockaddr *)&hi));
    assert_false(headers_cidr_match(&odd, 1, (struct sockaddr *)&lo));

    char text[64];
    headers_peer_text((struct sockaddr *)&mapped, text, sizeof(text));
    assert_string_equal(text, "10.9.9.9");
    headers_peer_text((struct sockaddr *)&in6, text, sizeof(text));
    assert_string_equal(text, "fd12::1");
}


static const upcall_header_t INBOUND[] = {
    {"Host", "gw.example"},
    {"X-Forwarded-For", "203.0.113.9"},
    {"X-Forwarded-For", "10.0.0.2"},
    {"X-Forwarded-Proto", "https"},
    {"X-Forwarded-Host", "shop.example"},
    {"Connection", "keep-alive, X-Hop"},
    {"X-Hop", "dropped"},
    {"X-Tenant", "acme"},
    {"X-Tenant", "beta"},
    {"Cookie", "a=1"},
    {"cookie", "b=2"},
    {"X-Override", "from-client"},
    {"Authorization", "Bearer secret-token"},
};


static void test_headers_forwarded_trust(void **state)
{
    buf_t xff = {0};
    buf_t proto = {0};
    buf_t host = {0};

    assert_int_equal(headers_forwarded(INBOUND, NFIELDS(INBOUND), "127.0.0.1",
                                       true, &xff, &proto, &host),
                     0);
    assert_string_equal(xff.data, "203.0.113.9, 10.0.0.2, 127.0.0.1");
    assert_string_equal(proto.data, "https");
    assert_string_equal(host.data, "shop.example");
    buf_free(&xff);
    buf_free(&proto);
    buf_free(&host);

    assert_int_equal(headers_forwarded(INBOUND, NFIELDS(INBOUND), "127.0.0.1",
                                       false, &xff, &proto, &host),
                     0);
    assert_string_equal(xff.data, "127.0.0.1");
    assert_string_equal(proto.data, "http");
    assert_string_equal(host.data, "gw.example");
    buf_free(&xff);
    buf_free(&proto);
    buf_free(&host);

    /* Trusted, but nothing forwarded yet: the peer alone, and no Host. */
    static const upcall_header_t bare[] = {{"Accept", "*/*"}};
    assert_int_equal(
        headers_forwarded(bare, 1, "::1", true, &xff, &proto, &host), 0);
    assert_string_equal(xff.data, "::1");
    assert_string_equal(proto.data, "http");
    assert_string_equal(host.data, "");
    buf_free(&xff);
    buf_free(&proto);
    buf_free(&host);
}


static void test_headers_connection_lists(void **state)
{
    assert_true(headers_connection_lists(INBOUND, NFIELDS(INBOUND), "x-hop"));
    assert_true(
        headers_connection_lists(INBOUND, NFIELDS(INBOUND), "Keep-Alive"));
    assert_false(
        headers_connection_lists(INBOUND, NFIELDS(INBOUND), "x-tenant"));
    assert_false(headers_connection_lists(INBOUND, NFIELDS(INBOUND), "x-ho"));
    assert_null(headers_single(INBOUND, NFIELDS(INBOUND), "x-tenant"));
    assert_string_equal(headers_single(INBOUND, NFIELDS(INBOUND), "x-hop"),
                        "dropped");
}


static void test_headers_build_call(void **state)
{
    char *forward[] = {"x-tenant",   "x-hop",    "cookie",
                       "x-override", "x-absent", "authorization"};
    char *set_names[] = {"x-override", "x-user"};
    char *set_texts[] = {"static", "{user}"};
    header_policy_t policy = {
        .forward = forward,
        .nforward = NFIELDS(forward),
        .set_names = set_names,
        .set_texts = set_texts,
        .nset = 2,
    };
    template_t set_values[2];
    char err[256];
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(headers_compile_value(set_texts[i], PARAMS, 1,
                                               &set_values[i], err,
                                               sizeof(err)),
                         0);
    }
    headers_request_t req = {
        .inbound = INBOUND,
        .ninbound = NFIELDS(INBOUND),
        .forwarded_for = "127.0.0.1",
        .forwarded_proto = "http",
        .forwarded_host = "gw.example",
        .tracestate = "vendor=abc",
    };
    const char *values[] = {"bob"};
    header_list_t l = {0};

    assert_int_equal(
        headers_build_call(&l, &policy, set_values, &req, values, NULL, NULL),
        0);
    assert_string_equal(header_list_get(&l, "x-forwarded-for"), "127.0.0.1");
    assert_string_equal(header_list_get(&l, "x-forwarded-proto"), "http");
    assert_string_equal(header_list_get(&l, "x-forwarded-host"), "gw.example");
    assert_string_equal(header_list_get(&l, "tracestate"), "vendor=abc");
    assert_string_equal(header_list_get(&l, "x-tenant"), "acme, beta");
    assert_string_equal(header_list_get(&l, "cookie"), "a=1; b=2");
    assert_string_equal(header_list_get(&l, "x-user"), "bob");
    assert_string_equal(header_list_get(&l, "x-override"), "static");
    assert_string_equal(header_list_get(&l, "authorization"),
                        "Bearer secret-token");
    /* Named in Connection, so hop-by-hop even though it is forwarded. */
    assert_null(header_list_get(&l, "x-hop"));
    assert_null(header_list_get(&l, "x-absent"));
    size_t overrides = 0;
    for (size_t i = 0; i < l.count; i++) {
        overrides += strcmp(l.items[i].name, "x-override") == 0;
    }
    assert_int_equal(overrides, 1);

    char *secrets[] = {"x-user"};
    json_t *logged = headers_log_json(&l, secrets, 1);
    assert_string_equal(
        json_string_value(json_object_get(logged, "authorization")),
        "[redacted]");
    assert_string_equal(json_string_value(json_object_get(logged, "cookie")),
                        "[redacted]");
    assert_string_equal(json_string_value(json_object_get(logged, "x-user")),
                        "[redacted]");
    assert_string_equal(json_string_value(json_object_get(logged, "x-tenant")),
                        "acme, beta");
    json_decref(logged);

    header_list_free(&l);
    template_free(&set_values[0]);
    template_free(&set_values[1]);
}


static void test_headers_list_lower_cases(void **state)
{
    header_list_t l = {0};
    for (int i = 0; i < 20; i++) {
        assert_int_equal(header_list_add(&l, "X-Mixed-Case", "v"), 0);
    }
    assert_int_equal(l.count, 20);
    assert_string_equal(l.items[19].name, "x-mixed-case");
    assert_string_equal(l.items[19].value, "v");
    header_list_free(&l);
    assert_int_equal(l.count, 0);
}


static void test_headers_policy_copy(void **state)
{
    char *forward[] = {"a", "b"};
    char *set_names[] = {"c"};
    char *set_texts[] = {"{user}"};
    header_policy_t src = {forward, 2, set_names, set_texts, 1};
    header_policy_t dst;

    assert_int_equal(header_policy_copy(&dst, &src), 0);
    assert_int_equal(dst.nforward, 2);
    assert_string_equal(dst.forward[1], "b");
    assert_ptr_not_equal(dst.forward[1], forward[1]);
    assert_string_equal(dst.set_texts[0], "{user}");
    header_policy_free(&dst);
    assert_null(dst.forward);

    header_policy_t empty = {0};
    assert_int_equal(header_policy_copy(&dst, &empty), 0);
    assert_null(dst.forward);
    header_policy_free(&dst);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_headers_token_and_reserved),
        cmocka_unit_test(test_headers_value_safe),
        cmocka_unit_test(test_headers_compile_errors),
        cmocka_unit_test(test_headers_expand_encodes),
        cmocka_unit_test(test_headers_cidr),
        cmocka_unit_test(test_headers_forwarded_trust),
        cmocka_unit_test(test_headers_connection_lists),
        cmocka_unit_test(test_headers_build_call),
        cmocka_unit_test(test_headers_list_lower_cases),
        cmocka_unit_test(test_headers_policy_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
