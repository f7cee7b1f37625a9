/* The JSON bodies of tutti's responses, and the status of each outcome. */
#ifndef TUTTI_AGGREGATE_H
#define TUTTI_AGGREGATE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "buf.h"

/* Why a call failed, as written in error objects. */
typedef enum {
    KIND_TIMEOUT = 0, /* the call's own timeout ran out */
    KIND_DEADLINE,    /* the request's deadline passed */
    KIND_CONNECT,
    KIND_RESOLVE,
    KIND_RESET,
    KIND_STATUS,       /* the downstream returned a status >= 400 */
    KIND_BAD_RESPONSE, /* the body is not JSON, empty, too large, cut */
    KIND_SHUTDOWN,     /* the gateway stopped before the call ended */
    KIND_INTERNAL,     /* the gateway itself failed (out of memory) */
    KIND_OVERLOADED,   /* the service's max_concurrent_calls was reached */
} fail_kind_t;

const char *aggregate_kind_name(fail_kind_t kind);

/* Maps a TE_* code from the clients to a kind. */
fail_kind_t aggregate_kind_from_error(int err);

/* Returns the status of tutti's response when a required call failed:
 * 504 for timeout and deadline, the downstream's own status for a 4xx,
 * 502 for 5xx, connect, resolve, reset and bad_response, 503 for
 * shutdown and overloaded, 500 for internal. */
int aggregate_status(fail_kind_t kind, int downstream_status);

/* Builds {"call", "kind", "status"?, "message", "elapsed_ms"}. |status| is
 * written only when > 0. Returns a new reference or NULL. */
json_t *aggregate_error_object(const char *call, fail_kind_t kind, int status,
                               const char *message, int64_t elapsed_ms);

/* Serialises {"error": |error|}; steals |error|. Returns malloc'd text. */
char *aggregate_error_body(json_t *error, size_t *len);

/* Serialises a gateway-level error {"error": {"kind", "message"}} such as
 * not_found or bad_request. Returns malloc'd text. */
char *aggregate_simple_error(const char *kind, const char *message,
                             size_t *len);

/* Checks a downstream body: a 204 stands for JSON null, any other status
 * needs exactly one JSON text (object, array or scalar). Returns 0, or
 * TE_BAD_RESPONSE with the reason in |why|. */
int aggregate_check_body(int status, const char *body, size_t len, char *why,
                         size_t whylen);

/* Appends the member "|name|": |raw| to the answer object being built in
 * |out|, opening the object first when |out| is empty. |raw| is a body that
 * passed aggregate_check_body, or NULL for a 204; it is copied byte for
 * byte, so numbers keep the text the downstream wrote. Returns 0 or
 * TE_NOMEM. */
int aggregate_add_result(buf_t *out, const char *name, const char *raw,
                         size_t len);

/* Closes the answer object in |out|, adding "errors": |errors| when
 * |errors| is not NULL. Returns 0 or TE_NOMEM. */
int aggregate_finish(buf_t *out, const json_t *errors);

#endif
