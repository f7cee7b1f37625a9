/* Error codes shared by the clients and the gateway. Library codes
 * (UV_E*, NGHTTP2_ERR_*, ARES_E*, HPE_*) are converted to these once, where
 * the library is called. */
#ifndef TUTTI_ERRORS_H
#define TUTTI_ERRORS_H

#include <stddef.h>

enum {
    TE_OK = 0,
    TE_NOMEM = -1,        /* allocation failed */
    TE_RESOLVE = -2,      /* the host name did not resolve */
    TE_CONNECT = -3,      /* no TCP connection could be made */
    TE_RESET = -4,        /* connection or stream ended before a response */
    TE_BAD_RESPONSE = -5, /* malformed, truncated or oversized response */
    TE_CANCELLED = -6,    /* the caller cancelled the call */
    TE_INVALID = -7,      /* invalid argument */
    TE_OVERLOADED = -8,   /* a concurrency limit rejected the call */
};

/* Returns the error "kind" used in JSON error objects, e.g. "connect". */
const char *te_kind(int err);

/* Returns the message for the errno value |err| from strerror_r. The result
 * is |buf| (|len| bytes, owned by the caller) or a static string, and reads
 * "error N" when strerror_r fails. */
const char *te_errno_text(int err, char *buf, size_t len);

#endif
