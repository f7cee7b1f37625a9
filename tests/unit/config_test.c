/* Unit tests for the configuration loader: the parsed structures, the
 * defaults, and the exact text of every kind of problem message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "errors.h"

/* Test JSON is written with single quotes so it reads without escapes.
 * No test document needs a literal single quote. */
static char *to_json(const char *text)
{
    char *json = strdup(text);
    assert_non_null(json);
    for (char *p = json; *p != '\0'; p++) {
        if (*p == '\'') {
            *p = '"';
        }
    }
    return json;
}


static config_t *parse_ok(const char *text)
{
    char *json = to_json(text);
    config_errors_t errs = {0};
    config_t *cfg = NULL;

    int rc = config_parse("gw.json", json, strlen(json), &cfg, &errs);
    for (size_t i = 0; i < errs.count; i++) {
        print_error("unexpected problem: %s\n", errs.lines[i]);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(errs.count, 0);
    assert_non_null(cfg);
    free(json);
    config_errors_free(&errs);
    return cfg;
}


/* Parses |text|, expects it to be rejected, and compares the problems
 * with the NULL-terminated list |expected|, in order. */
static void expect_problems(const char *text, const char *const *expected)
{
    char *json = to_json(text);
    config_errors_t errs = {0};
    config_t *cfg = (config_t *)&errs; /* must be reset to NULL */

    int rc = config_parse("gw.json", json, strlen(json), &cfg, &errs);
    assert_int_equal(rc, TE_INVALID);
    assert_null(cfg);

    size_t n = 0;
    while (expected[n] != NULL) {
        n++;
    }
    for (size_t i = 0; errs.count != n && i < errs.count; i++) {
        print_error("problem %zu: %s\n", i, errs.lines[i]);
    }
    assert_int_equal(errs.count, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(errs.lines[i], expected[i]);
    }
    free(json);
    config_errors_free(&errs);
}


static void expect_problem(const char *text, const char *expected)
{
    const char *list[] = {expected, NULL};
    expect_problems(text, list);
}


/* The example configuration from the documentation. */
static const char EXAMPLE[] =
    "{"
    "  'listen': '127.0.0.1:8080',"
    "  'max_request_body_bytes': 1048576,"
    "  'max_response_body_bytes': 8388608,"
    "  'shutdown_grace_ms': 25000,"
    "  'resolver': {'servers': ['127.0.0.1:5353']},"
    "  'services': {"
    "    'users':  {'url': 'h2c://127.0.0.1:9201', 'timeout_ms': 500},"
    "    'orders': {'url': 'http://localhost:9101'}"
    "  },"
    "  'routes': ["
    "    {"
    "      'method': 'GET',"
    "      'path': '/dashboard/{user}',"
    "      'deadline_ms': 1000,"
    "      'calls': ["
    "        {'name': 'profile', 'service': 'users',  'path': "
    "'/users/{user}'},"
    "        {'name': 'orders',  'service': 'orders', 'path': "
    "'/orders?user={user}&limit={query.limit}', 'timeout_ms': 200, "
    "'required': false}"
    "      ]"
    "    }"
    "  ]"
    "}";

/* The smallest valid document: one service, one route, one call. */
#define MINIMAL_SERVICES "'services': {'users': {'url': 'http://u'}}"
#define MINIMAL_CALL "{'name': 'a', 'service': 'users', 'path': '/a'}"
#define MINIMAL_ROUTE                                                          \
    "{'method': 'GET', 'path': '/x', 'calls': [" MINIMAL_CALL "]}"


static void test_config_example_top_level(void **state)
{
    config_t *cfg = parse_ok(EXAMPLE);

    assert_string_equal(cfg->file, "gw.json");
    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8080);
    assert_int_equal(cfg->max_request_body_bytes, 1048576);
    assert_int_equal(cfg->max_response_body_bytes, 8388608);
    assert_int_equal(cfg->shutdown_grace_ms, 25000);
    assert_string_equal(cfg->resolver_servers, "127.0.0.1:5353");
    assert_int_equal(cfg->nservices, 2);
    assert_int_equal(cfg->nroutes, 1);
    config_free(cfg);
}


static void test_config_example_services(void **state)
{
    config_t *cfg = parse_ok(EXAMPLE);

    const service_t *users = &cfg->services[0];
    assert_string_equal(users->name, "users");
    assert_string_equal(users->url, "h2c://127.0.0.1:9201");
    assert_int_equal(users->scheme, SCHEME_H2C);
    assert_string_equal(users->host, "127.0.0.1");
    assert_int_equal(users->port, 9201);
    assert_string_equal(users->authority, "127.0.0.1:9201");
    assert_int_equal(users->timeout_ms, 500);
    assert_int_equal(users->index, 0);

    const service_t *orders = &cfg->services[1];
    assert_string_equal(orders->name, "orders");
    assert_int_equal(orders->scheme, SCHEME_HTTP);
    assert_string_equal(orders->host, "localhost");
    assert_int_equal(orders->port, 9101);
    assert_string_equal(orders->authority, "localhost:9101");
    assert_int_equal(orders->timeout_ms, -1);
    assert_int_equal(orders->index, 1);

    assert_ptr_equal(config_service(cfg, "orders"), orders);
    assert_ptr_equal(config_service(cfg, "users"), users);
    assert_null(config_service(cfg, "userz"));
    config_free(cfg);
}


static void test_config_example_route(void **state)
{
    config_t *cfg = parse_ok(EXAMPLE);
    const route_t *r = &cfg->routes[0];

    assert_string_equal(r->method, "GET");
    assert_string_equal(r->path, "/dashboard/{user}");
    assert_int_equal(r->deadline_ms, 1000);
    assert_int_equal(r->nsegs, 2);
    assert_string_equal(r->segs[0].literal, "dashboard");
    assert_null(r->segs[1].literal);
    assert_int_equal(r->segs[1].param_index, 0);
    assert_int_equal(r->nparams, 1);
    assert_string_equal(r->params[0], "user");
    assert_int_equal(r->ncalls, 2);
    config_free(cfg);
}


static void test_config_example_calls(void **state)
{
    config_t *cfg = parse_ok(EXAMPLE);
    const route_t *r = &cfg->routes[0];

    const call_t *profile = &r->calls[0];
    assert_string_equal(profile->name, "profile");
    assert_ptr_equal(profile->service, &cfg->services[0]);
    assert_string_equal(profile->method, "GET");
    assert_string_equal(profile->path_text, "/users/{user}");
    assert_int_equal(profile->path.nparts, 2);
    assert_int_equal(profile->timeout_ms, 500); /* from the service */
    assert_true(profile->required);
    assert_false(profile->forward_body);

    const call_t *orders = &r->calls[1];
    assert_string_equal(orders->name, "orders");
    assert_ptr_equal(orders->service, &cfg->services[1]);
    assert_string_equal(orders->path_text,
                        "/orders?user={user}&limit={query.limit}");
    assert_int_equal(orders->timeout_ms, 200);
    assert_false(orders->required);
    assert_false(orders->forward_body);
    config_free(cfg);
}


static void test_config_defaults(void **state)
{
    config_t *cfg =
        parse_ok("{" MINIMAL_SERVICES ", 'routes': [" MINIMAL_ROUTE "]}");

    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8080);
    assert_int_equal(cfg->max_request_body_bytes, 1024 * 1024);
    assert_int_equal(cfg->max_response_body_bytes, 8 * 1024 * 1024);
    assert_int_equal(cfg->shutdown_grace_ms, 25000);
    assert_null(cfg->resolver_servers);

    const service_t *svc = &cfg->services[0];
    assert_int_equal(svc->port, 80);
    assert_string_equal(svc->authority, "u:80");
    assert_int_equal(svc->timeout_ms, -1);

    const route_t *r = &cfg->routes[0];
    assert_int_equal(r->deadline_ms, 1000);
    assert_string_equal(r->calls[0].method, "GET");
    assert_int_equal(r->calls[0].timeout_ms, -1);
    assert_true(r->calls[0].required);
    assert_false(r->calls[0].forward_body);
    config_free(cfg);
}


static void test_config_optional_values(void **state)
{
    config_t *cfg =
        parse_ok("{'listen': '[::1]:9000', 'shutdown_grace_ms': 0,"
                 " 'resolver': {'servers': ['127.0.0.1:5353', '[::1]:53', "
                 "'10.0.0.1', '::2']},"
                 " 'services': {'v6': {'url': 'h2c://[::1]:9201/'}},"
                 " 'routes': [{'method': 'POST', 'path': '/',"
                 "   'calls': [{'name': 'a-1', 'service': 'v6', 'path': '/a',"
                 "              'method': 'PUT', 'forward_body': true}]}]}");

    assert_string_equal(cfg->listen_host, "::1");
    assert_int_equal(cfg->listen_port, 9000);
    assert_int_equal(cfg->shutdown_grace_ms, 0);
    assert_string_equal(cfg->resolver_servers,
                        "127.0.0.1:5353,[::1]:53,10.0.0.1,[::2]");
    assert_string_equal(cfg->services[0].host, "::1");
    assert_string_equal(cfg->services[0].authority, "[::1]:9201");
    assert_int_equal(cfg->routes[0].nsegs, 0);
    assert_string_equal(cfg->routes[0].calls[0].method, "PUT");
    assert_true(cfg->routes[0].calls[0].forward_body);
    config_free(cfg);
}


static void test_config_listen_localhost(void **state)
{
    config_t *cfg = parse_ok("{'listen': 'localhost:1', " MINIMAL_SERVICES
                             ", 'routes': [" MINIMAL_ROUTE "]}");

    assert_string_equal(cfg->listen_host, "localhost");
    assert_int_equal(cfg->listen_port, 1);
    config_free(cfg);
}


static void test_config_unknown_key(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': '/x',"
        " 'calls': [" MINIMAL_CALL ", {'name': 'b', 'service': 'users', "
        "'path': '/b', 'foo': 1}]}]}",
        "gw.json: routes[0].calls[1].foo: unknown key; expected one of name, "
        "service, path, method, timeout_ms, required, forward_body");
}


static void test_config_unknown_key_top_level(void **state)
{
    expect_problem("{'lisen': 'x', " MINIMAL_SERVICES
                   ", 'routes': [" MINIMAL_ROUTE "]}",
                   "gw.json: lisen: unknown key; expected one of listen, "
                   "services, routes, resolver, max_request_body_bytes, "
                   "max_response_body_bytes, shutdown_grace_ms");
}


static void test_config_unknown_key_service(void **state)
{
    expect_problem(
        "{'services': {'users': {'url': 'http://u', 'timeout': 5}},"
        " 'routes': [" MINIMAL_ROUTE "]}",
        "gw.json: services.users.timeout: unknown key; expected one of url, "
        "timeout_ms");
}


static void test_config_wrong_type_integer(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': '/x',"
        " 'deadline_ms': '1000', 'calls': [" MINIMAL_CALL "]}]}",
        "gw.json: routes[0].deadline_ms: expected a positive integer, got "
        "string");
}


static void test_config_wrong_type_kinds(void **state)
{
    const char *const expected[] = {
        "gw.json: max_request_body_bytes: expected a positive integer, got "
        "real",
        "gw.json: max_response_body_bytes: expected a positive integer, got "
        "boolean",
        "gw.json: shutdown_grace_ms: expected a non-negative integer, got "
        "null",
        NULL,
    };
    expect_problems("{'max_request_body_bytes': 1.5,"
                    " 'max_response_body_bytes': true,"
                    " 'shutdown_grace_ms': null, " MINIMAL_SERVICES
                    ", 'routes': [" MINIMAL_ROUTE "]}",
                    expected);
}


static void test_config_wrong_type_string(void **state)
{
    expect_problem("{'services': {'users': {'url': 80}},"
                   " 'routes': [" MINIMAL_ROUTE "]}",
                   "gw.json: services.users.url: expected a string, got "
                   "integer");
}


static void test_config_wrong_type_boolean(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': '/x',"
        " 'calls': [{'name': 'a', 'service': 'users', 'path': '/a',"
        " 'required': 'no'}]}]}",
        "gw.json: routes[0].calls[0].required: expected a boolean, got "
        "string");
}


static void test_config_wrong_type_containers(void **state)
{
    const char *const expected[] = {
        "gw.json: services: expected an object, got array",
        "gw.json: routes: expected an array, got object",
        NULL,
    };
    expect_problems("{'services': [], 'routes': {}}", expected);
}


static void test_config_non_positive_integer(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.timeout_ms: expected a positive integer, "
        "got 0",
        "gw.json: routes[0].deadline_ms: expected a positive integer, got -5",
        NULL,
    };
    expect_problems(
        "{'services': {'users': {'url': 'http://u', 'timeout_ms': 0}},"
        " 'routes': [{'method': 'GET', 'path': '/x', 'deadline_ms': -5,"
        " 'calls': [" MINIMAL_CALL "]}]}",
        expected);
}


static void test_config_missing_key(void **state)
{
    expect_problem("{" MINIMAL_SERVICES
                   ", 'routes': [{'method': 'GET', 'path': '/x',"
                   " 'calls': [{'name': 'a', 'path': '/a'}]}]}",
                   "gw.json: routes[0].calls[0]: missing key \"service\"");
}


static void test_config_missing_top_level(void **state)
{
    const char *const expected[] = {
        "gw.json: (root): missing key \"services\"",
        "gw.json: (root): missing key \"routes\"",
        NULL,
    };
    expect_problems("{}", expected);
}


static void test_config_duplicate_call_name(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': '/x',"
        " 'calls': [{'name': 'profile', 'service': 'users', 'path': '/a'},"
        " {'name': 'profile', 'service': 'users', 'path': '/b'}]}]}",
        "gw.json: routes[0].calls[1].name: duplicate call name \"profile\"");
}


static void test_config_unknown_service(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [" MINIMAL_ROUTE ","
        " {'method': 'GET', 'path': '/y',"
        " 'calls': [{'name': 'a', 'service': 'userz', 'path': '/a'}]}]}",
        "gw.json: routes[1].calls[0].service: unknown service \"userz\"");
}


static void expect_bad_url(const char *url, const char *expected)
{
    char text[512];
    snprintf(text, sizeof(text),
             "{'services': {'users': {'url': '%s'}}, 'routes': "
             "[" MINIMAL_ROUTE "]}",
             url);
    expect_problem(text, expected);
}


static void test_config_bad_url_scheme(void **state)
{
    expect_bad_url("ftp://x", "gw.json: services.users.url: invalid URL "
                              "\"ftp://x\": expected http://HOST[:PORT] or "
                              "h2c://HOST[:PORT]");
}


static void test_config_bad_url_port_range(void **state)
{
    expect_bad_url("http://x:99999",
                   "gw.json: services.users.url: invalid URL "
                   "\"http://x:99999\": expected http://HOST[:PORT] or "
                   "h2c://HOST[:PORT]; port 99999 is out of range");
}


static void test_config_bad_url_parts(void **state)
{
    static const struct {
        const char *url;
        const char *reason;
    } cases[] = {
        {"http://me@x", "userinfo is not allowed"},
        {"http://x/api", "a path other than \"/\" is not allowed"},
        {"http://x/?a=1", "a query is not allowed"},
        {"http://x#top", "a fragment is not allowed"},
        {"http://", "the host is missing"},
        {"http://:80", "the host is missing"},
        {"h2c://[::g]:80", "the host in brackets is not an IPv6 address"},
        {"http://1.2.3.400",
         "the host is not a valid host name or IPv4 address"},
        {"http://a..b", "the host is not a valid host name or IPv4 address"},
        {"http://x:0", "port 0 is out of range"},
        {"http://x:8o", "the port must be a decimal number"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char expected[512];
        snprintf(expected, sizeof(expected),
                 "gw.json: services.users.url: invalid URL \"%s\": expected "
                 "http://HOST[:PORT] or h2c://HOST[:PORT]; %s",
                 cases[i].url, cases[i].reason);
        expect_bad_url(cases[i].url, expected);
    }
}


static void test_config_template_unknown_param(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': "
        "'/dashboard/{user}', 'calls': [{'name': 'a', 'service': 'users',"
        " 'path': '/users/{usr}'}]}]}",
        "gw.json: routes[0].calls[0].path: unknown parameter \"{usr}\"; the "
        "route has {user}");
}


static void test_config_template_no_params(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': "
        "'/dashboard', 'calls': [{'name': 'a', 'service': 'users',"
        " 'path': '/users/{usr}'}]}]}",
        "gw.json: routes[0].calls[0].path: unknown parameter \"{usr}\"; the "
        "route has no parameters");
}


static void test_config_duplicate_route(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': ["
        " {'method': 'GET', 'path': '/dashboard/{user}', 'calls': "
        "[" MINIMAL_CALL "]},"
        " {'method': 'POST', 'path': '/dashboard/{user}', 'calls': "
        "[" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/dashboard/{id}', 'calls': "
        "[" MINIMAL_CALL "]}]}",
        "gw.json: routes[2]: duplicate route GET /dashboard/{id} (same as "
        "routes[0])");
}


static void test_config_reserved_call_name(void **state)
{
    expect_problem(
        "{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', 'path': '/x',"
        " 'calls': [{'name': 'errors', 'service': 'users', 'path': "
        "'/a'}]}]}",
        "gw.json: routes[0].calls[0].name: \"errors\" is reserved for the "
        "error summary; choose another call name");
}


static void test_config_invalid_json(void **state)
{
    /* The text after "invalid JSON: " is jansson's (checked with 2.14). */
    expect_problem("{\n  'listen': 'x',\n    ]\n}",
                   "gw.json:3:5: invalid JSON: string or '}' expected near "
                   "']'");
}


static void test_config_duplicate_json_key(void **state)
{
    expect_problem("{'routes': 1, 'routes': 2}",
                   "gw.json:1:22: invalid JSON: duplicate object key near "
                   "'\"routes\"'");
}


static void test_config_unreadable_file(void **state)
{
    const char *file = "/nonexistent-tutti-dir/gw.json";
    config_errors_t errs = {0};
    config_t *cfg = NULL;

    int rc = config_load(file, &cfg, &errs);
    assert_int_equal(rc, TE_INVALID);
    assert_null(cfg);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.lines[0],
                        "/nonexistent-tutti-dir/gw.json: cannot read file: "
                        "No such file or directory");
    config_errors_free(&errs);
}


static void test_config_load_file(void **state)
{
    char file[] = "/tmp/tutti-config-test-XXXXXX";
    int fd = mkstemp(file);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    char *json = to_json(EXAMPLE);
    fputs(json, f);
    fclose(f);
    free(json);

    config_errors_t errs = {0};
    config_t *cfg = NULL;
    int rc = config_load(file, &cfg, &errs);
    remove(file);
    assert_int_equal(rc, 0);
    assert_int_equal(errs.count, 0);
    assert_string_equal(cfg->file, file);
    assert_int_equal(cfg->nroutes, 1);
    config_free(cfg);
}


static void test_config_root_not_object(void **state)
{
    expect_problem("[]", "gw.json: (root): expected an object, got array");
}


static void test_config_empty_lists(void **state)
{
    const char *const expected[] = {
        "gw.json: services: must not be empty",
        "gw.json: routes: must not be empty",
        NULL,
    };
    expect_problems("{'services': {}, 'routes': []}", expected);
}


static void test_config_empty_calls(void **state)
{
    expect_problem("{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', "
                   "'path': '/x', 'calls': []}]}",
                   "gw.json: routes[0].calls: must not be empty");
}


static void test_config_several_problems(void **state)
{
    const char *const expected[] = {
        "gw.json: listen: invalid address \"0.0.0.0\": expected HOST:PORT, "
        "where HOST is an IPv4 address, localhost or [IPv6]",
        "gw.json: services.users.url: invalid URL \"ftp://x\": expected "
        "http://HOST[:PORT] or h2c://HOST[:PORT]",
        "gw.json: routes[0].method: invalid method \"get\": expected an HTTP "
        "token in upper case, such as GET or POST",
        "gw.json: routes[0].calls[0].name: \"errors\" is reserved for the "
        "error summary; choose another call name",
        "gw.json: routes[0].calls[0].service: unknown service \"userz\"",
        "gw.json: routes[0].calls[1]: missing key \"path\"",
        "gw.json: routes[0].calls[1].timeout_ms: expected a positive "
        "integer, got string",
        NULL,
    };
    expect_problems(
        "{'listen': '0.0.0.0', 'services': {'users': {'url': 'ftp://x'}},"
        " 'routes': [{'method': 'get', 'path': '/x', 'calls': ["
        "  {'name': 'errors', 'service': 'userz', 'path': '/a'},"
        "  {'name': 'b', 'service': 'users', 'timeout_ms': '5'}]}]}",
        expected);
}


static void test_config_bad_route_paths(void **state)
{
    const char *const expected[] = {
        "gw.json: routes[0].path: invalid path \"x\": must start with \"/\"",
        "gw.json: routes[1].path: invalid path \"/a//b\": segment 2 is "
        "empty, and only the root path \"/\" may end with \"/\"",
        "gw.json: routes[2].path: invalid path \"/a/\": segment 2 is empty, "
        "and only the root path \"/\" may end with \"/\"",
        "gw.json: routes[3].path: invalid path \"/{x}/{x}\": parameter "
        "\"{x}\" is used twice",
        "gw.json: routes[4].path: invalid path \"/a{x}\": segment \"a{x}\" "
        "must be literal text or a whole {name} parameter",
        "gw.json: routes[5].path: invalid path \"/a%20b\": segment "
        "\"a%20b\" contains \"?\", \"#\" or \"%\", which literal segments "
        "must not contain",
        "gw.json: routes[6].path: invalid path \"/{1x}\": invalid parameter "
        "name \"1x\": use a letter or \"_\" followed by letters, digits or "
        "\"_\"",
        NULL,
    };
    expect_problems(
        "{" MINIMAL_SERVICES ", 'routes': ["
        " {'method': 'GET', 'path': 'x', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/a//b', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/a/', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/{x}/{x}', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/a{x}', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/a%20b', 'calls': [" MINIMAL_CALL "]},"
        " {'method': 'GET', 'path': '/{1x}', 'calls': [" MINIMAL_CALL "]}"
        "]}",
        expected);
}


static void test_config_route_path_limits(void **state)
{
    char path[256] = "";
    size_t used = 0;
    for (int i = 0; i <= 16; i++) {
        used += (size_t)snprintf(path + used, sizeof(path) - used, "/{p%d}", i);
    }
    char text[1024];
    snprintf(text, sizeof(text),
             "{" MINIMAL_SERVICES ", 'routes': ["
             " {'method': 'GET', 'path': '%s', 'calls': [" MINIMAL_CALL "]},"
             " {'method': 'GET', 'path': '/a/..', 'calls': [" MINIMAL_CALL
             "]}]}",
             path);

    char too_many[512];
    snprintf(too_many, sizeof(too_many),
             "gw.json: routes[0].path: invalid path \"%s\": more than 16 "
             "parameters",
             path);
    const char *const expected[] = {
        too_many,
        "gw.json: routes[1].path: invalid path \"/a/..\": segment \"..\" "
        "can never match because requests with \".\" or \"..\" segments "
        "are rejected",
        NULL,
    };
    expect_problems(text, expected);
}


static void test_config_bad_names(void **state)
{
    const char *const expected[] = {
        "gw.json: services.us er: invalid service name \"us er\": use only "
        "letters, digits, \"_\", \".\" and \"-\"",
        "gw.json: routes[0].calls[0].name: invalid call name \"a.b\": use "
        "only letters, digits, \"_\" and \"-\"",
        "gw.json: routes[0].calls[0].method: invalid method \"\": expected "
        "an HTTP token in upper case, such as GET or POST",
        NULL,
    };
    expect_problems("{'services': {'us er': {'url': 'http://u'}}, 'routes': ["
                    " {'method': 'GET', 'path': '/x', 'calls': [{'name': 'a.b',"
                    "  'service': 'us er', 'path': '/a', 'method': ''}]}]}",
                    expected);
}


static void test_config_bad_listen_and_resolver(void **state)
{
    const char *const expected[] = {
        "gw.json: listen: invalid address \"[::1]:70000\": expected "
        "HOST:PORT, where HOST is an IPv4 address, localhost or [IPv6]; the "
        "port is out of range (1-65535)",
        "gw.json: resolver.servers[1]: invalid DNS server \"dns.example\": "
        "expected IP or IP:PORT, with an IPv6 address in brackets as in "
        "[::1]:53",
        "gw.json: resolver.servers[2]: expected a string, got integer",
        NULL,
    };
    expect_problems("{'listen': '[::1]:70000', 'resolver': {'servers': "
                    "['127.0.0.1', 'dns.example', 53]}, " MINIMAL_SERVICES
                    ", 'routes': [" MINIMAL_ROUTE "]}",
                    expected);
}


static void test_config_control_chars_escaped(void **state)
{
    expect_problem("{'services': {'users': {'url': 'http://a\\nb'}},"
                   " 'routes': [" MINIMAL_ROUTE "]}",
                   "gw.json: services.users.url: invalid URL "
                   "\"http://a\\x0Ab\": expected http://HOST[:PORT] or "
                   "h2c://HOST[:PORT]; the host is not a valid host name or "
                   "IPv4 address");
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_example_top_level),
        cmocka_unit_test(test_config_example_services),
        cmocka_unit_test(test_config_example_route),
        cmocka_unit_test(test_config_example_calls),
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_optional_values),
        cmocka_unit_test(test_config_listen_localhost),
        cmocka_unit_test(test_config_unknown_key),
        cmocka_unit_test(test_config_unknown_key_top_level),
        cmocka_unit_test(test_config_unknown_key_service),
        cmocka_unit_test(test_config_wrong_type_integer),
        cmocka_unit_test(test_config_wrong_type_kinds),
        cmocka_unit_test(test_config_wrong_type_string),
        cmocka_unit_test(test_config_wrong_type_boolean),
        cmocka_unit_test(test_config_wrong_type_containers),
        cmocka_unit_test(test_config_non_positive_integer),
        cmocka_unit_test(test_config_missing_key),
        cmocka_unit_test(test_config_missing_top_level),
        cmocka_unit_test(test_config_duplicate_call_name),
        cmocka_unit_test(test_config_unknown_service),
        cmocka_unit_test(test_config_bad_url_scheme),
        cmocka_unit_test(test_config_bad_url_port_range),
        cmocka_unit_test(test_config_bad_url_parts),
        cmocka_unit_test(test_config_template_unknown_param),
        cmocka_unit_test(test_config_template_no_params),
        cmocka_unit_test(test_config_duplicate_route),
        cmocka_unit_test(test_config_reserved_call_name),
        cmocka_unit_test(test_config_invalid_json),
        cmocka_unit_test(test_config_duplicate_json_key),
        cmocka_unit_test(test_config_unreadable_file),
        cmocka_unit_test(test_config_load_file),
        cmocka_unit_test(test_config_root_not_object),
        cmocka_unit_test(test_config_empty_lists),
        cmocka_unit_test(test_config_empty_calls),
        cmocka_unit_test(test_config_several_problems),
        cmocka_unit_test(test_config_bad_route_paths),
        cmocka_unit_test(test_config_route_path_limits),
        cmocka_unit_test(test_config_bad_names),
        cmocka_unit_test(test_config_bad_listen_and_resolver),
        cmocka_unit_test(test_config_control_chars_escaped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
