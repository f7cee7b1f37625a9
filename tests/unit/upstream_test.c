/* Tests for the dispatcher: discovery through a real dnsmasq on
 * 127.0.0.1 (restarted with new records to simulate changes), selection
 * and health against small HTTP/1.1 servers on 127.0.0.x and ::1 that run
 * in the test's own loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "buf.h"
#include "errors.h"
#include "upstream.h"

/* Upper bound for one wait on the loop, so that a broken test fails
 * instead of hanging. */
#define WAIT_MS 5000
#define MAX_SERVERS 6
#define MAX_DNS_ARGS 24

/* A keep-alive HTTP/1.1 server that answers every request with 200 and
 * its label as the body, or never answers when |silent| is set. */
typedef struct server_s {
    uv_loop_t *loop;
    uv_tcp_t listener;
    bool listening;
    bool silent;
    char label[16];
    int requests;
    int open_conns;
} server_t;

typedef struct sconn_s {
    uv_tcp_t tcp;
    server_t *server;
    buf_t in;
} sconn_t;

typedef struct write_s {
    uv_write_t req;
    char data[128];
} write_t;

typedef struct fixture_s {
    uv_loop_t loop;
    uv_timer_t guard;
    bool guard_fired;
    server_t servers[MAX_SERVERS];
    pid_t dns_pid;
    int dns_port;
    char dns_servers[32];
    char pid_file[64];
    upstream_service_t svc;
    upstream_t *up;
    char events[8][256]; /* the last event messages, oldest first */
    int nevents;
} fixture_t;

typedef struct result_s {
    upcall_t call;
    fixture_t *fx;
    int done;
    int err;
    uint64_t elapsed_ms;
    uint64_t started_ns;
} result_t;


/* ---- HTTP server ---- */

static void on_sconn_closed(uv_handle_t *h)
{
    sconn_t *sc = h->data;
    sc->server->open_conns--;
    buf_free(&sc->in);
    free(sc);
}


static void on_server_write(uv_write_t *req, int status)
{
    free(req);
}


static void on_sconn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    static char scratch[4096];
    *buf = uv_buf_init(scratch, sizeof(scratch));
}


static void on_sconn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sconn_t *sc = s->data;
    server_t *srv = sc->server;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_sconn_closed);
        return;
    }
    assert_int_equal(buf_append(&sc->in, buf->base, (size_t)n), 0);
    for (;;) {
        const char *end = memmem(sc->in.data, sc->in.len, "\r\n\r\n", 4);
        if (end == NULL) {
            return;
        }
        size_t used = (size_t)(end + 4 - sc->in.data);
        memmove(sc->in.data, sc->in.data + used, sc->in.len - used);
        sc->in.len -= used;
        srv->requests++;
        if (srv->silent) {
            continue;
        }
        write_t *w = calloc(1, sizeof(*w));
        assert_non_null(w);
        int len = snprintf(w->data, sizeof(w->data),
                           "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
                           strlen(srv->label), srv->label);
        uv_buf_t b = uv_buf_init(w->data, (unsigned int)len);
        assert_int_equal(uv_write(&w->req, s, &b, 1, on_server_write), 0);
    }
}


static void on_server_accept(uv_stream_t *l, int status)
{
    server_t *srv = l->data;
    assert_int_equal(status, 0);
    sconn_t *sc = calloc(1, sizeof(*sc));
    assert_non_null(sc);
    sc->server = srv;
    uv_tcp_init(srv->loop, &sc->tcp);
    sc->tcp.data = sc;
    srv->open_conns++;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&sc->tcp), 0);
    uv_read_start((uv_stream_t *)&sc->tcp, on_sconn_alloc, on_sconn_read);
}


static void make_addr(const char *ip, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (strchr(ip, ':') != NULL) {
        assert_int_equal(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss), 0);
    } else {
        assert_int_equal(uv_ip4_addr(ip, port, (struct sockaddr_in *)ss), 0);
    }
}


/* Starts listening on ip:port; returns the port, or -1 if it is taken. */
static int server_start(fixture_t *fx, int i, const char *ip, int port)
{
    server_t *srv = &fx->servers[i];
    struct sockaddr_storage ss;
    make_addr(ip, port, &ss);
    srv->loop = &fx->loop;
    snprintf(srv->label, sizeof(srv->label), "s%d", i);
    uv_tcp_init(&fx->loop, &srv->listener);
    srv->listener.data = srv;
    unsigned flags = ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    if (uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, flags) != 0 ||
        uv_listen((uv_stream_t *)&srv->listener, 64, on_server_accept) != 0) {
        uv_close((uv_handle_t *)&srv->listener, NULL);
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        return -1;
    }
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    srv->listening = true;
    if (bound.ss_family == AF_INET) {
        return ntohs(((struct sockaddr_in *)&bound)->sin_port);
    }
    return ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
}


/* Stops accepting; connections already open stay until the client
 * closes them. */
static void server_stop(fixture_t *fx, int i)
{
    server_t *srv = &fx->servers[i];
    if (srv->listening) {
        srv->listening = false;
        uv_close((uv_handle_t *)&srv->listener, NULL);
    }
}


/* A TCP port that is free on every address in |ips| right now. */
static int common_free_port(fixture_t *fx, const char *const *ips, size_t n)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        int port = server_start(fx, MAX_SERVERS - 1, ips[0], 0);
        assert_true(port > 0);
        server_stop(fx, MAX_SERVERS - 1);
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        bool ok = true;
        for (size_t k = 1; k < n && ok; k++) {
            if (server_start(fx, MAX_SERVERS - 1, ips[k], port) < 0) {
                ok = false;
            } else {
                server_stop(fx, MAX_SERVERS - 1);
                uv_run(&fx->loop, UV_RUN_NOWAIT);
            }
        }
        if (ok) {
            return port;
        }
    }
    fail_msg("no common free port");
    return -1;
}


/* ---- dnsmasq ---- */

/* Binds a socket of |type| to 127.0.0.1:|port| (0: any) and returns the
 * port, or -1 when it is taken. */
static int try_bind(int type, int port)
{
    int fd = socket(AF_INET, type, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)port);
    int rc = bind(fd, (struct sockaddr *)&sin, sizeof(sin));
    socklen_t len = sizeof(sin);
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    return rc == 0 ? ntohs(sin.sin_port) : -1;
}


/* dnsmasq listens on UDP and TCP: the port must be free for both. */
static int free_dns_port(void)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        int port = try_bind(SOCK_DGRAM, 0);
        if (port > 0 && try_bind(SOCK_STREAM, port) == port) {
            return port;
        }
    }
    fail_msg("no free port for dnsmasq");
    return -1;
}


/* Starts dnsmasq on fx->dns_port with |records| (dnsmasq options, NULL
 * ended) and every answer's TTL at 1 s; waits until it answers. */
static void dns_start(fixture_t *fx, const char *const *records)
{
    char port_arg[32];
    char pid_arg[96];
    const char *argv[MAX_DNS_ARGS];
    size_t n = 0;

    snprintf(port_arg, sizeof(port_arg), "--port=%d", fx->dns_port);
    snprintf(pid_arg, sizeof(pid_arg), "--pid-file=%s", fx->pid_file);
    unlink(fx->pid_file);
    argv[n++] = "dnsmasq";
    argv[n++] = "-k";
    argv[n++] = "--conf-file=/dev/null";
    argv[n++] = "--no-resolv";
    argv[n++] = "--no-hosts";
    argv[n++] = "--listen-address=127.0.0.1";
    argv[n++] = "--bind-interfaces";
    argv[n++] = "--local=/test/";
    argv[n++] = "--local-ttl=1";
    argv[n++] = port_arg;
    argv[n++] = pid_arg;
    for (size_t i = 0; records[i] != NULL; i++) {
        assert_true(n < MAX_DNS_ARGS - 1);
        argv[n++] = records[i];
    }
    argv[n] = NULL;

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execvp("dnsmasq", (char *const *)argv);
        _exit(127);
    }
    fx->dns_pid = pid;
    /* dnsmasq writes its pid file once its sockets are bound. */
    struct stat st;
    for (int i = 0; i < 200 && stat(fx->pid_file, &st) != 0; i++) {
        int status;
        assert_int_equal(waitpid(pid, &status, WNOHANG), 0);
        usleep(10000);
    }
    assert_int_equal(stat(fx->pid_file, &st), 0);
}


static void dns_stop(fixture_t *fx)
{
    if (fx->dns_pid > 0) {
        kill(fx->dns_pid, SIGTERM);
        waitpid(fx->dns_pid, NULL, 0);
        fx->dns_pid = 0;
    }
}


/* ---- dispatcher ---- */

static void on_event(void *arg, const upstream_event_t *ev)
{
    fixture_t *fx = arg;
    if (fx->nevents == 8) {
        memmove(fx->events[0], fx->events[1], sizeof(fx->events[0]) * 7);
        fx->nevents--;
    }
    snprintf(fx->events[fx->nevents++], sizeof(fx->events[0]), "%s",
             ev->message);
}


static bool saw_event(const fixture_t *fx, const char *needle)
{
    for (int i = 0; i < fx->nevents; i++) {
        if (strstr(fx->events[i], needle) != NULL) {
            return true;
        }
    }
    return false;
}


static void up_start(fixture_t *fx)
{
    char err[256];
    upstream_options_t opts = {
        .resolver = {.servers = fx->dns_servers, .timeout_ms = 200, .tries = 1},
        .on_event = on_event,
        .event_arg = fx,
    };
    int rc =
        upstream_new(&fx->loop, &fx->svc, 1, &opts, &fx->up, err, sizeof(err));
    if (rc != 0) {
        fail_msg("upstream_new: %s", err);
    }
}


static void on_guard(uv_timer_t *t)
{
    fixture_t *fx = t->data;
    fx->guard_fired = true;
    uv_stop(&fx->loop);
}


/* Runs the loop for |ms| milliseconds. */
static void run_for(fixture_t *fx, uint64_t ms)
{
    fx->guard_fired = false;
    uv_timer_start(&fx->guard, on_guard, ms, 0);
    uv_ref((uv_handle_t *)&fx->guard);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&fx->guard);
}


static void on_call_done(upcall_t *call, int err)
{
    result_t *r = call->data;
    r->done++;
    r->err = err;
    r->elapsed_ms = (uv_hrtime() - r->started_ns) / 1000000;
    uv_stop(&r->fx->loop);
}


static void call_start(fixture_t *fx, result_t *r)
{
    memset(r, 0, sizeof(*r));
    r->fx = fx;
    r->call.method = "GET";
    r->call.path = "/";
    r->call.authority = "svc.test";
    r->call.max_body = 1024;
    r->call.on_done = on_call_done;
    r->call.data = r;
    r->started_ns = uv_hrtime();
    r->call.deadline_ns = r->started_ns + 3000 * 1000000ULL;
    upstream_start(fx->up, 0, &r->call);
    assert_int_equal(r->done, 0);
}


static void call_wait(fixture_t *fx, result_t *r)
{
    fx->guard_fired = false;
    uv_timer_start(&fx->guard, on_guard, WAIT_MS, 0);
    while (r->done == 0 && !fx->guard_fired) {
        uv_run(&fx->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&fx->guard);
    assert_int_equal(r->done, 1);
}


/* Makes one call and waits for it; returns its error code. */
static int call_once(fixture_t *fx, result_t *r)
{
    call_start(fx, r);
    call_wait(fx, r);
    buf_free(&r->call.body_out);
    return r->err;
}


/* Makes |n| calls one after the other; each must succeed. */
static void calls_ok(fixture_t *fx, int n)
{
    for (int i = 0; i < n; i++) {
        result_t r;
        int err = call_once(fx, &r);
        if (err != 0) {
            fail_msg("call %d failed: %s: %s", i, te_kind(err), r.call.errmsg);
        }
        assert_int_equal(r.call.status, 200);
    }
}


static uint64_t retries(const fixture_t *fx)
{
    upstream_stats_t st;
    upstream_get_stats(fx->up, &st);
    return st.connect_retries;
}


static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    uv_timer_init(&fx->loop, &fx->guard);
    fx->guard.data = fx;
    uv_unref((uv_handle_t *)&fx->guard);
    fx->dns_port = free_dns_port();
    snprintf(fx->dns_servers, sizeof(fx->dns_servers), "127.0.0.1:%d",
             fx->dns_port);
    snprintf(fx->pid_file, sizeof(fx->pid_file), "/tmp/upstream_test.%d.pid",
             (int)getpid());
    fx->svc = (upstream_service_t){
        .name = "svc",
        .host = "a.test",
        .proto = UPSTREAM_HTTP1,
        .pool = {.connect_timeout_ms = 250},
        .dns_min_ttl_ms = 100,
        .dns_max_ttl_ms = 1000,
    };
    *state = fx;
    return 0;
}


static int teardown(void **state)
{
    fixture_t *fx = *state;
    if (fx->up != NULL) {
        upstream_close(fx->up);
        fx->up = NULL;
    }
    for (int i = 0; i < MAX_SERVERS; i++) {
        server_stop(fx, i);
    }
    uv_close((uv_handle_t *)&fx->guard, NULL);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    dns_stop(fx);
    unlink(fx->pid_file);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    free(fx);
    return 0;
}


/* ---- tests ---- */

static void test_upstream_a_and_aaaa_used(void **state)
{
    fixture_t *fx = *state;
    const char *ips[] = {"127.0.0.2", "::1"};
    int port = common_free_port(fx, ips, 2);
    assert_int_equal(server_start(fx, 0, "127.0.0.2", port), port);
    assert_int_equal(server_start(fx, 1, "::1", port), port);
    const char *records[] = {"--host-record=a.test,127.0.0.2,::1", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    up_start(fx);

    calls_ok(fx, 40);
    assert_true(fx->servers[0].requests > 0);
    assert_true(fx->servers[1].requests > 0);
    assert_int_equal(fx->servers[0].requests + fx->servers[1].requests, 40);
    assert_int_equal(retries(fx), 0);
}


/* Sequential calls leave no call outstanding, so power-of-two-choices
 * ties and the choice follows the SRV weights alone. */
static void test_upstream_srv_weights(void **state)
{
    fixture_t *fx = *state;
    int p[4];
    p[0] = server_start(fx, 0, "127.0.0.3", 0);
    p[1] = server_start(fx, 1, "127.0.0.4", 0);
    p[2] = server_start(fx, 2, "127.0.0.5", 0);
    p[3] = server_start(fx, 3, "127.0.0.6", 0);
    char rec[4][96];
    snprintf(rec[0], sizeof(rec[0]),
             "--srv-host=_http._tcp.svc.test,t1.test,%d,10,60", p[0]);
    snprintf(rec[1], sizeof(rec[1]),
             "--srv-host=_http._tcp.svc.test,t2.test,%d,10,30", p[1]);
    snprintf(rec[2], sizeof(rec[2]),
             "--srv-host=_http._tcp.svc.test,t3.test,%d,10,10", p[2]);
    snprintf(rec[3], sizeof(rec[3]),
             "--srv-host=_http._tcp.svc.test,t4.test,%d,20,100", p[3]);
    const char *records[] = {
        rec[0],
        rec[1],
        rec[2],
        rec[3],
        "--host-record=t1.test,127.0.0.3",
        "--host-record=t2.test,127.0.0.4",
        "--host-record=t3.test,127.0.0.5",
        "--host-record=t4.test,127.0.0.6",
        NULL,
    };
    dns_start(fx, records);
    fx->svc.srv = true;
    fx->svc.host = "_http._tcp.svc.test";
    fx->svc.dns_min_ttl_ms = 10000;
    fx->svc.dns_max_ttl_ms = 10000;
    up_start(fx);

    const int total = 1000;
    calls_ok(fx, total);
    /* Within 5 standard deviations of the binomial distribution:
     * (got - n p)^2 <= 25 n p (1 - p), with p in percent. */
    const long percent[3] = {60, 30, 10};
    for (int i = 0; i < 3; i++) {
        long expected = total * percent[i] / 100;
        long diff = fx->servers[i].requests - expected;
        long variance = total * percent[i] * (100 - percent[i]) / 10000;
        if (diff * diff > 25 * variance) {
            fail_msg("target %d got %d of %d calls, expected about %ld", i + 1,
                     fx->servers[i].requests, total, expected);
        }
    }
    /* Priority 20 is only a fallback. */
    assert_int_equal(fx->servers[3].requests, 0);
}


static void test_upstream_srv_priority_failover(void **state)
{
    fixture_t *fx = *state;
    /* Priority 10 has nothing listening: connections are refused. */
    int down = server_start(fx, 0, "127.0.0.3", 0);
    server_stop(fx, 0);
    int up = server_start(fx, 1, "127.0.0.4", 0);
    char rec[2][96];
    snprintf(rec[0], sizeof(rec[0]),
             "--srv-host=_http._tcp.svc.test,t1.test,%d,10,50", down);
    snprintf(rec[1], sizeof(rec[1]),
             "--srv-host=_http._tcp.svc.test,t2.test,%d,20,50", up);
    const char *records[] = {
        rec[0],
        rec[1],
        "--host-record=t1.test,127.0.0.3",
        "--host-record=t2.test,127.0.0.4",
        NULL,
    };
    dns_start(fx, records);
    fx->svc.srv = true;
    fx->svc.host = "_http._tcp.svc.test";
    fx->svc.eject_after = 2;
    fx->svc.eject_base_ms = 10000;
    up_start(fx);

    /* The first two calls try priority 10, fail to connect and move on;
     * then it is ejected and priority 20 serves directly. */
    calls_ok(fx, 2);
    assert_int_equal(retries(fx), 2);
    assert_true(saw_event(fx, "ejected"));
    calls_ok(fx, 10);
    assert_int_equal(retries(fx), 2);
    assert_int_equal(fx->servers[1].requests, 12);
}


static void test_upstream_ttl_refresh(void **state)
{
    fixture_t *fx = *state;
    const char *ips[] = {"127.0.0.2", "127.0.0.3"};
    int port = common_free_port(fx, ips, 2);
    assert_int_equal(server_start(fx, 0, "127.0.0.2", port), port);
    assert_int_equal(server_start(fx, 1, "127.0.0.3", port), port);
    const char *before[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, before);
    fx->svc.port = (unsigned)port;
    up_start(fx);
    calls_ok(fx, 1);
    assert_int_equal(fx->servers[0].requests, 1);
    assert_int_equal(fx->servers[0].open_conns, 1);

    dns_stop(fx);
    const char *after[] = {"--host-record=a.test,127.0.0.3", NULL};
    dns_start(fx, after);
    /* TTL 1 s: the new address must be in use within about a second. */
    uint64_t start = uv_hrtime();
    while (fx->servers[1].requests == 0 &&
           uv_hrtime() - start < 3000 * 1000000ULL) {
        calls_ok(fx, 1);
        run_for(fx, 50);
    }
    assert_true(fx->servers[1].requests > 0);
    /* The old endpoint's pool is closed once it has no call. */
    run_for(fx, 50);
    assert_int_equal(fx->servers[0].open_conns, 0);
    assert_true(saw_event(fx, "1 added, 1 removed"));
}


static void test_upstream_serve_stale(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    up_start(fx);
    calls_ok(fx, 1);

    dns_stop(fx);
    /* Several refreshes fail during this time; no call may. */
    uint64_t start = uv_hrtime();
    while (uv_hrtime() - start < 2000 * 1000000ULL) {
        calls_ok(fx, 1);
        run_for(fx, 20);
    }
    upstream_stats_t st;
    upstream_get_stats(fx->up, &st);
    assert_true(st.refresh_failures >= 2);
    assert_int_equal(st.stale_expired, 0);
    assert_true(saw_event(fx, "keeping 1 endpoints"));
}


static void test_upstream_stale_expires(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    fx->svc.dns_max_stale_ms = 400;
    up_start(fx);
    calls_ok(fx, 1);

    dns_stop(fx);
    run_for(fx, 1500);
    upstream_stats_t st;
    upstream_get_stats(fx->up, &st);
    assert_int_equal(st.stale_expired, 1);
    assert_int_equal(st.endpoints, 0);

    result_t r;
    assert_int_equal(call_once(fx, &r), TE_RESOLVE);
    assert_true(r.elapsed_ms < 1000);
}


static void test_upstream_nxdomain_fails_fast(void **state)
{
    fixture_t *fx = *state;
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.host = "missing.test";
    fx->svc.port = 80;
    up_start(fx);

    result_t r1;
    result_t r2;
    call_start(fx, &r1);
    call_start(fx, &r2);
    call_wait(fx, &r1);
    if (r2.done == 0) {
        call_wait(fx, &r2);
    }
    assert_int_equal(r1.err, TE_RESOLVE);
    assert_int_equal(r2.err, TE_RESOLVE);
    assert_true(r1.elapsed_ms < 1000);
    assert_non_null(strstr(r1.call.errmsg, "missing.test"));

    /* Within dns_min_ttl_ms the failure is remembered. */
    result_t r3;
    assert_int_equal(call_once(fx, &r3), TE_RESOLVE);
    assert_string_equal(r3.call.errmsg, r1.call.errmsg);
}


static void test_upstream_srv_dot_fails_fast(void **state)
{
    fixture_t *fx = *state;
    const char *records[] = {"--srv-host=_x._tcp.none.test", NULL};
    dns_start(fx, records);
    fx->svc.srv = true;
    fx->svc.host = "_x._tcp.none.test";
    up_start(fx);

    result_t r;
    assert_int_equal(call_once(fx, &r), TE_RESOLVE);
    assert_true(r.elapsed_ms < 1000);
    assert_string_equal(r.call.errmsg, "service _x._tcp.none.test has no "
                                       "targets (SRV target \".\")");
}


static void test_upstream_eject_and_readmit(void **state)
{
    fixture_t *fx = *state;
    const char *ips[] = {"127.0.0.2", "127.0.0.3"};
    int port = common_free_port(fx, ips, 2);
    /* 127.0.0.2 refuses connections; 127.0.0.3 serves. */
    assert_int_equal(server_start(fx, 1, "127.0.0.3", port), port);
    const char *records[] = {"--host-record=a.test,127.0.0.2",
                             "--host-record=a.test,127.0.0.3", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    fx->svc.dns_min_ttl_ms = 10000;
    fx->svc.eject_after = 2;
    fx->svc.eject_base_ms = 300;
    fx->svc.eject_max_ms = 1000;
    up_start(fx);

    upstream_stats_t st;
    for (int i = 0; i < 100; i++) {
        upstream_get_stats(fx->up, &st);
        if (st.ejections == 1) {
            break;
        }
        calls_ok(fx, 1);
    }
    assert_int_equal(st.ejections, 1);
    assert_true(saw_event(fx, "127.0.0.2"));
    assert_true(saw_event(fx, "ejected for 300 ms"));

    /* While ejected, 127.0.0.2 is not tried. */
    uint64_t before = retries(fx);
    calls_ok(fx, 20);
    assert_int_equal(retries(fx), before);

    /* Still failing after the ejection: ejected again, for twice as
     * long. */
    run_for(fx, 350);
    for (int i = 0; i < 100; i++) {
        upstream_get_stats(fx->up, &st);
        if (st.ejections == 2) {
            break;
        }
        calls_ok(fx, 1);
    }
    assert_int_equal(st.ejections, 2);
    assert_true(saw_event(fx, "ejected for 600 ms"));

    /* Back up: after the ejection it serves again. */
    assert_int_equal(server_start(fx, 0, "127.0.0.2", port), port);
    run_for(fx, 650);
    calls_ok(fx, 40);
    assert_true(fx->servers[0].requests > 0);
}


static void test_upstream_never_ejects_all(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    server_stop(fx, 0);
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    fx->svc.eject_after = 1;
    up_start(fx);

    for (int i = 0; i < 3; i++) {
        result_t r;
        assert_int_equal(call_once(fx, &r), TE_CONNECT);
        assert_non_null(strstr(r.call.errmsg, "127.0.0.2"));
    }
    /* The only endpoint is still tried every time, and ejecting it would
     * change nothing, so it is not counted or logged as ejected. */
    upstream_stats_t st;
    upstream_get_stats(fx->up, &st);
    assert_int_equal(st.ejections, 0);
}


static void test_upstream_connect_fallback(void **state)
{
    fixture_t *fx = *state;
    const char *ips[] = {"127.0.0.2", "::1"};
    int port = common_free_port(fx, ips, 2);
    /* The AAAA address refuses; the A address serves. */
    assert_int_equal(server_start(fx, 0, "127.0.0.2", port), port);
    const char *records[] = {"--host-record=a.test,127.0.0.2,::1", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    fx->svc.eject_after = 1000;
    up_start(fx);

    calls_ok(fx, 20);
    assert_int_equal(fx->servers[0].requests, 20);
    assert_true(retries(fx) > 0);
}


static void test_upstream_cancel_everywhere(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    fx->servers[0].silent = true;
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    up_start(fx);

    /* Waiting for the first resolution. */
    result_t r1;
    call_start(fx, &r1);
    upstream_cancel(fx->up, &r1.call);
    assert_true(r1.call.on_done == on_call_done);
    run_for(fx, 200);
    assert_int_equal(r1.done, 0);

    /* In the pool, waiting for a response that never comes. */
    result_t r2;
    call_start(fx, &r2);
    run_for(fx, 200);
    assert_int_equal(fx->servers[0].requests, 1);
    upstream_cancel(fx->up, &r2.call);
    run_for(fx, 100);
    assert_int_equal(r2.done, 0);
    assert_true(r2.call.on_done == on_call_done);
}


static void test_upstream_bulkhead(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    fx->servers[0].silent = true;
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    atomic_long active;
    atomic_init(&active, 0);
    fx->svc.port = (unsigned)port;
    fx->svc.active_calls = &active;
    fx->svc.max_concurrent_calls = 2;
    up_start(fx);

    result_t r[4];
    call_start(fx, &r[0]);
    call_start(fx, &r[1]);
    call_start(fx, &r[2]);
    assert_int_equal(atomic_load(&active), 2);
    call_wait(fx, &r[2]);
    assert_int_equal(r[2].err, TE_OVERLOADED);
    assert_non_null(strstr(r[2].call.errmsg, "max_concurrent_calls of 2"));
    assert_int_equal(r[0].done, 0);
    assert_int_equal(r[1].done, 0);

    /* A cancelled call gives its slot back, and a rejected call that is
     * cancelled before its failure is reported gives back nothing. */
    upstream_cancel(fx->up, &r[0].call);
    assert_int_equal(atomic_load(&active), 1);
    call_start(fx, &r[3]);
    assert_int_equal(atomic_load(&active), 2);
    call_start(fx, &r[2]);
    upstream_cancel(fx->up, &r[2].call);
    assert_int_equal(atomic_load(&active), 2);
    upstream_cancel(fx->up, &r[1].call);
    upstream_cancel(fx->up, &r[3].call);
    assert_int_equal(atomic_load(&active), 0);

    upstream_stats_t st;
    upstream_get_stats(fx->up, &st);
    assert_int_equal(st.overloaded, 2);
}


/* Reconfigures the dispatcher with |svc| as its only service and returns
 * the counts. The definition is copied first, so that no pointer is
 * shared with the one the dispatcher was created from. */
static upstream_reconfigure_t reconfigure(fixture_t *fx,
                                          const upstream_service_t *svc)
{
    char err[256];
    char name[32];
    char host[32];
    upstream_service_t copy = *svc;
    upstream_reconfigure_t counts = {0};

    snprintf(name, sizeof(name), "%s", svc->name);
    snprintf(host, sizeof(host), "%s", svc->host);
    copy.name = name;
    copy.host = host;
    if (upstream_reconfigure(fx->up, &copy, 1, &counts, err, sizeof(err)) !=
        0) {
        fail_msg("upstream_reconfigure: %s", err);
    }
    return counts;
}


static void test_upstream_reconfigure_keeps_same(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    up_start(fx);
    calls_ok(fx, 3);
    assert_int_equal(upstream_connections(fx->up), 1);

    upstream_reconfigure_t counts = reconfigure(fx, &fx->svc);
    assert_int_equal(counts.kept, 1);
    assert_int_equal(counts.added, 0);
    assert_int_equal(counts.removed, 0);
    calls_ok(fx, 3);
    run_for(fx, 50);
    assert_int_equal(fx->servers[0].requests, 6);
    assert_int_equal(fx->servers[0].open_conns, 1);
    assert_int_equal(upstream_connections(fx->up), 1);
}


static void test_upstream_reconfigure_replaces_changed(void **state)
{
    fixture_t *fx = *state;
    int port = server_start(fx, 0, "127.0.0.2", 0);
    const char *records[] = {"--host-record=a.test,127.0.0.2", NULL};
    dns_start(fx, records);
    fx->svc.port = (unsigned)port;
    up_start(fx);
    calls_ok(fx, 1);
    upstream_table_t *old = upstream_table_acquire(fx->up);

    upstream_service_t changed = fx->svc;
    changed.pool.max_connections = 7;
    upstream_reconfigure_t counts = reconfigure(fx, &changed);
    assert_int_equal(counts.kept, 0);
    assert_int_equal(counts.added, 1);
    assert_int_equal(counts.removed, 1);

    /* The old table still works on the old state and its connection. */
    result_t r;
    memset(&r, 0, sizeof(r));
    r.fx = fx;
    r.call.method = "GET";
    r.call.path = "/";
    r.call.authority = "svc.test";
    r.call.max_body = 1024;
    r.call.on_done = on_call_done;
    r.call.data = &r;
    r.started_ns = uv_hrtime();
    r.call.deadline_ns = r.started_ns + 3000 * 1000000ULL;
    upstream_table_start(old, 0, &r.call);
    call_wait(fx, &r);
    buf_free(&r.call.body_out);
    assert_int_equal(r.err, 0);
    assert_int_equal(fx->servers[0].open_conns, 1);

    /* The current table has a new state, with its own connection. */
    calls_ok(fx, 1);
    run_for(fx, 50);
    assert_int_equal(fx->servers[0].open_conns, 2);

    /* Releasing the old table closes the old state's connection. */
    upstream_table_release(old);
    run_for(fx, 100);
    assert_int_equal(fx->servers[0].open_conns, 1);
    assert_int_equal(upstream_connections(fx->up), 1);
    assert_int_equal(fx->servers[0].requests, 3);
}


int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upstream_a_and_aaaa_used, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_srv_weights, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_srv_priority_failover,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_ttl_refresh, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_serve_stale, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_stale_expires, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_nxdomain_fails_fast,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_srv_dot_fails_fast, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_eject_and_readmit, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_never_ejects_all, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_connect_fallback, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_bulkhead, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_cancel_everywhere, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upstream_reconfigure_keeps_same,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_upstream_reconfigure_replaces_changed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
