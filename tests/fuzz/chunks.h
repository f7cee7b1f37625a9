/* Input layout of the h1 and h2 fuzz targets: a byte stream from the peer
 * and the points where the transport splits it into reads.
 *
 *   byte 0        number of cuts, modulo CHUNKS_MAX_CUTS + 1
 *   2 bytes each  cut offsets, big-endian, modulo the stream length + 1
 *   the rest      the stream
 *
 * An input too short for its cuts has fewer cuts. */
#ifndef TUTTI_FUZZ_CHUNKS_H
#define TUTTI_FUZZ_CHUNKS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNKS_MAX_CUTS 7

typedef struct chunks_s {
    const uint8_t *stream;
    size_t len;
    size_t bounds[CHUNKS_MAX_CUTS + 2]; /* 0, sorted cuts, len */
    size_t nbounds;
} chunks_t;


static int chunks_compare(const void *a, const void *b)
{
    size_t x = *(const size_t *)a;
    size_t y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}


static void chunks_parse(chunks_t *c, const uint8_t *data, size_t size)
{
    size_t ncuts = 0;
    size_t raw[CHUNKS_MAX_CUTS];

    if (size > 0) {
        ncuts = data[0] % (CHUNKS_MAX_CUTS + 1);
        data++;
        size--;
    }
    if (ncuts * 2 > size) {
        ncuts = size / 2;
    }
    for (size_t i = 0; i < ncuts; i++) {
        raw[i] = ((size_t)data[2 * i] << 8) | data[2 * i + 1];
    }
    c->stream = data + ncuts * 2;
    c->len = size - ncuts * 2;
    c->nbounds = 0;
    c->bounds[c->nbounds++] = 0;
    for (size_t i = 0; i < ncuts; i++) {
        c->bounds[c->nbounds++] = raw[i] % (c->len + 1);
    }
    c->bounds[c->nbounds++] = c->len;
    qsort(c->bounds, c->nbounds, sizeof(c->bounds[0]), chunks_compare);
}


/* Returns the |i|th chunk (possibly empty) through |data| and |len|, or 0
 * when there are no more. */
static int chunks_get(const chunks_t *c, size_t i, const char **data,
                      size_t *len)
{
    if (i + 1 >= c->nbounds) {
        return 0;
    }
    *data = (const char *)c->stream + c->bounds[i];
    *len = c->bounds[i + 1] - c->bounds[i];
    return 1;
}

#endif
