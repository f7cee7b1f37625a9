/* One downstream HTTP exchange, as seen by the connection pools.
 *
 * The gateway fills the request fields, hands the call to a pool, and gets
 * exactly one on_done callback, unless it cancels the call first. The
 * callback is never made from inside the submit or cancel function itself,
 * so callers need not guard against re-entry. */
#ifndef TUTTI_UPCALL_H
#define TUTTI_UPCALL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct upcall_s upcall_t;

/* Called once when the call ends. |err| is 0 when a complete response was
 * received (any status), else a TE_* code with call->errmsg set. */
typedef void (*upcall_done_cb)(upcall_t *call, int err);

/* Where a call is; the pools update it so that logs and the in-flight view
 * can tell what a stuck call waits on. */
typedef enum {
    UPCALL_IDLE = 0,   /* not started */
    UPCALL_RESOLVING,  /* waiting for DNS */
    UPCALL_CONNECTING, /* waiting for a TCP connection or stream slot */
    UPCALL_WAITING,    /* request sent, no response byte yet */
    UPCALL_RECEIVING,  /* response headers or body arriving */
    UPCALL_DONE,       /* on_done was called */
    UPCALL_CANCELLED,  /* cancelled by the caller */
} upcall_phase_t;

typedef struct upcall_header_s {
    const char *name; /* lower-case field name */
    const char *value;
} upcall_header_t;

/* The message of a call whose response body passes max_body; the gateway
 * sets max_body from max_response_body_bytes, so the message names it. */
#define UPCALL_BODY_LIMIT_FMT                                                  \
    "response body larger than the max_response_body_bytes limit of %zu bytes"

struct upcall_s {
    /* Request, owned by the caller and valid until on_done or cancel. */
    const char *method;    /* "GET", "POST", ... */
    const char *path;      /* origin-form target, already percent-encoded */
    const char *authority; /* value for Host / :authority */
    const upcall_header_t *headers; /* extra header fields */
    size_t nheaders;
    const char *body; /* may be NULL */
    size_t body_len;
    size_t max_body; /* a larger response body fails with TE_BAD_RESPONSE */
    upcall_done_cb on_done;
    void *data; /* caller's pointer */
    /* uv_hrtime() by which the call ends. Pools use it to decide whether a
     * retry (another connection, another address) still has time; the
     * caller's own timer enforces it. 0: none. */
    uint64_t deadline_ns;

    /* Result, valid in on_done. */
    int status;       /* HTTP status, 0 if none was received */
    buf_t body_out;   /* response body; the caller frees it */
    char errmsg[160]; /* human-readable reason when err != 0 */
    upcall_phase_t phase;
    char endpoint[64]; /* "ip:port" of the peer once known */

    /* Private to the pool that runs the call. */
    void *pool_conn;
    int32_t stream_id;
    upcall_t *queue_next; /* pools' waiting lists */

    /* Private to the dispatcher (clients/upstream.c). */
    int up_where;
    void *up_owner;
    upcall_done_cb up_user_done; /* the caller's on_done while running */
};

#endif
