/* Unit tests for the Pact files emitted from a configuration: the path,
 * query, method, headers and body of each request, the response rules,
 * and one file per service. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "config.h"
#include "contracts.h"

static const char CONFIG[] =
    "{\"services\": {"
    "  \"users\": {\"url\": \"http://127.0.0.1:9101\","
    "    \"forward_headers\": [\"Authorization\"],"
    "    \"set_headers\": {\"X-User\": \"u-{user}\"}},"
    "  \"orders\": {\"url\": \"h2c://127.0.0.1:9102\"},"
    "  \"idle\": {\"url\": \"http://127.0.0.1:9103\"},"
    "  \"about\": {\"url\": \"http://127.0.0.1:9104\"}},"
    " \"routes\": ["
    "  {\"method\": \"GET\", \"path\": \"/dashboard/{user}\", \"calls\": ["
    "    {\"name\": \"profile\", \"service\": \"users\","
    "     \"path\": \"/users/{user}.json\"},"
    "    {\"name\": \"orders\", \"service\": \"orders\","
    "     \"path\": \"/orders?user={user}&limit={query.limit}&x=a%20b\"}]},"
    "  {\"method\": \"POST\", \"path\": \"/orders/{user}\", \"calls\": ["
    "    {\"name\": \"create\", \"service\": \"orders\", \"method\": \"PUT\","
    "     \"path\": \"/orders/{user}\", \"forward_body\": true}]},"
    "  {\"method\": \"GET\", \"path\": \"/about\", \"calls\": ["
    "    {\"name\": \"about\", \"service\": \"about\","
    "     \"path\": \"/about\"}]}]}";


static int setup(void **state)
{
    config_t *cfg = NULL;
    config_errors_t errs = {0};
    int rc = config_parse("test.json", CONFIG, strlen(CONFIG), &cfg, &errs);
    for (size_t i = 0; i < errs.count; i++) {
        fprintf(stderr, "%s\n", errs.lines[i]);
    }
    config_errors_free(&errs);
    *state = cfg;
    return rc;
}


static int teardown(void **state)
{
    config_free(*state);
    return 0;
}


/* The first value of header |name| of |request|: V4 stores a list. */
static const char *header(json_t *request, const char *name)
{
    json_t *h = json_object_get(json_object_get(request, "headers"), name);
    assert_int_equal(json_array_size(h), 1);
    return json_string_value(json_array_get(h, 0));
}


static json_t *build(void **state, const char *service)
{
    const config_t *cfg = *state;
    const service_t *svc = config_service(cfg, service);
    assert_non_null(svc);
    json_t *pact = contracts_build(cfg, svc);
    assert_non_null(pact);
    return pact;
}


static void test_contracts_parties_and_metadata(void **state)
{
    json_t *pact = build(state, "users");
    const char *consumer = NULL;
    const char *provider = NULL;
    const char *version = NULL;
    assert_int_equal(json_unpack(pact, "{s:{s:s}, s:{s:s}, s:{s:{s:s}}}",
                                 "consumer", "name", &consumer, "provider",
                                 "name", &provider, "metadata",
                                 "pactSpecification", "version", &version),
                     0);
    assert_string_equal(consumer, "tutti");
    assert_string_equal(provider, "users");
    assert_string_equal(version, "4.0");
    json_decref(pact);
}


static void test_contracts_path_and_headers(void **state)
{
    json_t *pact = build(state, "users");
    json_t *its = json_object_get(pact, "interactions");
    assert_int_equal(json_array_size(its), 1);
    json_t *it = json_array_get(its, 0);
    assert_string_equal(json_string_value(json_object_get(it, "type")),
                        "Synchronous/HTTP");
    assert_string_equal(json_string_value(json_object_get(it, "description")),
                        "GET /dashboard/{user} call profile");
    json_t *req = json_object_get(it, "request");
    assert_string_equal(json_string_value(json_object_get(req, "method")),
                        "GET");
    assert_string_equal(json_string_value(json_object_get(req, "path")),
                        "/users/example-user.json");
    assert_null(json_object_get(req, "query"));
    assert_null(json_object_get(req, "body"));
    assert_string_equal(header(req, "Accept"), "application/json");
    assert_string_equal(header(req, "authorization"), "example");
    assert_string_equal(header(req, "x-user"), "u-example-user");
    assert_null(
        json_object_get(json_object_get(req, "headers"), "Content-Type"));
    json_decref(pact);
}


static void test_contracts_query_and_body(void **state)
{
    json_t *pact = build(state, "orders");
    json_t *its = json_object_get(pact, "interactions");
    assert_int_equal(json_array_size(its), 2);

    json_t *req = json_object_get(json_array_get(its, 0), "request");
    assert_string_equal(json_string_value(json_object_get(req, "path")),
                        "/orders");
    json_t *q = json_object_get(req, "query");
    assert_int_equal(json_object_size(q), 3);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(q, "user"), 0)),
        "example-user");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(q, "limit"), 0)),
        "example");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(q, "x"), 0)), "a b");
    assert_null(json_object_get(req, "body"));

    json_t *it = json_array_get(its, 1);
    assert_string_equal(json_string_value(json_object_get(it, "description")),
                        "POST /orders/{user} call create");
    req = json_object_get(it, "request");
    assert_string_equal(json_string_value(json_object_get(req, "method")),
                        "PUT");
    assert_string_equal(json_string_value(json_object_get(req, "path")),
                        "/orders/example-user");
    json_t *body = json_object_get(req, "body");
    assert_true(json_is_object(json_object_get(body, "content")));
    assert_string_equal(json_string_value(json_object_get(body, "contentType")),
                        "application/json");
    assert_string_equal(header(req, "Content-Type"), "application/json");
    assert_null(
        json_object_get(json_object_get(req, "headers"), "authorization"));
    json_decref(pact);
}


static void test_contracts_response_rules(void **state)
{
    json_t *pact = build(state, "orders");
    json_t *resp = json_object_get(
        json_array_get(json_object_get(pact, "interactions"), 0), "response");
    assert_int_equal(json_integer_value(json_object_get(resp, "status")), 200);
    json_t *content = json_object_get(json_object_get(resp, "body"), "content");
    assert_string_equal(json_string_value(content), "any JSON value");
    const char *match = NULL;
    const char *regex = NULL;
    assert_int_equal(json_unpack(resp, "{s:{s:{s:{s:[{s:s, s:s}]}}}}",
                                 "matchingRules", "body", "$", "matchers",
                                 "match", &match, "regex", &regex),
                     0);
    assert_string_equal(match, "regex");
    assert_string_equal(regex, "^[\\s\\S]*$");
    const char *status = NULL;
    assert_int_equal(json_unpack(resp, "{s:{s:{s:{s:[{s:s, s:s}]}}}}",
                                 "matchingRules", "status", "$", "matchers",
                                 "match", &match, "status", &status),
                     0);
    assert_string_equal(match, "statusCode");
    assert_string_equal(status, "success");
    json_decref(pact);
}


/* A route's parameters reach the provider as the params of one provider
 * state; a route without parameters has no state. */
static void test_contracts_provider_states(void **state)
{
    json_t *pact = build(state, "users");
    json_t *it = json_array_get(json_object_get(pact, "interactions"), 0);
    const char *name = NULL;
    const char *user = NULL;
    json_t *states = json_object_get(it, "providerStates");
    assert_int_equal(json_array_size(states), 1);
    assert_int_equal(json_unpack(states, "[{s:s, s:{s:s}}]", "name", &name,
                                 "params", "user", &user),
                     0);
    assert_string_equal(name, "the example route parameters exist");
    assert_string_equal(user, "example-user");
    json_decref(pact);

    pact = build(state, "about");
    it = json_array_get(json_object_get(pact, "interactions"), 0);
    assert_null(json_object_get(it, "providerStates"));
    json_decref(pact);
}


static void test_contracts_file_per_service(void **state)
{
    char dir[] = "/tmp/contracts_test.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char out[256];
    snprintf(out, sizeof(out), "%s/a/b", dir);
    char err[256] = "";
    assert_int_equal(contracts_write(*state, out, err, sizeof(err)), 0);

    static const char *const names[] = {"users", "orders", "idle", "about"};
    static const size_t counts[] = {1, 2, 0, 1};
    for (size_t i = 0; i < 4; i++) {
        char path[320];
        snprintf(path, sizeof(path), "%s/tutti-%s.json", out, names[i]);
        json_error_t jerr;
        json_t *pact = json_load_file(path, 0, &jerr);
        assert_non_null(pact);
        assert_string_equal(json_string_value(json_object_get(
                                json_object_get(pact, "provider"), "name")),
                            names[i]);
        assert_int_equal(json_array_size(json_object_get(pact, "interactions")),
                         counts[i]);
        json_decref(pact);
        assert_int_equal(unlink(path), 0);
    }
    snprintf(out, sizeof(out), "%s/a/b", dir);
    assert_int_equal(rmdir(out), 0);
    snprintf(out, sizeof(out), "%s/a", dir);
    assert_int_equal(rmdir(out), 0);
    assert_int_equal(rmdir(dir), 0);
}


static void test_contracts_out_is_a_file(void **state)
{
    char err[256] = "";
    assert_int_not_equal(contracts_write(*state, "/dev/null", err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "/dev/null"));
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contracts_parties_and_metadata),
        cmocka_unit_test(test_contracts_path_and_headers),
        cmocka_unit_test(test_contracts_query_and_body),
        cmocka_unit_test(test_contracts_response_rules),
        cmocka_unit_test(test_contracts_provider_states),
        cmocka_unit_test(test_contracts_file_per_service),
        cmocka_unit_test(test_contracts_out_is_a_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
