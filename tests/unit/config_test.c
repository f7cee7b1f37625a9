/* Unit tests for the configuration loader: the parsed structures, the
 * defaults, and the exact text of every kind of problem message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
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
#define MINIMAL_ROUTES "'routes': [" MINIMAL_ROUTE "]"

/* The keys of "defaults": those of a service but "url". */
#define DEFAULTS_KEY_LIST                                                      \
    "timeout_ms, max_connections, connect_timeout_ms, idle_timeout_ms, "       \
    "ping_interval_ms, dns_min_ttl_ms, dns_max_ttl_ms, dns_max_stale_ms, "     \
    "eject_after, eject_base_ms, eject_max_ms, max_concurrent_calls, "         \
    "ca_file, cert_file, key_file, server_name, tls_verify, "                  \
    "forward_headers, set_headers"


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
    assert_int_equal(cfg->drain_delay_ms, 5000);
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
                 " 'drain_delay_ms': 0,"
                 " 'resolver': {'servers': ['127.0.0.1:5353', '[::1]:53', "
                 "'10.0.0.1', '::2']},"
                 " 'services': {'v6': {'url': 'h2c://[::1]:9201/'}},"
                 " 'routes': [{'method': 'POST', 'path': '/',"
                 "   'calls': [{'name': 'a-1', 'service': 'v6', 'path': '/a',"
                 "              'method': 'PUT', 'forward_body': true}]}]}");

    assert_string_equal(cfg->listen_host, "::1");
    assert_int_equal(cfg->listen_port, 9000);
    assert_int_equal(cfg->shutdown_grace_ms, 0);
    assert_int_equal(cfg->drain_delay_ms, 0);
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


static void test_config_admin_listen(void **state)
{
    config_t *cfg =
        parse_ok("{'admin': {'listen': '127.0.0.1:9901'}, " MINIMAL_SERVICES
                 ", " MINIMAL_ROUTES "}");

    assert_string_equal(cfg->admin_host, "127.0.0.1");
    assert_int_equal(cfg->admin_port, 9901);
    config_free(cfg);
}


static void test_config_admin_absent(void **state)
{
    config_t *cfg = parse_ok("{" MINIMAL_SERVICES ", " MINIMAL_ROUTES "}");

    assert_null(cfg->admin_host);
    config_free(cfg);
}


static void test_config_admin_invalid(void **state)
{
    const char *const expected[] = {
        "gw.json: admin.port: unknown key; expected one of listen",
        "gw.json: admin.listen: invalid address \"9901\": expected "
        "HOST:PORT, where HOST is an IPv4 address, localhost or [IPv6]",
        NULL,
    };
    expect_problems("{'admin': {'listen': '9901', 'port': 1}, " MINIMAL_SERVICES
                    ", " MINIMAL_ROUTES "}",
                    expected);
    expect_problem("{'admin': {}, " MINIMAL_SERVICES ", " MINIMAL_ROUTES "}",
                   "gw.json: admin: missing key \"listen\"");
    expect_problem("{'admin': '127.0.0.1:9901', " MINIMAL_SERVICES
                   ", " MINIMAL_ROUTES "}",
                   "gw.json: admin: expected an object, got string");
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
                   "admin, services, routes, defaults, resolver, "
                   "max_request_body_bytes, max_response_body_bytes, "
                   "shutdown_grace_ms, drain_delay_ms, max_in_flight, "
                   "max_header_bytes, "
                   "max_url_bytes, max_connections_inbound, "
                   "client_timeout_ms, trusted_proxies, secret_headers");
}


static void test_config_unknown_key_service(void **state)
{
    expect_problem("{'services': {'users': {'url': 'http://u', 'timeout': 5}},"
                   " 'routes': [" MINIMAL_ROUTE "]}",
                   "gw.json: services.users.timeout: unknown key; expected one "
                   "of url, " DEFAULTS_KEY_LIST);
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
        "gw.json: drain_delay_ms: expected a non-negative integer, got "
        "string",
        NULL,
    };
    expect_problems(
        "{'max_request_body_bytes': 1.5,"
        " 'max_response_body_bytes': true,"
        " 'shutdown_grace_ms': null, 'drain_delay_ms': '5s', " MINIMAL_SERVICES
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
                              "\"ftp://x\": expected SCHEME://HOST[:PORT] "
                              "with SCHEME http, h2c, https or h2, or "
                              "srv+SCHEME://NAME");
}


static void test_config_bad_url_port_range(void **state)
{
    expect_bad_url("http://x:99999",
                   "gw.json: services.users.url: invalid URL "
                   "\"http://x:99999\": expected SCHEME://HOST[:PORT] with "
                   "SCHEME http, h2c, https or h2, or srv+SCHEME://NAME; port "
                   "99999 is out of range");
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
                 "SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or "
                 "srv+SCHEME://NAME; %s",
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
        "gw.json: routes[0].calls[0].name: \"errors\" is reserved for "
        "tutti's error members; choose another call name");
}


static void test_config_reserved_error_name_and_connect(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.url: invalid URL \"HTTP://u\": expected "
        "SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or "
        "srv+SCHEME://NAME; write the scheme in lower case",
        "gw.json: routes[0].method: method CONNECT opens a tunnel and cannot "
        "be used here; use GET, POST or another method that asks for a "
        "resource",
        "gw.json: routes[0].calls[0].name: \"error\" is reserved for tutti's "
        "error members; choose another call name",
        "gw.json: routes[0].calls[0].method: method CONNECT opens a tunnel "
        "and cannot be used here; use GET, POST or another method that asks "
        "for a resource",
        "gw.json: routes[1].method: method \"ABCDEFGHIJKLMNOPQ\" is longer "
        "than 15 characters",
        "gw.json: routes[1].calls[0].name: \"Error\" is reserved for tutti's "
        "error members; choose another call name",
        NULL,
    };
    expect_problems(
        "{'services': {'users': {'url': 'HTTP://u'}}, 'routes': ["
        " {'method': 'CONNECT', 'path': '/x', 'calls': [{'name': 'error',"
        "  'service': 'users', 'path': '/a', 'method': 'CONNECT'}]},"
        " {'method': 'ABCDEFGHIJKLMNOPQ', 'path': '/y', 'calls': [{'name': "
        "'Error', 'service': 'users', 'path': '/a'}]}]}",
        expected);
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
        "SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or "
        "srv+SCHEME://NAME",
        "gw.json: routes[0].method: invalid method \"get\": expected an HTTP "
        "token in upper case, such as GET or POST",
        "gw.json: routes[0].calls[0].name: \"errors\" is reserved for "
        "tutti's error members; choose another call name",
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
                   "\"http://a\\x0Ab\": expected SCHEME://HOST[:PORT] with "
                   "SCHEME http, h2c, https or h2, or srv+SCHEME://NAME; the "
                   "host is not a valid host name or "
                   "IPv4 address");
}


/* Parses a document with the given "services" members and MINIMAL_ROUTE,
 * whose call uses service "users". */
static config_t *parse_services_ok(const char *services)
{
    char text[2048];
    snprintf(text, sizeof(text), "{'services': {%s}, " MINIMAL_ROUTES "}",
             services);
    return parse_ok(text);
}


static void expect_services_problems(const char *top, const char *services,
                                     const char *const *expected)
{
    char text[2048];
    snprintf(text, sizeof(text), "{%s'services': {%s}, " MINIMAL_ROUTES "}",
             top, services);
    expect_problems(text, expected);
}


static void expect_services_problem(const char *top, const char *services,
                                    const char *expected)
{
    const char *list[] = {expected, NULL};
    expect_services_problems(top, services, list);
}


static void test_config_option_defaults(void **state)
{
    config_t *cfg =
        parse_ok("{" MINIMAL_SERVICES ", 'routes': [" MINIMAL_ROUTE "]}");
    const service_t *svc = &cfg->services[0];
    const service_options_t *o = &svc->options;

    assert_false(svc->srv);
    assert_int_equal(o->timeout_ms, -1);
    assert_int_equal(o->max_connections, 128);
    assert_int_equal(o->connect_timeout_ms, 250);
    assert_int_equal(o->idle_timeout_ms, 30000);
    assert_int_equal(o->ping_interval_ms, 10000);
    assert_int_equal(o->dns_min_ttl_ms, 1000);
    assert_int_equal(o->dns_max_ttl_ms, 60000);
    assert_int_equal(o->dns_max_stale_ms, 300000);
    assert_int_equal(o->eject_after, 3);
    assert_int_equal(o->eject_base_ms, 1000);
    assert_int_equal(o->eject_max_ms, 30000);
    assert_null(o->ca_file);
    assert_null(o->cert_file);
    assert_null(o->key_file);
    assert_null(o->server_name);
    assert_true(o->tls_verify);
    assert_int_equal(cfg->resolver_timeout_ms, 0);
    assert_int_equal(cfg->resolver_tries, 0);
    config_free(cfg);
}


static void test_config_service_options(void **state)
{
    config_t *cfg = parse_services_ok(
        "'users': {'url': 'h2c://u', 'timeout_ms': 700,"
        " 'max_connections': 4, 'connect_timeout_ms': 100,"
        " 'idle_timeout_ms': 5000, 'ping_interval_ms': 0,"
        " 'dns_min_ttl_ms': 10, 'dns_max_ttl_ms': 10,"
        " 'dns_max_stale_ms': 1, 'eject_after': 1, 'eject_base_ms': 20,"
        " 'eject_max_ms': 40}");
    const service_t *svc = &cfg->services[0];
    const service_options_t *o = &svc->options;

    assert_int_equal(svc->timeout_ms, 700);
    assert_int_equal(o->timeout_ms, 700);
    assert_int_equal(o->max_connections, 4);
    assert_int_equal(o->connect_timeout_ms, 100);
    assert_int_equal(o->idle_timeout_ms, 5000);
    assert_int_equal(o->ping_interval_ms, 0);
    assert_int_equal(o->dns_min_ttl_ms, 10);
    assert_int_equal(o->dns_max_ttl_ms, 10);
    assert_int_equal(o->dns_max_stale_ms, 1);
    assert_int_equal(o->eject_after, 1);
    assert_int_equal(o->eject_base_ms, 20);
    assert_int_equal(o->eject_max_ms, 40);
    assert_int_equal(cfg->routes[0].calls[0].timeout_ms, 700);
    config_free(cfg);
}


static void test_config_defaults_object(void **state)
{
    config_t *cfg =
        parse_ok("{'defaults': {'timeout_ms': 300, 'max_connections': 8,"
                 "  'dns_max_ttl_ms': 5000, 'eject_after': 5},"
                 " 'services': {"
                 "  'users': {'url': 'http://u'},"
                 "  'orders': {'url': 'http://o', 'timeout_ms': 900,"
                 "             'max_connections': 2}},"
                 " 'routes': [{'method': 'GET', 'path': '/x', 'calls': ["
                 "  {'name': 'a', 'service': 'users', 'path': '/a'},"
                 "  {'name': 'b', 'service': 'orders', 'path': '/b'}]}]}");
    const service_t *users = &cfg->services[0];
    const service_t *orders = &cfg->services[1];

    assert_int_equal(users->timeout_ms, 300);
    assert_int_equal(users->options.timeout_ms, 300);
    assert_int_equal(users->options.max_connections, 8);
    assert_int_equal(users->options.dns_max_ttl_ms, 5000);
    assert_int_equal(users->options.eject_after, 5);
    assert_int_equal(users->options.connect_timeout_ms, 250);
    assert_int_equal(orders->timeout_ms, 900);
    assert_int_equal(orders->options.timeout_ms, 900);
    assert_int_equal(orders->options.max_connections, 2);
    assert_int_equal(orders->options.dns_max_ttl_ms, 5000);
    assert_int_equal(cfg->routes[0].calls[0].timeout_ms, 300);
    assert_int_equal(cfg->routes[0].calls[1].timeout_ms, 900);
    config_free(cfg);
}


static void test_config_tls_urls(void **state)
{
    config_t *cfg = parse_services_ok(
        "'users': {'url': 'https://api.test', 'ca_file': 'ca.pem',"
        " 'cert_file': 'c.pem', 'key_file': 'k.pem', 'tls_verify': false},"
        " 'h2': {'url': 'h2://[::1]:8443/', 'server_name': 'api.test'},"
        " 'plain': {'url': 'http://p'}");
    const service_t *users = &cfg->services[0];
    const service_t *h2 = &cfg->services[1];
    const service_t *plain = &cfg->services[2];

    assert_int_equal(users->scheme, SCHEME_HTTPS);
    assert_int_equal(users->port, 443);
    assert_string_equal(users->authority, "api.test:443");
    assert_string_equal(users->options.ca_file, "ca.pem");
    assert_string_equal(users->options.cert_file, "c.pem");
    assert_string_equal(users->options.key_file, "k.pem");
    assert_string_equal(users->options.server_name, "api.test");
    assert_false(users->options.tls_verify);

    assert_int_equal(h2->scheme, SCHEME_H2);
    assert_string_equal(h2->host, "::1");
    assert_int_equal(h2->port, 8443);
    assert_string_equal(h2->authority, "[::1]:8443");
    assert_null(h2->options.ca_file);
    assert_string_equal(h2->options.server_name, "api.test");
    assert_true(h2->options.tls_verify);

    assert_int_equal(plain->scheme, SCHEME_HTTP);
    assert_null(plain->options.server_name);
    config_free(cfg);
}


static void test_config_tls_port_default(void **state)
{
    config_t *cfg = parse_services_ok("'users': {'url': 'h2://api.test'}");

    assert_int_equal(cfg->services[0].port, 443);
    assert_string_equal(cfg->services[0].authority, "api.test:443");
    assert_string_equal(cfg->services[0].options.server_name, "api.test");
    config_free(cfg);
}


static void test_config_tls_from_defaults(void **state)
{
    config_t *cfg =
        parse_ok("{'defaults': {'ca_file': 'ca.pem', 'cert_file': 'c.pem',"
                 "  'key_file': 'k.pem', 'server_name': 'all.test',"
                 "  'tls_verify': false},"
                 " 'services': {"
                 "  'users': {'url': 'https://u', 'cert_file': 'own.pem'},"
                 "  'plain': {'url': 'http://p'}},"
                 " " MINIMAL_ROUTES "}");
    const service_options_t *tls = &cfg->services[0].options;
    const service_options_t *plain = &cfg->services[1].options;

    assert_string_equal(tls->ca_file, "ca.pem");
    assert_string_equal(tls->cert_file, "own.pem");
    assert_string_equal(tls->key_file, "k.pem");
    assert_string_equal(tls->server_name, "all.test");
    assert_false(tls->tls_verify);
    /* A cleartext service ignores the TLS settings of "defaults". */
    assert_null(plain->ca_file);
    assert_null(plain->cert_file);
    assert_null(plain->key_file);
    assert_null(plain->server_name);
    assert_true(plain->tls_verify);
    config_free(cfg);
}


static void test_config_srv_urls(void **state)
{
    config_t *cfg = parse_services_ok(
        "'users': {'url': 'srv+http://_http._tcp.orders.shop.test'},"
        " 'b': {'url': 'srv+h2c://_grpc._tcp.b.test/'},"
        " 'c': {'url': 'srv+https://_https._tcp.c.test'},"
        " 'd': {'url': 'srv+h2://_h2._tcp.d.test', 'server_name': 'x.test'},"
        " 'e': {'url': 'srv+http://plain.test'}");
    const service_t *s = cfg->services;

    assert_true(s[0].srv);
    assert_int_equal(s[0].scheme, SCHEME_HTTP);
    assert_string_equal(s[0].host, "_http._tcp.orders.shop.test");
    assert_int_equal(s[0].port, 0);
    assert_string_equal(s[0].authority, "orders.shop.test");
    assert_null(s[0].options.server_name);

    assert_true(s[1].srv);
    assert_int_equal(s[1].scheme, SCHEME_H2C);
    assert_string_equal(s[1].authority, "b.test");

    assert_true(s[2].srv);
    assert_int_equal(s[2].scheme, SCHEME_HTTPS);
    assert_string_equal(s[2].options.server_name, "c.test");

    assert_true(s[3].srv);
    assert_int_equal(s[3].scheme, SCHEME_H2);
    assert_string_equal(s[3].options.server_name, "x.test");

    assert_true(s[4].srv);
    assert_string_equal(s[4].authority, "plain.test");
    config_free(cfg);
}


static void test_config_srv_url_problems(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.url: invalid URL "
        "\"srv+http://_http._tcp.a.test:80\": an SRV URL takes its ports "
        "from DNS; remove \":80\"",
        "gw.json: services.b.url: invalid URL \"srv+h2c://10.0.0.1\": "
        "expected srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 "
        "and NAME is an SRV record name such as _http._tcp.orders.test; an "
        "SRV URL needs a DNS name, not an IP address",
        "gw.json: services.c.url: invalid URL \"srv+https://[::1]\": "
        "expected srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 "
        "and NAME is an SRV record name such as _http._tcp.orders.test; an "
        "SRV URL needs a DNS name, not an IP address",
        "gw.json: services.d.url: invalid URL \"srv+ftp://x\": expected "
        "srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 and NAME "
        "is an SRV record name such as _http._tcp.orders.test",
        "gw.json: services.e.url: invalid URL \"srv+h2://\": expected "
        "srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 and NAME "
        "is an SRV record name such as _http._tcp.orders.test; the SRV name "
        "is missing",
        "gw.json: services.f.url: invalid URL \"srv+http://a..b\": expected "
        "srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 and NAME "
        "is an SRV record name such as _http._tcp.orders.test; the SRV name "
        "is not a valid DNS name",
        "gw.json: services.g.url: invalid URL \"srv+http://_a._tcp.g/v1\": "
        "expected srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 "
        "and NAME is an SRV record name such as _http._tcp.orders.test; a "
        "path other than \"/\" is not allowed",
        NULL,
    };
    expect_services_problems(
        "",
        "'users': {'url': 'srv+http://_http._tcp.a.test:80'},"
        " 'b': {'url': 'srv+h2c://10.0.0.1'},"
        " 'c': {'url': 'srv+https://[::1]'},"
        " 'd': {'url': 'srv+ftp://x'},"
        " 'e': {'url': 'srv+h2://'},"
        " 'f': {'url': 'srv+http://a..b'},"
        " 'g': {'url': 'srv+http://_a._tcp.g/v1'}",
        expected);
}


static void test_config_tls_url_problems(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.url: invalid URL \"https://x:99999\": "
        "expected https://HOST[:PORT] or h2://HOST[:PORT]; port 99999 is "
        "out of range",
        "gw.json: services.b.url: invalid URL \"h2://me@x\": expected "
        "https://HOST[:PORT] or h2://HOST[:PORT]; userinfo is not allowed",
        NULL,
    };
    expect_services_problems("",
                             "'users': {'url': 'https://x:99999'},"
                             " 'b': {'url': 'h2://me@x'}",
                             expected);
}


static void test_config_tls_keys_need_tls(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.ca_file: TLS settings need an https:// or "
        "h2:// URL",
        "gw.json: services.users.cert_file: TLS settings need an https:// "
        "or h2:// URL",
        "gw.json: services.users.key_file: TLS settings need an https:// or "
        "h2:// URL",
        "gw.json: services.b.server_name: TLS settings need an https:// or "
        "h2:// URL",
        "gw.json: services.c.tls_verify: TLS settings need an https:// or "
        "h2:// URL",
        NULL,
    };
    expect_services_problems(
        "",
        "'users': {'url': 'http://u', 'ca_file': 'ca.pem',"
        "  'cert_file': 'c.pem', 'key_file': 'k.pem'},"
        " 'b': {'url': 'h2c://b', 'server_name': 'b.test'},"
        " 'c': {'url': 'srv+http://_http._tcp.c.test', 'tls_verify': true}",
        expected);
}


static void test_config_client_cert_pairs(void **state)
{
    const char *const expected[] = {
        "gw.json: services.users.cert_file: \"key_file\" is missing; a "
        "client certificate needs its private key",
        "gw.json: services.b.key_file: \"cert_file\" is missing; a private "
        "key needs its client certificate",
        NULL,
    };
    expect_services_problems("",
                             "'users': {'url': 'https://u', "
                             "'cert_file': 'c.pem'},"
                             " 'b': {'url': 'h2://b', 'key_file': 'k.pem'}",
                             expected);
}


static void test_config_client_cert_in_defaults(void **state)
{
    /* Service "b" inherits the lone key, which is reported once, at
     * "defaults"; service "c" completes the pair. */
    expect_services_problem("'defaults': {'key_file': 'k.pem'}, ",
                            "'users': {'url': 'http://u'},"
                            " 'b': {'url': 'https://b'},"
                            " 'c': {'url': 'https://c', 'cert_file': 'c.pem'}",
                            "gw.json: defaults.key_file: \"cert_file\" is "
                            "missing; a private key needs its client "
                            "certificate");
}


static void test_config_option_order(void **state)
{
    const char *const expected[] = {
        "gw.json: defaults: dns_min_ttl_ms 70000 is greater than "
        "dns_max_ttl_ms 60000; lower dns_min_ttl_ms or raise dns_max_ttl_ms",
        "gw.json: services.users: eject_base_ms 500 is greater than "
        "eject_max_ms 100; lower eject_base_ms or raise eject_max_ms",
        "gw.json: services.b: dns_min_ttl_ms 70000 is greater than "
        "dns_max_ttl_ms 2000; lower dns_min_ttl_ms or raise dns_max_ttl_ms",
        NULL,
    };
    /* "c" inherits the bad pair of "defaults" and is not reported again;
     * "d" fixes it. */
    expect_services_problems(
        "'defaults': {'dns_min_ttl_ms': 70000}, ",
        "'users': {'url': 'http://u', 'eject_base_ms': 500,"
        "  'eject_max_ms': 100, 'dns_max_ttl_ms': 80000},"
        " 'b': {'url': 'http://b', 'dns_max_ttl_ms': 2000},"
        " 'c': {'url': 'http://c'},"
        " 'd': {'url': 'http://d', 'dns_max_ttl_ms': 70000}",
        expected);
}


static void test_config_option_order_equal(void **state)
{
    config_t *cfg =
        parse_services_ok("'users': {'url': 'http://u', 'eject_base_ms': 30000,"
                          " 'dns_min_ttl_ms': 60000}");

    assert_int_equal(cfg->services[0].options.eject_base_ms, 30000);
    assert_int_equal(cfg->services[0].options.eject_max_ms, 30000);
    assert_int_equal(cfg->services[0].options.dns_min_ttl_ms, 60000);
    config_free(cfg);
}


static void test_config_option_values(void **state)
{
    static const char *const positive[] = {
        "max_connections", "connect_timeout_ms", "idle_timeout_ms",
        "dns_min_ttl_ms",  "dns_max_ttl_ms",     "dns_max_stale_ms",
        "eject_after",     "eject_base_ms",      "eject_max_ms",
    };
    for (size_t i = 0; i < sizeof(positive) / sizeof(positive[0]); i++) {
        char services[256];
        char line[256];
        snprintf(services, sizeof(services),
                 "'users': {'url': 'http://u', '%s': 0}", positive[i]);
        snprintf(line, sizeof(line),
                 "gw.json: services.users.%s: expected a positive integer, "
                 "got 0",
                 positive[i]);
        expect_services_problem("", services, line);
    }
    expect_services_problem("",
                            "'users': {'url': 'http://u', "
                            "'ping_interval_ms': -1}",
                            "gw.json: services.users.ping_interval_ms: "
                            "expected a non-negative integer, got -1");
}


static void test_config_option_types(void **state)
{
    const char *const expected[] = {
        "gw.json: defaults.max_connections: expected a positive integer, got "
        "string",
        "gw.json: defaults.tls_verify: expected a boolean, got string",
        "gw.json: services.users.idle_timeout_ms: expected a positive "
        "integer, got real",
        "gw.json: services.users.ca_file: expected a string, got integer",
        "gw.json: services.users.cert_file: must not be empty",
        "gw.json: services.users.server_name: invalid server name \"a b\": "
        "expected a DNS name or an IP address",
        NULL,
    };
    expect_services_problems(
        "'defaults': {'max_connections': '8', 'tls_verify': 'no'}, ",
        "'users': {'url': 'https://u', 'idle_timeout_ms': 1.5,"
        "  'ca_file': 5, 'cert_file': '', 'server_name': 'a b'}",
        expected);
}


static void test_config_tls_keys_with_bad_url(void **state)
{
    /* The scheme is unknown, so the TLS keys are checked on their own. */
    const char *const expected[] = {
        "gw.json: services.users.url: invalid URL \"ftp://u\": expected "
        "SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or "
        "srv+SCHEME://NAME",
        "gw.json: services.users.ca_file: expected a string, got boolean",
        "gw.json: services.users.key_file: \"cert_file\" is missing; a "
        "private key needs its client certificate",
        NULL,
    };
    expect_services_problems(
        "", "'users': {'url': 'ftp://u', 'ca_file': true, 'key_file': 'k'}",
        expected);
}


static void test_config_unknown_key_defaults(void **state)
{
    expect_services_problem("'defaults': {'url': 'http://x'}, ",
                            "'users': {'url': 'http://u'}",
                            "gw.json: defaults.url: unknown key; expected one "
                            "of " DEFAULTS_KEY_LIST);
}


static void test_config_defaults_not_object(void **state)
{
    expect_services_problem("'defaults': [], ", "'users': {'url': 'http://u'}",
                            "gw.json: defaults: expected an object, got "
                            "array");
}


static void test_config_resolver_options(void **state)
{
    config_t *cfg = parse_ok("{'resolver': {'timeout_ms': 300, 'tries': 2},"
                             " " MINIMAL_SERVICES ", " MINIMAL_ROUTES "}");

    assert_null(cfg->resolver_servers);
    assert_int_equal(cfg->resolver_timeout_ms, 300);
    assert_int_equal(cfg->resolver_tries, 2);
    config_free(cfg);
}


static void test_config_resolver_problems(void **state)
{
    const char *const expected[] = {
        "gw.json: resolver.ndots: unknown key; expected one of servers, "
        "timeout_ms, tries",
        "gw.json: resolver.timeout_ms: expected a positive integer, got 0",
        "gw.json: resolver.tries: expected a positive integer, got string",
        "gw.json: resolver.servers: must not be empty",
        NULL,
    };
    expect_services_problems(
        "'resolver': {'servers': [], 'timeout_ms': 0, 'tries': '3',"
        " 'ndots': 1}, ",
        "'users': {'url': 'http://u'}", expected);
}


static void test_config_integer_too_large(void **state)
{
    expect_problem("{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', "
                   "'path': '/x', 'deadline_ms': 9223372036854775807, "
                   "'calls': [" MINIMAL_CALL "]}]}",
                   "gw.json: routes[0].deadline_ms: expected a positive "
                   "integer no larger than 2147483647, got "
                   "9223372036854775807");
}


static void test_config_integer_at_limit(void **state)
{
    config_t *cfg =
        parse_ok("{" MINIMAL_SERVICES ", 'routes': [{'method': 'GET', "
                 "'path': '/x', 'deadline_ms': 2147483647, "
                 "'calls': [" MINIMAL_CALL "]}]}");
    assert_int_equal(cfg->routes[0].deadline_ms, 2147483647);
    config_free(cfg);
}


static void test_config_overload_defaults(void **state)
{
    config_t *cfg = parse_ok("{" MINIMAL_SERVICES ", " MINIMAL_ROUTES "}");

    assert_int_equal(cfg->max_in_flight, 10000);
    assert_int_equal(cfg->max_header_bytes, 16384);
    assert_int_equal(cfg->max_url_bytes, 8192);
    assert_int_equal(cfg->max_connections_inbound, 10000);
    assert_int_equal(cfg->client_timeout_ms, 30000);
    const service_t *svc = &cfg->services[0];
    assert_int_equal(svc->options.max_concurrent_calls, -1);
    assert_non_null(svc->active_calls);
    assert_int_equal(atomic_load(svc->active_calls), 0);
    config_free(cfg);
}


static void test_config_overload_values(void **state)
{
    config_t *cfg =
        parse_ok("{'max_in_flight': 5, 'max_header_bytes': 4096,"
                 " 'max_url_bytes': 4096, 'max_connections_inbound': 64,"
                 " 'client_timeout_ms': 1500,"
                 " 'defaults': {'max_concurrent_calls': 7},"
                 " 'services': {'a': {'url': 'http://a'},"
                 " 'b': {'url': 'http://b', 'max_concurrent_calls': 2}},"
                 " 'routes': [{'method': 'GET', 'path': '/x', 'calls': ["
                 "{'name': 'a', 'service': 'a', 'path': '/a'}]}]}");

    assert_int_equal(cfg->max_in_flight, 5);
    assert_int_equal(cfg->max_header_bytes, 4096);
    assert_int_equal(cfg->max_url_bytes, 4096);
    assert_int_equal(cfg->max_connections_inbound, 64);
    assert_int_equal(cfg->client_timeout_ms, 1500);
    assert_int_equal(cfg->services[0].options.max_concurrent_calls, 7);
    assert_int_equal(cfg->services[1].options.max_concurrent_calls, 2);
    assert_ptr_not_equal(cfg->services[0].active_calls,
                         cfg->services[1].active_calls);
    config_free(cfg);
}


static void test_config_overload_problems(void **state)
{
    const char *const expected[] = {
        "gw.json: max_in_flight: expected a positive integer, got 0",
        "gw.json: max_connections_inbound: expected a positive integer, got "
        "string",
        "gw.json: client_timeout_ms: expected a positive integer, got -1",
        "gw.json: max_header_bytes: expected an integer of at least 4096, got "
        "1024",
        "gw.json: defaults.max_concurrent_calls: expected a positive "
        "integer, got 0",
        "gw.json: services.users.max_concurrent_calls: expected a positive "
        "integer, got boolean",
        NULL,
    };
    expect_problems(
        "{'max_in_flight': 0, 'max_connections_inbound': '10',"
        " 'client_timeout_ms': -1, 'max_header_bytes': 1024,"
        " 'max_url_bytes': 100, 'defaults': {'max_concurrent_calls': 0},"
        " 'services': {'users': {'url': 'http://u',"
        " 'max_concurrent_calls': true}}, " MINIMAL_ROUTES "}",
        expected);
}


static void test_config_url_limit_above_header_limit(void **state)
{
    expect_problem("{'max_url_bytes': 40000, " MINIMAL_SERVICES
                   ", " MINIMAL_ROUTES "}",
                   "gw.json: max_url_bytes: 40000 is greater than "
                   "max_header_bytes 16384, which the request line must fit "
                   "in; lower max_url_bytes or raise max_header_bytes");
}


static void test_config_header_policy_parsed(void **state)
{
    config_t *cfg = parse_ok(
        "{'trusted_proxies': ['10.0.0.0/8', '::1'],"
        " 'secret_headers': ['X-Api-Key'],"
        " 'defaults': {'forward_headers': ['X-Tenant']},"
        " 'services': {"
        "  'users': {'url': 'http://u', 'forward_headers': ['Authorization'],"
        "   'set_headers': {'X-User': 'id={user}', 'X-Static': 'v 1'}},"
        "  'orders': {'url': 'http://o'}},"
        " 'routes': [{'method': 'GET', 'path': '/d/{user}', 'calls': ["
        "  {'name': 'a', 'service': 'users', 'path': '/a'},"
        "  {'name': 'b', 'service': 'orders', 'path': '/b'}]}]}");

    const header_policy_t *users = &cfg->services[0].options.headers;
    assert_int_equal(users->nforward, 1);
    assert_string_equal(users->forward[0], "authorization");
    assert_int_equal(users->nset, 2);
    assert_string_equal(users->set_names[0], "x-user");
    assert_string_equal(users->set_texts[0], "id={user}");
    assert_string_equal(users->set_names[1], "x-static");

    /* "orders" has no keys of its own, so it takes "defaults". */
    const header_policy_t *orders = &cfg->services[1].options.headers;
    assert_int_equal(orders->nforward, 1);
    assert_string_equal(orders->forward[0], "x-tenant");
    assert_int_equal(orders->nset, 0);

    const call_t *a = &cfg->routes[0].calls[0];
    assert_int_equal(a->nset_values, 2);
    assert_int_equal(a->set_values[0].nparts, 2);
    assert_int_equal(a->set_values[0].parts[1].kind, TPL_PARAM);
    assert_int_equal(a->set_values[0].parts[1].param_index, 0);
    assert_int_equal(cfg->routes[0].calls[1].nset_values, 0);

    assert_int_equal(cfg->ntrusted_proxies, 2);
    assert_int_equal(cfg->trusted_proxies[0].prefix, 8);
    assert_int_equal(cfg->trusted_proxies[1].prefix, 128);
    assert_int_equal(cfg->nsecret_headers, 1);
    assert_string_equal(cfg->secret_headers[0], "x-api-key");
    config_free(cfg);
}


static void test_config_header_policy_defaults_empty(void **state)
{
    config_t *cfg = parse_ok("{" MINIMAL_SERVICES ", " MINIMAL_ROUTES "}");

    assert_int_equal(cfg->services[0].options.headers.nforward, 0);
    assert_int_equal(cfg->services[0].options.headers.nset, 0);
    assert_int_equal(cfg->ntrusted_proxies, 0);
    assert_int_equal(cfg->nsecret_headers, 0);
    config_free(cfg);
}


static void test_config_header_names_rejected(void **state)
{
    static const char *const expected[] = {
        "gw.json: services.users.forward_headers[0]: invalid header name "
        "\"X User\": expected an HTTP token of letters, digits and "
        "!#$%&'*+-.^_`|~",
        "gw.json: services.users.forward_headers[1]: header \"Connection\" is "
        "a hop-by-hop field, which is never forwarded; remove it",
        "gw.json: services.users.forward_headers[2]: header "
        "\"Proxy-Authorization\" is a hop-by-hop field, which is never "
        "forwarded; remove it",
        "gw.json: services.users.forward_headers[3]: header \"X-Request-Id\" "
        "is set by tutti on every call; remove it",
        "gw.json: services.users.forward_headers[5]: duplicate header name "
        "\"x-a\"",
        "gw.json: services.users.forward_headers[6]: expected a string, got "
        "integer",
        "gw.json: services.users.set_headers.Host: header \"Host\" is set by "
        "tutti on every call; remove it",
        "gw.json: services.users.set_headers.traceparent: header "
        "\"traceparent\" is set by tutti on every call; remove it",
        "gw.json: services.users.set_headers.Keep-Alive: header "
        "\"Keep-Alive\" is a hop-by-hop field, which is never forwarded; "
        "remove it",
        "gw.json: services.users.set_headers.x-a: duplicate header name "
        "\"x-a\"",
        NULL,
    };
    expect_problems(
        "{'services': {'users': {'url': 'http://u',"
        " 'forward_headers': ['X User', 'Connection', 'Proxy-Authorization',"
        "  'X-Request-Id', 'X-A', 'x-a', 7],"
        " 'set_headers': {'Host': 'h', 'traceparent': 't', 'Keep-Alive': 'k',"
        "  'X-A': 'a', 'x-a': 'b'}}}, " MINIMAL_ROUTES "}",
        expected);
}


static void test_config_header_values_rejected(void **state)
{
    static const char *const expected[] = {
        "gw.json: services.users.forward_headers: expected an array, got "
        "string",
        "gw.json: services.users.set_headers.X-A: invalid header value "
        "\"a\\x0D\\x0AX-Evil: 1\": a header value must not contain CR or LF "
        "(offset 1), which would end the field early",
        "gw.json: services.users.set_headers.X-B: invalid header value "
        "\"b\\x0A\": a header value must not contain CR or LF (offset 1), "
        "which would end the field early",
        "gw.json: services.users.set_headers.X-C: expected a string, got "
        "integer",
        "gw.json: services.users.set_headers.X-D: invalid header value "
        "\"{user\": unclosed \"{\" at offset 0",
        NULL,
    };
    expect_problems("{'services': {'users': {'url': 'http://u',"
                    " 'forward_headers': 'X-Tenant',"
                    " 'set_headers': {'X-A': 'a\\r\\nX-Evil: 1', 'X-B': 'b\\n',"
                    "  'X-C': 1, 'X-D': '{user'}}}, " MINIMAL_ROUTES "}",
                    expected);
}


static void test_config_header_value_unknown_param(void **state)
{
    /* The parameter is checked per call, against that call's route. */
    expect_problem(
        "{'services': {'users': {'url': 'http://u',"
        " 'set_headers': {'X-E': 'u={usr}'}}}, " MINIMAL_ROUTES "}",
        "gw.json: routes[0].calls[0]: set_headers \"x-e\" of service "
        "\"users\": unknown parameter \"{usr}\"; the route has no "
        "parameters");
}


static void test_config_header_value_nul_rejected(void **state)
{
    /* jansson rejects \u0000 in strings unless asked to allow it. */
    char *json =
        to_json("{'services': {'users': {'url': 'http://u',"
                " 'set_headers': {'X-A': 'a\\u0000b'}}}, " MINIMAL_ROUTES "}");
    config_errors_t errs = {0};
    config_t *cfg = NULL;

    assert_int_equal(config_parse("gw.json", json, strlen(json), &cfg, &errs),
                     TE_INVALID);
    assert_null(cfg);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.lines[0], "invalid JSON"));
    free(json);
    config_errors_free(&errs);
}


static void test_config_trusted_proxies_rejected(void **state)
{
    static const char *const expected[] = {
        "gw.json: trusted_proxies[0]: invalid network \"10.0.0.0/33\": "
        "expected an IPv4 or IPv6 address with an optional /BITS prefix "
        "length, such as 10.0.0.0/8 or fd00::/8",
        "gw.json: trusted_proxies[1]: invalid network \"proxy.local\": "
        "expected an IPv4 or IPv6 address with an optional /BITS prefix "
        "length, such as 10.0.0.0/8 or fd00::/8",
        "gw.json: trusted_proxies[2]: expected a string, got integer",
        "gw.json: secret_headers[0]: invalid header name \"X:Key\": expected "
        "an HTTP token of letters, digits and !#$%&'*+-.^_`|~",
        NULL,
    };
    expect_problems("{" MINIMAL_SERVICES ", " MINIMAL_ROUTES
                    ", 'trusted_proxies': ['10.0.0.0/33', 'proxy.local', 1],"
                    " 'secret_headers': ['X:Key', 'Authorization']}",
                    expected);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_integer_too_large),
        cmocka_unit_test(test_config_integer_at_limit),
        cmocka_unit_test(test_config_example_top_level),
        cmocka_unit_test(test_config_example_services),
        cmocka_unit_test(test_config_example_route),
        cmocka_unit_test(test_config_example_calls),
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_optional_values),
        cmocka_unit_test(test_config_listen_localhost),
        cmocka_unit_test(test_config_admin_listen),
        cmocka_unit_test(test_config_admin_absent),
        cmocka_unit_test(test_config_admin_invalid),
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
        cmocka_unit_test(test_config_reserved_error_name_and_connect),
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
        cmocka_unit_test(test_config_option_defaults),
        cmocka_unit_test(test_config_service_options),
        cmocka_unit_test(test_config_defaults_object),
        cmocka_unit_test(test_config_tls_urls),
        cmocka_unit_test(test_config_tls_port_default),
        cmocka_unit_test(test_config_tls_from_defaults),
        cmocka_unit_test(test_config_srv_urls),
        cmocka_unit_test(test_config_srv_url_problems),
        cmocka_unit_test(test_config_tls_url_problems),
        cmocka_unit_test(test_config_tls_keys_need_tls),
        cmocka_unit_test(test_config_client_cert_pairs),
        cmocka_unit_test(test_config_client_cert_in_defaults),
        cmocka_unit_test(test_config_option_order),
        cmocka_unit_test(test_config_option_order_equal),
        cmocka_unit_test(test_config_option_values),
        cmocka_unit_test(test_config_option_types),
        cmocka_unit_test(test_config_tls_keys_with_bad_url),
        cmocka_unit_test(test_config_unknown_key_defaults),
        cmocka_unit_test(test_config_defaults_not_object),
        cmocka_unit_test(test_config_resolver_options),
        cmocka_unit_test(test_config_resolver_problems),
        cmocka_unit_test(test_config_overload_defaults),
        cmocka_unit_test(test_config_overload_values),
        cmocka_unit_test(test_config_overload_problems),
        cmocka_unit_test(test_config_url_limit_above_header_limit),
        cmocka_unit_test(test_config_header_policy_parsed),
        cmocka_unit_test(test_config_header_policy_defaults_empty),
        cmocka_unit_test(test_config_header_names_rejected),
        cmocka_unit_test(test_config_header_values_rejected),
        cmocka_unit_test(test_config_header_value_nul_rejected),
        cmocka_unit_test(test_config_header_value_unknown_param),
        cmocka_unit_test(test_config_trusted_proxies_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
