/* W3C Trace Context: traceparent parsing and id generation. */
#include "trace.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"

/* Per-thread generator state, seeded from getrandom(2) on first use.
 * Trace and span ids must not collide across gateways, but they are not
 * secrets. A fast generator seeded from the kernel is therefore enough,
 * and it keeps a syscall off each call. */
static __thread uint64_t rng_state;
static __thread bool rng_seeded;


static void seed_rng(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) !=
        (ssize_t)sizeof(seed)) {
        /* Early at boot the pool may not be ready; mix the clock, the
         * thread-local address and the pid so threads still differ. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
               (uint64_t)(uintptr_t)&rng_state ^ ((uint64_t)getpid() << 48);
    }
    rng_state = seed;
    rng_seeded = true;
}


/* splitmix64 (Steele, Lea and Flood, 2014). */
static uint64_t next_random(void)
{
    if (!rng_seeded) {
        seed_rng();
    }
    rng_state += 0x9E3779B97F4A7C15ULL;
    uint64_t z = rng_state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}


static bool all_zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            return false;
        }
    }
    return true;
}


/* Fills |n| bytes with random bytes, drawing again if all are zero,
 * because an all-zero id is invalid. */
static void random_id(uint8_t *out, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = next_random();
            size_t take = n - i < 8 ? n - i : 8;
            memcpy(out + i, &r, take);
        }
    } while (all_zero(out, n));
}


static int lower_hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}


/* Decodes |n| bytes from 2n lower-case hex digits at |s|. */
static bool parse_hex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = lower_hex_value(s[2 * i]);
        int lo = hi < 0 ? -1 : lower_hex_value(s[2 * i + 1]);
        if (lo < 0) {
            return false;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}


int trace_parse(const char *value, trace_ctx_t *out)
{
    uint8_t version;
    uint8_t trace_id[TRACE_ID_LEN];
    uint8_t parent_id[TRACE_SPAN_LEN];
    uint8_t flags;

    if (value == NULL) {
        return TE_INVALID;
    }
    size_t len = strlen(value);
    if (len < TRACEPARENT_LEN || !parse_hex(value, &version, 1)) {
        return TE_INVALID;
    }
    /* Version ff is forbidden. A future version may append fields after
     * a "-", so only version 00 must end at character 55. */
    if (version == 0xff || (version == 0 && len != TRACEPARENT_LEN) ||
        (len > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != '-')) {
        return TE_INVALID;
    }
    if (value[2] != '-' || value[35] != '-' || value[52] != '-') {
        return TE_INVALID;
    }
    if (!parse_hex(value + 3, trace_id, TRACE_ID_LEN) ||
        !parse_hex(value + 36, parent_id, TRACE_SPAN_LEN) ||
        !parse_hex(value + 53, &flags, 1)) {
        return TE_INVALID;
    }
    if (all_zero(trace_id, TRACE_ID_LEN) ||
        all_zero(parent_id, TRACE_SPAN_LEN)) {
        return TE_INVALID;
    }
    memcpy(out->trace_id, trace_id, TRACE_ID_LEN);
    memcpy(out->parent_id, parent_id, TRACE_SPAN_LEN);
    /* Version 00 defines only the "sampled" bit, and the W3C Trace
     * Context specification has a version-00 writer send the other bits
     * as zero, whatever version it read. */
    out->flags = (uint8_t)(flags & 0x01);
    return 0;
}


void trace_begin(trace_ctx_t *ctx, const char *traceparent)
{
    memset(ctx, 0, sizeof(*ctx));
    if (trace_parse(traceparent, ctx) == 0) {
        ctx->continued = true;
    } else {
        memset(ctx, 0, sizeof(*ctx));
        random_id(ctx->trace_id, TRACE_ID_LEN);
        /* tutti writes its spans to the access log, so a trace it starts
         * is recorded and the services behind it should record theirs. */
        ctx->flags = 0x01;
    }
    random_id(ctx->span_id, TRACE_SPAN_LEN);
}


void trace_new_span(uint8_t span[TRACE_SPAN_LEN])
{
    random_id(span, TRACE_SPAN_LEN);
}


void trace_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 0x0f];
    }
    out[2 * n] = '\0';
}


void trace_format_parent(const trace_ctx_t *ctx,
                         const uint8_t span[TRACE_SPAN_LEN],
                         char out[TRACEPARENT_LEN + 1])
{
    /* "00-" TRACE-ID "-" SPAN-ID "-" FLAGS, written in place: one of these
     * is formatted for every downstream call. */
    char *p = out;
    /* The last trace_hex call ends the string. */
    /* NOLINTNEXTLINE(bugprone-not-null-terminated-result) */
    memcpy(p, "00-", 3);
    p += 3;
    trace_hex(ctx->trace_id, TRACE_ID_LEN, p);
    p += 2 * TRACE_ID_LEN;
    *p++ = '-';
    trace_hex(span, TRACE_SPAN_LEN, p);
    p += 2 * TRACE_SPAN_LEN;
    *p++ = '-';
    trace_hex(&ctx->flags, 1, p);
}
