/* Header policy of downstream calls: validation, placeholder expansion,
 * X-Forwarded-* and hop-by-hop removal. */
#include "headers.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "errors.h"

#define REDACTED "[redacted]"

/* Hop-by-hop fields (RFC 9110, 7.6.1, and RFC 9112, 7); every name
 * starting with "proxy-" is treated as one too. HTTP/2 forbids them on a
 * request (RFC 9113, 8.2.2). */
static const char *const HOP_BY_HOP[] = {
    "connection", "keep-alive", "te", "transfer-encoding", "upgrade",
};

/* Fields tutti writes on every call itself, or the pools do. */
static const char *const TUTTI_FIELDS[] = {
    "host",
    "content-length",
    "x-request-id",
    "request-timeout-ms",
    "traceparent",
    "tracestate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "accept",
    "content-type",
};

/* Fields never logged, whatever "secret_headers" contains. */
static const char *const ALWAYS_SECRET[] = {
    "authorization",
    "cookie",
    "proxy-authorization",
};

#define NITEMS(a) (sizeof(a) / sizeof((a)[0]))


static bool name_in(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(name, list[i]) == 0) {
            return true;
        }
    }
    return false;
}


bool headers_is_token(const char *s)
{
    static const char punct[] = "!#$%&'*+-.^_`|~";

    if (s == NULL || s[0] == '\0') {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || strchr(punct, c) != NULL;
        if (!ok) {
            return false;
        }
    }
    return true;
}


const char *headers_reserved_reason(const char *name)
{
    if (name_in(name, HOP_BY_HOP, NITEMS(HOP_BY_HOP)) ||
        strncasecmp(name, "proxy-", 6) == 0) {
        return "is a hop-by-hop field, which is never forwarded";
    }
    if (name_in(name, TUTTI_FIELDS, NITEMS(TUTTI_FIELDS))) {
        return "is set by tutti on every call";
    }
    /* tutti handles Expect: 100-continue itself and sends a call's body
     * at once, so the field means nothing to a service. */
    if (strcasecmp(name, "expect") == 0) {
        return "is handled by tutti and never forwarded";
    }
    return NULL;
}


bool headers_value_safe(const char *v, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return false;
        }
    }
    return true;
}


int headers_compile_value(const char *text, char *const *params, size_t nparams,
                          template_t *out, char *err, size_t errlen)
{
    return template_compile_syntax(text, TEMPLATE_HEADER, params, nparams, out,
                                   err, errlen);
}


int headers_expand_value(const template_t *t, const char *const *values,
                         template_query_fn query, void *query_arg, buf_t *out)
{
    return template_expand(t, values, query, query_arg, out);
}


int headers_parse_cidr(const char *s, cidr_t *out)
{
    char text[INET6_ADDRSTRLEN + 8];
    const char *slash = strchr(s, '/');
    size_t addr_len = slash != NULL ? (size_t)(slash - s) : strlen(s);

    if (addr_len == 0 || addr_len >= INET6_ADDRSTRLEN) {
        return TE_INVALID;
    }
    memcpy(text, s, addr_len);
    text[addr_len] = '\0';
    memset(out, 0, sizeof(*out));
    unsigned max;
    if (inet_pton(AF_INET, text, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, text, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return TE_INVALID;
    }
    out->prefix = max;
    if (slash == NULL) {
        return 0;
    }
    const char *bits = slash + 1;
    size_t nbits = strlen(bits);
    if (nbits == 0 || nbits > 3 || strspn(bits, "0123456789") != nbits) {
        return TE_INVALID;
    }
    long prefix = strtol(bits, NULL, 10);
    if (prefix > (long)max) {
        return TE_INVALID;
    }
    out->prefix = (unsigned)prefix;
    return 0;
}


static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8;
    if (memcmp(a, b, whole) != 0) {
        return false;
    }
    unsigned rest = bits % 8;
    if (rest == 0) {
        return true;
    }
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}


/* Reads the address of |sa| as IPv4 (|v4|) or IPv6 (|v6|); returns the
 * family, AF_INET for an IPv4-mapped IPv6 address, or 0. */
static int peer_address(const struct sockaddr *sa, uint8_t v4[4],
                        uint8_t v6[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0,    0,
                                       0, 0, 0, 0, 0xff, 0xff};
    if (sa == NULL) {
        return 0;
    }
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memcpy(v4, &s4->sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(v6, &s6->sin6_addr, 16);
        if (memcmp(v6, mapped, sizeof(mapped)) == 0) {
            memcpy(v4, v6 + 12, 4);
            return AF_INET;
        }
        return AF_INET6;
    }
    return 0;
}


bool headers_cidr_match(const cidr_t *list, size_t n, const struct sockaddr *sa)
{
    uint8_t v4[4];
    uint8_t v6[16];
    int family = peer_address(sa, v4, v6);

    for (size_t i = 0; i < n && family != 0; i++) {
        if (list[i].family != family) {
            continue;
        }
        const uint8_t *addr = family == AF_INET ? v4 : v6;
        if (prefix_equal(addr, list[i].addr, list[i].prefix)) {
            return true;
        }
    }
    return false;
}


void headers_peer_text(const struct sockaddr *sa, char *out, size_t len)
{
    uint8_t v4[4];
    uint8_t v6[16];
    int family = peer_address(sa, v4, v6);

    if (family == 0 ||
        inet_ntop(family, family == AF_INET ? (void *)v4 : (void *)v6, out,
                  (socklen_t)len) == NULL) {
        snprintf(out, len, "unknown");
    }
}


const char *headers_single(const upcall_header_t *fields, size_t n,
                           const char *name)
{
    const char *found = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(fields[i].name, name) != 0) {
            continue;
        }
        if (found != NULL) {
            return NULL;
        }
        found = fields[i].value;
    }
    return found;
}


static int join_fields(const upcall_header_t *fields, size_t n,
                       const char *name, const char *sep, buf_t *out)
{
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(fields[i].name, name) != 0) {
            continue;
        }
        if ((found > 0 && buf_append_str(out, sep) != 0) ||
            buf_append_str(out, fields[i].value) != 0) {
            return TE_NOMEM;
        }
        found++;
    }
    return found;
}


int headers_join(const upcall_header_t *fields, size_t n, const char *name,
                 buf_t *out)
{
    return join_fields(fields, n, name, ", ", out);
}


/* Checks whether the comma-separated list |list| contains |name|. */
static bool list_has_token(const char *list, const char *name)
{
    size_t name_len = strlen(name);
    const char *p = list;

    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        size_t len = strcspn(p, ",");
        size_t end = len;
        while (end > 0 && (p[end - 1] == ' ' || p[end - 1] == '\t')) {
            end--;
        }
        if (end == name_len && end > 0 && strncasecmp(p, name, end) == 0) {
            return true;
        }
        p += len;
    }
    return false;
}


bool headers_connection_lists(const upcall_header_t *fields, size_t n,
                              const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(fields[i].name, "connection") == 0 &&
            list_has_token(fields[i].value, name)) {
            return true;
        }
    }
    return false;
}


int headers_forwarded(const upcall_header_t *fields, size_t n, const char *peer,
                      bool trusted, buf_t *forwarded_for, buf_t *proto,
                      buf_t *host)
{
    int found = 0;

    if (trusted) {
        found = headers_join(fields, n, "x-forwarded-for", forwarded_for);
        if (found < 0) {
            return found;
        }
    }
    /* An empty inbound list adds nothing but the peer. */
    if (found > 0 && forwarded_for->len > 0 &&
        buf_append_str(forwarded_for, ", ") != 0) {
        return TE_NOMEM;
    }
    if (buf_append_str(forwarded_for, peer) != 0) {
        return TE_NOMEM;
    }

    found = trusted ? headers_join(fields, n, "x-forwarded-proto", proto) : 0;
    if (found < 0) {
        return found;
    }
    if (found == 0 && buf_append_str(proto, "http") != 0) {
        return TE_NOMEM;
    }

    found = trusted ? headers_join(fields, n, "x-forwarded-host", host) : 0;
    if (found == 0) {
        found = headers_join(fields, n, "host", host);
    }
    if (found < 0 || buf_append(host, "", 0) != 0) {
        return TE_NOMEM;
    }
    return 0;
}


/* Size of a block of header_list_t strings: room for the fields tutti
 * sends on a typical call (about 300 bytes), and small enough for glibc's
 * per-thread cache of freed chunks (up to 1032 bytes). A longer field
 * gets a block of its own size. */
#define HEADER_BLOCK_SIZE 480

struct header_block_s {
    struct header_block_s *next;
    size_t used;
    size_t size;
    char data[];
};


/* Returns |n| bytes of string storage of |l|, or NULL. Earlier strings
 * never move, because a full block is left as it is. */
static char *header_list_alloc(header_list_t *l, size_t n)
{
    struct header_block_s *b = l->blocks;
    if (b == NULL || b->size - b->used < n) {
        size_t size = n > HEADER_BLOCK_SIZE ? n : HEADER_BLOCK_SIZE;
        b = malloc(sizeof(*b) + size);
        if (b == NULL) {
            return NULL;
        }
        b->next = l->blocks;
        b->used = 0;
        b->size = size;
        l->blocks = b;
    }
    char *p = b->data + b->used;
    b->used += n;
    return p;
}


int header_list_add(header_list_t *l, const char *name, const char *value)
{
    if (l->count == l->cap) {
        size_t cap = l->cap > 0 ? 2 * l->cap : 8;
        upcall_header_t *items = realloc(l->items, cap * sizeof(*items));
        if (items == NULL) {
            return TE_NOMEM;
        }
        l->items = items;
        l->cap = cap;
    }
    size_t nlen = strlen(name);
    size_t vlen = strlen(value);
    char *block = header_list_alloc(l, nlen + vlen + 2);
    if (block == NULL) {
        return TE_NOMEM;
    }
    for (size_t i = 0; i < nlen; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c - 'A' + 'a');
        }
        block[i] = c;
    }
    block[nlen] = '\0';
    memcpy(block + nlen + 1, value, vlen + 1);
    l->items[l->count++] = (upcall_header_t){block, block + nlen + 1};
    return 0;
}


const char *header_list_get(const header_list_t *l, const char *name)
{
    for (size_t i = 0; i < l->count; i++) {
        if (strcasecmp(l->items[i].name, name) == 0) {
            return l->items[i].value;
        }
    }
    return NULL;
}


void header_list_free(header_list_t *l)
{
    while (l->blocks != NULL) {
        struct header_block_s *b = l->blocks;
        l->blocks = b->next;
        free(b);
    }
    free(l->items);
    *l = (header_list_t){0};
}


static bool policy_sets(const header_policy_t *policy, const char *name)
{
    for (size_t i = 0; i < policy->nset; i++) {
        if (strcasecmp(policy->set_names[i], name) == 0) {
            return true;
        }
    }
    return false;
}


/* Copies the inbound fields named |name| onto the call as one field. */
static int forward_field(header_list_t *l, const headers_request_t *req,
                         const char *name)
{
    buf_t joined = {0};
    /* Cookie pairs are joined with "; " when fields are combined (RFC
     * 9113, 8.2.3); other lists with ", " (RFC 9110, 5.3). */
    const char *sep = strcasecmp(name, "cookie") == 0 ? "; " : ", ";
    int found = join_fields(req->inbound, req->ninbound, name, sep, &joined);
    int rc = found < 0 ? found : 0;
    if (found > 0) {
        rc = header_list_add(l, name, joined.data);
    }
    buf_free(&joined);
    return rc;
}


int headers_build_call(header_list_t *l, const header_policy_t *policy,
                       const template_t *set_values,
                       const headers_request_t *req, const char *const *values,
                       template_query_fn query, void *query_arg)
{
    int rc = 0;

    if (req->forwarded_for != NULL) {
        rc = header_list_add(l, "x-forwarded-for", req->forwarded_for);
    }
    if (rc == 0 && req->forwarded_proto != NULL) {
        rc = header_list_add(l, "x-forwarded-proto", req->forwarded_proto);
    }
    if (rc == 0 && req->forwarded_host != NULL &&
        req->forwarded_host[0] != '\0') {
        rc = header_list_add(l, "x-forwarded-host", req->forwarded_host);
    }
    if (rc == 0 && req->tracestate != NULL) {
        rc = header_list_add(l, "tracestate", req->tracestate);
    }
    for (size_t i = 0; policy != NULL && i < policy->nforward && rc == 0; i++) {
        const char *name = policy->forward[i];
        /* The configuration check keeps hop-by-hop names out of the
         * policy; a field the client made hop-by-hop through Connection
         * is dropped here. */
        if (headers_connection_lists(req->inbound, req->ninbound, name) ||
            policy_sets(policy, name)) {
            continue;
        }
        rc = forward_field(l, req, name);
    }
    for (size_t i = 0; policy != NULL && i < policy->nset && rc == 0; i++) {
        buf_t value = {0};
        rc = headers_expand_value(&set_values[i], values, query, query_arg,
                                  &value);
        if (rc == 0) {
            rc = header_list_add(l, policy->set_names[i], value.data);
        }
        buf_free(&value);
    }
    return rc;
}


bool headers_is_secret(const char *name, char *const *secrets, size_t n)
{
    if (name_in(name, ALWAYS_SECRET, NITEMS(ALWAYS_SECRET))) {
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(name, secrets[i]) == 0) {
            return true;
        }
    }
    return false;
}


json_t *headers_log_json(const header_list_t *l, char *const *secrets, size_t n)
{
    json_t *obj = json_object();
    for (size_t i = 0; obj != NULL && i < l->count; i++) {
        const upcall_header_t *h = &l->items[i];
        const char *value =
            headers_is_secret(h->name, secrets, n) ? REDACTED : h->value;
        json_object_set_new(obj, h->name, json_string(value));
    }
    return obj;
}


static char **copy_names(char *const *src, size_t n, bool *nomem)
{
    if (n == 0) {
        return NULL;
    }
    char **dst = calloc(n, sizeof(*dst));
    if (dst == NULL) {
        *nomem = true;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        dst[i] = strdup(src[i]);
        if (dst[i] == NULL) {
            *nomem = true;
        }
    }
    return dst;
}


static void free_names(char **names, size_t n)
{
    for (size_t i = 0; names != NULL && i < n; i++) {
        free(names[i]);
    }
    free(names);
}


int header_policy_copy(header_policy_t *dst, const header_policy_t *src)
{
    bool nomem = false;

    *dst = (header_policy_t){0};
    dst->forward = copy_names(src->forward, src->nforward, &nomem);
    dst->nforward = src->nforward;
    dst->set_names = copy_names(src->set_names, src->nset, &nomem);
    dst->set_texts = copy_names(src->set_texts, src->nset, &nomem);
    dst->nset = src->nset;
    if (nomem) {
        header_policy_free(dst);
        return TE_NOMEM;
    }
    return 0;
}


void header_policy_free(header_policy_t *p)
{
    free_names(p->forward, p->nforward);
    free_names(p->set_names, p->nset);
    free_names(p->set_texts, p->nset);
    *p = (header_policy_t){0};
}
