/* Response bodies and status mapping. */
#include "aggregate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

static const char *const kind_names[] = {
    "timeout", "deadline",     "connect",  "resolve",  "reset",
    "status",  "bad_response", "shutdown", "internal", "overloaded",
};


const char *aggregate_kind_name(fail_kind_t kind)
{
    if ((size_t)kind >= sizeof(kind_names) / sizeof(kind_names[0])) {
        return "internal";
    }
    return kind_names[kind];
}


fail_kind_t aggregate_kind_from_error(int err)
{
    switch (err) {
    case TE_RESOLVE:
        return KIND_RESOLVE;
    case TE_CONNECT:
        return KIND_CONNECT;
    case TE_RESET:
        return KIND_RESET;
    case TE_BAD_RESPONSE:
        return KIND_BAD_RESPONSE;
    case TE_OVERLOADED:
        return KIND_OVERLOADED;
    default:
        return KIND_INTERNAL;
    }
}


int aggregate_status(fail_kind_t kind, int downstream_status)
{
    switch (kind) {
    case KIND_TIMEOUT:
    case KIND_DEADLINE:
        return 504;
    case KIND_STATUS:
        if (downstream_status >= 400 && downstream_status < 500) {
            return downstream_status;
        }
        return 502;
    case KIND_CONNECT:
    case KIND_RESOLVE:
    case KIND_RESET:
    case KIND_BAD_RESPONSE:
        return 502;
    case KIND_SHUTDOWN:
    case KIND_OVERLOADED:
        return 503;
    default:
        return 500;
    }
}


json_t *aggregate_error_object(const char *call, fail_kind_t kind, int status,
                               const char *message, int64_t elapsed_ms)
{
    json_t *e = json_object();
    if (e == NULL) {
        return NULL;
    }
    if (call != NULL) {
        json_object_set_new(e, "call", json_string(call));
    }
    json_object_set_new(e, "kind", json_string(aggregate_kind_name(kind)));
    if (status > 0) {
        json_object_set_new(e, "status", json_integer(status));
    }
    /* json_string rejects invalid UTF-8; a downstream message may have
     * any bytes, so fall back to a fixed text rather than drop the key. */
    json_t *msg = json_string(message != NULL ? message : "");
    if (msg == NULL) {
        msg = json_string("(message not valid UTF-8)");
    }
    json_object_set_new(e, "message", msg);
    json_object_set_new(e, "elapsed_ms", json_integer(elapsed_ms));
    return e;
}


static char *dump_owned(json_t *v, size_t *len)
{
    char *text =
        json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_decref(v);
    if (text != NULL && len != NULL) {
        *len = strlen(text);
    }
    return text;
}


char *aggregate_error_body(json_t *error, size_t *len)
{
    json_t *wrap = json_object();
    json_object_set_new(wrap, "error", error);
    return dump_owned(wrap, len);
}


char *aggregate_simple_error(const char *kind, const char *message, size_t *len)
{
    json_t *e = json_object();
    json_object_set_new(e, "kind", json_string(kind));
    json_t *msg = json_string(message);
    json_object_set_new(e, "message",
                        msg != NULL ? msg : json_string("invalid request"));
    return aggregate_error_body(e, len);
}


int aggregate_check_body(int status, const char *body, size_t len, char *why,
                         size_t whylen)
{
    if (status == 204) {
        return 0;
    }
    if (len == 0) {
        snprintf(why, whylen,
                 "empty response body with status %d; expected JSON", status);
        return TE_BAD_RESPONSE;
    }
    /* Integers beyond 64 bits are valid JSON; decoding them as reals lets
     * the check accept them. The body itself is passed on unchanged. */
    json_error_t jerr;
    json_t *v = json_loadb(
        body, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL,
        &jerr);
    if (v == NULL) {
        snprintf(why, whylen, "response body is not valid JSON: %s at %d:%d",
                 jerr.text, jerr.line, jerr.column);
        return TE_BAD_RESPONSE;
    }
    json_decref(v);
    return 0;
}


static int open_member(buf_t *out, const char *name)
{
    int rc = buf_append_str(out, out->len == 0 ? "{" : ",");
    json_t *k = json_string(name);
    char *key = k != NULL ? json_dumps(k, JSON_ENCODE_ANY) : NULL;
    json_decref(k);
    if (key == NULL) {
        return TE_NOMEM;
    }
    rc |= buf_append_str(out, key);
    free(key);
    rc |= buf_append_str(out, ":");
    return rc != 0 ? TE_NOMEM : 0;
}


int aggregate_add_result(buf_t *out, const char *name, const char *raw,
                         size_t len)
{
    if (open_member(out, name) != 0) {
        return TE_NOMEM;
    }
    if (raw == NULL) {
        return buf_append_str(out, "null");
    }
    return buf_append(out, raw, len);
}


int aggregate_finish(buf_t *out, const json_t *errors)
{
    if (errors != NULL) {
        char *text = json_dumps(errors, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (text == NULL || open_member(out, "errors") != 0 ||
            buf_append_str(out, text) != 0) {
            free(text);
            return TE_NOMEM;
        }
        free(text);
    }
    if (out->len == 0 && buf_append_str(out, "{") != 0) {
        return TE_NOMEM;
    }
    return buf_append_str(out, "}");
}
