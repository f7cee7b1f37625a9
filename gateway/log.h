/* Structured logging: one line per event on stderr, a JSON object by
 * default or "time level worker msg key=value ..." text.
 *
 * Only the gateway layer logs; the clients return codes. A line is
 * written with one write(2) so lines from several workers do not
 * interleave. No line carries a header value: the one that lists call
 * headers (debug level) redacts the secret ones. */
#ifndef TUTTI_LOG_H
#define TUTTI_LOG_H

#include <stdbool.h>

#include <jansson.h>

typedef enum {
    LOG_DEBUG = 0,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR,
} log_level_t;

typedef enum {
    LOG_FORMAT_JSON = 0, /* one JSON object per line (the default) */
    LOG_FORMAT_TEXT,     /* "time level worker msg key=value ..." */
} log_format_t;

/* Lines per second that log_event_limited writes for one key on one
 * thread, unless log_set_rate_limit changes it. */
#define LOG_RATE_LIMIT_DEFAULT 10

/* Sets the minimum level written. Call before the workers start. */
void log_set_level(log_level_t level);

/* Parses "debug", "info", "warn" or "error". Returns 0 or TE_INVALID. */
int log_parse_level(const char *name, log_level_t *out);

bool log_enabled(log_level_t level);

/* Parses "json" or "text". Returns 0 or TE_INVALID. */
int log_parse_format(const char *name, log_format_t *out);

/* Sets the line format. Call before the workers start. */
void log_set_format(log_format_t format);

/* Sets how many lines per second log_event_limited writes for one key on
 * one thread (at least 1). Call before the workers start. */
void log_set_rate_limit(unsigned per_second);

/* Sets the worker number written on this thread's lines; -1, the
 * default, writes "main". */
void log_set_worker(int worker);

/* Writes one line {"time", "level", "worker", "msg", "request_id"?, ...}
 * with the members of |fields| added. Takes ownership of |fields|, which
 * may be NULL. |request_id| may be NULL. */
void log_event(log_level_t level, const char *request_id, const char *msg,
               json_t *fields);

/* Writes like log_event, at most the rate limit of lines per second for
 * each |key| on the calling thread; |key| names the repeated error, such
 * as the message with the service and call. Lines over the limit are
 * counted, and once their second is over one line "repeated log lines
 * suppressed" gives the count with "repeated_msg" and "repeat_key". That
 * line is written by the next log line of the thread, so a thread that
 * logs nothing more writes it only at log_flush_suppressed. */
void log_event_limited(log_level_t level, const char *request_id,
                       const char *msg, const char *key, json_t *fields);

/* Writes the pending "suppressed" lines of the calling thread. */
void log_flush_suppressed(void);

/* Writes one line whose "msg" is the formatted text. */
void log_msg(log_level_t level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
