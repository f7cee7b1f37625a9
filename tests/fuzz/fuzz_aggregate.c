/* Fuzz target: the check and splice of downstream bodies into tutti's
 * response body (gateway/aggregate.c), as gateway/fanout.c runs them.
 *
 * Input: byte 0 gives the number of calls (bits 0-1, plus one) and which
 * of them answered 204 (bits 4-7, one per call); the rest is split at
 * 0x1e bytes into the bodies, one per call (missing ones are empty).
 * 0x1e is a control byte, which no JSON text contains, so no valid body
 * is lost to the split.
 *
 * Oracles, with jansson as the reference parser:
 * - aggregate_check_body accepts every body that jansson accepts, and
 *   accepts a body jansson rejects only for one of jansson's own limits
 *   (\u0000 in a key, a number beyond the range of a double), which are
 *   valid JSON under RFC 8259. It rejects a body nested exactly 2048
 *   levels, which jansson accepts, so that the response stays within
 *   jansson's limit.
 * - The answer built from the accepted bodies and the error objects of
 *   the others parses with jansson (unless it contains such a body) as an
 *   object with one member per accepted call, plus "errors" with one
 *   member per failed call when a call failed. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "aggregate.h"
#include "buf.h"

#define MAX_CALLS 4
#define SEPARATOR 0x1e

/* Flags under which jansson accepts every JSON text it can represent:
 * any top-level value, integers beyond 64 bits (as reals), \u0000 in
 * strings. */
#define CHECK_FLAGS (JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)

/* Call names with bytes that must be escaped in a JSON key. */
static const char *const names[MAX_CALLS] = {
    "profile",
    "quote\"back\\slash",
    "control\x01\x1f\t",
    "\xc3\xbcnicode",
};


/* Returns whether jansson rejects a text only for a limit of its own. */
static bool jansson_limit(const json_error_t *jerr)
{
    enum json_error_code code = json_error_code(jerr);
    return code == json_error_null_byte_in_key ||
           code == json_error_numeric_overflow;
}


/* Returns the deepest nesting of arrays and objects in |body|, a text
 * that jansson accepted, so its strings are well formed. */
static size_t nesting_depth(const char *body, size_t len)
{
    size_t depth = 0;
    size_t deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (in_string) {
            if (c == '\\') {
                i++;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest) {
                deepest = depth;
            }
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return deepest;
}


/* Returns 1 when jansson accepts the body, 0 when it rejects it, and -1
 * when it rejects it only for a limit of its own. A body nested exactly
 * 2048 levels, which jansson accepts, counts as -1 too: the check stops
 * one level short, so that the response stays within jansson's limit. */
static int jansson_verdict(const char *body, size_t len)
{
    /* jansson 2.14 accepts a value followed by a NUL byte, such as "1\0",
     * but JSON allows a raw NUL nowhere. */
    if (memchr(body, '\0', len) != NULL) {
        return 0;
    }
    json_error_t jerr;
    json_t *v = json_loadb(body, len, CHECK_FLAGS, &jerr);
    if (v != NULL) {
        json_decref(v);
        return nesting_depth(body, len) == 2048 ? -1 : 1;
    }
    return jansson_limit(&jerr) ? -1 : 0;
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    size_t ncalls = (size_t)(data[0] & 0x03) + 1;
    unsigned no_content = data[0] >> 4;
    const char *rest = (const char *)data + 1;
    size_t rest_len = size - 1;

    const char *bodies[MAX_CALLS];
    size_t lens[MAX_CALLS];
    for (size_t i = 0; i < ncalls; i++) {
        const char *sep = memchr(rest, SEPARATOR, rest_len);
        size_t len = sep != NULL ? (size_t)(sep - rest) : rest_len;
        bodies[i] = rest;
        lens[i] = len;
        rest += len;
        rest_len -= len;
        if (sep != NULL) {
            rest++;
            rest_len--;
        }
    }

    buf_t out = {0};
    json_t *errors = NULL;
    size_t nok = 0;
    bool beyond_jansson = false;
    for (size_t i = 0; i < ncalls; i++) {
        int status = (no_content >> i) & 1 ? 204 : 200;
        char why[200];
        int rc =
            aggregate_check_body(status, bodies[i], lens[i], why, sizeof(why));
        if (status == 200 && lens[i] > 0) {
            int verdict = jansson_verdict(bodies[i], lens[i]);
            if ((verdict == 1 && rc != 0) || (verdict == 0 && rc == 0)) {
                abort();
            }
            beyond_jansson |= verdict == -1 && rc == 0;
        }
        if (rc == 0) {
            nok++;
            if (aggregate_add_result(&out, names[i],
                                     status == 204 ? NULL : bodies[i],
                                     lens[i]) != 0) {
                abort();
            }
            continue;
        }
        if (errors == NULL) {
            errors = json_object();
        }
        json_object_set_new(errors, names[i],
                            aggregate_error_object(names[i], KIND_BAD_RESPONSE,
                                                   status, why, 1));
    }
    if (aggregate_finish(&out, errors) != 0) {
        abort();
    }

    json_error_t jerr;
    json_t *answer = json_loadb(
        out.data, out.len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &jerr);
    if (answer == NULL && beyond_jansson && jansson_limit(&jerr)) {
        json_decref(errors);
        buf_free(&out);
        return 0;
    }
    if (answer == NULL || !json_is_object(answer)) {
        abort();
    }
    if (json_object_size(answer) != nok + (errors != NULL)) {
        abort();
    }
    /* Integers in the error objects come back as reals, so only the
     * members are compared. */
    json_t *answer_errors = json_object_get(answer, "errors");
    if (errors != NULL &&
        json_object_size(answer_errors) != json_object_size(errors)) {
        abort();
    }
    for (size_t i = 0; i < ncalls; i++) {
        bool failed = json_object_get(errors, names[i]) != NULL;
        if (json_object_get(answer, names[i]) == NULL && !failed) {
            abort();
        }
        if (failed && json_object_get(answer_errors, names[i]) == NULL) {
            abort();
        }
    }
    json_decref(answer);
    json_decref(errors);
    buf_free(&out);
    return 0;
}
