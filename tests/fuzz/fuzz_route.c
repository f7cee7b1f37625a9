/* Fuzz target: route matching and the expansion of call path and
 * set_headers templates.
 *
 * Input: byte 0 picks the method, and the rest is a request target. The
 * part before the first "?" is the raw path given to router_match, and
 * the part after it is the query string. Query values are looked up and
 * decoded as gateway/server.c does (raw value, "+" as space, kept encoded
 * when the escape is malformed). The configuration is fixed and loaded
 * once.
 *
 * Checks: an expanded path is printable ASCII with at most one "?", and
 * an expanded field value passes headers_value_safe. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "headers.h"
#include "router.h"
#include "template.h"

static const char config_text[] =
    "{\"services\": {"
    " \"users\": {\"url\": \"h2c://127.0.0.1:9201\","
    "  \"set_headers\": {\"x-user\": \"{user}\","
    "   \"x-lang\": \"{query.lang}\", \"x-fixed\": \"tutti\"}},"
    " \"shop\": {\"url\": \"http://127.0.0.1:9101\","
    "  \"set_headers\": {\"x-k\": \"k={query.k}\"}}},"
    "\"routes\": ["
    " {\"method\": \"GET\", \"path\": \"/dashboard/{user}\", \"calls\": ["
    "  {\"name\": \"profile\", \"service\": \"users\","
    "   \"path\": \"/users/{user}.json\"},"
    "  {\"name\": \"orders\", \"service\": \"shop\","
    "   \"path\": \"/orders?user={user}&limit={query.limit}\"}]},"
    " {\"method\": \"GET\", \"path\": \"/dashboard/admin\", \"calls\": ["
    "  {\"name\": \"admin\", \"service\": \"shop\", \"path\": \"/admin\"}]},"
    " {\"method\": \"POST\", \"path\": \"/orders/{user}/{order}\", \"calls\": ["
    "  {\"name\": \"order\", \"service\": \"shop\", \"method\": \"POST\","
    "   \"path\": \"/o/{order}?u={user}&q={query.q}\"}]},"
    " {\"method\": \"GET\", \"path\": \"/a/{x}/b/{y}/c\", \"calls\": ["
    "  {\"name\": \"deep\", \"service\": \"shop\","
    "   \"path\": \"/{y}/{x}?{query.k}={query.v}\"}]}"
    "]}";

static const char *const methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE"};

static config_t *cfg;

/* The decoded query values handed out for one input. */
typedef struct query_s {
    const char *text; /* the query string, without "?" */
    char *values[32];
    size_t nvalues;
} query_t;


/* template_query_fn: returns the decoded value of the first parameter
 * named |name|, or NULL. */
static const char *lookup_query(void *arg, const char *name)
{
    query_t *q = arg;
    size_t name_len = strlen(name);
    const char *p = q->text;

    while (*p != '\0') {
        const char *end = strchr(p, '&');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t key_len = eq != NULL ? (size_t)(eq - p) : len;
        if (key_len == name_len && memcmp(p, name, key_len) == 0) {
            if (q->nvalues == sizeof(q->values) / sizeof(q->values[0])) {
                return NULL;
            }
            const char *raw = eq != NULL ? eq + 1 : "";
            size_t raw_len = eq != NULL ? len - key_len - 1 : 0;
            char *v = strndup(raw, raw_len);
            if (v == NULL) {
                return NULL;
            }
            if (template_decode(v, true) != 0) {
                memcpy(v, raw, raw_len);
                v[raw_len] = '\0';
            }
            q->values[q->nvalues++] = v;
            return v;
        }
        p += len;
        if (*p == '&') {
            p++;
        }
    }
    return NULL;
}


static void check_path(const buf_t *out)
{
    size_t questions = 0;
    for (size_t i = 0; i < out->len; i++) {
        unsigned char c = (unsigned char)out->data[i];
        if (c <= 0x20 || c >= 0x7f) {
            abort();
        }
        questions += c == '?';
    }
    if (questions > 1) {
        abort();
    }
}


static void expand_calls(const router_match_t *m, query_t *q)
{
    const route_t *route = m->route;
    buf_t out = {0};

    for (size_t i = 0; i < route->ncalls; i++) {
        const call_t *call = &route->calls[i];
        buf_reset(&out);
        if (template_expand(&call->path, m->values, lookup_query, q, &out) ==
            0) {
            check_path(&out);
        }
        for (size_t j = 0; j < call->nset_values; j++) {
            buf_reset(&out);
            if (headers_expand_value(&call->set_values[j], m->values,
                                     lookup_query, q, &out) == 0 &&
                !headers_value_safe(out.data, out.len)) {
                abort();
            }
        }
    }
    buf_free(&out);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (cfg == NULL) {
        config_errors_t errs = {0};
        if (config_parse("route.json", config_text, strlen(config_text), &cfg,
                         &errs) != 0) {
            abort();
        }
        config_errors_free(&errs);
    }
    if (size == 0) {
        return 0;
    }
    const char *method =
        methods[data[0] % (sizeof(methods) / sizeof(*methods))];
    char *target = strndup((const char *)data + 1, size - 1);
    if (target == NULL) {
        return 0;
    }
    query_t q = {.text = ""};
    char *question = strchr(target, '?');
    if (question != NULL) {
        *question = '\0';
        q.text = question + 1;
    }

    router_match_t m = {0};
    buf_t allow = {0};
    router_result_t rr = router_match(cfg, method, target, &m, &allow);
    if (rr == ROUTER_MATCH) {
        expand_calls(&m, &q);
    }
    buf_free(&m.storage);
    buf_free(&allow);
    for (size_t i = 0; i < q.nvalues; i++) {
        free(q.values[i]);
    }
    free(target);
    return 0;
}
