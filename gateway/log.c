/* Structured JSON log lines on stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"

static log_level_t min_level = LOG_INFO;
static __thread int thread_worker = -1;

static const char *const level_names[] = {"debug", "info", "warn", "error"};


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


void log_event(log_level_t level, const char *request_id, const char *msg,
               json_t *fields)
{
    if (!log_enabled(level)) {
        json_decref(fields);
        return;
    }

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
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                      JSON_REAL_PRECISION(9));
    json_decref(line);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n';
    /* One write per line keeps lines from several threads whole. The
     * terminating NUL is overwritten; json_dumps allocated len + 1. */
    ssize_t n = write(STDERR_FILENO, text, len + 1);
    (void)n;
    free(text);
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
