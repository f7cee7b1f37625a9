/* Structured logging: one JSON object per line on stderr.
 *
 * Only the gateway layer logs; the clients return codes. A line is
 * written with one write(2) so lines from several workers do not
 * interleave. */
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

/* Sets the minimum level written. Call before the workers start. */
void log_set_level(log_level_t level);

/* Parses "debug", "info", "warn" or "error". Returns 0 or TE_INVALID. */
int log_parse_level(const char *name, log_level_t *out);

bool log_enabled(log_level_t level);

/* Sets the worker number written on this thread's lines; -1, the
 * default, writes "main". */
void log_set_worker(int worker);

/* Writes one line {"time", "level", "worker", "msg", "request_id"?, ...}
 * with the members of |fields| added. Takes ownership of |fields|, which
 * may be NULL. |request_id| may be NULL. */
void log_event(log_level_t level, const char *request_id, const char *msg,
               json_t *fields);

/* Writes one line whose "msg" is the formatted text. */
void log_msg(log_level_t level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
