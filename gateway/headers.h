/* The header policy of downstream calls: which inbound fields a service
 * gets ("forward_headers"), which fields tutti sets for it
 * ("set_headers", whose values may hold {param} and {query.name}
 * placeholders), the X-Forwarded-* fields with "trusted_proxies", and the
 * removal of hop-by-hop fields.
 *
 * Every header a call carries is built here or in fanout.c. Static values
 * with CR, LF or NUL are rejected by the configuration check, and
 * placeholder values are percent-encoded. The server answers 400 to an
 * inbound value with CR or LF; libmicrohttpd 0.9.75 already cuts a value
 * at a NUL. */
#ifndef TUTTI_HEADERS_H
#define TUTTI_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include "buf.h"
#include "template.h"
#include "upcall.h"

/* A service's "forward_headers" and "set_headers". Names are stored in
 * lower case. */
typedef struct header_policy_s {
    char **forward; /* inbound fields copied onto each call */
    size_t nforward;
    char **set_names; /* fields tutti sets on each call */
    char **set_texts; /* their value templates as written */
    size_t nset;
} header_policy_t;

/* One "trusted_proxies" entry: an IPv4 or IPv6 network. */
typedef struct cidr_s {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix; /* bits, at most 32 or 128 */
} cidr_t;

struct header_block_s;

/* Header fields of one call. The names and values are copies in blocks
 * owned by the list, a few fields to a block, so that a call's fields
 * cost one or two allocations; the names are in lower case. A list that
 * is all zeros is empty. */
typedef struct header_list_s {
    upcall_header_t *items;
    size_t count;
    size_t cap;
    struct header_block_s *blocks; /* storage of the strings, newest first */
} header_list_t;

/* What the policy needs from one inbound request. The fields are
 * borrowed and must stay valid while headers_build_call runs. */
typedef struct headers_request_s {
    const upcall_header_t *inbound; /* every inbound field, as received */
    size_t ninbound;
    const char *forwarded_for;   /* X-Forwarded-For value to send */
    const char *forwarded_proto; /* X-Forwarded-Proto value to send */
    const char *forwarded_host;  /* X-Forwarded-Host value, or NULL */
    const char *tracestate;      /* inbound tracestate to pass, or NULL */
} headers_request_t;

/* Checks that |s| is an HTTP field name (RFC 9110 token). */
bool headers_is_token(const char *s);

/* Returns why a configured header may not name |name| (any case): it is
 * hop-by-hop, or tutti sets it on every call. Returns NULL when the name
 * may be configured. */
const char *headers_reserved_reason(const char *name);

/* Checks that the |len| bytes of |v| contain no control byte but tab: CR,
 * LF and NUL would end a field or a request early (request splitting),
 * and RFC 9110 allows no other control byte in a field value, so an
 * HTTP/2 peer resets a stream that carries one. */
bool headers_value_safe(const char *v, size_t len);

/* Compiles a "set_headers" value: literal text with {name} (a route
 * parameter from |params|) and {query.name} placeholders. Literal text
 * must contain no control character but HTAB. With |params| NULL only the
 * syntax is checked and any {name} is accepted. On error returns
 * TE_INVALID (TE_NOMEM) and writes the reason to |err|. */
int headers_compile_value(const char *text, char *const *params, size_t nparams,
                          template_t *out, char *err, size_t errlen);

/* Appends the expansion of a compiled value to |out|. Placeholder values
 * have every control byte, DEL, "%" and non-ASCII byte percent-encoded,
 * so the result is a valid field value that a service can decode.
 * Returns 0 or TE_NOMEM. */
int headers_expand_value(const template_t *t, const char *const *values,
                         template_query_fn query, void *query_arg, buf_t *out);

/* Parses "ADDR" or "ADDR/BITS" with an IPv4 or IPv6 address. Host bits
 * set beyond the prefix are allowed and ignored. Returns 0 or
 * TE_INVALID. */
int headers_parse_cidr(const char *s, cidr_t *out);

/* Checks whether |sa| is inside one of the |n| networks. An IPv4-mapped
 * IPv6 address (::ffff:a.b.c.d) matches IPv4 networks. */
bool headers_cidr_match(const cidr_t *list, size_t n,
                        const struct sockaddr *sa);

/* Writes the address of |sa| without port or brackets, IPv4-mapped IPv6
 * as IPv4, into |out|. */
void headers_peer_text(const struct sockaddr *sa, char *out, size_t len);

/* Returns the value of the only inbound field named |name| (any case), or
 * NULL when there is none or more than one. */
const char *headers_single(const upcall_header_t *fields, size_t n,
                           const char *name);

/* Appends the values of every field named |name| to |out|, joined with
 * ", ". Returns the number of fields found, or TE_NOMEM. */
int headers_join(const upcall_header_t *fields, size_t n, const char *name,
                 buf_t *out);

/* Checks whether a Connection field of the request lists |name|, which
 * makes that field hop-by-hop (RFC 9110, 7.6.1). */
bool headers_connection_lists(const upcall_header_t *fields, size_t n,
                              const char *name);

/* Builds the X-Forwarded-* values of a request from a peer at |peer|
 * (text form): with |trusted| the inbound X-Forwarded-For list gets the
 * peer appended and inbound X-Forwarded-Proto and X-Forwarded-Host are
 * kept; otherwise the peer alone, "http" and the inbound Host. Returns 0
 * or TE_NOMEM; |forwarded_for|, |proto| and |host| receive the texts,
 * |host| empty when the request has no Host. */
int headers_forwarded(const upcall_header_t *fields, size_t n, const char *peer,
                      bool trusted, buf_t *forwarded_for, buf_t *proto,
                      buf_t *host);

/* Appends a copy of |name| (lower-cased) and |value|. Returns 0 or
 * TE_NOMEM. */
int header_list_add(header_list_t *l, const char *name, const char *value);

/* Returns the value of |name| in |l|, or NULL. */
const char *header_list_get(const header_list_t *l, const char *name);

void header_list_free(header_list_t *l);

/* Adds the policy's fields for one call to |l|: the X-Forwarded-* fields
 * and tracestate of |req|, the inbound fields |policy| forwards (never one
 * that a Connection field lists, and never one that the policy also
 * sets), and the |policy|'s "set_headers" with |set_values|, the
 * compiled values in the same order, expanded. Returns 0 or TE_NOMEM. */
int headers_build_call(header_list_t *l, const header_policy_t *policy,
                       const template_t *set_values,
                       const headers_request_t *req, const char *const *values,
                       template_query_fn query, void *query_arg);

/* Checks whether |name| is a field whose value is never logged:
 * Authorization, Cookie, Proxy-Authorization or one of the |n| names of
 * |secrets| ("secret_headers"). */
bool headers_is_secret(const char *name, char *const *secrets, size_t n);

/* Describes |l| for a log line as {name: value}, with the value of each
 * secret field replaced by "[redacted]". Returns a new reference. */
json_t *headers_log_json(const header_list_t *l, char *const *secrets,
                         size_t n);

/* Copies |src| into |dst|. Returns 0 or TE_NOMEM (|dst| is then empty). */
int header_policy_copy(header_policy_t *dst, const header_policy_t *src);

void header_policy_free(header_policy_t *p);

#endif
