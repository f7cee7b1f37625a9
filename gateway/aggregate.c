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


/* Nesting accepted in a downstream body. The response nests each body one
 * level deeper, under its call's name, so this keeps the response within
 * the 2048 levels that jansson 2.14 parses (JSON_PARSER_MAX_DEPTH). The
 * check keeps one byte per level, so it never recurses. */
#define JSON_MAX_DEPTH 2047

/* The body check reads a body once, without allocating, and accepts
 * exactly one JSON text of RFC 8259 in UTF-8 (RFC 3629). The body is
 * copied into the answer unchanged, so nothing is decoded: numbers of any
 * size are accepted as written, and \u0000 is accepted in strings and in
 * keys. A \u escape of a UTF-16 surrogate must be a high one followed by
 * a low one, as such a pair is the only way to write the character. The
 * reason of a failure names a byte offset, never the bytes themselves, so
 * no invalid byte reaches the client through the message. */
typedef struct json_scan_s {
    const unsigned char *start;
    const unsigned char *p;
    const unsigned char *end;
    const char *why; /* set by the first failure */
} json_scan_t;


static bool scan_fail(json_scan_t *s, const char *why)
{
    if (s->why == NULL) {
        s->why = why;
    }
    return false;
}


static void scan_space(json_scan_t *s)
{
    while (s->p < s->end &&
           (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) {
        s->p++;
    }
}


static bool scan_word(json_scan_t *s, const char *word, size_t len)
{
    if ((size_t)(s->end - s->p) < len || memcmp(s->p, word, len) != 0) {
        return scan_fail(s, "invalid literal");
    }
    s->p += len;
    return true;
}


/* Skips one well-formed UTF-8 sequence of two to four bytes (RFC 3629:
 * no overlong forms, no surrogates, nothing above U+10FFFF). */
static bool scan_utf8(json_scan_t *s)
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
        return scan_fail(s, "invalid UTF-8");
    }
    if (avail < n || p[1] < lo || p[1] > hi) {
        return scan_fail(s, "invalid UTF-8");
    }
    for (size_t i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf) {
            return scan_fail(s, "invalid UTF-8");
        }
    }
    s->p += n;
    return true;
}


/* Reads the four hex digits of a \u escape, |s->p| on the 'u'. Returns
 * the code unit, or -1. */
static long scan_hex4(json_scan_t *s)
{
    if (s->end - s->p < 5) {
        return -1;
    }
    long code = 0;
    for (int i = 1; i <= 4; i++) {
        int v = hex_digit_value(s->p[i]);
        if (v < 0) {
            return -1;
        }
        code = code * 16 + v;
    }
    s->p += 5;
    return code;
}


static bool scan_escape(json_scan_t *s)
{
    if (s->p >= s->end) {
        return scan_fail(s, "unterminated string");
    }
    if (*s->p != '\0' && strchr("\"\\/bfnrt", *s->p) != NULL) {
        s->p++;
        return true;
    }
    if (*s->p != 'u') {
        return scan_fail(s, "invalid escape");
    }
    long code = scan_hex4(s);
    if (code < 0) {
        return scan_fail(s, "invalid \\u escape");
    }
    if (code >= 0xdc00 && code <= 0xdfff) {
        return scan_fail(s, "unpaired UTF-16 surrogate escape");
    }
    if (code >= 0xd800 && code <= 0xdbff) {
        if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u') {
            return scan_fail(s, "unpaired UTF-16 surrogate escape");
        }
        s->p++;
        code = scan_hex4(s);
        if (code < 0xdc00 || code > 0xdfff) {
            return scan_fail(s, "unpaired UTF-16 surrogate escape");
        }
    }
    return true;
}


static bool scan_string(json_scan_t *s)
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
            return scan_fail(s, "control character in a string");
        } else if (c < 0x80) {
            s->p++;
        } else if (!scan_utf8(s)) {
            return false;
        }
    }
    return scan_fail(s, "unterminated string");
}


static size_t scan_digits(json_scan_t *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        s->p++;
    }
    return (size_t)(s->p - start);
}


static bool scan_number(json_scan_t *s)
{
    if (*s->p == '-') {
        s->p++;
    }
    if (s->p >= s->end || *s->p < '0' || *s->p > '9') {
        return scan_fail(s, "invalid number");
    }
    if (*s->p == '0') {
        s->p++;
    } else {
        scan_digits(s);
    }
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (scan_digits(s) == 0) {
            return scan_fail(s, "invalid number");
        }
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) {
            s->p++;
        }
        if (scan_digits(s) == 0) {
            return scan_fail(s, "invalid number");
        }
    }
    /* "01" and "1x" end the number here and fail as trailing bytes. */
    return true;
}


/* Reads one member name and its colon, |s->p| before the name. */
static bool scan_key(json_scan_t *s)
{
    scan_space(s);
    if (s->p >= s->end || *s->p != '"') {
        return scan_fail(s, "expected a string as member name");
    }
    if (!scan_string(s)) {
        return false;
    }
    scan_space(s);
    if (s->p >= s->end || *s->p != ':') {
        return scan_fail(s, "expected ':'");
    }
    s->p++;
    return true;
}


/* Reads one JSON text. |open| contains the closing bracket of each container
 * that is open, innermost last. */
static bool scan_text(json_scan_t *s)
{
    unsigned char open[JSON_MAX_DEPTH];
    size_t depth = 0;

    for (;;) {
        /* A value. */
        scan_space(s);
        if (s->p >= s->end) {
            return scan_fail(s, "unexpected end of body");
        }
        unsigned char c = *s->p;
        bool ok = true;
        if (c == '{' || c == '[') {
            if (depth == JSON_MAX_DEPTH) {
                return scan_fail(s, "nesting deeper than 2047 levels");
            }
            open[depth++] = c == '{' ? '}' : ']';
            s->p++;
            scan_space(s);
            if (s->p < s->end && *s->p == open[depth - 1]) {
                s->p++;
                depth--;
            } else if (c == '{') {
                if (!scan_key(s)) {
                    return false;
                }
                continue;
            } else {
                continue;
            }
        } else if (c == '"') {
            ok = scan_string(s);
        } else if (c == 't') {
            ok = scan_word(s, "true", 4);
        } else if (c == 'f') {
            ok = scan_word(s, "false", 5);
        } else if (c == 'n') {
            ok = scan_word(s, "null", 4);
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            ok = scan_number(s);
        } else {
            return scan_fail(s, c >= 0x80 ? "invalid UTF-8 or unexpected byte"
                                          : "unexpected character");
        }
        if (!ok) {
            return false;
        }
        /* After a value: close containers, or go on to the next value. */
        for (;;) {
            scan_space(s);
            if (depth == 0) {
                return s->p == s->end ? true
                                      : scan_fail(s, "bytes after the JSON "
                                                     "value");
            }
            if (s->p >= s->end) {
                return scan_fail(s, "unexpected end of body");
            }
            if (*s->p == open[depth - 1]) {
                s->p++;
                depth--;
                continue;
            }
            if (*s->p != ',') {
                return scan_fail(s, "expected ',' or a closing bracket");
            }
            s->p++;
            if (open[depth - 1] == '}' && !scan_key(s)) {
                return false;
            }
            break;
        }
    }
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
    json_scan_t s = {(const unsigned char *)body, (const unsigned char *)body,
                     (const unsigned char *)body + len, NULL};
    if (scan_text(&s)) {
        return 0;
    }
    snprintf(why, whylen, "response body is not valid JSON: %s at byte %zu",
             s.why != NULL ? s.why : "invalid", (size_t)(s.p - s.start));
    return TE_BAD_RESPONSE;
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
            /* esc is a fixed 6-byte escape, not a string. */
            /* NOLINTNEXTLINE(bugprone-not-null-terminated-result) */
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
