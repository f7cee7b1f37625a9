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

#include "config.h"
#include "errors.h"
#include "log.h"
#include "transport.h"
#include "worker.h"

#define TUTTI_VERSION "0.1.0"
#define MAX_WORKERS 256

static const char usage[] =
    "Usage: tutti --config FILE [--listen HOST:PORT] [--workers N]\n"
    "             [--log-level debug|info|warn|error]\n"
    "       tutti check FILE\n"
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
    "  --log-level L     minimum level of the JSON log lines on stderr\n"
    "                    (default: info)\n"
    "  check FILE        validate FILE; prints \"FILE: ok\" or one line per\n"
    "                    problem and exits 2\n"
    "\n"
    "Signals: SIGTERM or SIGINT stops accepting, lets requests in flight\n"
    "finish within shutdown_grace_ms, then exits 0; a second signal exits\n"
    "at once with status 1.\n";

typedef struct options_s {
    const char *config;
    const char *listen;
    int workers;
    log_level_t level;
} options_t;

static worker_t *workers;
static int nworkers;
static int workers_exited;
static int signals_seen;
static uv_async_t exited_async;
static uv_signal_t sigint_handle;
static uv_signal_t sigterm_handle;


static int print_config_errors(const config_errors_t *errs)
{
    for (size_t i = 0; i < errs->count; i++) {
        fprintf(stderr, "%s\n", errs->lines[i]);
    }
    return 2;
}


/* Returns the text for |err| with either strerror_r variant. */
static const char *errno_text(int err, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(err, buf, len);
#else
    if (strerror_r(err, buf, len) != 0) {
        snprintf(buf, len, "error %d", err);
    }
    return buf;
#endif
}


static void tls_contexts_free(tls_context_t **ctxs, size_t n)
{
    if (ctxs == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (ctxs[i] != NULL) {
            tls_context_free(ctxs[i]);
        }
    }
    free(ctxs);
}


/* The file settings of a service, in the order they are checked. */
typedef struct tls_file_s {
    const char *key;  /* configuration key */
    const char *kind; /* for messages */
    const char *path;
} tls_file_t;

static void tls_files(const service_options_t *o, tls_file_t files[3])
{
    files[0] = (tls_file_t){"ca_file", "CA file", o->ca_file};
    files[1] = (tls_file_t){"cert_file", "client certificate", o->cert_file};
    files[2] = (tls_file_t){"key_file", "client key", o->key_file};
}


/* Prints a problem with the file settings of |s| as
 * "FILE: services.NAME[.KEY]: message", like the configuration check. */
static void print_tls_problem(const config_t *cfg, const service_t *s,
                              const char *key, const char *msg)
{
    fprintf(stderr, "%s: services.%s%s%s: %s\n", cfg->file, s->name,
            key != NULL ? "." : "", key != NULL ? key : "", msg);
}


/* Opens each file of |s| once, so that a missing or unreadable one is
 * reported under the key that names it, in the words tls_context_new
 * uses. Returns the number of problems. */
static int check_tls_files(const config_t *cfg, const service_t *s)
{
    tls_file_t files[3];
    int problems = 0;

    tls_files(&s->options, files);
    for (size_t i = 0; i < 3; i++) {
        if (files[i].path == NULL) {
            continue;
        }
        FILE *f = fopen(files[i].path, "r");
        if (f != NULL) {
            fclose(f);
            continue;
        }
        char why[128];
        char msg[1024];
        int e = errno;
        snprintf(msg, sizeof(msg), "cannot load %s %s: %s", files[i].kind,
                 files[i].path, errno_text(e, why, sizeof(why)));
        print_tls_problem(cfg, s, files[i].key, msg);
        problems++;
    }
    return problems;
}


/* Returns the key whose file |msg| names, or NULL. */
static const char *tls_problem_key(const service_t *s, const char *msg)
{
    tls_file_t files[3];

    tls_files(&s->options, files);
    for (size_t i = 0; i < 3; i++) {
        if (files[i].path != NULL && strstr(msg, files[i].path) != NULL) {
            return files[i].key;
        }
    }
    return NULL;
}


/* Builds the TLS client context of each https:// and h2:// service, once
 * for all workers. Returns 0 with |*out| set to cfg->nservices entries,
 * NULL for cleartext services, or 2 after printing one line per problem.
 * Loading the files here lets `tutti check` report them too. */
static int tls_contexts_new(const config_t *cfg, tls_context_t ***out)
{
    int problems = 0;

    *out = NULL;
    tls_context_t **ctxs = calloc(cfg->nservices, sizeof(*ctxs));
    if (ctxs == NULL) {
        fprintf(stderr, "tutti: out of memory\n");
        return 2;
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        const service_t *s = &cfg->services[i];
        if (s->scheme != SCHEME_HTTPS && s->scheme != SCHEME_H2) {
            continue;
        }
        if (check_tls_files(cfg, s) > 0) {
            problems++;
            continue;
        }
        tls_options_t opts = {
            .ca_file = s->options.ca_file,
            .cert_file = s->options.cert_file,
            .key_file = s->options.key_file,
            .server_name = s->options.server_name,
            .verify = s->options.tls_verify,
            .alpn = s->scheme == SCHEME_H2 ? "h2" : "http/1.1",
        };
        char err[512];
        err[0] = '\0';
        if (tls_context_new(&opts, &ctxs[i], err, sizeof(err)) != 0) {
            ctxs[i] = NULL;
            print_tls_problem(cfg, s, tls_problem_key(s, err), err);
            problems++;
        }
    }
    if (problems > 0) {
        tls_contexts_free(ctxs, cfg->nservices);
        return 2;
    }
    *out = ctxs;
    return 0;
}


static int run_check(const char *file)
{
    config_t *cfg = NULL;
    config_errors_t errs = {0};
    if (config_load(file, &cfg, &errs) != 0) {
        int rc = print_config_errors(&errs);
        config_errors_free(&errs);
        return rc;
    }
    config_errors_free(&errs);
    tls_context_t **tls = NULL;
    int rc = tls_contexts_new(cfg, &tls);
    if (rc == 0) {
        printf("%s: ok\n", file);
    }
    tls_contexts_free(tls, cfg->nservices);
    config_free(cfg);
    return rc;
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


/* uv_signal_cb: the first SIGINT or SIGTERM drains, the second exits. */
static void on_signal(uv_signal_t *h, int signum)
{
    signals_seen++;
    if (signals_seen > 1) {
        log_msg(LOG_WARN, NULL, "second signal %d: exiting at once", signum);
        _exit(1);
    }
    log_msg(LOG_INFO, NULL, "signal %d: stopping", signum);
    for (int i = 0; i < nworkers; i++) {
        worker_stop(&workers[i]);
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
        uv_close((uv_handle_t *)&exited_async, NULL);
    }
}


int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc != 3) {
            fprintf(stderr, "Usage: tutti check FILE\n");
            return 2;
        }
        return run_check(argv[2]);
    }

    options_t opt = {.level = LOG_INFO};
    if (parse_options(argc, argv, &opt) != 0) {
        return 2;
    }
    log_set_level(opt.level);

    config_t *cfg = NULL;
    config_errors_t errs = {0};
    if (config_load(opt.config, &cfg, &errs) != 0) {
        int rc = print_config_errors(&errs);
        config_errors_free(&errs);
        return rc;
    }
    config_errors_free(&errs);
    tls_context_t **tls = NULL;
    if (tls_contexts_new(cfg, &tls) != 0) {
        config_free(cfg);
        return 2;
    }

    char host[256];
    unsigned port = cfg->listen_port;
    snprintf(host, sizeof(host), "%s", cfg->listen_host);
    if (opt.listen != NULL &&
        split_listen(opt.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr,
                "tutti: --listen: invalid address \"%s\"; expected "
                "HOST:PORT\n",
                opt.listen);
        tls_contexts_free(tls, cfg->nservices);
        config_free(cfg);
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

    int *fds = calloc((size_t)nworkers, sizeof(int));
    workers = calloc((size_t)nworkers, sizeof(*workers));
    char bound[80];
    if (fds == NULL || workers == NULL ||
        open_listeners(host, port, nworkers, fds, bound, sizeof(bound)) != 0) {
        tls_contexts_free(tls, cfg->nservices);
        config_free(cfg);
        return 1;
    }

    uv_async_init(main_loop, &exited_async, on_worker_exited);
    for (int i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].cfg = cfg;
        workers[i].tls = tls;
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
    tls_contexts_free(tls, cfg->nservices);
    config_free(cfg);
    ares_library_cleanup();
    return 0;
}
