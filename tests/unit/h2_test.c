/* Tests for the h2c client against a real nghttpd (Debian nghttp2-server)
 * bound to 127.0.0.1 and serving files from a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "errors.h"
#include "h2.h"

#define SMALL_FILES 10
#define BIG_SIZE (3 * 1024 * 1024)
#define UPLOAD_SIZE (200 * 1024)
#define RUN_TIMEOUT_MS 10000

typedef struct {
    pid_t pid;
    int port;
    char dir[64];
    char log[128];
} server_t;

/* The docroot and the server shared by all tests but the one that kills
 * its own server. */
static struct {
    char dir[64];
    server_t server;
    char authority[32];
    char small[SMALL_FILES][64];
    char *big;
} env;

typedef struct {
    uv_loop_t loop;
    uv_timer_t guard;
    int timed_out;
    h2_pool_t *pool;
    h2_pool_t *other_pool; /* a second pool that teardown closes too */
} fixture_t;

typedef struct test_call_s test_call_t;

struct test_call_s {
    upcall_t call;
    int done;
    int err;
    fixture_t *fixture;
    /* Calls cancelled and submitted by reentrant_on_done(). */
    test_call_t **cancel;
    size_t ncancel;
    test_call_t *follow_up;
};


static void write_file(const char *dir, const char *name, const char *data,
                       size_t len)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}


/* Returns a port on 127.0.0.1 that nothing listened on a moment ago. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}


static int can_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return 0;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)port);
    int ok = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
    close(fd);
    return ok;
}


/* Starts nghttpd on 127.0.0.1 with a verbose frame log in |log|, and
 * waits up to 5 s until it accepts connections. */
static void server_start(server_t *server, const char *dir)
{
    char port[16];
    server->port = free_port();
    snprintf(port, sizeof(port), "%d", server->port);
    snprintf(server->dir, sizeof(server->dir), "%s", dir);
    snprintf(server->log, sizeof(server->log), "%s.%d.log", dir, server->port);

    server->pid = fork();
    assert_true(server->pid >= 0);
    if (server->pid == 0) {
        int fd = open(server->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execlp("nghttpd", "nghttpd", "--no-tls", "--address=127.0.0.1",
               "--echo-upload", "--verbose", "--htdocs", dir, port,
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        if (can_connect(server->port)) {
            return;
        }
        struct timespec delay = {0, 50 * 1000 * 1000};
        nanosleep(&delay, NULL);
    }
    fail_msg("nghttpd did not listen on 127.0.0.1:%d within 5 s (log: %s)",
             server->port, server->log);
}


static void server_stop(server_t *server, int sig)
{
    if (server->pid > 0) {
        kill(server->pid, sig);
        waitpid(server->pid, NULL, 0);
        server->pid = 0;
    }
    unlink(server->log);
}


/* Returns whether the server log shows a RST_STREAM with CANCEL received
 * on |stream_id|, waiting up to 2 s for nghttpd to write it. */
static int server_saw_cancel(const server_t *server, int32_t stream_id)
{
    char frame[96];
    snprintf(frame, sizeof(frame),
             "recv RST_STREAM frame <length=4, flags=0x00, stream_id=%d>",
             (int)stream_id);
    for (int i = 0; i < 40; i++) {
        FILE *f = fopen(server->log, "r");
        if (f != NULL) {
            char line[512];
            int in_frame = 0;
            while (fgets(line, sizeof(line), f) != NULL) {
                if (in_frame && strstr(line, "error_code=CANCEL") != NULL) {
                    fclose(f);
                    return 1;
                }
                in_frame = strstr(line, frame) != NULL;
            }
            fclose(f);
        }
        struct timespec delay = {0, 50 * 1000 * 1000};
        nanosleep(&delay, NULL);
    }
    return 0;
}


/* A scripted HTTP/2 server on a thread, for frames that nghttpd does not
 * send on request. On its first connection it resets stream 3 with
 * INTERNAL_ERROR, and on stream 5 sends GOAWAY with last_stream_id 3, then
 * responds 200 to stream 1. On its second connection it responds 200 to
 * every request. */
typedef struct {
    int listen_fd;
    int fd;
    int port;
    int connection;
    pthread_t thread;
} fake_server_t;


static ssize_t fake_on_send(nghttp2_session *session, const uint8_t *data,
                            size_t length, int flags, void *user_data)
{
    fake_server_t *fake = user_data;
    ssize_t n = write(fake->fd, data, length);
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}


static void fake_respond(nghttp2_session *session, int32_t stream_id)
{
    nghttp2_nv status = {(uint8_t *)":status", (uint8_t *)"200", 7, 3,
                         NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_response(session, stream_id, &status, 1, NULL);
}


static int fake_on_frame_recv(nghttp2_session *session,
                              const nghttp2_frame *frame, void *user_data)
{
    fake_server_t *fake = user_data;
    int32_t id = frame->hd.stream_id;

    if (frame->hd.type != NGHTTP2_HEADERS ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        return 0;
    }
    if (fake->connection > 0) {
        fake_respond(session, id);
    } else if (id == 3) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, 3,
                                  NGHTTP2_INTERNAL_ERROR);
    } else if (id == 5) {
        nghttp2_submit_goaway(session, NGHTTP2_FLAG_NONE, 3, NGHTTP2_NO_ERROR,
                              NULL, 0);
        fake_respond(session, 1);
    }
    return 0;
}


static void fake_serve(fake_server_t *fake)
{
    nghttp2_session_callbacks *callbacks;
    nghttp2_session *session;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_send_callback(callbacks, fake_on_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         fake_on_frame_recv);
    nghttp2_session_server_new(&session, callbacks, fake);
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, NULL, 0);

    for (;;) {
        if (nghttp2_session_send(session) != 0) {
            break;
        }
        uint8_t buf[16384];
        ssize_t n = read(fake->fd, buf, sizeof(buf));
        if (n <= 0 || nghttp2_session_mem_recv(session, buf, (size_t)n) < 0) {
            break;
        }
    }
    nghttp2_session_del(session);
}


static void *fake_main(void *arg)
{
    fake_server_t *fake = arg;
    for (fake->connection = 0; fake->connection < 2; fake->connection++) {
        fake->fd = accept(fake->listen_fd, NULL, NULL);
        if (fake->fd < 0) {
            break;
        }
        fake_serve(fake);
        close(fake->fd);
    }
    return NULL;
}


static void fake_start(fake_server_t *fake)
{
    fake->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fake->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(
        bind(fake->listen_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(
        getsockname(fake->listen_fd, (struct sockaddr *)&sin, &len), 0);
    fake->port = ntohs(sin.sin_port);
    assert_int_equal(listen(fake->listen_fd, 4), 0);
    assert_int_equal(pthread_create(&fake->thread, NULL, fake_main, fake), 0);
}


/* Shutting the listening socket down wakes a thread blocked in accept(). */
static void fake_stop(fake_server_t *fake)
{
    shutdown(fake->listen_fd, SHUT_RDWR);
    pthread_join(fake->thread, NULL);
    close(fake->listen_fd);
}


static int group_setup(void **state)
{
    snprintf(env.dir, sizeof(env.dir), "/tmp/h2_test.XXXXXX");
    assert_non_null(mkdtemp(env.dir));

    for (int i = 0; i < SMALL_FILES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "item%d.json", i);
        snprintf(env.small[i], sizeof(env.small[i]),
                 "{\"id\":%d,\"name\":\"item %d\"}\n", i, i);
        write_file(env.dir, name, env.small[i], strlen(env.small[i]));
    }
    env.big = malloc(BIG_SIZE);
    assert_non_null(env.big);
    for (size_t i = 0; i < BIG_SIZE; i++) {
        env.big[i] = (char)('a' + (i * 7 + i / 4096) % 26);
    }
    write_file(env.dir, "big.bin", env.big, BIG_SIZE);

    server_start(&env.server, env.dir);
    snprintf(env.authority, sizeof(env.authority), "127.0.0.1:%d",
             env.server.port);
    return 0;
}


static int group_teardown(void **state)
{
    server_stop(&env.server, SIGTERM);
    for (int i = 0; i < SMALL_FILES; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/item%d.json", env.dir, i);
        unlink(path);
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/big.bin", env.dir);
    unlink(path);
    rmdir(env.dir);
    free(env.big);
    return 0;
}


static h2_pool_t *pool_for_port(fixture_t *f, int port)
{
    struct sockaddr_in sin;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sin), 0);
    h2_pool_t *pool =
        h2_pool_new(&f->loop, (const struct sockaddr *)&sin, NULL);
    assert_non_null(pool);
    return pool;
}


static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    f->guard.data = f;
    f->pool = pool_for_port(f, env.server.port);
    *state = f;
    return 0;
}


/* Closing the pool must leave no handle behind: uv_loop_close() fails
 * with UV_EBUSY otherwise. */
static int teardown(void **state)
{
    fixture_t *f = *state;
    h2_pool_close(f->pool);
    h2_pool_close(f->other_pool);
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}


static void on_guard(uv_timer_t *timer)
{
    fixture_t *f = timer->data;
    f->timed_out = 1;
}


/* Runs the loop until |cond| holds, failing the test after
 * RUN_TIMEOUT_MS. */
#define RUN_UNTIL(f, cond)                                                     \
    do {                                                                       \
        (f)->timed_out = 0;                                                    \
        uv_timer_start(&(f)->guard, on_guard, RUN_TIMEOUT_MS, 0);              \
        while (!(cond) && !(f)->timed_out) {                                   \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                   \
        }                                                                      \
        uv_timer_stop(&(f)->guard);                                            \
        assert_false((f)->timed_out);                                          \
    } while (0)


/* Runs the loop for |ms| milliseconds. */
static void run_for(fixture_t *f, uint64_t ms)
{
    f->timed_out = 0;
    uv_timer_start(&f->guard, on_guard, ms, 0);
    while (!f->timed_out) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
}


static void on_test_done(upcall_t *call, int err)
{
    test_call_t *t = call->data;
    t->done++;
    t->err = err;
}


static void call_init(test_call_t *t, fixture_t *f, const char *path)
{
    memset(t, 0, sizeof(*t));
    t->fixture = f;
    t->call.method = "GET";
    t->call.path = path;
    t->call.authority = env.authority;
    t->call.max_body = 16 * 1024 * 1024;
    t->call.on_done = on_test_done;
    t->call.data = t;
}


static void call_free(test_call_t *t)
{
    buf_free(&t->call.body_out);
}


static void test_h2_get_small_file(void **state)
{
    fixture_t *f = *state;
    test_call_t t;
    static const upcall_header_t headers[] = {
        {"accept", "application/json"},
        {"connection", "keep-alive"}, /* must be dropped for HTTP/2 */
    };
    call_init(&t, f, "/item0.json");
    t.call.headers = headers;
    t.call.nheaders = 2;

    assert_int_equal(h2_pool_submit(f->pool, &t.call), 0);
    assert_int_equal(t.call.phase, UPCALL_CONNECTING);
    assert_int_equal(t.done, 0);
    RUN_UNTIL(f, t.done > 0);

    assert_int_equal(t.done, 1);
    assert_int_equal(t.err, 0);
    assert_string_equal(t.call.errmsg, "");
    assert_int_equal(t.call.status, 200);
    assert_int_equal(t.call.body_out.len, strlen(env.small[0]));
    assert_memory_equal(t.call.body_out.data, env.small[0],
                        strlen(env.small[0]));
    assert_int_equal(t.call.phase, UPCALL_DONE);
    assert_string_equal(t.call.endpoint, env.authority);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    call_free(&t);
}


static void check_small_calls(test_call_t *calls)
{
    for (int i = 0; i < SMALL_FILES; i++) {
        assert_int_equal(calls[i].done, 1);
        assert_int_equal(calls[i].err, 0);
        assert_int_equal(calls[i].call.status, 200);
        assert_int_equal(calls[i].call.body_out.len, strlen(env.small[i]));
        assert_memory_equal(calls[i].call.body_out.data, env.small[i],
                            strlen(env.small[i]));
    }
}


static int all_done(const test_call_t *calls, int n)
{
    for (int i = 0; i < n; i++) {
        if (calls[i].done == 0) {
            return 0;
        }
    }
    return 1;
}


/* Ten calls queued while connecting, then ten on the open connection: all
 * of them share one connection. */
static void test_h2_concurrent_calls_one_connection(void **state)
{
    fixture_t *f = *state;
    test_call_t calls[SMALL_FILES];
    char paths[SMALL_FILES][32];

    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < SMALL_FILES; i++) {
            snprintf(paths[i], sizeof(paths[i]), "/item%d.json", i);
            call_init(&calls[i], f, paths[i]);
            assert_int_equal(h2_pool_submit(f->pool, &calls[i].call), 0);
        }
        assert_int_equal(h2_pool_connections(f->pool), 1);
        RUN_UNTIL(f, all_done(calls, SMALL_FILES));
        check_small_calls(calls);
        assert_int_equal(h2_pool_connections(f->pool), 1);
        for (int i = 0; i < SMALL_FILES; i++) {
            /* Client stream ids are odd and grow on one connection. */
            assert_int_equal(calls[i].call.stream_id,
                             1 + 2 * (round * SMALL_FILES + i));
            call_free(&calls[i]);
        }
    }
}


static void test_h2_not_found(void **state)
{
    fixture_t *f = *state;
    test_call_t t;
    call_init(&t, f, "/missing.json");
    assert_int_equal(h2_pool_submit(f->pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_int_equal(t.done, 1);
    assert_int_equal(t.err, 0);
    assert_int_equal(t.call.status, 404);
    call_free(&t);
}


/* 3 MiB is three times the stream window, so the download only completes
 * if WINDOW_UPDATE frames are sent. */
static void test_h2_large_body(void **state)
{
    fixture_t *f = *state;
    test_call_t t;
    call_init(&t, f, "/big.bin");
    assert_int_equal(h2_pool_submit(f->pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_int_equal(t.err, 0);
    assert_int_equal(t.call.status, 200);
    assert_int_equal(t.call.body_out.len, BIG_SIZE);
    assert_memory_equal(t.call.body_out.data, env.big, BIG_SIZE);
    call_free(&t);
}


/* nghttpd --echo-upload sends the request body back. 200 KiB is larger
 * than the 65535-byte initial stream window of HTTP/2, so the upload only
 * completes if the client waits for the server's WINDOW_UPDATE frames. */
static void test_h2_post_body(void **state)
{
    fixture_t *f = *state;
    test_call_t t;
    call_init(&t, f, "/echo");
    t.call.method = "POST";
    t.call.body = env.big + 12345;
    t.call.body_len = UPLOAD_SIZE;
    assert_int_equal(h2_pool_submit(f->pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_int_equal(t.err, 0);
    assert_int_equal(t.call.status, 200);
    assert_int_equal(t.call.body_out.len, UPLOAD_SIZE);
    assert_memory_equal(t.call.body_out.data, env.big + 12345, UPLOAD_SIZE);
    call_free(&t);
}


static void test_h2_connect_refused(void **state)
{
    fixture_t *f = *state;
    int port = free_port();
    h2_pool_t *pool = pool_for_port(f, port);
    f->other_pool = pool;
    test_call_t a;
    test_call_t b;
    call_init(&a, f, "/item0.json");
    call_init(&b, f, "/item1.json");

    assert_int_equal(h2_pool_submit(pool, &a.call), 0);
    assert_int_equal(h2_pool_submit(pool, &b.call), 0);
    RUN_UNTIL(f, a.done > 0 && b.done > 0);

    char expected[96];
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d failed: connection refused", port);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.err, TE_CONNECT);
    assert_string_equal(a.call.errmsg, expected);
    assert_int_equal(a.call.status, 0);
    assert_int_equal(b.done, 1);
    assert_int_equal(b.err, TE_CONNECT);
    assert_string_equal(b.call.errmsg, expected);
    assert_int_equal(h2_pool_connections(pool), 0);
    call_free(&a);
    call_free(&b);
}


static void test_h2_cancel_queued_call(void **state)
{
    fixture_t *f = *state;
    test_call_t a;
    test_call_t b;
    call_init(&a, f, "/item0.json");
    call_init(&b, f, "/item1.json");

    assert_int_equal(h2_pool_submit(f->pool, &a.call), 0);
    assert_int_equal(h2_pool_submit(f->pool, &b.call), 0);
    h2_pool_cancel(f->pool, &a.call);
    assert_int_equal(a.call.phase, UPCALL_CANCELLED);
    RUN_UNTIL(f, b.done > 0);
    run_for(f, 50);

    assert_int_equal(a.done, 0);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.call.status, 200);
    assert_int_equal(b.call.stream_id, 1);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    call_free(&a);
    call_free(&b);
}


/* Cancels a download in the middle: the server gets RST_STREAM(CANCEL),
 * no on_done follows and the connection serves the next call. */
static void test_h2_cancel_open_stream(void **state)
{
    fixture_t *f = *state;
    /* On the heap, so that ASan reports any use after the cancel. */
    test_call_t *big = malloc(sizeof(*big));
    assert_non_null(big);
    test_call_t next;
    call_init(big, f, "/big.bin");
    call_init(&next, f, "/item2.json");

    assert_int_equal(h2_pool_submit(f->pool, &big->call), 0);
    RUN_UNTIL(f, big->call.phase == UPCALL_RECEIVING);
    int32_t big_id = big->call.stream_id;
    assert_true(big->call.body_out.len < BIG_SIZE);
    h2_pool_cancel(f->pool, &big->call);
    assert_int_equal(big->call.phase, UPCALL_CANCELLED);
    call_free(big);
    free(big);

    assert_int_equal(h2_pool_submit(f->pool, &next.call), 0);
    RUN_UNTIL(f, next.done > 0);
    run_for(f, 100);

    assert_int_equal(next.err, 0);
    assert_int_equal(next.call.status, 200);
    assert_memory_equal(next.call.body_out.data, env.small[2],
                        strlen(env.small[2]));
    assert_int_equal(next.call.stream_id, big_id + 2);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    assert_true(server_saw_cancel(&env.server, big_id));
    call_free(&next);
}


static void test_h2_max_body_exceeded(void **state)
{
    fixture_t *f = *state;
    test_call_t big;
    test_call_t next;
    call_init(&big, f, "/big.bin");
    big.call.max_body = 1000;
    call_init(&next, f, "/item3.json");

    assert_int_equal(h2_pool_submit(f->pool, &big.call), 0);
    RUN_UNTIL(f, big.done > 0);
    assert_int_equal(big.err, TE_BAD_RESPONSE);
    assert_string_equal(big.call.errmsg,
                        "response body larger than 1000 bytes");
    assert_true(big.call.body_out.len <= 1000);
    assert_int_equal(big.call.status, 200);

    assert_int_equal(h2_pool_submit(f->pool, &next.call), 0);
    RUN_UNTIL(f, next.done > 0);
    run_for(f, 50);
    assert_int_equal(big.done, 1);
    assert_int_equal(next.err, 0);
    assert_int_equal(next.call.stream_id, big.call.stream_id + 2);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    call_free(&big);
    call_free(&next);
}


/* on_done that cancels the other calls and submits a new one on the same
 * pool, as the fan-out layer does when one response decides the request. */
static void reentrant_on_done(upcall_t *call, int err)
{
    test_call_t *t = call->data;
    test_call_t **others = t->cancel;
    size_t n = t->ncancel;
    test_call_t *next = t->follow_up;

    t->done++;
    t->err = err;
    for (size_t i = 0; i < n; i++) {
        if (others[i] != t && others[i]->done == 0) {
            h2_pool_cancel(t->fixture->pool, &others[i]->call);
        }
    }
    if (next != NULL) {
        /* Only the first call to finish submits the follow-up. */
        for (size_t i = 0; i < n; i++) {
            others[i]->follow_up = NULL;
            others[i]->ncancel = 0;
        }
        assert_int_equal(h2_pool_submit(t->fixture->pool, &next->call), 0);
        assert_int_equal(next->done, 0);
    }
}


static void test_h2_reentrant_cancel_and_submit(void **state)
{
    fixture_t *f = *state;
    enum { N = 4 };
    test_call_t calls[N];
    test_call_t *list[N];
    test_call_t follow_up;
    char paths[N][32];

    call_init(&follow_up, f, "/item9.json");
    for (int i = 0; i < N; i++) {
        snprintf(paths[i], sizeof(paths[i]), "/item%d.json", i);
        call_init(&calls[i], f, paths[i]);
        calls[i].call.on_done = reentrant_on_done;
        calls[i].cancel = list;
        calls[i].ncancel = N;
        calls[i].follow_up = &follow_up;
        list[i] = &calls[i];
    }
    for (int i = 0; i < N; i++) {
        assert_int_equal(h2_pool_submit(f->pool, &calls[i].call), 0);
    }
    RUN_UNTIL(f, follow_up.done > 0);
    run_for(f, 100);

    int finished = 0;
    for (int i = 0; i < N; i++) {
        finished += calls[i].done;
        if (calls[i].done == 0) {
            assert_int_equal(calls[i].call.phase, UPCALL_CANCELLED);
        }
        call_free(&calls[i]);
    }
    assert_int_equal(finished, 1);
    assert_int_equal(follow_up.done, 1);
    assert_int_equal(follow_up.err, 0);
    assert_int_equal(follow_up.call.status, 200);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    call_free(&follow_up);
}


/* Closing the pool with a download in flight calls no on_done; teardown
 * checks that every handle is closed. */
static void test_h2_close_with_open_stream(void **state)
{
    fixture_t *f = *state;
    /* On the heap, so that ASan reports any use after the close. */
    test_call_t *big = malloc(sizeof(*big));
    test_call_t *queued = malloc(sizeof(*queued));
    assert_non_null(big);
    assert_non_null(queued);
    call_init(big, f, "/big.bin");
    call_init(queued, f, "/item4.json");

    assert_int_equal(h2_pool_submit(f->pool, &big->call), 0);
    RUN_UNTIL(f, big->call.phase == UPCALL_RECEIVING);
    assert_int_equal(h2_pool_submit(f->pool, &queued->call), 0);
    h2_pool_close(f->pool);
    f->pool = NULL;
    assert_int_equal(big->done, 0);
    assert_int_equal(queued->done, 0);
    call_free(big);
    call_free(queued);
    free(big);
    free(queued);
    run_for(f, 50);
}


/* The server dies mid-download: the open stream fails with TE_RESET, the
 * connection is dropped, and the next call tries a fresh connection. */
static void test_h2_server_killed(void **state)
{
    fixture_t *f = *state;
    char dir[80];
    snprintf(dir, sizeof(dir), "%s", env.dir);
    server_t server;
    server_start(&server, dir);
    h2_pool_t *pool = pool_for_port(f, server.port);
    f->other_pool = pool;
    test_call_t big;
    test_call_t after;
    call_init(&big, f, "/big.bin");
    call_init(&after, f, "/item0.json");

    assert_int_equal(h2_pool_submit(pool, &big.call), 0);
    RUN_UNTIL(f, big.call.phase == UPCALL_RECEIVING);
    server_stop(&server, SIGKILL);
    RUN_UNTIL(f, big.done > 0);
    assert_int_equal(big.done, 1);
    assert_int_equal(big.err, TE_RESET);
    /* Depending on timing the kernel reports EOF, a reset on read, or a
     * failed write of a WINDOW_UPDATE. */
    if (strcmp(big.call.errmsg, "connection closed by server") != 0 &&
        strncmp(big.call.errmsg, "read from ", 10) != 0 &&
        strncmp(big.call.errmsg, "write to ", 9) != 0) {
        fail_msg("unexpected errmsg: %s", big.call.errmsg);
    }
    assert_int_equal(h2_pool_connections(pool), 0);

    assert_int_equal(h2_pool_submit(pool, &after.call), 0);
    RUN_UNTIL(f, after.done > 0);
    assert_int_equal(after.err, TE_CONNECT);
    call_free(&big);
    call_free(&after);
}


/* RST_STREAM and GOAWAY from the scripted server: the reset stream and the
 * refused stream fail with TE_RESET, the stream below last_stream_id still
 * completes, the old connection closes once drained, and the next call
 * opens a new one. */
static void test_h2_reset_and_goaway(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake;
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t calls[3];
    static const char *const paths[] = {"/ok", "/reset", "/goaway"};
    for (int i = 0; i < 3; i++) {
        call_init(&calls[i], f, paths[i]);
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
    }
    RUN_UNTIL(f, all_done(calls, 3));

    assert_int_equal(calls[0].err, 0);
    assert_int_equal(calls[0].call.status, 200);
    assert_int_equal(calls[0].call.stream_id, 1);
    assert_int_equal(calls[1].err, TE_RESET);
    assert_string_equal(calls[1].call.errmsg,
                        "stream reset by server: INTERNAL_ERROR");
    assert_int_equal(calls[2].err, TE_RESET);
    assert_string_equal(calls[2].call.errmsg,
                        "stream refused after GOAWAY: REFUSED_STREAM");
    RUN_UNTIL(f, h2_pool_connections(pool) == 0);

    test_call_t next;
    call_init(&next, f, "/next");
    assert_int_equal(h2_pool_submit(pool, &next.call), 0);
    RUN_UNTIL(f, next.done > 0);
    assert_int_equal(next.err, 0);
    assert_int_equal(next.call.status, 200);
    assert_int_equal(next.call.stream_id, 1);
    assert_int_equal(h2_pool_connections(pool), 1);

    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    fake_stop(&fake);
    for (int i = 0; i < 3; i++) {
        call_free(&calls[i]);
    }
    call_free(&next);
}


static void test_h2_submit_invalid(void **state)
{
    fixture_t *f = *state;
    test_call_t t;
    call_init(&t, f, "/item0.json");
    t.call.path = NULL;
    assert_int_equal(h2_pool_submit(f->pool, &t.call), TE_INVALID);
    run_for(f, 20);
    assert_int_equal(t.done, 0);
    assert_int_equal(h2_pool_connections(f->pool), 0);
}


int main(void)
{
    /* A write to a connection the server closed must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_h2_get_small_file, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_concurrent_calls_one_connection,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_large_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_post_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_connect_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_cancel_queued_call, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_cancel_open_stream, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_max_body_exceeded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_reentrant_cancel_and_submit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_close_with_open_stream, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_server_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_reset_and_goaway, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_submit_invalid, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
