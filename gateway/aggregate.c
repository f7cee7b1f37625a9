/* Response bodies and status mapping. */
#include "aggregate.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
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


/* Nesting that the quick scan follows. A deeper body goes to jansson,
 * whose own limit is 2048 levels (JSON_PARSER_MAX_DEPTH in 2.14). */
#define QUICK_SCAN_MAX_DEPTH 64

/* A number whose integer digits plus exponent stay within this bound is
 * below 1e300, so strtod cannot overflow on it, which jansson with
 * JSON_DECODE_INT_AS_REAL would report as an error. */
#define QUICK_SCAN_MAX_MAGNITUDE 300

/* The quick scan reads a body without allocating. It accepts only what
 * jansson 2.14's json_loadb with the flags of aggregate_check_body also
 * accepts, and gives up (returns false) on anything else or anything
 * rarer: control bytes and invalid UTF-8 in strings, \u0000 and
 * surrogate escapes, numbers near the range of a double, deep nesting.
 * jansson then decides and writes the error message, so the result and
 * the message are the same as with jansson alone. */
typedef struct quick_scan_s {
    const unsigned char *p;
    const unsigned char *end;
} quick_scan_t;

static bool scan_value(quick_scan_t *s, int depth);


static void scan_space(quick_scan_t *s)
{
    while (s->p < s->end &&
           (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) {
        s->p++;
    }
}


static bool scan_word(quick_scan_t *s, const char *word, size_t len)
{
    if ((size_t)(s->end - s->p) < len || memcmp(s->p, word, len) != 0) {
        return false;
    }
    s->p += len;
    return true;
}


/* Skips one well-formed UTF-8 sequence of two to four bytes (RFC 3629:
 * no overlong forms, no surrogates, nothing above U+10FFFF). */
static bool scan_utf8(quick_scan_t *s)
{
    const unsigned char *p = s->p;
    size_t avail = (size_t)(s->end - p);
    unsigned char lo = 0x80;
    unsigned char hi = 0xbf;
    size_t n;

    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3;
        lo = p[0] == 0xe0 ? 0xa0 : 0x80;
        hi = p[0] == 0xed ? 0x9f : 0xbf;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4;
        lo = p[0] == 0xf0 ? 0x90 : 0x80;
        hi = p[0] == 0xf4 ? 0x8f : 0xbf;
    } else {
        return false;
    }
    if (avail < n || p[1] < lo || p[1] > hi) {
        return false;
    }
    for (size_t i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return false;
        }
    }
    s->p += n;
    return true;
}


static bool scan_escape(quick_scan_t *s)
{
    if (s->p >= s->end) {
        return false;
    }
    if (strchr("\"\\/bfnrt", *s->p) != NULL && *s->p != '\0') {
        s->p++;
        return true;
    }
    if (*s->p != 'u' || s->end - s->p < 5) {
        return false;
    }
    int code = 0;
    for (int i = 1; i <= 4; i++) {
        int v = hex_digit_value(s->p[i]);
        if (v < 0) {
            return false;
        }
        code = code * 16 + v;
    }
    /* jansson rejects NUL in a key and unpaired surrogates. */
    if (code == 0 || (code >= 0xd800 && code <= 0xdfff)) {
        return false;
    }
    s->p += 5;
    return true;
}


static bool scan_string(quick_scan_t *s)
{
    s->p++; /* the opening quote */
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c == '\\') {
            s->p++;
            if (!scan_escape(s)) {
                return false;
            }
        } else if (c < 0x20) {
            return false;
        } else if (c < 0x80) {
            s->p++;
        } else if (!scan_utf8(s)) {
            return false;
        }
    }
    return false;
}


static size_t scan_digits(quick_scan_t *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        s->p++;
    }
    return (size_t)(s->p - start);
}


static bool scan_number(quick_scan_t *s)
{
    if (*s->p == '-') {
        s->p++;
    }
    if (s->p >= s->end || *s->p < '0' || *s->p > '9') {
        return false;
    }
    size_t int_digits = 1;
    if (*s->p == '0') {
        s->p++;
    } else {
        int_digits = scan_digits(s);
    }
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (scan_digits(s) == 0) {
            return false;
        }
    }
    long exponent = 0;
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        bool negative = false;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) {
            negative = *s->p == '-';
            s->p++;
        }
        const unsigned char *digits = s->p;
        size_t n = scan_digits(s);
        if (n == 0 || n > 4) {
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            exponent = exponent * 10 + (digits[i] - '0');
        }
        if (negative) {
            exponent = -exponent;
        }
    }
    return (long)int_digits + exponent <= QUICK_SCAN_MAX_MAGNITUDE;
}


/* Scans an array or an object, |s->p| on its opening bracket. */
static bool scan_container(quick_scan_t *s, int depth)
{
    bool object = *s->p == '{';
    unsigned char close = object ? '}' : ']';

    if (depth >= QUICK_SCAN_MAX_DEPTH) {
        return false;
    }
    s->p++;
    scan_space(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return true;
    }
    for (;;) {
        if (object) {
            scan_space(s);
            if (s->p >= s->end || *s->p != '"' || !scan_string(s)) {
                return false;
            }
            scan_space(s);
            if (s->p >= s->end || *s->p != ':') {
                return false;
            }
            s->p++;
        }
        if (!scan_value(s, depth + 1)) {
            return false;
        }
        scan_space(s);
        if (s->p >= s->end) {
            return false;
        }
        if (*s->p == close) {
            s->p++;
            return true;
        }
        if (*s->p != ',') {
            return false;
        }
        s->p++;
    }
}


static bool scan_value(quick_scan_t *s, int depth)
{
    scan_space(s);
    if (s->p >= s->end) {
        return false;
    }
    switch (*s->p) {
    case '{':
    case '[':
        return scan_container(s, depth);
    case '"':
        return scan_string(s);
    case 't':
        return scan_word(s, "true", 4);
    case 'f':
        return scan_word(s, "false", 5);
    case 'n':
        return scan_word(s, "null", 4);
    default:
        return (*s->p >= '0' && *s->p <= '9') || *s->p == '-' ? scan_number(s)
                                                              : false;
    }
}


/* Returns true when |body| is certainly one JSON text that jansson
 * accepts; false when it is not, or when the scan cannot tell. */
static bool json_quick_valid(const char *body, size_t len)
{
    quick_scan_t s = {(const unsigned char *)body,
                      (const unsigned char *)body + len};
    if (!scan_value(&s, 0)) {
        return false;
    }
    scan_space(&s);
    return s.p == s.end;
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
    if (json_quick_valid(body, len)) {
        return 0;
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


/* Appends |s| as a JSON string, escaped as jansson's json_dumps escapes
 * it without flags: quote, backslash and control bytes only. |s| is a
 * name from the configuration, which jansson loaded, so it is valid
 * UTF-8. */
static int append_json_string(buf_t *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    int rc = buf_append(out, "\"", 1);
    const char *run = s;

    for (const char *p = s; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\') {
            continue;
        }
        rc |= buf_append(out, run, (size_t)(p - run));
        run = p + 1;
        char esc[6] = {'\\', (char)c};
        size_t n = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            n = 6;
            break;
        }
        rc |= buf_append(out, esc, n);
    }
    rc |= buf_append_str(out, run);
    rc |= buf_append(out, "\"", 1);
    return rc;
}


static int open_member(buf_t *out, const char *name)
{
    int rc = buf_append(out, out->len == 0 ? "{" : ",", 1);
    rc |= append_json_string(out, name);
    rc |= buf_append(out, ":", 1);
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
