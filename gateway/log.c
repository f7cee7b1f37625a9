/* Structured log lines on stderr, as JSON or key=value text, with
 * repeated errors rate-limited per thread. */
#include "log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "errors.h"

/* Slots of the per-thread rate-limit table, and how many a key may probe.
 * A key that finds no free slot takes the one whose window started first,
 * after writing its pending summary. */
#define LIMIT_SLOTS 64
#define LIMIT_PROBES 8
#define LIMIT_KEY_MAX 160
#define LIMIT_MSG_MAX 64
#define LIMIT_WINDOW_MS 1000

static log_level_t min_level = LOG_INFO;
static log_format_t line_format = LOG_FORMAT_JSON;
static unsigned rate_limit = LOG_RATE_LIMIT_DEFAULT;
static __thread int thread_worker = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"json", "text"};

/* One repeated error on one thread: its current one-second window. */
typedef struct limit_slot_s {
    char key[LIMIT_KEY_MAX];
    char msg[LIMIT_MSG_MAX];
    log_level_t level;
    uint64_t window_start_ms; /* 0: slot unused */
    unsigned written;         /* lines written in the window */
    unsigned suppressed;      /* lines dropped in the window */
} limit_slot_t;

static __thread limit_slot_t limit_slots[LIMIT_SLOTS];
/* Slots with suppressed > 0, so most lines skip the scan. */
static __thread unsigned limit_pending;


void log_set_level(log_level_t level)
{
    min_level = level;
}


int log_parse_level(const char *name, log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return TE_INVALID;
}


bool log_enabled(log_level_t level)
{
    return level >= min_level;
}


int log_parse_format(const char *name, log_format_t *out)
{
    for (int i = 0; i < 2; i++) {
        if (strcmp(name, format_names[i]) == 0) {
            *out = (log_format_t)i;
            return 0;
        }
    }
    return TE_INVALID;
}


void log_set_format(log_format_t format)
{
    line_format = format;
}


void log_set_rate_limit(unsigned per_second)
{
    rate_limit = per_second > 0 ? per_second : 1;
}


void log_set_worker(int worker)
{
    thread_worker = worker;
}


static void format_time(char *out, size_t len)
{
    struct timeval tv;
    struct tm tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv.tv_usec / 1000));
}


/* A text value needs quotes when it is empty or contains a space, "=", a
 * quote, a backslash or a control byte, so that a line splits on spaces
 * into key=value pairs unambiguously. */
static bool needs_quotes(const char *s)
{
    if (s[0] == '\0') {
        return true;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p <= 0x20 || *p == 0x7f || *p == '=' || *p == '"' || *p == '\\') {
            return true;
        }
    }
    return false;
}


static int append_text_value(buf_t *out, const char *s)
{
    if (!needs_quotes(s)) {
        return buf_append_str(out, s);
    }
    int rc = buf_append(out, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s;
         *p != '\0' && rc == 0; p++) {
        switch (*p) {
        case '"':
            rc = buf_append(out, "\\\"", 2);
            break;
        case '\\':
            rc = buf_append(out, "\\\\", 2);
            break;
        case '\n':
            rc = buf_append(out, "\\n", 2);
            break;
        case '\r':
            rc = buf_append(out, "\\r", 2);
            break;
        case '\t':
            rc = buf_append(out, "\\t", 2);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                rc = buf_appendf(out, "\\x%02x", *p);
            } else {
                rc = buf_append(out, p, 1);
            }
            break;
        }
    }
    return rc != 0 ? rc : buf_append(out, "\"", 1);
}


static int append_text_field(buf_t *out, const char *key, json_t *v);


/* Appends the pairs of |member| under the key "|key|.|name|", where |name|
 * is the member's key or index in its object or array. It recurses through
 * append_text_field once per nesting level. */
/* NOLINTNEXTLINE(misc-no-recursion) */
static int append_text_member(buf_t *out, const char *key, const char *name,
                              json_t *member)
{
    char *sub = NULL;
    if (asprintf(&sub, "%s.%s", key, name) < 0) {
        return TE_NOMEM;
    }
    int rc = append_text_field(out, sub, member);
    free(sub);
    return rc;
}


/* Appends " key=value" for a scalar, or one pair per member of an object
 * or array, with the member's key or index joined by "." (calls.0.name).
 * It recurses once per nesting level of the log fields tutti builds. */
/* NOLINTNEXTLINE(misc-no-recursion) */
static int append_text_field(buf_t *out, const char *key, json_t *v)
{
    char scalar[64];
    const char *text = scalar;

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *member;
        json_object_foreach(v, k, member)
        {
            int rc = append_text_member(out, key, k, member);
            if (rc != 0) {
                return rc;
            }
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *member;
        json_array_foreach(v, i, member)
        {
            char index[24];
            snprintf(index, sizeof(index), "%zu", i);
            int rc = append_text_member(out, key, index, member);
            if (rc != 0) {
                return rc;
            }
        }
        return 0;
    }
    case JSON_STRING:
        text = json_string_value(v);
        break;
    case JSON_INTEGER:
        snprintf(scalar, sizeof(scalar), "%lld",
                 (long long)json_integer_value(v));
        break;
    case JSON_REAL:
        /* Nine significant digits, as in the JSON lines. */
        snprintf(scalar, sizeof(scalar), "%.9g", json_real_value(v));
        break;
    case JSON_TRUE:
        text = "true";
        break;
    case JSON_FALSE:
        text = "false";
        break;
    default:
        text = "null";
        break;
    }
    int rc = buf_appendf(out, " %s=", key);
    return rc != 0 ? rc : append_text_value(out, text);
}


/* Formats |line| as "time level worker msg key=value ...". */
static char *format_text(json_t *line)
{
    buf_t out = {0};
    const char *key;
    json_t *v;
    int rc = 0;

    static const char *const positional[] = {"time", "level", "worker", "msg"};
    for (size_t i = 0; i < 4 && rc == 0; i++) {
        json_t *p = json_object_get(line, positional[i]);
        char num[24];
        const char *text = json_string_value(p);
        if (json_is_integer(p)) {
            snprintf(num, sizeof(num), "%lld",
                     (long long)json_integer_value(p));
            text = num;
        }
        if (i > 0) {
            rc = buf_append(&out, " ", 1);
        }
        if (rc == 0) {
            rc = append_text_value(&out, text != NULL ? text : "");
        }
    }
    json_object_foreach(line, key, v)
    {
        bool skip = false;
        for (size_t i = 0; i < 4; i++) {
            skip = skip || strcmp(key, positional[i]) == 0;
        }
        if (!skip && rc == 0) {
            rc = append_text_field(&out, key, v);
        }
    }
    if (rc != 0) {
        buf_free(&out);
        return NULL;
    }
    return out.data;
}


/* Builds and writes one line; takes ownership of |fields|. */
static void write_line(log_level_t level, const char *request_id,
                       const char *msg, json_t *fields)
{
    char when[32];
    format_time(when, sizeof(when));

    json_t *line = json_object();
    json_object_set_new(line, "time", json_string(when));
    json_object_set_new(line, "level", json_string(level_names[level]));
    if (thread_worker >= 0) {
        json_object_set_new(line, "worker", json_integer(thread_worker));
    } else {
        json_object_set_new(line, "worker", json_string("main"));
    }
    json_object_set_new(line, "msg", json_string(msg));
    if (request_id != NULL) {
        json_object_set_new(line, "request_id", json_string(request_id));
    }
    if (fields != NULL) {
        json_object_update(line, fields);
        json_decref(fields);
    }

    /* Nine significant digits print durations such as 0.136173 as
     * written instead of 0.13617299999999999. */
    char *text = line_format == LOG_FORMAT_TEXT
                     ? format_text(line)
                     : json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                            JSON_REAL_PRECISION(9));
    json_decref(line);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    char *out = realloc(text, len + 2);
    if (out == NULL) {
        free(text);
        return;
    }
    out[len] = '\n';
    /* One write per line keeps lines from several threads whole. */
    ssize_t n = write(STDERR_FILENO, out, len + 1);
    (void)n;
    free(out);
}


static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


/* Writes the summary of |slot|'s window if lines were dropped in it. */
static void write_summary(limit_slot_t *slot)
{
    if (slot->suppressed == 0) {
        return;
    }
    unsigned count = slot->suppressed;
    slot->suppressed = 0;
    limit_pending--;
    if (!log_enabled(slot->level)) {
        return;
    }
    write_line(slot->level, NULL, "repeated log lines suppressed",
               json_pack("{s:s, s:s, s:i, s:i}", "repeated_msg", slot->msg,
                         "repeat_key", slot->key, "suppressed", (int)count,
                         "window_ms", LIMIT_WINDOW_MS));
}


/* Writes the summaries of windows that ended before |now|. */
static void flush_ended(uint64_t now)
{
    for (size_t i = 0; i < LIMIT_SLOTS && limit_pending > 0; i++) {
        limit_slot_t *slot = &limit_slots[i];
        if (slot->suppressed > 0 &&
            now - slot->window_start_ms >= LIMIT_WINDOW_MS) {
            write_summary(slot);
        }
    }
}


void log_flush_suppressed(void)
{
    for (size_t i = 0; i < LIMIT_SLOTS && limit_pending > 0; i++) {
        write_summary(&limit_slots[i]);
    }
}


void log_event(log_level_t level, const char *request_id, const char *msg,
               json_t *fields)
{
    if (!log_enabled(level)) {
        json_decref(fields);
        return;
    }
    if (limit_pending > 0) {
        flush_ended(now_ms());
    }
    write_line(level, request_id, msg, fields);
}


/* FNV-1a, to spread keys over the slots. */
static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}


/* Finds the slot of |key|, or takes a free or the oldest one. */
static limit_slot_t *find_slot(const char *key)
{
    uint32_t h = hash_key(key);
    limit_slot_t *oldest = NULL;

    for (size_t i = 0; i < LIMIT_PROBES; i++) {
        limit_slot_t *slot = &limit_slots[(h + i) % LIMIT_SLOTS];
        if (slot->window_start_ms == 0) {
            return slot;
        }
        if (strncmp(slot->key, key, LIMIT_KEY_MAX - 1) == 0) {
            return slot;
        }
        if (oldest == NULL || slot->window_start_ms < oldest->window_start_ms) {
            oldest = slot;
        }
    }
    write_summary(oldest);
    oldest->window_start_ms = 0;
    return oldest;
}


void log_event_limited(log_level_t level, const char *request_id,
                       const char *msg, const char *key, json_t *fields)
{
    if (!log_enabled(level)) {
        json_decref(fields);
        return;
    }
    uint64_t now = now_ms();
    if (limit_pending > 0) {
        flush_ended(now);
    }
    limit_slot_t *slot = find_slot(key);
    if (slot->window_start_ms == 0 ||
        strncmp(slot->key, key, LIMIT_KEY_MAX - 1) != 0) {
        snprintf(slot->key, sizeof(slot->key), "%s", key);
        snprintf(slot->msg, sizeof(slot->msg), "%s", msg);
        slot->window_start_ms = now;
        slot->written = 0;
    }
    if (now - slot->window_start_ms >= LIMIT_WINDOW_MS) {
        slot->window_start_ms = now;
        slot->written = 0;
    }
    slot->level = level;
    if (slot->written < rate_limit) {
        slot->written++;
        write_line(level, request_id, msg, fields);
        return;
    }
    if (slot->suppressed == 0) {
        limit_pending++;
    }
    slot->suppressed++;
    json_decref(fields);
}


void log_msg(log_level_t level, const char *request_id, const char *fmt, ...)
{
    if (!log_enabled(level)) {
        return;
    }
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    log_event(level, request_id, text, NULL);
}
