/* Pact files from the route table. Example values stand in for the
 * parameters: "example-<name>" for a {name} route parameter and "example"
 * for a {query.name} placeholder, expanded with the route's own templates
 * so that the encoding is what the gateway sends. */
#include "contracts.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buf.h"
#include "errors.h"
#include "template.h"

#define PACT_SPEC_VERSION "4.0"
#define EXAMPLE_QUERY_VALUE "example"
#define EXAMPLE_HEADER_VALUE "example"
/* The example body of every response, and a regex that matches any text. */
#define ANY_JSON "any JSON value"
/* The provider state that carries a route's example parameter values. */
#define EXAMPLE_STATE "the example route parameters exist"
#define ANY_TEXT_REGEX "^[\\s\\S]*$"


static const char *example_query(void *arg, const char *name)
{
    return EXAMPLE_QUERY_VALUE;
}


/* Fills |values| with "example-<name>" for each route parameter. */
static int make_examples(const route_t *r, char ***values)
{
    char **v = calloc(r->nparams + 1, sizeof(*v));
    if (v == NULL) {
        return TE_NOMEM;
    }
    for (size_t i = 0; i < r->nparams; i++) {
        size_t n = strlen(r->params[i]) + sizeof("example-");
        v[i] = malloc(n);
        if (v[i] == NULL) {
            for (size_t j = 0; j < i; j++) {
                free(v[j]);
            }
            free(v);
            return TE_NOMEM;
        }
        snprintf(v[i], n, "example-%s", r->params[i]);
    }
    *values = v;
    return 0;
}


static void free_examples(char **values, size_t n)
{
    for (size_t i = 0; values != NULL && i < n; i++) {
        free(values[i]);
    }
    free(values);
}


/* Returns a copy of the |len| bytes of |s| percent-decoded, or as written
 * when they do not decode; NULL when memory runs out. */
static char *decode_copy(const char *s, size_t len)
{
    char *out = strndup(s, len);
    if (out != NULL && template_decode(out, false) != 0) {
        free(out);
        out = strndup(s, len);
    }
    return out;
}


/* Adds one "name=value" pair of a query string to |query|, decoded, as
 * Pact's "query" object stores it: a name maps to a list of values. */
static int add_query_pair(json_t *query, const char *pair, size_t len)
{
    if (len == 0) {
        return 0;
    }
    const char *eq = memchr(pair, '=', len);
    size_t name_len = eq != NULL ? (size_t)(eq - pair) : len;
    char *name = decode_copy(pair, name_len);
    char *value =
        eq != NULL ? decode_copy(eq + 1, len - name_len - 1) : strdup("");
    int rc = name != NULL && value != NULL ? 0 : TE_NOMEM;
    json_t *list = rc == 0 ? json_object_get(query, name) : NULL;
    if (rc == 0 && list == NULL) {
        list = json_array();
        if (list == NULL || json_object_set_new(query, name, list) != 0) {
            rc = TE_NOMEM;
        }
    }
    if (rc == 0 && json_array_append_new(list, json_string(value)) != 0) {
        rc = TE_NOMEM;
    }
    free(name);
    free(value);
    return rc;
}


/* Sets "path" and, when the target has a query, "query" of |request|. */
static int set_target(json_t *request, const char *target)
{
    const char *q = strchr(target, '?');
    size_t path_len = q != NULL ? (size_t)(q - target) : strlen(target);
    if (json_object_set_new(request, "path", json_stringn(target, path_len)) !=
        0) {
        return TE_NOMEM;
    }
    if (q == NULL) {
        return 0;
    }
    json_t *query = json_object();
    if (query == NULL) {
        return TE_NOMEM;
    }
    const char *p = q + 1;
    while (*p != '\0') {
        size_t n = strcspn(p, "&");
        if (add_query_pair(query, p, n) != 0) {
            json_decref(query);
            return TE_NOMEM;
        }
        p += n;
        if (*p == '&') {
            p++;
        }
    }
    if (json_object_size(query) == 0) {
        json_decref(query);
        return 0;
    }
    return json_object_set_new(request, "query", query) != 0 ? TE_NOMEM : 0;
}


/* The headers the gateway always sends and the ones its policy adds for
 * the service. Tracing and X-Forwarded-* fields are left out because
 * their values change on every request. */
static json_t *build_headers(const call_t *c, const char *const *values)
{
    const header_policy_t *hp = &c->service->options.headers;
    json_t *h = json_object();
    if (h == NULL) {
        return NULL;
    }
    int rc =
        json_object_set_new(h, "Accept", json_pack("[s]", "application/json"));
    if (rc == 0 && c->forward_body) {
        rc = json_object_set_new(h, "Content-Type",
                                 json_pack("[s]", "application/json"));
    }
    for (size_t i = 0; rc == 0 && i < hp->nforward; i++) {
        rc = json_object_set_new(h, hp->forward[i],
                                 json_pack("[s]", EXAMPLE_HEADER_VALUE));
    }
    for (size_t i = 0; rc == 0 && i < hp->nset && i < c->nset_values; i++) {
        buf_t v = {0};
        rc =
            template_expand(&c->set_values[i], values, example_query, NULL, &v);
        if (rc == 0) {
            rc = json_object_set_new(h, hp->set_names[i],
                                     json_pack("[s]", v.len > 0 ? v.data : ""));
        }
        buf_free(&v);
    }
    if (rc != 0) {
        json_decref(h);
        return NULL;
    }
    return h;
}


/* A V4 body: a JSON document, not encoded. */
static json_t *json_body(json_t *content)
{
    return json_pack("{s:o, s:s, s:b}", "content", content, "contentType",
                     "application/json", "encoded", 0);
}


/* The response the gateway needs: any 2xx status, by the V4 "statusCode"
 * matcher with "success" (200 is only the example), and a body that is any
 * JSON value, as the gateway accepts any. No type matcher accepts an
 * object, an array and a scalar alike. The rule on "$" is therefore a
 * regex that matches every text, against a string example. Pact parses the
 * body as JSON before it applies the regex, so a missing or invalid JSON
 * body still fails. The example must not be an object or array, because
 * Pact compares containers by type before it looks at the matchers. */
static json_t *build_response(const call_t *c)
{
    json_t *resp = json_pack(
        "{s:i, s:o, s:{s:{s:{s:s, s:[{s:s, s:s}]}}, "
        "s:{s:{s:s, s:[{s:s, s:s}]}}}}",
        "status", 200, "body", json_body(json_string(ANY_JSON)),
        "matchingRules", "status", "$", "combine", "AND", "matchers", "match",
        "statusCode", "status", "success", "body", "$", "combine", "AND",
        "matchers", "match", "regex", "regex", ANY_TEXT_REGEX);
    /* A response to HEAD has no body, and the gateway needs none. */
    if (resp != NULL && strcmp(c->method, "HEAD") == 0 &&
        (json_object_del(resp, "body") != 0 ||
         json_object_del(json_object_get(resp, "matchingRules"), "body") !=
             0)) {
        json_decref(resp);
        resp = NULL;
    }
    return resp;
}


/* The provider state of a route with parameters: its example values, so a
 * provider's state handler can create the records they name (a user
 * "example-user", say). NULL with no parameters; *err set when memory runs
 * out. */
static json_t *build_states(const route_t *r, const char *const *values,
                            bool *err)
{
    if (r->nparams == 0) {
        return NULL;
    }
    json_t *params = json_object();
    for (size_t i = 0; params != NULL && i < r->nparams; i++) {
        if (json_object_set_new(params, r->params[i], json_string(values[i])) !=
            0) {
            json_decref(params);
            params = NULL;
        }
    }
    json_t *states = params == NULL
                         ? NULL
                         : json_pack("[{s:s, s:o}]", "name", EXAMPLE_STATE,
                                     "params", params);
    *err = states == NULL;
    return states;
}


static json_t *build_interaction(const route_t *r, const call_t *c,
                                 const char *const *values)
{
    buf_t target = {0};
    buf_t desc = {0};
    json_t *request = NULL;
    json_t *headers = NULL;
    json_t *out = NULL;

    if (template_expand(&c->path, values, example_query, NULL, &target) != 0 ||
        buf_appendf(&desc, "%s %s call %s", r->method, r->path, c->name) != 0) {
        goto done;
    }
    request = json_pack("{s:s}", "method", c->method);
    headers = build_headers(c, values);
    if (request == NULL || headers == NULL ||
        set_target(request, target.data) != 0) {
        goto done;
    }
    if (json_object_set_new(request, "headers", headers) != 0) {
        headers = NULL;
        goto done;
    }
    headers = NULL;
    if (c->forward_body &&
        json_object_set_new(request, "body",
                            json_body(json_pack("{s:s}", "example", "body"))) !=
            0) {
        goto done;
    }
    bool err = false;
    json_t *states = build_states(r, values, &err);
    json_t *response = build_response(c);
    if (err || response == NULL) {
        json_decref(states);
        json_decref(response);
        goto done;
    }
    out = json_pack("{s:s, s:s, s:O, s:o}", "type", "Synchronous/HTTP",
                    "description", desc.data, "request", request, "response",
                    response);
    if (out != NULL && states != NULL &&
        json_object_set_new(out, "providerStates", states) != 0) {
        json_decref(out);
        out = NULL;
    } else if (out == NULL) {
        json_decref(states);
    }

done:
    json_decref(headers);
    json_decref(request);
    buf_free(&target);
    buf_free(&desc);
    return out;
}


json_t *contracts_build(const config_t *cfg, const service_t *svc)
{
    json_t *interactions = json_array();
    if (interactions == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const route_t *r = &cfg->routes[i];
        char **values = NULL;
        if (make_examples(r, &values) != 0) {
            json_decref(interactions);
            return NULL;
        }
        for (size_t j = 0; j < r->ncalls; j++) {
            const call_t *c = &r->calls[j];
            if (c->service != svc) {
                continue;
            }
            json_t *it = build_interaction(r, c, (const char *const *)values);
            if (it == NULL || json_array_append_new(interactions, it) != 0) {
                free_examples(values, r->nparams);
                json_decref(interactions);
                return NULL;
            }
        }
        free_examples(values, r->nparams);
    }
    return json_pack("{s:{s:s}, s:{s:s}, s:o, s:{s:{s:s}}}", "consumer", "name",
                     CONTRACTS_CONSUMER, "provider", "name", svc->name,
                     "interactions", interactions, "metadata",
                     "pactSpecification", "version", PACT_SPEC_VERSION);
}


/* mkdir -p: creates |dir| and each missing parent. */
static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    if (path == NULL) {
        return ENOMEM;
    }
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            int err = errno;
            free(path);
            return err;
        }
        *p = saved;
        if (saved == '\0') {
            break;
        }
    }
    free(path);
    struct stat st;
    if (stat(dir, &st) != 0) {
        return errno;
    }
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}


int contracts_write(const config_t *cfg, const char *dir, char *err,
                    size_t errlen)
{
    char text[128];
    int e = make_dirs(dir);
    if (e != 0) {
        snprintf(err, errlen, "%s: cannot create the directory: %s", dir,
                 te_errno_text(e, text, sizeof(text)));
        return TE_INVALID;
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *svc = &cfg->services[i];
        buf_t path = {0};
        if (buf_appendf(&path, "%s/tutti-%s.json", dir, svc->name) != 0) {
            return TE_NOMEM;
        }
        json_t *pact = contracts_build(cfg, svc);
        if (pact == NULL) {
            buf_free(&path);
            return TE_NOMEM;
        }
        errno = 0;
        int rc = json_dump_file(pact, path.data, JSON_INDENT(2));
        json_decref(pact);
        if (rc != 0) {
            e = errno != 0 ? errno : EIO;
            snprintf(err, errlen, "%s: write failed: %s", path.data,
                     te_errno_text(e, text, sizeof(text)));
            buf_free(&path);
            return TE_INVALID;
        }
        buf_free(&path);
    }
    return 0;
}
