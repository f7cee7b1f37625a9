/* W3C Trace Context (https://www.w3.org/TR/trace-context/): parsing the
 * inbound traceparent, starting a trace when it is missing or invalid,
 * and making the traceparent of each downstream call.
 *
 * tutti records one span for the request it serves (the server span) and
 * one child span per downstream call (the client spans). A call's
 * traceparent carries the request's trace id and that call's span id, so
 * a service's own span is the child of the call that reached it. */
#ifndef TUTTI_TRACE_H
#define TUTTI_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRACE_ID_LEN 16
#define TRACE_SPAN_LEN 8
/* "00-" + 32 + "-" + 16 + "-" + 2, without the NUL. */
#define TRACEPARENT_LEN 55
#define TRACE_ID_HEX (2 * TRACE_ID_LEN + 1)
#define TRACE_SPAN_HEX (2 * TRACE_SPAN_LEN + 1)

/* The trace context of one inbound request. */
typedef struct trace_ctx_s {
    uint8_t trace_id[TRACE_ID_LEN];
    uint8_t parent_id[TRACE_SPAN_LEN]; /* the caller's span; zero if none */
    uint8_t span_id[TRACE_SPAN_LEN];   /* the gateway's server span */
    uint8_t flags;                     /* trace-flags, bit 0 "sampled" */
    bool continued; /* the inbound traceparent was valid and is continued */
} trace_ctx_t;

/* Parses a traceparent field value into |trace_id|, |parent_id| and
 * |flags| of |out|; the other fields are left alone. Version 00 must be
 * exactly 55 characters. A later version (01 to fe) may be longer, and
 * its version-00 fields are read when character 55 is "-" or the value
 * ends there, as the specification requires of a version-00 parser. Hex
 * digits must be lower case, and an all-zero trace id or parent id is
 * invalid. Returns 0 or TE_INVALID. */
int trace_parse(const char *value, trace_ctx_t *out);

/* Sets up the trace of a request: continues |traceparent| when it parses
 * (continued is then true), else starts a new trace with a random trace id
 * and the sampled flag set. Either way the gateway's own span gets a new
 * random id. |traceparent| may be NULL. */
void trace_begin(trace_ctx_t *ctx, const char *traceparent);

/* Draws a random span id, never all zero, for one downstream call. */
void trace_new_span(uint8_t span[TRACE_SPAN_LEN]);

/* Writes "00-TRACE-SPAN-FLAGS" for a call whose span is |span| into |out|
 * (TRACEPARENT_LEN + 1 bytes). */
void trace_format_parent(const trace_ctx_t *ctx,
                         const uint8_t span[TRACE_SPAN_LEN],
                         char out[TRACEPARENT_LEN + 1]);

/* Writes |n| bytes as lower-case hex and a NUL into |out| (2n + 1
 * bytes). */
void trace_hex(const uint8_t *bytes, size_t n, char *out);

#endif
