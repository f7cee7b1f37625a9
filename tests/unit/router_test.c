/* Unit tests for route matching: precedence, 404 against 405, and the
 * handling of escapes, dot segments and empty segments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "errors.h"
#include "router.h"

/* Routes in configuration order. The tests refer to them by index. */
static const char *const ROUTE_LIST[][2] = {
    {"GET", "/dashboard/{user}"},        /* 0 */
    {"GET", "/users/{id}"},              /* 1 */
    {"GET", "/users/me"},                /* 2 */
    {"POST", "/users/{id}"},             /* 3 */
    {"DELETE", "/users/{other}"},        /* 4 */
    {"GET", "/a/{x}/c"},                 /* 5 */
    {"GET", "/{y}/b/c"},                 /* 6 */
    {"GET", "/"},                        /* 7 */
    {"GET", "/orgs/{org}/repos/{repo}"}, /* 8 */
    {"PUT", "/items/fixed"},             /* 9 */
    {"GET", "/items/{id}"},              /* 10 */
};


static int setup(void **state)
{
    buf_t json = {0};
    size_t nroutes = sizeof(ROUTE_LIST) / sizeof(ROUTE_LIST[0]);

    buf_append_str(&json, "{\"services\": {\"s\": {\"url\": "
                          "\"http://127.0.0.1:9000\"}}, \"routes\": [");
    for (size_t i = 0; i < nroutes; i++) {
        buf_appendf(&json,
                    "%s{\"method\": \"%s\", \"path\": \"%s\", \"calls\": "
                    "[{\"name\": \"a\", \"service\": \"s\", \"path\": "
                    "\"/a\"}]}",
                    i == 0 ? "" : ", ", ROUTE_LIST[i][0], ROUTE_LIST[i][1]);
    }
    buf_append_str(&json, "]}");

    config_errors_t errs = {0};
    config_t *cfg = NULL;
    int rc = config_parse("routes.json", json.data, json.len, &cfg, &errs);
    for (size_t i = 0; i < errs.count; i++) {
        print_error("%s\n", errs.lines[i]);
    }
    buf_free(&json);
    config_errors_free(&errs);
    if (rc != 0) {
        return -1;
    }
    *state = cfg;
    return 0;
}


static int teardown(void **state)
{
    config_free(*state);
    return 0;
}


/* Matches and expects ROUTER_MATCH on route |index|. The caller frees
 * m->storage. */
static void expect_route(const config_t *cfg, const char *method,
                         const char *path, size_t index, router_match_t *m)
{
    buf_t allow = {0};

    router_result_t rc = router_match(cfg, method, path, m, &allow);
    assert_int_equal(rc, ROUTER_MATCH);
    assert_ptr_equal(m->route, &cfg->routes[index]);
    assert_int_equal(allow.len, 0);
    buf_free(&allow);
}


static void expect_result(const config_t *cfg, const char *method,
                          const char *path, router_result_t expected)
{
    router_match_t m = {0};

    router_result_t rc = router_match(cfg, method, path, &m, NULL);
    assert_int_equal(rc, expected);
    assert_null(m.route);
    buf_free(&m.storage);
}


static void test_router_param_value(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/dashboard/alice", 0, &m);
    assert_string_equal(m.values[0], "alice");
    assert_null(m.values[1]);
    buf_free(&m.storage);
}


static void test_router_literal_beats_param(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/users/me", 2, &m);
    assert_null(m.values[0]);
    expect_route(cfg, "GET", "/users/42", 1, &m);
    assert_string_equal(m.values[0], "42");
    buf_free(&m.storage);
}


static void test_router_leftmost_literal_wins(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    /* Both /a/{x}/c and /{y}/b/c match; the literal at position 0 wins. */
    expect_route(cfg, "GET", "/a/b/c", 5, &m);
    assert_string_equal(m.values[0], "b");
    expect_route(cfg, "GET", "/z/b/c", 6, &m);
    assert_string_equal(m.values[0], "z");
    buf_free(&m.storage);
}


static void test_router_two_params(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/orgs/acme/repos/tutti", 8, &m);
    assert_string_equal(m.values[0], "acme");
    assert_string_equal(m.values[1], "tutti");
    buf_free(&m.storage);
}


static void test_router_root(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/", 7, &m);
    buf_free(&m.storage);
}


static void test_router_not_found(void **state)
{
    const config_t *cfg = *state;

    expect_result(cfg, "GET", "/nothing", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "/users/1/extra", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "/dashboard", ROUTER_NOT_FOUND);
}


static void test_router_no_method_allow(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};
    buf_t allow = {0};

    router_result_t rc = router_match(cfg, "PATCH", "/users/42", &m, &allow);
    assert_int_equal(rc, ROUTER_NO_METHOD);
    assert_null(m.route);
    assert_string_equal(allow.data, "GET, POST, DELETE");

    /* HEAD is not implied by GET. */
    rc = router_match(cfg, "HEAD", "/dashboard/alice", &m, &allow);
    assert_int_equal(rc, ROUTER_NO_METHOD);
    assert_string_equal(allow.data, "GET");

    /* Methods compare case-sensitively. */
    rc = router_match(cfg, "get", "/dashboard/alice", &m, &allow);
    assert_int_equal(rc, ROUTER_NO_METHOD);
    assert_string_equal(allow.data, "GET");
    buf_free(&allow);
    buf_free(&m.storage);
}


static void test_router_best_shape_decides_method(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};
    buf_t allow = {0};

    /* /users/me has only GET: a POST goes to the best shape's methods,
     * not to POST /users/{id}. */
    router_result_t rc = router_match(cfg, "POST", "/users/me", &m, &allow);
    assert_int_equal(rc, ROUTER_NO_METHOD);
    assert_string_equal(allow.data, "GET");

    rc = router_match(cfg, "GET", "/items/fixed", &m, &allow);
    assert_int_equal(rc, ROUTER_NO_METHOD);
    assert_string_equal(allow.data, "PUT");
    buf_free(&allow);
    buf_free(&m.storage);
}


static void test_router_trailing_slash(void **state)
{
    const config_t *cfg = *state;

    expect_result(cfg, "GET", "/dashboard/alice/", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "/users/me/", ROUTER_NOT_FOUND);
}


static void test_router_encoded_slash(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/dashboard/..%2Fadmin", 0, &m);
    assert_string_equal(m.values[0], "../admin");
    expect_route(cfg, "GET", "/dashboard/a%2fb%2Fc", 0, &m);
    assert_string_equal(m.values[0], "a/b/c");
    buf_free(&m.storage);
}


static void test_router_literal_matches_decoded(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/%75sers/m%65", 2, &m);
    expect_route(cfg, "GET", "/dashboard/a%20b", 0, &m);
    assert_string_equal(m.values[0], "a b");
    buf_free(&m.storage);
}


static void test_router_dot_segments(void **state)
{
    const config_t *cfg = *state;

    expect_result(cfg, "GET", "/dashboard/.", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/..", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/%2e", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/%2E%2e", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/../users/me", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/x/./y", ROUTER_BAD_PATH);
}


static void test_router_dots_inside_value(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/dashboard/...", 0, &m);
    assert_string_equal(m.values[0], "...");
    expect_route(cfg, "GET", "/dashboard/.hidden", 0, &m);
    assert_string_equal(m.values[0], ".hidden");
    buf_free(&m.storage);
}


static void test_router_bad_escapes(void **state)
{
    const config_t *cfg = *state;

    expect_result(cfg, "GET", "/dashboard/a%", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/a%2", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/%zz", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "/dashboard/a%00b", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "dashboard/alice", ROUTER_BAD_PATH);
    expect_result(cfg, "GET", "", ROUTER_BAD_PATH);
}


static void test_router_empty_segment(void **state)
{
    const config_t *cfg = *state;

    expect_result(cfg, "GET", "/dashboard/", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "//", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "/users//me", ROUTER_NOT_FOUND);
    expect_result(cfg, "GET", "//b/c", ROUTER_NOT_FOUND);
}


static void test_router_reuses_storage(void **state)
{
    const config_t *cfg = *state;
    router_match_t m = {0};

    expect_route(cfg, "GET", "/orgs/a-long-organisation-name/repos/r", 8, &m);
    expect_route(cfg, "GET", "/dashboard/bob", 0, &m);
    assert_string_equal(m.values[0], "bob");
    assert_null(m.values[1]);
    expect_result(cfg, "GET", "/nothing", ROUTER_NOT_FOUND);
    buf_free(&m.storage);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_param_value),
        cmocka_unit_test(test_router_literal_beats_param),
        cmocka_unit_test(test_router_leftmost_literal_wins),
        cmocka_unit_test(test_router_two_params),
        cmocka_unit_test(test_router_root),
        cmocka_unit_test(test_router_not_found),
        cmocka_unit_test(test_router_no_method_allow),
        cmocka_unit_test(test_router_best_shape_decides_method),
        cmocka_unit_test(test_router_trailing_slash),
        cmocka_unit_test(test_router_encoded_slash),
        cmocka_unit_test(test_router_literal_matches_decoded),
        cmocka_unit_test(test_router_dot_segments),
        cmocka_unit_test(test_router_dots_inside_value),
        cmocka_unit_test(test_router_bad_escapes),
        cmocka_unit_test(test_router_empty_segment),
        cmocka_unit_test(test_router_reuses_storage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
