/* Configuration loading: JSON text to a validated config_t. Every problem
 * is collected, with the JSON path of the bad value, before the caller
 * sees any result, so one run shows the user all the fixes to make. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "errors.h"
#include "router.h"

#define DEFAULT_LISTEN_HOST "127.0.0.1"
#define DEFAULT_LISTEN_PORT 8080
#define DEFAULT_MAX_REQUEST_BODY (1024 * 1024)
#define DEFAULT_MAX_RESPONSE_BODY (8 * 1024 * 1024)
#define DEFAULT_SHUTDOWN_GRACE_MS 25000
#define DEFAULT_DRAIN_DELAY_MS 5000
#define DEFAULT_DEADLINE_MS 1000
#define DEFAULT_MAX_CONNECTIONS 128
#define DEFAULT_CONNECT_TIMEOUT_MS 250
#define DEFAULT_IDLE_TIMEOUT_MS 30000
#define DEFAULT_PING_INTERVAL_MS 10000
#define DEFAULT_DNS_MIN_TTL_MS 1000
#define DEFAULT_DNS_MAX_TTL_MS 60000
#define DEFAULT_DNS_MAX_STALE_MS 300000
#define DEFAULT_EJECT_AFTER 3
#define DEFAULT_EJECT_BASE_MS 1000
#define DEFAULT_EJECT_MAX_MS 30000
#define DEFAULT_MAX_IN_FLIGHT 10000
/* libmicrohttpd 0.9 zeroes the whole buffer after each response on a
 * kept-alive connection, so every open connection keeps this much memory
 * resident; 16 KiB is also Node's header limit. */
#define DEFAULT_MAX_HEADER_BYTES (16 * 1024)
#define DEFAULT_MAX_URL_BYTES 8192
#define DEFAULT_MAX_CONNECTIONS_INBOUND 10000
#define DEFAULT_CLIENT_TIMEOUT_MS 30000
/* libmicrohttpd keeps the request line, the headers and its own records
 * of them in one buffer of max_header_bytes; below this size ordinary
 * requests stop fitting. */
#define MIN_MAX_HEADER_BYTES 4096

#define TEMPLATE_ERR_MAX 512

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

#define URL_EXPECTED                                                           \
    "expected SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or "    \
    "srv+SCHEME://NAME"
#define URL_EXPECTED_TLS "expected https://HOST[:PORT] or h2://HOST[:PORT]"
#define URL_EXPECTED_SRV                                                       \
    "expected srv+SCHEME://NAME, where SCHEME is http, h2c, https or h2 and "  \
    "NAME is an SRV record name such as _http._tcp.orders.test"
#define LISTEN_EXPECTED                                                        \
    "expected HOST:PORT, where HOST is an IPv4 address, localhost or [IPv6]"
#define DNS_EXPECTED                                                           \
    "expected IP or IP:PORT, with an IPv6 address in brackets as in "          \
    "[::1]:53"

static const char *const ROOT_KEYS[] = {
    "listen",
    "admin",
    "services",
    "routes",
    "defaults",
    "resolver",
    "max_request_body_bytes",
    "max_response_body_bytes",
    "shutdown_grace_ms",
    "drain_delay_ms",
    "max_in_flight",
    "max_header_bytes",
    "max_url_bytes",
    "max_connections_inbound",
    "client_timeout_ms",
    "trusted_proxies",
    "secret_headers",
};
static const char *const RESOLVER_KEYS[] = {"servers", "timeout_ms", "tries"};
static const char *const ADMIN_KEYS[] = {"listen"};
/* "defaults" takes every service key but "url", so it is the tail of
 * this list. */
static const char *const SERVICE_KEYS[] = {
    "url",
    "timeout_ms",
    "max_connections",
    "connect_timeout_ms",
    "idle_timeout_ms",
    "ping_interval_ms",
    "dns_min_ttl_ms",
    "dns_max_ttl_ms",
    "dns_max_stale_ms",
    "eject_after",
    "eject_base_ms",
    "eject_max_ms",
    "max_concurrent_calls",
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
    "tls_verify",
    "forward_headers",
    "set_headers",
};
static const char *const *const DEFAULTS_KEYS = SERVICE_KEYS + 1;
#define NDEFAULTS_KEYS (NKEYS(SERVICE_KEYS) - 1)
static const char *const TLS_KEYS[] = {"ca_file", "cert_file", "key_file",
                                       "server_name", "tls_verify"};
static const char *const ROUTE_KEYS[] = {"method", "path", "deadline_ms",
                                         "calls"};
static const char *const CALL_KEYS[] = {
    "name",       "service",  "path",         "method",
    "timeout_ms", "required", "forward_body",
};


/* State of one parse: where messages go and the strings made for them. */
typedef struct parse_ctx_s {
    const char *file;
    config_errors_t *errs;
    size_t problems;
    bool nomem;
    bool services_known; /* "services" was an object, so names can be
                          * checked against it */
    char **scratch;      /* escaped copies of values quoted in messages */
    size_t nscratch;
    service_options_t defaults; /* built-in values and "defaults" */
} parse_ctx_t;


static int errors_add(config_errors_t *errs, char *line)
{
    char **lines = realloc(errs->lines, (errs->count + 1) * sizeof(*lines));
    if (lines == NULL) {
        free(line);
        return TE_NOMEM;
    }
    errs->lines = lines;
    errs->lines[errs->count++] = line;
    return 0;
}


/* Records one problem as "FILE: PATH: message". A NULL |path| stands for
 * the document root. */
static void report(parse_ctx_t *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report(parse_ctx_t *ctx, const char *path, const char *fmt, ...)
{
    buf_t line = {0};
    va_list ap;

    ctx->problems++;
    if (ctx->errs == NULL) {
        return;
    }
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        ctx->nomem = true;
        return;
    }
    char *msg = malloc((size_t)n + 1);
    if (msg == NULL) {
        ctx->nomem = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);

    int rc = buf_appendf(&line, "%s: %s: %s", ctx->file,
                         path != NULL ? path : "(root)", msg);
    free(msg);
    if (rc != 0 || errors_add(ctx->errs, line.data) != 0) {
        if (rc != 0) {
            buf_free(&line);
        }
        ctx->nomem = true;
    }
}


/* Returns |s| escaped for a one-line message (and in double quotes when
 * |quoted|). The copy lives until the parse ends. */
static const char *esc(parse_ctx_t *ctx, const char *s, bool quoted)
{
    buf_t b = {0};
    int rc = quoted ? buf_append(&b, "\"", 1) : 0;

    for (const char *p = s; *p != '\0' && rc == 0; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"' || c == '\\') {
            rc = buf_appendf(&b, "\\%c", c);
        } else if (c < 0x20 || c == 0x7f) {
            rc = buf_appendf(&b, "\\x%02X", c);
        } else {
            rc = buf_append(&b, p, 1);
        }
    }
    if (rc == 0 && quoted) {
        rc = buf_append(&b, "\"", 1);
    }
    if (rc == 0 && b.data == NULL) {
        rc = buf_append(&b, "", 0);
    }
    char **list = NULL;
    if (rc == 0) {
        list = realloc(ctx->scratch, (ctx->nscratch + 1) * sizeof(*list));
    }
    if (list == NULL) {
        buf_free(&b);
        ctx->nomem = true;
        return quoted ? "\"?\"" : "?";
    }
    ctx->scratch = list;
    ctx->scratch[ctx->nscratch++] = b.data;
    return b.data;
}


static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
        return "integer";
    case JSON_REAL:
        return "real";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    default:
        return "unknown";
    }
}


/* Formats a JSON path or message fragment that lives until the parse
 * ends. */
static const char *scratch_printf(parse_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const char *scratch_printf(parse_ctx_t *ctx, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) {
        ctx->nomem = true;
        return "?";
    }
    char **list = realloc(ctx->scratch, (ctx->nscratch + 1) * sizeof(*list));
    if (list == NULL) {
        free(s);
        ctx->nomem = true;
        return "?";
    }
    ctx->scratch = list;
    ctx->scratch[ctx->nscratch++] = s;
    return s;
}


/* Returns the path of |key| inside the value at |parent| (NULL: root). */
static const char *path_key(parse_ctx_t *ctx, const char *parent,
                            const char *key)
{
    if (parent == NULL) {
        return scratch_printf(ctx, "%s", key);
    }
    return scratch_printf(ctx, "%s.%s", parent, key);
}


static char *dup_string(parse_ctx_t *ctx, const char *s)
{
    char *copy = strdup(s);
    if (copy == NULL) {
        ctx->nomem = true;
    }
    return copy;
}


static void check_keys(parse_ctx_t *ctx, json_t *obj, const char *path,
                       const char *const *allowed, size_t nallowed)
{
    const char *key;
    json_t *value;

    json_object_foreach(obj, key, value)
    {
        bool known = false;
        for (size_t i = 0; i < nallowed && !known; i++) {
            known = strcmp(key, allowed[i]) == 0;
        }
        if (known) {
            continue;
        }
        buf_t list = {0};
        for (size_t i = 0; i < nallowed; i++) {
            if (buf_appendf(&list, "%s%s", i == 0 ? "" : ", ", allowed[i]) !=
                0) {
                ctx->nomem = true;
            }
        }
        const char *kpath = path_key(ctx, path, esc(ctx, key, false));
        report(ctx, kpath, "unknown key; expected one of %s",
               list.data != NULL ? list.data : "");
        buf_free(&list);
    }
}


/* Looks up |key| in |obj|. Returns the value, or NULL after reporting a
 * missing key when |required|. */
static json_t *get_key(parse_ctx_t *ctx, json_t *obj, const char *path,
                       const char *key, bool required)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL && required) {
        report(ctx, path, "missing key \"%s\"", key);
    }
    return v;
}


/* Fetches a string member. Returns NULL when it is absent or invalid
 * (reporting it when invalid, or when missing and |required|). */
static const char *get_string(parse_ctx_t *ctx, json_t *obj, const char *path,
                              const char *key, bool required)
{
    json_t *v = get_key(ctx, obj, path, key, required);
    if (v == NULL) {
        return NULL;
    }
    if (!json_is_string(v)) {
        const char *kpath = path_key(ctx, path, key);
        report(ctx, kpath, "expected a string, got %s", json_kind(v));
        return NULL;
    }
    return json_string_value(v);
}


/* Largest integer any key takes. Every integer is a duration in ms, a
 * count or a byte size; the cap keeps nanosecond deadline arithmetic far
 * from overflow (2^31 ms is about 24.8 days). */
#define CONFIG_INT_MAX INT32_MAX

/* Fetches an optional integer member that must be at least |min| (0 or
 * 1) and at most CONFIG_INT_MAX. Leaves |*out| unchanged when the key is
 * absent or invalid. */
static void get_int(parse_ctx_t *ctx, json_t *obj, const char *path,
                    const char *key, int64_t min, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    const char *expected = min > 0 ? "a positive" : "a non-negative";
    const char *kpath = path_key(ctx, path, key);
    if (!json_is_integer(v)) {
        report(ctx, kpath, "expected %s integer, got %s", expected,
               json_kind(v));
        return;
    }
    json_int_t n = json_integer_value(v);
    if (n < min) {
        report(ctx, kpath, "expected %s integer, got %lld", expected,
               (long long)n);
        return;
    }
    if (n > CONFIG_INT_MAX) {
        report(ctx, kpath, "expected %s integer no larger than %d, got %lld",
               expected, CONFIG_INT_MAX, (long long)n);
        return;
    }
    *out = (int64_t)n;
}


static void get_bool(parse_ctx_t *ctx, json_t *obj, const char *path,
                     const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL) {
        return;
    }
    if (!json_is_boolean(v)) {
        const char *kpath = path_key(ctx, path, key);
        report(ctx, kpath, "expected a boolean, got %s", json_kind(v));
        return;
    }
    *out = json_is_true(v);
}


/* Checks that |v| (at |path|) is an object, and reports it when not. */
static bool expect_object(parse_ctx_t *ctx, json_t *v, const char *path)
{
    if (json_is_object(v)) {
        return true;
    }
    report(ctx, path, "expected an object, got %s", json_kind(v));
    return false;
}


static bool expect_array(parse_ctx_t *ctx, json_t *v, const char *path)
{
    if (json_is_array(v)) {
        return true;
    }
    report(ctx, path, "expected an array, got %s", json_kind(v));
    return false;
}


/* An HTTP method: a token (letters, digits and the punctuation HTTP allows
 * in tokens) in upper case, because methods compare case-sensitively. */
static bool is_method(const char *s)
{
    static const char tchar_punct[] = "!#$%&'*+-.^_`|~";

    if (s[0] == '\0') {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr(tchar_punct, c) != NULL;
        if (!ok) {
            return false;
        }
    }
    return true;
}


/* Reports a "method" of a route or call that tutti cannot serve or send.
 * CONNECT requests a tunnel to an authority, not a resource at a path, so
 * it has no place in a route or a call. */
static bool check_method(parse_ctx_t *ctx, const char *path, const char *method)
{
    const char *mpath = path_key(ctx, path, "method");
    if (!is_method(method)) {
        report(ctx, mpath,
               "invalid method %s: expected an HTTP token in upper case, "
               "such as GET or POST",
               esc(ctx, method, true));
        return false;
    }
    if (strlen(method) > CONFIG_METHOD_MAX) {
        report(ctx, mpath, "method %s is longer than %d characters",
               esc(ctx, method, true), CONFIG_METHOD_MAX);
        return false;
    }
    if (strcmp(method, "CONNECT") == 0) {
        report(ctx, mpath,
               "method CONNECT opens a tunnel and cannot be used here; use "
               "GET, POST or another method that asks for a resource");
        return false;
    }
    return true;
}


/* Checks that every byte of |s| is a letter, a digit or one of |extra|. */
static bool is_name(const char *s, const char *extra)
{
    if (s[0] == '\0') {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char c = *p;
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  (c >= '0' && c <= '9') || strchr(extra, c) != NULL;
        if (!ok) {
            return false;
        }
    }
    return true;
}


/* Parses a decimal port of |len| bytes. Returns 0, -1 when it is not a
 * number, or -2 when it is outside 1..65535. */
static int parse_port(const char *s, size_t len, uint16_t *out)
{
    if (len == 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
    }
    if (len > 5) {
        return -2;
    }
    char digits[6];
    memcpy(digits, s, len);
    digits[len] = '\0';
    long port = strtol(digits, NULL, 10);
    if (port < 1 || port > 65535) {
        return -2;
    }
    *out = (uint16_t)port;
    return 0;
}


static bool is_ipv4(const char *s, size_t len)
{
    char text[INET_ADDRSTRLEN];
    struct in_addr addr;

    if (len >= sizeof(text)) {
        return false;
    }
    memcpy(text, s, len);
    text[len] = '\0';
    return inet_pton(AF_INET, text, &addr) == 1;
}


static bool is_ipv6(const char *s, size_t len)
{
    char text[INET6_ADDRSTRLEN];
    struct in6_addr addr;

    if (len >= sizeof(text)) {
        return false;
    }
    memcpy(text, s, len);
    text[len] = '\0';
    return inet_pton(AF_INET6, text, &addr) == 1;
}


/* A DNS host name: dot-separated labels of letters, digits, "-" and "_",
 * each at most 63 bytes long. */
static bool is_host_name(const char *s, size_t len)
{
    size_t label = 0;
    bool all_numeric = true;

    if (len == 0 || len > 253) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0) {
                return false;
            }
            label = 0;
            continue;
        }
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        bool digit = c >= '0' && c <= '9';
        if (!alpha && !digit && c != '-' && c != '_') {
            return false;
        }
        if (!digit) {
            all_numeric = false;
        }
        if (++label > 63) {
            return false;
        }
    }
    /* "1.2.3.400" would otherwise pass as a name and fail only at
     * resolution time. */
    return label > 0 && !all_numeric;
}


/* The parts of "HOST[:PORT]" or "[V6][:PORT]", pointing into the input. */
typedef struct hostport_s {
    const char *host;
    size_t host_len;
    bool bracketed;
    const char *port; /* NULL when absent */
    size_t port_len;
} hostport_t;

/* Splits "HOST[:PORT]" or "[V6][:PORT]" into the host without brackets
 * and the port text. Returns false when the shape is wrong. */
static bool split_hostport(const char *s, size_t len, hostport_t *hp)
{
    const char *end = s + len;
    const char *after;

    memset(hp, 0, sizeof(*hp));
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL) {
            return false;
        }
        hp->host = s + 1;
        hp->host_len = (size_t)(close - s - 1);
        hp->bracketed = true;
        after = close + 1;
    } else {
        const char *colon = memchr(s, ':', len);
        hp->host = s;
        hp->host_len = colon != NULL ? (size_t)(colon - s) : len;
        after = s + hp->host_len;
    }
    if (after == end) {
        return true;
    }
    if (*after != ':') {
        return false;
    }
    hp->port = after + 1;
    hp->port_len = (size_t)(end - hp->port);
    return true;
}


/* Copies |len| bytes of |s| into a new string. */
static char *dup_len(parse_ctx_t *ctx, const char *s, size_t len)
{
    char *copy = strndup(s, len);
    if (copy == NULL) {
        ctx->nomem = true;
    }
    return copy;
}


/* Parses the address |s| found at |path| ("listen", "admin.listen") into
 * |*host| (replacing it) and |*port|; reports a problem otherwise. */
static void parse_listen_address(parse_ctx_t *ctx, const char *path,
                                 const char *s, char **host, uint16_t *port)
{
    hostport_t hp;
    uint16_t parsed_port = 0;
    bool ok = split_hostport(s, strlen(s), &hp) && hp.port != NULL;
    if (ok) {
        if (hp.bracketed) {
            ok = is_ipv6(hp.host, hp.host_len);
        } else {
            ok = (hp.host_len == 9 && memcmp(hp.host, "localhost", 9) == 0) ||
                 is_ipv4(hp.host, hp.host_len);
        }
    }
    if (!ok) {
        report(ctx, path, "invalid address %s: " LISTEN_EXPECTED,
               esc(ctx, s, true));
        return;
    }
    int rc = parse_port(hp.port, hp.port_len, &parsed_port);
    if (rc != 0) {
        report(ctx, path, "invalid address %s: " LISTEN_EXPECTED "; %s",
               esc(ctx, s, true),
               rc == -2 ? "the port is out of range (1-65535)"
                        : "the port must be a decimal number");
        return;
    }
    char *copy = dup_len(ctx, hp.host, hp.host_len);
    if (copy == NULL) {
        return;
    }
    free(*host);
    *host = copy;
    *port = parsed_port;
}


static void parse_listen(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    const char *s = get_string(ctx, root, NULL, "listen", false);
    if (s != NULL) {
        parse_listen_address(ctx, "listen", s, &cfg->listen_host,
                             &cfg->listen_port);
    }
}


/* "admin": {"listen": "HOST:PORT"}; without it there is no admin
 * listener. */
static void parse_admin(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *admin = json_object_get(root, "admin");
    if (admin == NULL || !expect_object(ctx, admin, "admin")) {
        return;
    }
    check_keys(ctx, admin, "admin", ADMIN_KEYS, NKEYS(ADMIN_KEYS));
    const char *s = get_string(ctx, admin, "admin", "listen", true);
    if (s != NULL) {
        parse_listen_address(ctx, "admin.listen", s, &cfg->admin_host,
                             &cfg->admin_port);
    }
}


/* The host a listener binds, with "localhost" as the address it binds. */
static const char *bound_host(const char *host)
{
    return strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
}


/* The admin listener cannot share the gateway's port on an address they
 * both bind: the second bind would fail at start. */
static void check_listeners_apart(parse_ctx_t *ctx, const config_t *cfg)
{
    if (cfg->admin_host == NULL || cfg->listen_host == NULL ||
        cfg->admin_port != cfg->listen_port) {
        return;
    }
    const char *a = bound_host(cfg->admin_host);
    const char *l = bound_host(cfg->listen_host);
    bool wildcard = strcmp(a, "0.0.0.0") == 0 || strcmp(a, "::") == 0 ||
                    strcmp(l, "0.0.0.0") == 0 || strcmp(l, "::") == 0;
    if (wildcard || strcmp(a, l) == 0) {
        report(ctx, "admin.listen",
               "port %u is also the gateway's listen port; give the admin "
               "listener a port of its own",
               (unsigned)cfg->admin_port);
    }
}


/* Checks one resolver address and appends it to |csv| in the form
 * c-ares accepts. */
static void parse_dns_server(parse_ctx_t *ctx, const char *path, const char *s,
                             buf_t *csv)
{
    size_t len = strlen(s);
    hostport_t hp;
    uint16_t port;
    bool bare_ipv6 = is_ipv6(s, len);
    bool ok = bare_ipv6 || split_hostport(s, len, &hp);

    if (ok && !bare_ipv6) {
        ok = hp.bracketed ? is_ipv6(hp.host, hp.host_len)
                          : is_ipv4(hp.host, hp.host_len);
    }
    if (!ok) {
        report(ctx, path, "invalid DNS server %s: " DNS_EXPECTED,
               esc(ctx, s, true));
        return;
    }
    if (!bare_ipv6 && hp.port != NULL) {
        int rc = parse_port(hp.port, hp.port_len, &port);
        if (rc != 0) {
            report(ctx, path, "invalid DNS server %s: " DNS_EXPECTED "; %s",
                   esc(ctx, s, true),
                   rc == -2 ? "the port is out of range (1-65535)"
                            : "the port must be a decimal number");
            return;
        }
    }
    const char *sep = csv->len > 0 ? "," : "";
    int rc = bare_ipv6 ? buf_appendf(csv, "%s[%s]", sep, s)
                       : buf_appendf(csv, "%s%s", sep, s);
    if (rc != 0) {
        ctx->nomem = true;
    }
}


static void parse_resolver(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *res = json_object_get(root, "resolver");
    if (res == NULL || !expect_object(ctx, res, "resolver")) {
        return;
    }
    check_keys(ctx, res, "resolver", RESOLVER_KEYS, NKEYS(RESOLVER_KEYS));
    get_int(ctx, res, "resolver", "timeout_ms", 1, &cfg->resolver_timeout_ms);
    get_int(ctx, res, "resolver", "tries", 1, &cfg->resolver_tries);
    json_t *servers = json_object_get(res, "servers");
    if (servers == NULL || !expect_array(ctx, servers, "resolver.servers")) {
        return;
    }
    if (json_array_size(servers) == 0) {
        report(ctx, "resolver.servers", "must not be empty");
        return;
    }

    buf_t csv = {0};
    size_t i;
    json_t *v;
    json_array_foreach(servers, i, v)
    {
        const char *path = scratch_printf(ctx, "resolver.servers[%zu]", i);
        if (!json_is_string(v)) {
            report(ctx, path, "expected a string, got %s", json_kind(v));
            continue;
        }
        parse_dns_server(ctx, path, json_string_value(v), &csv);
    }
    cfg->resolver_servers = csv.data;
}


/* Reports an invalid service URL: the form |expected| and, when it is not
 * NULL, |reason| after a semicolon. */
static void report_url(parse_ctx_t *ctx, const char *path, const char *url,
                       const char *expected, const char *reason)
{
    if (reason == NULL) {
        report(ctx, path, "invalid URL %s: %s", esc(ctx, url, true), expected);
    } else {
        report(ctx, path, "invalid URL %s: %s; %s", esc(ctx, url, true),
               expected, reason);
    }
}


/* Checks the host of a service URL. Returns NULL, or the reason it is
 * invalid. */
static const char *check_url_host(const hostport_t *hp)
{
    if (hp->host_len == 0) {
        return "the host is missing";
    }
    if (hp->bracketed) {
        return is_ipv6(hp->host, hp->host_len)
                   ? NULL
                   : "the host in brackets is not an IPv6 address";
    }
    if (is_ipv4(hp->host, hp->host_len) ||
        is_host_name(hp->host, hp->host_len)) {
        return NULL;
    }
    return "the host is not a valid host name or IPv4 address";
}


static bool is_tls_scheme(scheme_t scheme)
{
    return scheme == SCHEME_HTTPS || scheme == SCHEME_H2;
}


/* Reads the scheme of |url|, with an optional "srv+" prefix, into |svc|.
 * Returns the text after "://", or NULL when the scheme is unknown. */
static const char *parse_scheme(const char *url, service_t *svc)
{
    static const struct {
        const char *prefix;
        scheme_t scheme;
    } schemes[] = {
        {"http://", SCHEME_HTTP},
        {"h2c://", SCHEME_H2C},
        {"https://", SCHEME_HTTPS},
        {"h2://", SCHEME_H2},
    };
    const char *s = url;

    svc->srv = strncmp(s, "srv+", 4) == 0;
    if (svc->srv) {
        s += 4;
    }
    for (size_t i = 0; i < NKEYS(schemes); i++) {
        size_t len = strlen(schemes[i].prefix);
        if (strncmp(s, schemes[i].prefix, len) == 0) {
            svc->scheme = schemes[i].scheme;
            return s + len;
        }
    }
    return NULL;
}


/* Returns |name| without its leading "_service._proto." labels (RFC
 * 2782), which is the host name a client expects in Host, or all of
 * |name| when nothing else is left. */
static const char *srv_target_name(const char *name)
{
    const char *p = name;

    while (p[0] == '_') {
        const char *dot = strchr(p, '.');
        if (dot == NULL) {
            return name;
        }
        p = dot + 1;
    }
    return p[0] != '\0' ? p : name;
}


/* Checks the host and port of an "srv+" URL. Returns false after
 * reporting a problem. */
static bool check_srv_host(parse_ctx_t *ctx, const char *path, const char *url,
                           const hostport_t *hp)
{
    if (hp->host_len == 0) {
        report_url(ctx, path, url, URL_EXPECTED_SRV, "the SRV name is missing");
        return false;
    }
    if (hp->bracketed || is_ipv4(hp->host, hp->host_len)) {
        report_url(ctx, path, url, URL_EXPECTED_SRV,
                   "an SRV URL needs a DNS name, not an IP address");
        return false;
    }
    if (!is_host_name(hp->host, hp->host_len)) {
        report_url(ctx, path, url, URL_EXPECTED_SRV,
                   "the SRV name is not a valid DNS name");
        return false;
    }
    if (hp->port != NULL) {
        const char *port =
            scratch_printf(ctx, ":%.*s", (int)hp->port_len, hp->port);
        report(ctx, path,
               "invalid URL %s: an SRV URL takes its ports from "
               "DNS; remove %s",
               esc(ctx, url, true), esc(ctx, port, true));
        return false;
    }
    return true;
}


/* Checks the port of a host URL and stores it, or the scheme's default
 * port, in |*port|. Returns false after reporting a problem. */
static bool parse_url_port(parse_ctx_t *ctx, const char *path, const char *url,
                           const char *expected, const hostport_t *hp,
                           scheme_t scheme, uint16_t *port)
{
    char reason[128];

    *port = is_tls_scheme(scheme) ? 443 : 80;
    if (hp->port == NULL) {
        return true;
    }
    int rc = parse_port(hp->port, hp->port_len, port);
    if (rc == -1) {
        report_url(ctx, path, url, expected,
                   "the port must be a decimal number");
        return false;
    }
    if (rc == -2) {
        snprintf(reason, sizeof(reason), "port %.*s is out of range",
                 (int)hp->port_len, hp->port);
        report_url(ctx, path, url, expected, reason);
        return false;
    }
    return true;
}


/* Sets the scheme, host, port and authority of |svc| from |url|. Returns
 * false after reporting a problem. */
static bool parse_url(parse_ctx_t *ctx, const char *path, const char *url,
                      service_t *svc)
{
    const char *rest = parse_scheme(url, svc);
    if (rest == NULL) {
        const char *sep = strstr(url, "://");
        bool upper = false;
        for (const char *p = url; sep != NULL && p < sep; p++) {
            upper |= *p >= 'A' && *p <= 'Z';
        }
        report_url(ctx, path, url, svc->srv ? URL_EXPECTED_SRV : URL_EXPECTED,
                   upper ? "write the scheme in lower case" : NULL);
        return false;
    }
    const char *expected = URL_EXPECTED;
    if (svc->srv) {
        expected = URL_EXPECTED_SRV;
    } else if (is_tls_scheme(svc->scheme)) {
        expected = URL_EXPECTED_TLS;
    }

    size_t auth_len = strcspn(rest, "/?#");
    const char *tail = rest + auth_len;
    if (strchr(tail, '#') != NULL) {
        report_url(ctx, path, url, expected, "a fragment is not allowed");
        return false;
    }
    if (strchr(tail, '?') != NULL) {
        report_url(ctx, path, url, expected, "a query is not allowed");
        return false;
    }
    if (memchr(rest, '@', auth_len) != NULL) {
        report_url(ctx, path, url, expected, "userinfo is not allowed");
        return false;
    }
    if (tail[0] != '\0' && strcmp(tail, "/") != 0) {
        report_url(ctx, path, url, expected,
                   "a path other than \"/\" is not allowed");
        return false;
    }

    hostport_t hp;
    if (!split_hostport(rest, auth_len, &hp)) {
        report_url(ctx, path, url, expected, NULL);
        return false;
    }
    buf_t auth = {0};
    int rc;
    if (svc->srv) {
        if (!check_srv_host(ctx, path, url, &hp)) {
            return false;
        }
        svc->port = 0;
        svc->host = dup_len(ctx, hp.host, hp.host_len);
        rc = svc->host != NULL
                 ? buf_appendf(&auth, "%s", srv_target_name(svc->host))
                 : 0;
    } else {
        const char *bad_host = check_url_host(&hp);
        if (bad_host != NULL) {
            report_url(ctx, path, url, expected, bad_host);
            return false;
        }
        uint16_t port;
        if (!parse_url_port(ctx, path, url, expected, &hp, svc->scheme,
                            &port)) {
            return false;
        }
        svc->port = port;
        svc->host = dup_len(ctx, hp.host, hp.host_len);
        /* The authority keeps the brackets of an IPv6 host, as written. */
        size_t written = hp.bracketed ? hp.host_len + 2 : hp.host_len;
        const char *start = hp.bracketed ? hp.host - 1 : hp.host;
        rc = buf_appendf(&auth, "%.*s:%u", (int)written, start, (unsigned)port);
    }
    if (rc != 0) {
        ctx->nomem = true;
    }
    svc->authority = auth.data;
    return true;
}


/* One integer key of service_options_t: its smallest valid value and its
 * built-in default. */
typedef struct int_option_s {
    const char *key;
    size_t offset;
    int64_t min;
    int64_t value;
} int_option_t;

static const int_option_t INT_OPTIONS[] = {
    {"timeout_ms", offsetof(service_options_t, timeout_ms), 1, -1},
    {"max_connections", offsetof(service_options_t, max_connections), 1,
     DEFAULT_MAX_CONNECTIONS},
    {"connect_timeout_ms", offsetof(service_options_t, connect_timeout_ms), 1,
     DEFAULT_CONNECT_TIMEOUT_MS},
    {"idle_timeout_ms", offsetof(service_options_t, idle_timeout_ms), 1,
     DEFAULT_IDLE_TIMEOUT_MS},
    {"ping_interval_ms", offsetof(service_options_t, ping_interval_ms), 0,
     DEFAULT_PING_INTERVAL_MS},
    {"dns_min_ttl_ms", offsetof(service_options_t, dns_min_ttl_ms), 1,
     DEFAULT_DNS_MIN_TTL_MS},
    {"dns_max_ttl_ms", offsetof(service_options_t, dns_max_ttl_ms), 1,
     DEFAULT_DNS_MAX_TTL_MS},
    {"dns_max_stale_ms", offsetof(service_options_t, dns_max_stale_ms), 1,
     DEFAULT_DNS_MAX_STALE_MS},
    {"eject_after", offsetof(service_options_t, eject_after), 1,
     DEFAULT_EJECT_AFTER},
    {"eject_base_ms", offsetof(service_options_t, eject_base_ms), 1,
     DEFAULT_EJECT_BASE_MS},
    {"eject_max_ms", offsetof(service_options_t, eject_max_ms), 1,
     DEFAULT_EJECT_MAX_MS},
    {"max_concurrent_calls", offsetof(service_options_t, max_concurrent_calls),
     1, -1},
};

/* Pairs of keys whose first value must not exceed the second. */
static const struct {
    const char *low_key;
    size_t low;
    const char *high_key;
    size_t high;
} ORDERED_OPTIONS[] = {
    {"dns_min_ttl_ms", offsetof(service_options_t, dns_min_ttl_ms),
     "dns_max_ttl_ms", offsetof(service_options_t, dns_max_ttl_ms)},
    {"eject_base_ms", offsetof(service_options_t, eject_base_ms),
     "eject_max_ms", offsetof(service_options_t, eject_max_ms)},
};


static int64_t *option_int(service_options_t *o, size_t offset)
{
    return (int64_t *)((char *)o + offset);
}


static void options_init(service_options_t *o)
{
    memset(o, 0, sizeof(*o));
    for (size_t i = 0; i < NKEYS(INT_OPTIONS); i++) {
        *option_int(o, INT_OPTIONS[i].offset) = INT_OPTIONS[i].value;
    }
    o->tls_verify = true;
}


static void options_free(service_options_t *o)
{
    free(o->ca_file);
    free(o->cert_file);
    free(o->key_file);
    free(o->server_name);
    o->ca_file = NULL;
    o->cert_file = NULL;
    o->key_file = NULL;
    o->server_name = NULL;
    header_policy_free(&o->headers);
}


/* Copies |src| into |dst|, which holds no strings. The TLS settings are
 * copied only when |tls|, so that "defaults" may hold them for the https://
 * and h2:// services without making the others invalid. */
static void options_copy(parse_ctx_t *ctx, service_options_t *dst,
                         const service_options_t *src, bool tls)
{
    *dst = *src;
    dst->ca_file = NULL;
    dst->cert_file = NULL;
    dst->key_file = NULL;
    dst->server_name = NULL;
    if (header_policy_copy(&dst->headers, &src->headers) != 0) {
        ctx->nomem = true;
    }
    if (!tls) {
        dst->tls_verify = true;
        return;
    }
    char *const from[] = {src->ca_file, src->cert_file, src->key_file,
                          src->server_name};
    char **const to[] = {&dst->ca_file, &dst->cert_file, &dst->key_file,
                         &dst->server_name};
    for (size_t i = 0; i < NKEYS(from); i++) {
        if (from[i] != NULL) {
            *to[i] = dup_string(ctx, from[i]);
        }
    }
}


/* Replaces |*out| with a copy of the string member |key|, which must not
 * be empty. Leaves |*out| unchanged when the key is absent or invalid. */
static const char *get_setting_string(parse_ctx_t *ctx, json_t *obj,
                                      const char *path, const char *key,
                                      char **out)
{
    const char *s = get_string(ctx, obj, path, key, false);
    if (s == NULL) {
        return NULL;
    }
    if (s[0] == '\0') {
        report(ctx, path_key(ctx, path, key), "must not be empty");
        return NULL;
    }
    char *copy = dup_string(ctx, s);
    if (copy != NULL) {
        free(*out);
        *out = copy;
    }
    return s;
}


static void get_server_name(parse_ctx_t *ctx, json_t *obj, const char *path,
                            char **out)
{
    const char *s = json_string_value(json_object_get(obj, "server_name"));
    if (s != NULL && s[0] != '\0') {
        size_t len = strlen(s);
        if (!is_host_name(s, len) && !is_ipv4(s, len) && !is_ipv6(s, len)) {
            report(ctx, path_key(ctx, path, "server_name"),
                   "invalid server name %s: expected a DNS name or an IP "
                   "address",
                   esc(ctx, s, true));
            return;
        }
    }
    get_setting_string(ctx, obj, path, "server_name", out);
}


/* Checks a configured header name. |set_by_config| is true for names in
 * "forward_headers" and "set_headers", which may not name a hop-by-hop
 * field or one tutti sets itself. Returns false after reporting. */
static bool check_header_name(parse_ctx_t *ctx, const char *path,
                              const char *name, bool set_by_config)
{
    if (!headers_is_token(name)) {
        report(ctx, path,
               "invalid header name %s: expected an HTTP token of letters, "
               "digits and !#$%%&'*+-.^_`|~",
               esc(ctx, name, true));
        return false;
    }
    const char *reason = set_by_config ? headers_reserved_reason(name) : NULL;
    if (reason != NULL) {
        report(ctx, path, "header %s %s; remove it", esc(ctx, name, true),
               reason);
        return false;
    }
    return true;
}


/* Copies |name| in lower case into a new string. */
static char *dup_lower(parse_ctx_t *ctx, const char *name)
{
    char *copy = dup_string(ctx, name);
    for (char *p = copy; p != NULL && *p != '\0'; p++) {
        if (*p >= 'A' && *p <= 'Z') {
            *p = (char)(*p - 'A' + 'a');
        }
    }
    return copy;
}


/* Reads an array of header names at |path| into |*out| (lower case).
 * Returns false after reporting a problem; |*out| is then NULL. */
static bool parse_header_names(parse_ctx_t *ctx, json_t *list, const char *path,
                               bool set_by_config, char ***out, size_t *count)
{
    *out = NULL;
    *count = 0;
    if (!expect_array(ctx, list, path)) {
        return false;
    }
    size_t n = json_array_size(list);
    char **names = n > 0 ? calloc(n, sizeof(*names)) : NULL;
    if (n > 0 && names == NULL) {
        ctx->nomem = true;
        return false;
    }
    bool ok = true;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *ipath = scratch_printf(ctx, "%s[%zu]", path, i);
        if (!json_is_string(v)) {
            report(ctx, ipath, "expected a string, got %s", json_kind(v));
            ok = false;
            continue;
        }
        const char *name = json_string_value(v);
        if (!check_header_name(ctx, ipath, name, set_by_config)) {
            ok = false;
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            /* names is NULL only when the array is empty. */
            /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
            if (names[j] != NULL && strcasecmp(names[j], name) == 0) {
                report(ctx, ipath, "duplicate header name %s",
                       esc(ctx, name, true));
                ok = false;
            }
        }
        /* names is NULL only when the array is empty. */
        /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
        names[i] = dup_lower(ctx, name);
    }
    for (size_t j = 0; !ok && j < n; j++) {
        free(names[j]);
    }
    if (!ok) {
        free(names);
        return false;
    }
    *out = names;
    *count = n;
    return true;
}


/* Checks one "set_headers" value: a string whose literal text has no
 * CR, LF, NUL or other control character, with well-formed placeholders.
 * Whether each {name} is a parameter of the route is checked per call. */
static bool check_set_value(parse_ctx_t *ctx, const char *path, json_t *v)
{
    if (!json_is_string(v)) {
        report(ctx, path, "expected a string, got %s", json_kind(v));
        return false;
    }
    const char *text = json_string_value(v);
    if (strlen(text) != json_string_length(v)) {
        report(ctx, path,
               "invalid header value: it must not contain NUL, CR or LF");
        return false;
    }
    template_t t;
    char err[TEMPLATE_ERR_MAX];
    int rc = headers_compile_value(text, NULL, 0, &t, err, sizeof(err));
    if (rc == TE_NOMEM) {
        ctx->nomem = true;
        return false;
    }
    if (rc != 0) {
        report(ctx, path, "invalid header value %s: %s", esc(ctx, text, true),
               err);
        return false;
    }
    template_free(&t);
    return true;
}


static void parse_set_headers(parse_ctx_t *ctx, json_t *obj, const char *path,
                              header_policy_t *hp)
{
    if (!expect_object(ctx, obj, path)) {
        return;
    }
    size_t n = json_object_size(obj);
    header_policy_t parsed = {0};
    bool ok = true;
    if (n > 0) {
        parsed.set_names = calloc(n, sizeof(char *));
        parsed.set_texts = calloc(n, sizeof(char *));
        if (parsed.set_names == NULL || parsed.set_texts == NULL) {
            ctx->nomem = true;
            ok = false;
        }
    }
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        if (!ok) {
            break;
        }
        const char *npath = path_key(ctx, path, esc(ctx, name, false));
        bool good = check_header_name(ctx, npath, name, true);
        for (size_t j = 0; good && j < parsed.nset; j++) {
            if (strcasecmp(parsed.set_names[j], name) == 0) {
                report(ctx, npath, "duplicate header name %s",
                       esc(ctx, name, true));
                good = false;
            }
        }
        good = check_set_value(ctx, npath, v) && good;
        if (!good) {
            /* Keep checking the other entries, but keep nothing. */
            continue;
        }
        /* set_names is NULL only when obj is empty. */
        /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference) */
        parsed.set_names[parsed.nset] = dup_lower(ctx, name);
        parsed.set_texts[parsed.nset] = dup_string(ctx, json_string_value(v));
        parsed.nset++;
    }
    if (!ok || parsed.nset != n) {
        header_policy_free(&parsed);
        return;
    }
    header_policy_t old = {.set_names = hp->set_names,
                           .set_texts = hp->set_texts,
                           .nset = hp->nset};
    header_policy_free(&old);
    hp->set_names = parsed.set_names;
    hp->set_texts = parsed.set_texts;
    hp->nset = parsed.nset;
}


/* Reads "forward_headers" and "set_headers" of |obj|, a service or
 * "defaults". A key that is present replaces the value in |hp|, which
 * came from "defaults". */
static void parse_header_policy(parse_ctx_t *ctx, json_t *obj, const char *path,
                                header_policy_t *hp)
{
    json_t *forward = json_object_get(obj, "forward_headers");
    if (forward != NULL) {
        char **names = NULL;
        size_t n = 0;
        const char *fpath = path_key(ctx, path, "forward_headers");
        if (parse_header_names(ctx, forward, fpath, true, &names, &n)) {
            header_policy_t old = {.forward = hp->forward,
                                   .nforward = hp->nforward};
            header_policy_free(&old);
            hp->forward = names;
            hp->nforward = n;
        }
    }
    json_t *set = json_object_get(obj, "set_headers");
    if (set != NULL) {
        parse_set_headers(ctx, set, path_key(ctx, path, "set_headers"), hp);
    }
}


/* Overrides |o| with the keys of |obj| (a service or "defaults"). The TLS
 * keys are read only when |tls_keys|. */
static void parse_options(parse_ctx_t *ctx, json_t *obj, const char *path,
                          bool tls_keys, service_options_t *o)
{
    for (size_t i = 0; i < NKEYS(INT_OPTIONS); i++) {
        get_int(ctx, obj, path, INT_OPTIONS[i].key, INT_OPTIONS[i].min,
                option_int(o, INT_OPTIONS[i].offset));
    }
    parse_header_policy(ctx, obj, path, &o->headers);
    if (!tls_keys) {
        return;
    }
    get_setting_string(ctx, obj, path, "ca_file", &o->ca_file);
    get_setting_string(ctx, obj, path, "cert_file", &o->cert_file);
    get_setting_string(ctx, obj, path, "key_file", &o->key_file);
    get_server_name(ctx, obj, path, &o->server_name);
    get_bool(ctx, obj, path, "tls_verify", &o->tls_verify);
}


/* Reports each TLS key of |obj|, a service whose URL has no TLS. */
static void reject_tls_keys(parse_ctx_t *ctx, json_t *obj, const char *path)
{
    for (size_t i = 0; i < NKEYS(TLS_KEYS); i++) {
        if (json_object_get(obj, TLS_KEYS[i]) != NULL) {
            report(ctx, path_key(ctx, path, TLS_KEYS[i]),
                   "TLS settings need an https:// or h2:// URL");
        }
    }
}


/* A client certificate is useless without its key and the reverse. Only
 * a key that |obj| sets is reported: one that came from "defaults" was
 * reported there. */
static void check_client_cert(parse_ctx_t *ctx, json_t *obj, const char *path,
                              const service_options_t *o)
{
    bool cert = o->cert_file != NULL;
    bool key = o->key_file != NULL;
    if (cert == key) {
        return;
    }
    const char *set = cert ? "cert_file" : "key_file";
    const char *unset = cert ? "key_file" : "cert_file";
    if (json_object_get(obj, set) == NULL ||
        json_object_get(obj, unset) != NULL) {
        return;
    }
    report(ctx, path_key(ctx, path, set),
           cert ? "\"key_file\" is missing; a client certificate needs its "
                  "private key"
                : "\"cert_file\" is missing; a private key needs its client "
                  "certificate");
}


/* Checks that each minimum is at most its maximum. A pair that |obj| does
 * not set came from "defaults" (checked there) or the built-in values. */
static void check_option_order(parse_ctx_t *ctx, json_t *obj, const char *path,
                               service_options_t *o)
{
    for (size_t i = 0; i < NKEYS(ORDERED_OPTIONS); i++) {
        const char *low_key = ORDERED_OPTIONS[i].low_key;
        const char *high_key = ORDERED_OPTIONS[i].high_key;
        if (json_object_get(obj, low_key) == NULL &&
            json_object_get(obj, high_key) == NULL) {
            continue;
        }
        int64_t low = *option_int(o, ORDERED_OPTIONS[i].low);
        int64_t high = *option_int(o, ORDERED_OPTIONS[i].high);
        if (low > high) {
            report(ctx, path,
                   "%s %lld is greater than %s %lld; lower %s or raise %s",
                   low_key, (long long)low, high_key, (long long)high, low_key,
                   high_key);
        }
    }
}


static void parse_defaults(parse_ctx_t *ctx, json_t *root)
{
    json_t *d = json_object_get(root, "defaults");
    if (d == NULL || !expect_object(ctx, d, "defaults")) {
        return;
    }
    check_keys(ctx, d, "defaults", DEFAULTS_KEYS, NDEFAULTS_KEYS);
    parse_options(ctx, d, "defaults", true, &ctx->defaults);
    check_client_cert(ctx, d, "defaults", &ctx->defaults);
    check_option_order(ctx, d, "defaults", &ctx->defaults);
}


static void parse_service(parse_ctx_t *ctx, const char *name, json_t *v,
                          service_t *svc)
{
    const char *path = path_key(ctx, "services", esc(ctx, name, false));

    svc->name = dup_string(ctx, name);
    svc->timeout_ms = -1;
    svc->active_calls = calloc(1, sizeof(*svc->active_calls));
    if (svc->active_calls == NULL) {
        ctx->nomem = true;
    } else {
        atomic_init(svc->active_calls, 0);
    }
    options_init(&svc->options);
    if (!is_name(name, "_.-")) {
        report(ctx, path,
               "invalid service name %s: use only letters, digits, \"_\", "
               "\".\" and \"-\"",
               esc(ctx, name, true));
    }
    if (!expect_object(ctx, v, path)) {
        return;
    }
    check_keys(ctx, v, path, SERVICE_KEYS, NKEYS(SERVICE_KEYS));

    bool url_ok = false;
    const char *url = get_string(ctx, v, path, "url", true);
    if (url != NULL) {
        const char *upath = path_key(ctx, path, "url");
        svc->url = dup_string(ctx, url);
        url_ok = parse_url(ctx, upath, url, svc);
    }
    bool tls = url_ok && is_tls_scheme(svc->scheme);
    options_copy(ctx, &svc->options, &ctx->defaults, tls);
    if (url_ok && !tls) {
        reject_tls_keys(ctx, v, path);
    }
    /* With an invalid URL the TLS keys are still read, so that their own
     * problems show in the same run. */
    parse_options(ctx, v, path, tls || !url_ok, &svc->options);
    if (tls && svc->options.server_name == NULL) {
        const char *host = svc->srv ? svc->authority : svc->host;
        if (host != NULL) {
            svc->options.server_name = dup_string(ctx, host);
        }
    }
    check_client_cert(ctx, v, path, &svc->options);
    check_option_order(ctx, v, path, &svc->options);
    svc->timeout_ms = svc->options.timeout_ms;
}


static void parse_services(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *services = get_key(ctx, root, NULL, "services", true);
    if (services == NULL || !expect_object(ctx, services, "services")) {
        return;
    }
    ctx->services_known = true;
    size_t n = json_object_size(services);
    if (n == 0) {
        report(ctx, "services", "must not be empty");
        return;
    }
    cfg->services = calloc(n, sizeof(*cfg->services));
    if (cfg->services == NULL) {
        ctx->nomem = true;
        return;
    }

    const char *name;
    json_t *v;
    json_object_foreach(services, name, v)
    {
        service_t *svc = &cfg->services[cfg->nservices];
        svc->index = cfg->nservices;
        cfg->nservices++;
        parse_service(ctx, name, v, svc);
    }
}


/* Reports a bad route path, quoting it before the reason. */
static void report_path(parse_ctx_t *ctx, const char *path, const char *text,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void report_path(parse_ctx_t *ctx, const char *path, const char *text,
                        const char *fmt, ...)
{
    va_list ap;
    char *reason = NULL;

    va_start(ap, fmt);
    int n = vasprintf(&reason, fmt, ap);
    va_end(ap);
    if (n < 0) {
        ctx->nomem = true;
        ctx->problems++;
        return;
    }
    report(ctx, path, "invalid path %s: %s", esc(ctx, text, true), reason);
    free(reason);
}


/* Adds one segment of a route path. Returns false after reporting a
 * problem. */
static bool add_route_seg(parse_ctx_t *ctx, const char *path, const char *text,
                          const char *seg, size_t len, route_t *r)
{
    route_seg_t *rs = &r->segs[r->nsegs];
    char *seg_text = dup_len(ctx, seg, len);
    if (seg_text == NULL) {
        return false;
    }

    bool ok = false;
    if (len >= 2 && seg[0] == '{' && seg[len - 1] == '}') {
        ok = true;
        char *name = seg_text + 1;
        size_t name_len = len - 2;
        name[name_len] = '\0';
        if (!template_is_param_name(name, name_len)) {
            report_path(ctx, path, text,
                        "invalid parameter name %s: use a letter or \"_\" "
                        "followed by letters, digits or \"_\"",
                        esc(ctx, name, true));
            ok = false;
        }
        for (size_t i = 0; ok && i < r->nparams; i++) {
            if (strcmp(r->params[i], name) == 0) {
                const char *braced = scratch_printf(ctx, "{%s}", name);
                report_path(ctx, path, text, "parameter %s is used twice",
                            esc(ctx, braced, true));
                ok = false;
            }
        }
        if (ok && r->nparams == ROUTER_MAX_PARAMS) {
            report_path(ctx, path, text, "more than %d parameters",
                        ROUTER_MAX_PARAMS);
            ok = false;
        }
        if (ok) {
            memmove(seg_text, name, name_len + 1);
            rs->literal = NULL;
            rs->param_index = (int)r->nparams;
            r->params[r->nparams++] = seg_text;
            r->nsegs++;
            return true;
        }
    } else if (strpbrk(seg_text, "{}") != NULL) {
        report_path(ctx, path, text,
                    "segment %s must be literal text or a whole {name} "
                    "parameter",
                    esc(ctx, seg_text, true));
    } else if (strpbrk(seg_text, "?#%") != NULL) {
        report_path(ctx, path, text,
                    "segment %s contains \"?\", \"#\" or \"%%\", which "
                    "literal segments must not contain",
                    esc(ctx, seg_text, true));
    } else if (strcmp(seg_text, ".") == 0 || strcmp(seg_text, "..") == 0) {
        /* The router rejects "." and ".." in requests, so such a route
         * could never match. */
        report_path(ctx, path, text,
                    "segment %s can never match because requests with \".\" "
                    "or \"..\" segments are rejected",
                    esc(ctx, seg_text, true));
    } else {
        rs->literal = seg_text;
        rs->param_index = -1;
        r->nsegs++;
        return true;
    }
    free(seg_text);
    return false;
}


/* Splits a route path into segments and parameter names. Returns false
 * after reporting a problem. */
static bool parse_route_path(parse_ctx_t *ctx, const char *path,
                             const char *text, route_t *r)
{
    if (text[0] != '/') {
        report_path(ctx, path, text, "must start with \"/\"");
        return false;
    }
    if (strcmp(text, "/") == 0) {
        return true;
    }

    size_t max = 1;
    for (const char *p = text + 1; *p != '\0'; p++) {
        max += *p == '/';
    }
    r->segs = calloc(max, sizeof(*r->segs));
    r->params = calloc(max, sizeof(*r->params));
    if (r->segs == NULL || r->params == NULL) {
        ctx->nomem = true;
        return false;
    }

    const char *seg = text + 1;
    for (size_t i = 0; i < max; i++) {
        size_t len = strcspn(seg, "/");
        if (len == 0) {
            report_path(ctx, path, text,
                        "segment %zu is empty, and only the root path \"/\" "
                        "may end with \"/\"",
                        i + 1);
            return false;
        }
        if (!add_route_seg(ctx, path, text, seg, len, r)) {
            return false;
        }
        seg += len + 1;
    }
    return true;
}


static const service_t *find_service(const config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nservices; i++) {
        const char *s = cfg->services[i].name;
        if (s != NULL && strcmp(s, name) == 0) {
            return &cfg->services[i];
        }
    }
    return NULL;
}


static void parse_call_name(parse_ctx_t *ctx, const char *path, json_t *v,
                            route_t *r, call_t *c)
{
    const char *name = get_string(ctx, v, path, "name", true);
    if (name == NULL) {
        return;
    }
    const char *npath = path_key(ctx, path, "name");
    if (!is_name(name, "_-")) {
        report(ctx, npath,
               "invalid call name %s: use only letters, digits, \"_\" and "
               "\"-\"",
               esc(ctx, name, true));
        return;
    }
    /* A 200 response with a member "error" would look like tutti's own
     * error response to a client that reads the body alone. */
    /* Compared without case: some JSON decoders, such as Go's, match
     * member names that way. */
    if (strcasecmp(name, "errors") == 0 || strcasecmp(name, "error") == 0) {
        report(ctx, npath,
               "\"%s\" is reserved for tutti's error members; choose another "
               "call name",
               name);
        return;
    }
    for (call_t *prev = r->calls; prev < c; prev++) {
        if (prev->name != NULL && strcmp(prev->name, name) == 0) {
            report(ctx, npath, "duplicate call name %s", esc(ctx, name, true));
            return;
        }
    }
    c->name = dup_string(ctx, name);
}


static void parse_call_method(parse_ctx_t *ctx, const char *path, json_t *v,
                              call_t *c)
{
    const char *method = get_string(ctx, v, path, "method", false);

    if (method == NULL && json_object_get(v, "method") != NULL) {
        return;
    }
    if (method == NULL) {
        method = "GET";
    }
    if (!check_method(ctx, path, method)) {
        return;
    }
    c->method = dup_string(ctx, method);
}


/* Compiles the "set_headers" values of the call's service against the
 * route's parameters, so that a {name} the route lacks is reported at
 * the call that would expand it. */
static void compile_set_headers(parse_ctx_t *ctx, const char *path,
                                const route_t *r, call_t *c)
{
    if (c->service == NULL || c->service->options.headers.nset == 0) {
        return;
    }
    const header_policy_t *hp = &c->service->options.headers;
    c->set_values = calloc(hp->nset, sizeof(*c->set_values));
    if (c->set_values == NULL) {
        ctx->nomem = true;
        return;
    }
    c->nset_values = hp->nset;
    for (size_t i = 0; i < hp->nset; i++) {
        char err[TEMPLATE_ERR_MAX];
        int rc = headers_compile_value(hp->set_texts[i], r->params, r->nparams,
                                       &c->set_values[i], err, sizeof(err));
        if (rc == TE_NOMEM) {
            ctx->nomem = true;
        } else if (rc != 0) {
            report(ctx, path, "set_headers %s of service %s: %s",
                   esc(ctx, hp->set_names[i], true),
                   esc(ctx, c->service->name, true), err);
        }
    }
}


/* |path_ok| is false when the route path was invalid: its parameter list
 * is then unknown, so call templates are not checked against it. */
static void parse_call(parse_ctx_t *ctx, const config_t *cfg, const char *path,
                       json_t *v, route_t *r, bool path_ok, call_t *c)
{
    c->timeout_ms = -1;
    c->required = true;
    c->forward_body = false;
    if (!expect_object(ctx, v, path)) {
        return;
    }
    check_keys(ctx, v, path, CALL_KEYS, NKEYS(CALL_KEYS));
    parse_call_name(ctx, path, v, r, c);

    const char *service = get_string(ctx, v, path, "service", true);
    if (service != NULL && ctx->services_known) {
        c->service = (service_t *)find_service(cfg, service);
        if (c->service == NULL) {
            const char *spath = path_key(ctx, path, "service");
            report(ctx, spath, "unknown service %s", esc(ctx, service, true));
        } else {
            c->timeout_ms = c->service->timeout_ms;
        }
    }

    const char *tpl = get_string(ctx, v, path, "path", true);
    if (tpl != NULL) {
        c->path_text = dup_string(ctx, tpl);
    }
    if (tpl != NULL && path_ok) {
        char err[TEMPLATE_ERR_MAX];
        int rc = template_compile(tpl, r->params, r->nparams, &c->path, err,
                                  sizeof(err));
        const char *tpath = path_key(ctx, path, "path");
        if (rc == TE_NOMEM) {
            ctx->nomem = true;
        } else if (rc != 0) {
            report(ctx, tpath, "%s", err);
        }
    }

    parse_call_method(ctx, path, v, c);
    get_int(ctx, v, path, "timeout_ms", 1, &c->timeout_ms);
    get_bool(ctx, v, path, "required", &c->required);
    get_bool(ctx, v, path, "forward_body", &c->forward_body);
    if (path_ok) {
        compile_set_headers(ctx, path, r, c);
    }
}


static void parse_route_method(parse_ctx_t *ctx, const char *path, json_t *v,
                               route_t *r)
{
    const char *method = get_string(ctx, v, path, "method", true);
    if (method == NULL) {
        return;
    }
    if (!check_method(ctx, path, method)) {
        return;
    }
    r->method = dup_string(ctx, method);
}


static void parse_calls(parse_ctx_t *ctx, const config_t *cfg, const char *path,
                        json_t *v, route_t *r, bool path_ok)
{
    const char *cpath = path_key(ctx, path, "calls");

    json_t *calls = get_key(ctx, v, path, "calls", true);
    if (calls == NULL || !expect_array(ctx, calls, cpath)) {
        return;
    }
    size_t n = json_array_size(calls);
    if (n == 0) {
        report(ctx, cpath, "must not be empty");
        return;
    }
    r->calls = calloc(n, sizeof(*r->calls));
    if (r->calls == NULL) {
        ctx->nomem = true;
        return;
    }

    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call)
    {
        const char *path_i = scratch_printf(ctx, "%s[%zu]", cpath, i);
        r->ncalls++;
        parse_call(ctx, cfg, path_i, call, r, path_ok, &r->calls[i]);
    }
}


static void parse_route(parse_ctx_t *ctx, const config_t *cfg, const char *path,
                        json_t *v, route_t *r)
{
    r->deadline_ms = DEFAULT_DEADLINE_MS;
    if (!expect_object(ctx, v, path)) {
        return;
    }
    check_keys(ctx, v, path, ROUTE_KEYS, NKEYS(ROUTE_KEYS));
    parse_route_method(ctx, path, v, r);

    bool path_ok = false;
    const char *text = get_string(ctx, v, path, "path", true);
    if (text != NULL) {
        const char *ppath = path_key(ctx, path, "path");
        path_ok = parse_route_path(ctx, ppath, text, r);
    }
    if (path_ok) {
        r->path = dup_string(ctx, text);
    }
    get_int(ctx, v, path, "deadline_ms", 1, &r->deadline_ms);
    parse_calls(ctx, cfg, path, v, r, path_ok);
}


/* Two routes collide when the method and the path shape match, because
 * parameter names do not change which requests a route matches. */
static bool same_route(const route_t *a, const route_t *b)
{
    if (strcmp(a->method, b->method) != 0 || a->nsegs != b->nsegs) {
        return false;
    }
    for (size_t i = 0; i < a->nsegs; i++) {
        const char *la = a->segs[i].literal;
        const char *lb = b->segs[i].literal;
        if ((la == NULL) != (lb == NULL)) {
            return false;
        }
        if (la != NULL && strcmp(la, lb) != 0) {
            return false;
        }
    }
    return true;
}


static void check_duplicate_routes(parse_ctx_t *ctx, const config_t *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const route_t *r = &cfg->routes[i];
        if (r->method == NULL || r->path == NULL) {
            continue;
        }
        for (size_t j = 0; j < i; j++) {
            const route_t *prev = &cfg->routes[j];
            if (prev->method == NULL || prev->path == NULL ||
                !same_route(r, prev)) {
                continue;
            }
            const char *path = scratch_printf(ctx, "routes[%zu]", i);
            report(ctx, path, "duplicate route %s %s (same as routes[%zu])",
                   r->method, esc(ctx, r->path, false), j);
            break;
        }
    }
}


static void parse_trusted_proxies(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *list = json_object_get(root, "trusted_proxies");
    if (list == NULL || !expect_array(ctx, list, "trusted_proxies")) {
        return;
    }
    size_t n = json_array_size(list);
    if (n == 0) {
        return;
    }
    cfg->trusted_proxies = calloc(n, sizeof(*cfg->trusted_proxies));
    if (cfg->trusted_proxies == NULL) {
        ctx->nomem = true;
        return;
    }
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *path = scratch_printf(ctx, "trusted_proxies[%zu]", i);
        if (!json_is_string(v)) {
            report(ctx, path, "expected a string, got %s", json_kind(v));
            continue;
        }
        const char *s = json_string_value(v);
        cidr_t *net = &cfg->trusted_proxies[cfg->ntrusted_proxies];
        if (headers_parse_cidr(s, net) != 0) {
            report(ctx, path,
                   "invalid network %s: expected an IPv4 or IPv6 address "
                   "with an optional /BITS prefix length, such as "
                   "10.0.0.0/8 or fd00::/8",
                   esc(ctx, s, true));
            continue;
        }
        cfg->ntrusted_proxies++;
    }
}


static void parse_secret_headers(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *list = json_object_get(root, "secret_headers");
    if (list != NULL) {
        parse_header_names(ctx, list, "secret_headers", false,
                           &cfg->secret_headers, &cfg->nsecret_headers);
    }
}


static void parse_routes(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    json_t *routes = get_key(ctx, root, NULL, "routes", true);
    if (routes == NULL || !expect_array(ctx, routes, "routes")) {
        return;
    }
    size_t n = json_array_size(routes);
    if (n == 0) {
        report(ctx, "routes", "must not be empty");
        return;
    }
    cfg->routes = calloc(n, sizeof(*cfg->routes));
    if (cfg->routes == NULL) {
        ctx->nomem = true;
        return;
    }

    size_t i;
    json_t *v;
    json_array_foreach(routes, i, v)
    {
        const char *path = scratch_printf(ctx, "routes[%zu]", i);
        cfg->nroutes++;
        parse_route(ctx, cfg, path, v, &cfg->routes[i]);
    }
    check_duplicate_routes(ctx, cfg);
}


static void parse_limits(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    int64_t req = DEFAULT_MAX_REQUEST_BODY;
    int64_t resp = DEFAULT_MAX_RESPONSE_BODY;

    get_int(ctx, root, NULL, "max_request_body_bytes", 1, &req);
    get_int(ctx, root, NULL, "max_response_body_bytes", 1, &resp);
    get_int(ctx, root, NULL, "shutdown_grace_ms", 0, &cfg->shutdown_grace_ms);
    get_int(ctx, root, NULL, "drain_delay_ms", 0, &cfg->drain_delay_ms);
    cfg->max_request_body_bytes = (size_t)req;
    cfg->max_response_body_bytes = (size_t)resp;
}


static void parse_overload_limits(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    get_int(ctx, root, NULL, "max_in_flight", 1, &cfg->max_in_flight);
    get_int(ctx, root, NULL, "max_connections_inbound", 1,
            &cfg->max_connections_inbound);
    get_int(ctx, root, NULL, "client_timeout_ms", 1, &cfg->client_timeout_ms);
    get_int(ctx, root, NULL, "max_url_bytes", 1, &cfg->max_url_bytes);

    int64_t header = cfg->max_header_bytes;
    get_int(ctx, root, NULL, "max_header_bytes", 1, &header);
    if (header < MIN_MAX_HEADER_BYTES) {
        report(ctx, "max_header_bytes",
               "expected an integer of at least %d, got %lld",
               MIN_MAX_HEADER_BYTES, (long long)header);
        return;
    }
    cfg->max_header_bytes = header;
    if (cfg->max_url_bytes > cfg->max_header_bytes) {
        report(ctx, "max_url_bytes",
               "%lld is greater than max_header_bytes %lld, which the "
               "request line must fit in; lower max_url_bytes or raise "
               "max_header_bytes",
               (long long)cfg->max_url_bytes, (long long)cfg->max_header_bytes);
    }
}


static config_t *config_new(parse_ctx_t *ctx, const char *file)
{
    config_t *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        ctx->nomem = true;
        return NULL;
    }
    cfg->file = dup_string(ctx, file);
    cfg->listen_host = dup_string(ctx, DEFAULT_LISTEN_HOST);
    cfg->listen_port = DEFAULT_LISTEN_PORT;
    cfg->max_request_body_bytes = DEFAULT_MAX_REQUEST_BODY;
    cfg->max_response_body_bytes = DEFAULT_MAX_RESPONSE_BODY;
    cfg->shutdown_grace_ms = DEFAULT_SHUTDOWN_GRACE_MS;
    cfg->drain_delay_ms = DEFAULT_DRAIN_DELAY_MS;
    cfg->max_in_flight = DEFAULT_MAX_IN_FLIGHT;
    cfg->max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
    cfg->max_url_bytes = DEFAULT_MAX_URL_BYTES;
    cfg->max_connections_inbound = DEFAULT_MAX_CONNECTIONS_INBOUND;
    cfg->client_timeout_ms = DEFAULT_CLIENT_TIMEOUT_MS;
    return cfg;
}


static void parse_root(parse_ctx_t *ctx, json_t *root, config_t *cfg)
{
    check_keys(ctx, root, NULL, ROOT_KEYS, NKEYS(ROOT_KEYS));
    parse_listen(ctx, root, cfg);
    parse_admin(ctx, root, cfg);
    check_listeners_apart(ctx, cfg);
    parse_limits(ctx, root, cfg);
    parse_overload_limits(ctx, root, cfg);
    parse_resolver(ctx, root, cfg);
    parse_defaults(ctx, root);
    parse_services(ctx, root, cfg);
    parse_routes(ctx, root, cfg);
    parse_trusted_proxies(ctx, root, cfg);
    parse_secret_headers(ctx, root, cfg);
}


int config_parse(const char *file, const char *text, size_t len, config_t **out,
                 config_errors_t *errs)
{
    parse_ctx_t ctx = {.file = file, .errs = errs};
    json_error_t jerr;
    config_t *cfg = NULL;

    *out = NULL;
    options_init(&ctx.defaults);
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        buf_t line = {0};
        if (buf_appendf(&line, "%s:%d:%d: invalid JSON: %s", file, jerr.line,
                        jerr.column, jerr.text) != 0) {
            return TE_NOMEM;
        }
        if (errs == NULL) {
            buf_free(&line);
            return TE_INVALID;
        }
        return errors_add(errs, line.data) == 0 ? TE_INVALID : TE_NOMEM;
    }

    if (expect_object(&ctx, root, NULL)) {
        cfg = config_new(&ctx, file);
    }
    if (cfg != NULL) {
        parse_root(&ctx, root, cfg);
    }
    json_decref(root);
    options_free(&ctx.defaults);
    for (size_t i = 0; i < ctx.nscratch; i++) {
        free(ctx.scratch[i]);
    }
    free(ctx.scratch);

    if (ctx.nomem || ctx.problems > 0) {
        config_free(cfg);
        return ctx.nomem ? TE_NOMEM : TE_INVALID;
    }
    *out = cfg;
    return 0;
}


/* A configuration is a few kilobytes; the cap keeps a wrong path such as
 * /dev/zero from filling memory. */
#define CONFIG_FILE_MAX (16 * 1024 * 1024)

/* Reads all of |file| into |out|. Returns 0 or an errno value (EFBIG past
 * CONFIG_FILE_MAX). */
static int read_file(const char *file, buf_t *out)
{
    FILE *f = fopen(file, "rb");
    if (f == NULL) {
        return errno;
    }
    char chunk[65536];
    int err = 0;
    for (;;) {
        size_t n = fread(chunk, 1, sizeof(chunk), f);
        if (n > 0 && buf_append(out, chunk, n) != 0) {
            err = ENOMEM;
            break;
        }
        if (out->len > CONFIG_FILE_MAX) {
            err = EFBIG;
            break;
        }
        if (n < sizeof(chunk)) {
            if (ferror(f)) {
                err = errno != 0 ? errno : EIO;
            }
            break;
        }
    }
    fclose(f);
    return err;
}


int config_load(const char *file, config_t **out, config_errors_t *errs)
{
    buf_t text = {0};

    *out = NULL;
    errno = 0;
    int err = read_file(file, &text);
    if (err == ENOMEM) {
        buf_free(&text);
        return TE_NOMEM;
    }
    if (err != 0) {
        buf_free(&text);
        if (errs == NULL) {
            return TE_INVALID;
        }
        char msg[256];
        buf_t line = {0};
        int rc = err == EFBIG
                     ? buf_appendf(&line,
                                   "%s: cannot read file: larger than %d "
                                   "bytes; is this the configuration file?",
                                   file, CONFIG_FILE_MAX)
                     : buf_appendf(&line, "%s: cannot read file: %s", file,
                                   te_errno_text(err, msg, sizeof(msg)));
        if (rc != 0) {
            return TE_NOMEM;
        }
        return errors_add(errs, line.data) == 0 ? TE_INVALID : TE_NOMEM;
    }

    const char *data = text.data != NULL ? text.data : "";
    int rc = config_parse(file, data, text.len, out, errs);
    buf_free(&text);
    return rc;
}


static void service_free(service_t *svc)
{
    free(svc->name);
    free(svc->url);
    free(svc->host);
    free(svc->authority);
    free(svc->active_calls);
    options_free(&svc->options);
}


static void route_free(route_t *r)
{
    free(r->method);
    free(r->path);
    for (size_t i = 0; i < r->nsegs; i++) {
        free(r->segs[i].literal);
    }
    free(r->segs);
    for (size_t i = 0; i < r->nparams; i++) {
        free(r->params[i]);
    }
    free(r->params);
    for (size_t i = 0; i < r->ncalls; i++) {
        call_t *c = &r->calls[i];
        free(c->name);
        free(c->method);
        free(c->path_text);
        template_free(&c->path);
        for (size_t j = 0; j < c->nset_values; j++) {
            template_free(&c->set_values[j]);
        }
        free(c->set_values);
    }
    free(r->calls);
}


void config_free(config_t *cfg)
{
    if (cfg == NULL) {
        return;
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        service_free(&cfg->services[i]);
    }
    free(cfg->services);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        route_free(&cfg->routes[i]);
    }
    free(cfg->routes);
    free(cfg->file);
    free(cfg->listen_host);
    free(cfg->admin_host);
    free(cfg->resolver_servers);
    free(cfg->trusted_proxies);
    for (size_t i = 0; i < cfg->nsecret_headers; i++) {
        free(cfg->secret_headers[i]);
    }
    free(cfg->secret_headers);
    free(cfg);
}


void config_errors_free(config_errors_t *errs)
{
    if (errs == NULL) {
        return;
    }
    for (size_t i = 0; i < errs->count; i++) {
        free(errs->lines[i]);
    }
    free(errs->lines);
    errs->lines = NULL;
    errs->count = 0;
}


const service_t *config_service(const config_t *cfg, const char *name)
{
    return find_service(cfg, name);
}
