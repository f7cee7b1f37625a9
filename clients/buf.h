/* Growable byte buffer used by the clients and the gateway. */
#ifndef TUTTI_BUF_H
#define TUTTI_BUF_H

#include <stddef.h>

typedef struct buf_s {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

/* Makes room for |extra| more bytes and the NUL after them, without
 * changing len. Returns 0 or TE_NOMEM. */
int buf_reserve(buf_t *b, size_t extra);

/* Appends |n| bytes; keeps data NUL-terminated. Returns 0 or TE_NOMEM. */
int buf_append(buf_t *b, const void *p, size_t n);
int buf_appendf(buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int buf_append_str(buf_t *b, const char *s);
void buf_reset(buf_t *b);
void buf_free(buf_t *b);

/* The value of the hexadecimal digit |c| (either case), or -1. */
int hex_digit_value(unsigned char c);

/* Decodes the percent-escape whose "%" is at |p|: returns the byte, or -1
 * when the next two characters are not hexadecimal digits. */
int percent_escape_value(const char *p);

#endif
