/* tutti: command line, configuration check, worker threads and signals. */
#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "config.h"
#include "contracts.h"
#include "errors.h"
#include "lifecycle.h"
#include "log.h"
#include "shared_config.h"
#include "worker.h"

#define TUTTI_VERSION "0.1.0"
#define MAX_WORKERS 256

static const char usage[] =
    "Usage: tutti --config FILE [--listen HOST:PORT] [--workers N]\n"
    "             [--log-level debug|info|warn|error]\n"
    "             [--log-format json|text]\n"
    "       tutti check FILE\n"
    "       tutti contracts --config FILE --out DIR\n"
    "       tutti --help | --version\n"
    "\n"
    "An HTTP gateway that fans each request out to the downstream calls\n"
    "of its route and answers with one JSON object.\n"
    "\n"
    "  --config FILE     JSON configuration (services and routes)\n"
    "  --listen H:P      address to listen on; overrides the file's "
    "\"listen\"\n"
    "  --workers N       worker threads, each with its own event loop\n"
    "                    (default: the number of online CPUs)\n"
    "  --log-level L     minimum level of the log lines on stderr\n"
    "                    (default: info)\n"
    "  --log-format F    json: one JSON object per line (default); text:\n"
    "                    \"time level worker msg key=value ...\"\n"
    "  check FILE        validate FILE; prints \"FILE: ok\" or one line per\n"
    "                    problem and exits 2\n"
    "  contracts         write one Pact file per service of --config FILE,\n"
    "                    DIR/tutti-SERVICE.json, describing the requests\n"
    "                    tutti sends it; creates DIR when missing\n"
    "\n"
    "Signals: SIGTERM or SIGINT starts a drain: the listener keeps\n"
    "accepting for drain_delay_ms, then stops, and requests in flight get\n"
    "shutdown_grace_ms to finish before tutti exits 0; a second signal\n"
    "exits at once with status 1. SIGHUP reloads the --config file.\n";

typedef struct options_s {
    const char *config;
    const char *listen;
    int workers;
    log_level_t level;
    log_format_t format;
} options_t;

static worker_t *workers;
static int nworkers;
static int workers_exited;
static int signals_seen;
static uv_async_t exited_async;
static uv_signal_t sigint_handle;
static uv_signal_t sigterm_handle;
static uv_signal_t sighup_handle;
static uv_timer_t drain_timer;
/* Main thread only: the configuration last loaded, the file it came from,
 * and whether --listen overrides the file's "listen". */
static shared_config_t *current_config;
static const char *config_path;
static bool listen_overridden;


/* Loads |file| for a command-line run, with no earlier configuration to
 * share TLS contexts with. Returns 0 with |*out| holding one reference, or
 * prints each problem to stderr and returns 2, the exit status for an
 * invalid configuration. */
static int load_config(const char *file, shared_config_t **out)
{
    config_errors_t errs = {0};
    int rc = 0;

    if (shared_config_load(file, NULL, out, &errs) != 0) {
        for (size_t i = 0; i < errs.count; i++) {
            fprintf(stderr, "%s\n", errs.lines[i]);
        }
        rc = 2;
    }
    config_errors_free(&errs);
    return rc;
}


static int run_check(const char *file)
{
    shared_config_t *sc = NULL;
    if (load_config(file, &sc) != 0) {
        return 2;
    }
    printf("%s: ok\n", file);
    shared_config_release(sc);
    return 0;
}


#define CONTRACTS_USAGE "Usage: tutti contracts --config FILE --out DIR\n"


/* Prints "tutti contracts: |what|" and the usage line; returns 2. */
static int contracts_usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "tutti contracts: ");
    fprintf(stderr, what, arg);
    fprintf(stderr, "\n" CONTRACTS_USAGE);
    return 2;
}


static int run_contracts(int argc, char **argv)
{
    const char *file = NULL;
    const char *dir = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(CONTRACTS_USAGE, stdout);
            return 0;
        }
        const char **slot = strcmp(a, "--config") == 0 ? &file
                            : strcmp(a, "--out") == 0  ? &dir
                                                       : NULL;
        if (slot == NULL) {
            return contracts_usage_error("%s: unknown argument", a);
        }
        if (i + 1 == argc) {
            return contracts_usage_error("%s: missing value", a);
        }
        if (*slot != NULL) {
            return contracts_usage_error("%s: given twice", a);
        }
        *slot = argv[++i];
        if (**slot == '\0') {
            return contracts_usage_error("%s: empty value", a);
        }
    }
    if (file == NULL || dir == NULL) {
        return contracts_usage_error(
            "%s is required", file == NULL ? "--config FILE" : "--out DIR");
    }

    shared_config_t *sc = NULL;
    if (load_config(file, &sc) != 0) {
        return 2;
    }
    char err[512];
    int rc = contracts_write(sc->cfg, dir, err, sizeof(err));
    shared_config_release(sc);
    if (rc != 0) {
        fprintf(stderr, "tutti contracts: %s\n",
                rc == TE_NOMEM ? "out of memory" : err);
        return 1;
    }
    return 0;
}


static int parse_int(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        return TE_INVALID;
    }
    *out = v;
    return 0;
}


static int parse_options(int argc, char **argv, options_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            exit(0);
        }
        if (strcmp(a, "--version") == 0) {
            printf("tutti %s\n", TUTTI_VERSION);
            exit(0);
        }
        if (v == NULL) {
            fprintf(stderr,
                    "tutti: %s: unknown option or missing value; "
                    "see tutti --help\n",
                    a);
            return TE_INVALID;
        }
        i++;
        if (strcmp(a, "--config") == 0) {
            o->config = v;
        } else if (strcmp(a, "--listen") == 0) {
            o->listen = v;
        } else if (strcmp(a, "--workers") == 0) {
            long n;
            if (parse_int(v, 1, MAX_WORKERS, &n) != 0) {
                fprintf(stderr,
                        "tutti: --workers: invalid value \"%s\"; "
                        "expected an integer from 1 to %d\n",
                        v, MAX_WORKERS);
                return TE_INVALID;
            }
            o->workers = (int)n;
        } else if (strcmp(a, "--log-format") == 0) {
            if (log_parse_format(v, &o->format) != 0) {
                fprintf(stderr,
                        "tutti: --log-format: invalid value \"%s\"; "
                        "expected json or text\n",
                        v);
                return TE_INVALID;
            }
        } else if (strcmp(a, "--log-level") == 0) {
            if (log_parse_level(v, &o->level) != 0) {
                fprintf(stderr,
                        "tutti: --log-level: invalid value \"%s\"; "
                        "expected debug, info, warn or error\n",
                        v);
                return TE_INVALID;
            }
        } else {
            fprintf(stderr, "tutti: %s: unknown option; see tutti --help\n", a);
            return TE_INVALID;
        }
    }
    if (o->config == NULL) {
        fprintf(stderr, "tutti: missing --config FILE; see tutti --help\n");
        return TE_INVALID;
    }
    return 0;
}


/* Splits "HOST:PORT" or "[V6]:PORT" into |host| and |port|. */
static int split_listen(const char *s, char *host, size_t hostlen,
                        unsigned *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s) {
        return TE_INVALID;
    }
    const char *h = s;
    size_t hlen = (size_t)(colon - s);
    if (h[0] == '[') {
        if (hlen < 2 || h[hlen - 1] != ']') {
            return TE_INVALID;
        }
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= hostlen) {
        return TE_INVALID;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    long p;
    if (parse_int(colon + 1, 0, 65535, &p) != 0) {
        return TE_INVALID;
    }
    *port = (unsigned)p;
    return 0;
}


/* Opens one listening socket per worker on the same address with
 * SO_REUSEPORT, so the kernel spreads connections over the workers and no
 * accept is shared. Port 0 takes the port the first socket got. Runs at
 * start-up only: the blocking getaddrinfo is not on a request path. */
static int open_listeners(const char *host, unsigned port, int n, int *fds,
                          char *bound, size_t boundlen)
{
    struct addrinfo hints = {0};
    struct addrinfo *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "tutti: listen address \"%s\": %s\n", host,
                gai_strerror(rc));
        return TE_INVALID;
    }

    struct sockaddr_storage addr;
    socklen_t addrlen = (socklen_t)ai->ai_addrlen;
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);

    /* SO_REUSEPORT would also let this process share a port that another
     * tutti (same user) already listens on, each getting part of the
     * traffic. A probe bound without it fails in that case. */
    if (port != 0) {
        int probe = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (probe >= 0 && bind(probe, (struct sockaddr *)&addr, addrlen) != 0) {
            int e = errno;
            fprintf(stderr, "tutti: cannot listen on %s:%u: %s\n", host, port,
                    uv_strerror(uv_translate_sys_error(e)));
            close(probe);
            return TE_INVALID;
        }
        if (probe >= 0) {
            close(probe);
        }
    }

    for (int i = 0; i < n; i++) {
        int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0) {
            perror("tutti: socket");
            return TE_INVALID;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&addr, addrlen) != 0 ||
            listen(fd, 1024) != 0) {
            char why[128];
            int e = errno;
            snprintf(why, sizeof(why), "%s",
                     uv_strerror(uv_translate_sys_error(e)));
            fprintf(stderr, "tutti: cannot listen on %s:%u: %s\n", host, port,
                    why);
            close(fd);
            return TE_INVALID;
        }
        if (i == 0) {
            /* With port 0 the kernel chose; the others must share it. */
            getsockname(fd, (struct sockaddr *)&addr, &addrlen);
        }
        fds[i] = fd;
    }

    char ip[INET6_ADDRSTRLEN];
    unsigned bport;
    if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&addr;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        bport = ntohs(s6->sin6_port);
        snprintf(bound, boundlen, "[%s]:%u", ip, bport);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&addr;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        bport = ntohs(s4->sin_port);
        snprintf(bound, boundlen, "%s:%u", ip, bport);
    }
    return 0;
}


/* uv_timer_cb: the drain delay is over, so the workers stop accepting
 * and give the requests in flight shutdown_grace_ms to finish. */
static void on_drain_delay_over(uv_timer_t *t)
{
    for (int i = 0; i < nworkers; i++) {
        worker_stop(&workers[i]);
    }
}


/* uv_signal_cb: the first SIGINT or SIGTERM drains, the second exits. */
static void on_signal(uv_signal_t *h, int signum)
{
    signals_seen++;
    if (signals_seen > 1) {
        log_msg(LOG_WARN, NULL, "second signal %d: exiting at once", signum);
        _exit(1);
    }
    /* Readiness turns 503 now, so load balancers stop sending new
     * connections while the listener still takes the ones in transit. */
    lifecycle_start_draining();
    int64_t delay = current_config->cfg->drain_delay_ms;
    log_event(LOG_INFO, NULL, "draining",
              json_pack("{s:i, s:I, s:I}", "signal", signum, "drain_delay_ms",
                        (json_int_t)delay, "shutdown_grace_ms",
                        (json_int_t)current_config->cfg->shutdown_grace_ms));
    uv_timer_start(&drain_timer, on_drain_delay_over, (uint64_t)delay, 0);
}


/* Logs a warning for each setting of |next| that differs from |cur| but
 * takes effect only at start-up, because the sockets, the resolvers and
 * the libmicrohttpd daemons that use it already exist. */
static void warn_fixed_settings(const config_t *cur, const config_t *next)
{
    const char *changed[8];
    size_t n = 0;

    if (!listen_overridden &&
        (strcmp(cur->listen_host, next->listen_host) != 0 ||
         cur->listen_port != next->listen_port)) {
        changed[n++] = "listen";
    }
    if ((cur->resolver_servers == NULL) != (next->resolver_servers == NULL) ||
        (cur->resolver_servers != NULL &&
         strcmp(cur->resolver_servers, next->resolver_servers) != 0) ||
        cur->resolver_timeout_ms != next->resolver_timeout_ms ||
        cur->resolver_tries != next->resolver_tries) {
        changed[n++] = "resolver";
    }
    if ((cur->admin_host == NULL) != (next->admin_host == NULL) ||
        (cur->admin_host != NULL &&
         (strcmp(cur->admin_host, next->admin_host) != 0 ||
          cur->admin_port != next->admin_port))) {
        changed[n++] = "admin";
    }
    if (cur->max_header_bytes != next->max_header_bytes) {
        changed[n++] = "max_header_bytes";
    }
    if (cur->client_timeout_ms != next->client_timeout_ms) {
        changed[n++] = "client_timeout_ms";
    }
    for (size_t i = 0; i < n; i++) {
        log_event(
            LOG_WARN, NULL,
            "setting changed in the reloaded configuration but "
            "applies only at start-up; keeping the old value until "
            "a restart",
            json_pack("{s:s, s:s}", "config", next->file, "key", changed[i]));
    }
}


/* Re-reads the --config file, for SIGHUP and POST /admin/reload. An
 * invalid file changes nothing: the problems are logged in one event,
 * with the lines `tutti check` prints. */
static void reload_config(void)
{
    shared_config_t *sc = NULL;
    config_errors_t errs = {0};

    if (shared_config_load(config_path, current_config, &sc, &errs) != 0) {
        json_t *lines = json_array();
        for (size_t i = 0; i < errs.count; i++) {
            json_array_append_new(lines, json_string(errs.lines[i]));
        }
        config_errors_free(&errs);
        lifecycle_count_reload(false);
        log_event(
            LOG_ERROR, NULL,
            "configuration reload rejected; the previous "
            "configuration keeps serving",
            json_pack("{s:s, s:o}", "config", config_path, "errors", lines));
        return;
    }
    config_errors_free(&errs);
    warn_fixed_settings(current_config->cfg, sc->cfg);
    for (int i = 0; i < nworkers; i++) {
        worker_reconfigure(&workers[i], sc);
    }
    /* The admin listener reads the configuration it was given, so it
     * moves to the new one before the old one may be freed. */
    admin_set_config(sc->cfg);
    shared_config_release(current_config);
    current_config = sc;
    lifecycle_count_reload(true);
    log_event(LOG_INFO, NULL, "configuration reloaded",
              json_pack("{s:s, s:I, s:I}", "config", config_path, "services",
                        (json_int_t)sc->cfg->nservices, "routes",
                        (json_int_t)sc->cfg->nroutes));
}


/* uv_signal_cb: SIGHUP. */
static void on_sighup(uv_signal_t *h, int signum)
{
    if (!lifecycle_request_reload()) {
        log_msg(LOG_WARN, NULL,
                "SIGHUP ignored: the gateway is draining and takes no "
                "reload");
    }
}


/* uv_async_cb: a worker's loop ended. */
static void on_worker_exited(uv_async_t *a)
{
    /* Coalesced sends are possible, so count the exits by joining. */
    workers_exited = 0;
    for (int i = 0; i < nworkers; i++) {
        workers_exited += atomic_load(&workers[i].loop_ended);
    }
    if (workers_exited == nworkers) {
        uv_close((uv_handle_t *)&sigint_handle, NULL);
        uv_close((uv_handle_t *)&sigterm_handle, NULL);
        uv_close((uv_handle_t *)&sighup_handle, NULL);
        uv_close((uv_handle_t *)&drain_timer, NULL);
        uv_close((uv_handle_t *)&exited_async, NULL);
        lifecycle_close();
        admin_close();
    }
}


int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc == 3 &&
            (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            printf("Usage: tutti check FILE\n");
            return 0;
        }
        if (argc != 3) {
            fprintf(stderr, "Usage: tutti check FILE\n");
            return 2;
        }
        return run_check(argv[2]);
    }
    if (argc >= 2 && strcmp(argv[1], "contracts") == 0) {
        return run_contracts(argc, argv);
    }

    options_t opt = {.level = LOG_INFO};
    if (parse_options(argc, argv, &opt) != 0) {
        return 2;
    }
    log_set_level(opt.level);
    log_set_format(opt.format);

    if (load_config(opt.config, &current_config) != 0) {
        return 2;
    }
    config_path = opt.config;
    listen_overridden = opt.listen != NULL;
    const config_t *cfg = current_config->cfg;

    char host[256];
    unsigned port = cfg->listen_port;
    snprintf(host, sizeof(host), "%s", cfg->listen_host);
    if (opt.listen != NULL &&
        split_listen(opt.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr,
                "tutti: --listen: invalid address \"%s\"; expected "
                "HOST:PORT\n",
                opt.listen);
        shared_config_release(current_config);
        return 2;
    }

    nworkers =
        opt.workers > 0 ? opt.workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (nworkers < 1) {
        nworkers = 1;
    }
    signal(SIGPIPE, SIG_IGN);
    ares_library_init(ARES_LIB_INIT_ALL);

    /* Signal handlers go in before the port opens, so a signal sent as
     * soon as the port answers drains rather than kills. libuv queues it
     * until uv_run, when every worker exists. */
    uv_loop_t *main_loop = uv_default_loop();
    uv_signal_init(main_loop, &sigint_handle);
    uv_signal_start(&sigint_handle, on_signal, SIGINT);
    uv_signal_init(main_loop, &sigterm_handle);
    uv_signal_start(&sigterm_handle, on_signal, SIGTERM);
    uv_signal_init(main_loop, &sighup_handle);
    uv_signal_start(&sighup_handle, on_sighup, SIGHUP);
    uv_timer_init(main_loop, &drain_timer);
    if (lifecycle_init(main_loop, reload_config) != 0) {
        fprintf(stderr, "tutti: cannot set up configuration reloads\n");
        return 1;
    }

    int *fds = calloc((size_t)nworkers, sizeof(int));
    workers = calloc((size_t)nworkers, sizeof(*workers));
    char bound[80];
    if (fds == NULL || workers == NULL ||
        open_listeners(host, port, nworkers, fds, bound, sizeof(bound)) != 0) {
        goto fail;
    }
    /* The admin daemon answers only once the main loop runs, when every
     * worker has started. */
    if (admin_start(main_loop, cfg, workers, nworkers) != 0) {
        goto fail;
    }

    uv_async_init(main_loop, &exited_async, on_worker_exited);
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].initial = current_config;
        workers[i].listen_fd = fds[i];
        workers[i].exited = &exited_async;
        if (worker_start(&workers[i]) != 0) {
            _exit(1);
        }
    }

    log_event(LOG_INFO, NULL, "listening",
              json_pack("{s:s, s:i, s:s, s:s}", "address", bound, "workers",
                        nworkers, "config", opt.config, "version",
                        TUTTI_VERSION));

    uv_run(main_loop, UV_RUN_DEFAULT);
    for (int i = 0; i < nworkers; i++) {
        worker_join(&workers[i]);
    }
    uv_loop_close(main_loop);
    log_msg(LOG_INFO, NULL, "stopped");
    free(workers);
    free(fds);
    shared_config_release(current_config);
    ares_library_cleanup();
    return 0;

fail:
    free(fds);
    free(workers);
    workers = NULL;
    shared_config_release(current_config);
    return 1;
}
