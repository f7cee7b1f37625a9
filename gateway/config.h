/* The gateway configuration: services, routes and their calls, loaded
 * from JSON with jansson and validated in full before use. A loaded
 * configuration is immutable and shared read-only by every worker. */
#ifndef TUTTI_CONFIG_H
#define TUTTI_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "headers.h"
#include "template.h"

/* Maximum length of the method of a route or call, in characters. */
#define CONFIG_METHOD_MAX 15

typedef enum {
    SCHEME_HTTP,  /* http://: HTTP/1.1 over TCP */
    SCHEME_H2C,   /* h2c://: HTTP/2 over TCP with prior knowledge */
    SCHEME_HTTPS, /* https://: HTTP/1.1 over TLS */
    SCHEME_H2,    /* h2://: HTTP/2 over TLS, ALPN "h2" */
} scheme_t;

/* Connection, discovery and TLS settings of a service. The top-level
 * "defaults" object sets them for every service; a service's own keys
 * override it. */
typedef struct service_options_s {
    int64_t timeout_ms;         /* "timeout_ms"; -1: none */
    int64_t max_connections;    /* per endpoint per worker; default 128 */
    int64_t connect_timeout_ms; /* per address, TCP + TLS; default 250 */
    int64_t idle_timeout_ms;    /* default 30000 */
    int64_t ping_interval_ms;   /* HTTP/2 idle PING; default 10000, 0 off */
    int64_t dns_min_ttl_ms;     /* default 1000 */
    int64_t dns_max_ttl_ms;     /* default 60000 */
    int64_t dns_max_stale_ms;   /* default 300000 */
    int64_t eject_after;        /* consecutive failures; default 3 */
    int64_t eject_base_ms;      /* first ejection; default 1000 */
    int64_t eject_max_ms;       /* longest ejection; default 30000 */
    /* Calls in flight to the service over all workers; -1: no limit
     * (the default). */
    int64_t max_concurrent_calls;
    char *ca_file;     /* NULL: the system's CA store */
    char *cert_file;   /* client certificate (mTLS) or NULL */
    char *key_file;    /* its key or NULL */
    char *server_name; /* SNI / verified name; default the host */
    bool tls_verify;   /* default true */
    /* "forward_headers" and "set_headers"; a service's own key replaces
     * the one in "defaults". */
    header_policy_t headers;
} service_options_t;

typedef struct service_s {
    char *name;
    char *url;
    scheme_t scheme;
    /* "srv+" URL: |host| is an SRV record name such as
     * _http._tcp.orders.test, whose DNS records give the targets and
     * their ports. |port| is then 0. */
    bool srv;
    char *host; /* host name or IP literal, without brackets */
    uint16_t port;
    /* Host / :authority value, e.g. "localhost:9101". For SRV it is the
     * record name without its leading "_service._proto" labels, without a
     * port. */
    char *authority;
    int64_t timeout_ms; /* -1: none; the same as options.timeout_ms */
    /* The defaults merged with the service's own keys. The TLS fields are
     * set only for https:// and h2:// services, and then server_name is
     * never NULL. */
    service_options_t options;
    size_t index; /* position in config_t.services */
    /* Calls to the service in flight now, over all workers: the bulkhead
     * counter for options.max_concurrent_calls. It is the one field of a
     * loaded configuration that changes, so it sits behind a pointer and
     * every worker updates it atomically. */
    atomic_long *active_calls;
} service_t;

typedef struct call_s {
    char *name;
    service_t *service;
    char *method;    /* default "GET" */
    char *path_text; /* the template as written */
    template_t path;
    int64_t timeout_ms; /* the call's, else the service's, else -1 */
    bool required;      /* default true */
    bool forward_body;  /* default false */
    /* The service's "set_headers" values compiled against the route's
     * parameters, in the order of options.headers.set_names. */
    template_t *set_values;
    size_t nset_values;
} call_t;

/* One segment of a route path: a literal or a {name} parameter. */
typedef struct route_seg_s {
    char *literal;   /* NULL for a parameter */
    int param_index; /* for a parameter: index into route_t.params */
} route_seg_t;

typedef struct route_s {
    char *method;
    char *path; /* as written, e.g. "/dashboard/{user}" */
    route_seg_t *segs;
    size_t nsegs;
    char **params; /* parameter names in path order */
    size_t nparams;
    int64_t deadline_ms; /* default 1000 */
    call_t *calls;
    size_t ncalls;
} route_t;

typedef struct config_s {
    char *file;           /* path the configuration was read from */
    char *listen_host;    /* default "127.0.0.1" */
    uint16_t listen_port; /* default 8080 */
    /* "admin": {"listen"}: the admin listener's address; admin_host is
     * NULL when the key is absent and there is no admin listener. */
    char *admin_host;
    uint16_t admin_port;
    service_t *services;
    size_t nservices;
    route_t *routes;
    size_t nroutes;
    char *resolver_servers; /* "ip:port,ip:port" for c-ares, or NULL */
    /* c-ares timeout of the first try and number of tries per server; 0:
     * /etc/resolv.conf's "options timeout:" and "attempts:", else
     * c-ares's defaults. */
    int64_t resolver_timeout_ms;
    int64_t resolver_tries;
    size_t max_request_body_bytes;  /* default 1 MiB */
    size_t max_response_body_bytes; /* default 8 MiB, per call */
    int64_t shutdown_grace_ms;      /* default 25000 */
    /* After SIGTERM or SIGINT, how long the listener keeps accepting
     * while load balancers take the instance out; default 5000. */
    int64_t drain_delay_ms;
    /* Overload protection. max_in_flight and max_connections_inbound
     * count over all workers; the header and URL limits are per request;
     * client_timeout_ms is the inactivity timeout of an inbound
     * connection. */
    int64_t max_in_flight;           /* default 10000 */
    int64_t max_header_bytes;        /* default 16384 */
    int64_t max_url_bytes;           /* default 8192 */
    int64_t max_connections_inbound; /* default 10000 */
    int64_t client_timeout_ms;       /* default 30000 */
    /* "trusted_proxies": peers whose X-Forwarded-* fields are kept. */
    cidr_t *trusted_proxies;
    size_t ntrusted_proxies;
    /* "secret_headers": field names (lower case) whose values are never
     * logged, besides Authorization, Cookie and Proxy-Authorization. */
    char **secret_headers;
    size_t nsecret_headers;
} config_t;

/* A list of problems, each "FILE: JSON.PATH: message". */
typedef struct config_errors_s {
    char **lines;
    size_t count;
} config_errors_t;

/* Reads and validates |file|. On success returns 0 and sets |*out|. On
 * failure returns TE_INVALID (or TE_NOMEM) and appends one line per
 * problem to |errs|; |*out| is NULL. */
int config_load(const char *file, config_t **out, config_errors_t *errs);

/* Same, from JSON text; |file| only names the source in messages. */
int config_parse(const char *file, const char *text, size_t len, config_t **out,
                 config_errors_t *errs);

void config_free(config_t *cfg);
void config_errors_free(config_errors_t *errs);

/* Looks up a service by name; NULL when unknown. */
const service_t *config_service(const config_t *cfg, const char *name);

#endif
