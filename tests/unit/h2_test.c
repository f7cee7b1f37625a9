/* Tests for the HTTP/2 client against a real nghttpd (Debian
 * nghttp2-server) bound to 127.0.0.1 and serving files from a temporary
 * directory, cleartext and TLS, and against a scripted nghttp2 server for
 * frames that nghttpd does not send on request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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
#include "transport.h"

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

/* The scripted server of the running test, stopped by teardown when a
 * failed assertion skipped the test's own fake_stop(). Its threads would
 * otherwise keep using the test's stack frame. */
static struct fake_server_s *running_fake;

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
 * waits up to 5 s until it accepts connections. With |tls|, it serves
 * HTTP/2 over TLS with the key and certificate in |dir|. */
static void server_start_mode(server_t *server, const char *dir, int tls)
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
        if (tls) {
            char key[96];
            char cert[96];
            snprintf(key, sizeof(key), "%s/tls.key", dir);
            snprintf(cert, sizeof(cert), "%s/tls.pem", dir);
            execlp("nghttpd", "nghttpd", "--address=127.0.0.1", "--echo-upload",
                   "--verbose", "--htdocs", dir, port, key, cert, (char *)NULL);
        } else {
            execlp("nghttpd", "nghttpd", "--no-tls", "--address=127.0.0.1",
                   "--echo-upload", "--verbose", "--htdocs", dir, port,
                   (char *)NULL);
        }
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


static void server_start(server_t *server, const char *dir)
{
    server_start_mode(server, dir, 0);
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


/* A scripted HTTP/2 server for frames that nghttpd does not send on
 * request: GOAWAY with a chosen last_stream_id and error code (also at
 * connection start), RST_STREAM, a low, zero or lowered
 * SETTINGS_MAX_CONCURRENT_STREAMS, a content-length without a body, PINGs
 * left unacknowledged and invalid frames. It accepts connections on one
 * thread and serves each on a thread of its own. For every complete
 * request, the test's script picks an action; responses echo the request
 * body, or send "ok" when there is none. */
#define FAKE_MAX_CONNS 16

typedef struct fake_server_s fake_server_t;
typedef struct fake_conn_s fake_conn_t;

typedef enum {
    FAKE_RESPOND,   /* 200 after fake->hold_ms */
    FAKE_IGNORE,    /* no response at all */
    FAKE_REFUSE,    /* RST_STREAM(REFUSED_STREAM) */
    FAKE_RESET,     /* RST_STREAM(INTERNAL_ERROR) */
    FAKE_GARBAGE,   /* a DATA frame on stream 0, a connection error */
    FAKE_HEAD_ONLY, /* 200 with fake->content_length and no DATA; the
                     * stream stays open unless the method is HEAD */
} fake_action_t;

typedef struct fake_stream_s fake_stream_t;

struct fake_stream_s {
    int32_t id;
    char method[16];
    char path[64];
    char body[256]; /* the request body, truncated */
    size_t body_len;
    size_t sent;
    uint64_t respond_at_ms; /* 0: no response scheduled */
    fake_stream_t *next;
};

struct fake_conn_s {
    fake_server_t *fake;
    int fd;
    int index; /* 0 for the first connection accepted */
    nghttp2_session *session;
    int requests; /* complete requests on this connection */
    int open;     /* streams begun and not closed */
    int lowered;  /* the script lowered MAX_CONCURRENT_STREAMS */
    int send_garbage;
    fake_stream_t *streams;
    pthread_t thread;
};

/* Chooses what the server does with a complete request. It runs on the
 * connection's thread and may submit frames on c->session. */
typedef fake_action_t (*fake_script_t)(fake_conn_t *c, fake_stream_t *s);

struct fake_server_s {
    /* Set before fake_start(). */
    fake_script_t script; /* NULL: respond to everything */
    uint32_t max_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS, 0: not sent */
    int zero_streams;     /* send SETTINGS_MAX_CONCURRENT_STREAMS 0 */
    int goaway_at_start;  /* GOAWAY(NO_ERROR, 0) right after SETTINGS */
    const char *content_length; /* the value FAKE_HEAD_ONLY sends */
    int no_ping_ack;
    unsigned hold_ms;
    /* Internal. */
    int listen_fd;
    int port;
    pthread_t thread;
    atomic_int stop;
    fake_conn_t conns[FAKE_MAX_CONNS];
    /* Counters, read by the test while the server runs. */
    atomic_int connections;
    atomic_int requests;
    atomic_int refused;  /* REFUSED_STREAM sent by nghttp2 or the script */
    atomic_int max_open; /* most concurrent streams on one connection */
    atomic_int max_open_lowered; /* the same, after a lowered limit */
    atomic_int pings;
    atomic_int cancels; /* RST_STREAM(CANCEL) received */
};


static uint64_t fake_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


static void atomic_max(atomic_int *v, int x)
{
    int old = atomic_load(v);
    while (x > old && !atomic_compare_exchange_weak(v, &old, x)) {
    }
}


static ssize_t fake_on_send(nghttp2_session *session, const uint8_t *data,
                            size_t length, int flags, void *user_data)
{
    fake_conn_t *c = user_data;
    ssize_t n = write(c->fd, data, length);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}


static ssize_t fake_on_body_read(nghttp2_session *session, int32_t stream_id,
                                 uint8_t *buf, size_t length,
                                 uint32_t *data_flags,
                                 nghttp2_data_source *source, void *user_data)
{
    fake_stream_t *s = source->ptr;
    const char *body = s->body_len > 0 ? s->body : "ok";
    size_t len = s->body_len > 0 ? s->body_len : 2;
    size_t n = len - s->sent;
    if (n > length) {
        n = length;
    }
    memcpy(buf, body + s->sent, n);
    s->sent += n;
    if (s->sent == len) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}


static void fake_respond(fake_conn_t *c, fake_stream_t *s)
{
    nghttp2_nv status = {(uint8_t *)":status", (uint8_t *)"200", 7, 3,
                         NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider provider;
    provider.source.ptr = s;
    provider.read_callback = fake_on_body_read;
    s->respond_at_ms = 0;
    nghttp2_submit_response(c->session, s->id, &status, 1, &provider);
}


/* Sends a response head that announces fake->content_length bytes, and
 * no DATA. A response to HEAD ends the stream. */
static void fake_respond_head(fake_conn_t *c, fake_stream_t *s)
{
    const char *length = c->fake->content_length;
    nghttp2_nv nva[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-length", (uint8_t *)length, 14, strlen(length),
         NGHTTP2_NV_FLAG_NONE},
    };
    uint8_t flags = strcmp(s->method, "HEAD") == 0 ? NGHTTP2_FLAG_END_STREAM
                                                   : NGHTTP2_FLAG_NONE;
    nghttp2_submit_headers(c->session, flags, s->id, NULL, nva, 2, NULL);
}


static int fake_on_begin_headers(nghttp2_session *session,
                                 const nghttp2_frame *frame, void *user_data)
{
    fake_conn_t *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    fake_stream_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    s->id = frame->hd.stream_id;
    s->next = c->streams;
    c->streams = s;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    c->open++;
    atomic_max(&c->fake->max_open, c->open);
    if (c->lowered) {
        atomic_max(&c->fake->max_open_lowered, c->open);
    }
    return 0;
}


static int fake_on_header(nghttp2_session *session, const nghttp2_frame *frame,
                          const uint8_t *name, size_t namelen,
                          const uint8_t *value, size_t valuelen, uint8_t flags,
                          void *user_data)
{
    fake_stream_t *s =
        nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s != NULL && namelen == 5 && memcmp(name, ":path", 5) == 0) {
        snprintf(s->path, sizeof(s->path), "%.*s", (int)valuelen, value);
    }
    if (s != NULL && namelen == 7 && memcmp(name, ":method", 7) == 0) {
        snprintf(s->method, sizeof(s->method), "%.*s", (int)valuelen, value);
    }
    return 0;
}


static int fake_on_data_chunk(nghttp2_session *session, uint8_t flags,
                              int32_t stream_id, const uint8_t *data,
                              size_t len, void *user_data)
{
    fake_stream_t *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s != NULL) {
        size_t room = sizeof(s->body) - s->body_len;
        size_t n = len < room ? len : room;
        memcpy(s->body + s->body_len, data, n);
        s->body_len += n;
    }
    return 0;
}


static int fake_on_frame_recv(nghttp2_session *session,
                              const nghttp2_frame *frame, void *user_data)
{
    fake_conn_t *c = user_data;
    fake_server_t *fake = c->fake;

    if (frame->hd.type == NGHTTP2_PING &&
        !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        atomic_fetch_add(&fake->pings, 1);
        return 0;
    }
    if (frame->hd.type == NGHTTP2_RST_STREAM &&
        frame->rst_stream.error_code == NGHTTP2_CANCEL) {
        atomic_fetch_add(&fake->cancels, 1);
        return 0;
    }
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        return 0;
    }
    fake_stream_t *s =
        nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (s == NULL) {
        return 0;
    }
    c->requests++;
    atomic_fetch_add(&fake->requests, 1);
    fake_action_t action =
        fake->script != NULL ? fake->script(c, s) : FAKE_RESPOND;
    switch (action) {
    case FAKE_RESPOND:
        s->respond_at_ms = fake_now_ms() + fake->hold_ms;
        if (fake->hold_ms == 0) {
            fake_respond(c, s);
        }
        break;
    case FAKE_IGNORE:
        break;
    case FAKE_REFUSE:
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id,
                                  NGHTTP2_REFUSED_STREAM);
        break;
    case FAKE_RESET:
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id,
                                  NGHTTP2_INTERNAL_ERROR);
        break;
    case FAKE_GARBAGE:
        c->send_garbage = 1;
        break;
    case FAKE_HEAD_ONLY:
        fake_respond_head(c, s);
        break;
    }
    return 0;
}


static int fake_on_frame_send(nghttp2_session *session,
                              const nghttp2_frame *frame, void *user_data)
{
    fake_conn_t *c = user_data;
    if (frame->hd.type == NGHTTP2_RST_STREAM &&
        frame->rst_stream.error_code == NGHTTP2_REFUSED_STREAM) {
        atomic_fetch_add(&c->fake->refused, 1);
    }
    return 0;
}


static int fake_on_stream_close(nghttp2_session *session, int32_t stream_id,
                                uint32_t error_code, void *user_data)
{
    fake_conn_t *c = user_data;
    fake_stream_t *s = nghttp2_session_get_stream_user_data(session, stream_id);
    if (s == NULL) {
        return 0;
    }
    c->open--;
    fake_stream_t **p = &c->streams;
    while (*p != s) {
        p = &(*p)->next;
    }
    *p = s->next;
    free(s);
    return 0;
}


static void fake_send_due(fake_conn_t *c)
{
    uint64_t now = fake_now_ms();
    for (fake_stream_t *s = c->streams; s != NULL; s = s->next) {
        if (s->respond_at_ms != 0 && now >= s->respond_at_ms) {
            fake_respond(c, s);
        }
    }
}


static void fake_serve(fake_conn_t *c)
{
    fake_server_t *fake = c->fake;
    nghttp2_session_callbacks *callbacks;
    nghttp2_option *option;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_send_callback(callbacks, fake_on_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(
        callbacks, fake_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, fake_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        callbacks, fake_on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         fake_on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks,
                                                         fake_on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(
        callbacks, fake_on_stream_close);
    nghttp2_option_new(&option);
    nghttp2_option_set_no_auto_ping_ack(option, fake->no_ping_ack);
    nghttp2_session_server_new2(&c->session, callbacks, c, option);
    nghttp2_option_del(option);
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_settings_entry max = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                  fake->zero_streams ? 0 : fake->max_streams};
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, &max,
                            fake->max_streams > 0 || fake->zero_streams);
    if (fake->goaway_at_start) {
        /* nghttp2 then wants neither to read nor to write once both
         * frames are out, so the loop below closes the connection. */
        nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, 0,
                              NGHTTP2_NO_ERROR, NULL, 0);
    }

    while (!atomic_load(&fake->stop)) {
        fake_send_due(c);
        if (nghttp2_session_send(c->session) != 0) {
            break;
        }
        if (c->send_garbage) {
            /* DATA is not allowed on stream 0 (RFC 9113 section 6.1). */
            static const uint8_t bad[] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 'x'};
            c->send_garbage = write(c->fd, bad, sizeof(bad)) < 0;
        }
        if (!nghttp2_session_want_read(c->session) &&
            !nghttp2_session_want_write(c->session)) {
            break;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, 5) <= 0) {
            continue;
        }
        uint8_t buf[16384];
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n <= 0 ||
            nghttp2_session_mem_recv(c->session, buf, (size_t)n) < 0) {
            break;
        }
    }
    while (c->streams != NULL) {
        fake_stream_t *s = c->streams;
        c->streams = s->next;
        free(s);
    }
    nghttp2_session_del(c->session);
}


static void *fake_conn_main(void *arg)
{
    fake_conn_t *c = arg;
    fake_serve(c);
    close(c->fd);
    return NULL;
}


static void *fake_main(void *arg)
{
    fake_server_t *fake = arg;
    while (!atomic_load(&fake->stop)) {
        struct pollfd pfd = {.fd = fake->listen_fd, .events = POLLIN};
        if (poll(&pfd, 1, 10) <= 0) {
            continue;
        }
        int fd = accept(fake->listen_fd, NULL, NULL);
        int index = atomic_load(&fake->connections);
        if (fd < 0 || index == FAKE_MAX_CONNS) {
            if (fd >= 0) {
                close(fd);
            }
            continue;
        }
        /* Without it, Nagle's algorithm delays a small frame such as
         * SETTINGS behind an unacknowledged one until a delayed ACK. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fake_conn_t *c = &fake->conns[index];
        c->fake = fake;
        c->fd = fd;
        c->index = index;
        if (pthread_create(&c->thread, NULL, fake_conn_main, c) != 0) {
            close(fd);
            continue;
        }
        atomic_store(&fake->connections, index + 1);
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
    assert_int_equal(listen(fake->listen_fd, 16), 0);
    assert_int_equal(pthread_create(&fake->thread, NULL, fake_main, fake), 0);
    running_fake = fake;
}


static void fake_stop(fake_server_t *fake)
{
    running_fake = NULL;
    atomic_store(&fake->stop, 1);
    pthread_join(fake->thread, NULL);
    int n = atomic_load(&fake->connections);
    for (int i = 0; i < n; i++) {
        pthread_join(fake->conns[i].thread, NULL);
    }
    close(fake->listen_fd);
}


/* A listening socket whose accept queue is full, so that a further
 * connect() gets no reply, as from a black-holed address. With a backlog
 * of 0, Linux queues one connection and drops the SYNs after it. */
typedef struct {
    int listen_fd;
    int filler_fd;
    int port;
} blackhole_t;


static void blackhole_start(blackhole_t *bh)
{
    bh->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(bh->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(bh->listen_fd, (struct sockaddr *)&sin, sizeof(sin)),
                     0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(bh->listen_fd, (struct sockaddr *)&sin, &len),
                     0);
    bh->port = ntohs(sin.sin_port);
    assert_int_equal(listen(bh->listen_fd, 0), 0);
    bh->filler_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(bh->filler_fd >= 0);
    assert_int_equal(
        connect(bh->filler_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
}


static void blackhole_stop(blackhole_t *bh)
{
    close(bh->filler_fd);
    close(bh->listen_fd);
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

    /* A self-signed certificate for localhost and 127.0.0.1, which the
     * TLS tests also use as their CA bundle. */
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec"
             " -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout tls.key"
             " -out tls.pem -days 30 -subj /CN=localhost"
             " -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
             " >/dev/null 2>&1",
             env.dir);
    assert_int_equal(system(cmd), 0);

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
    snprintf(path, sizeof(path), "%s/tls.key", env.dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/tls.pem", env.dir);
    unlink(path);
    rmdir(env.dir);
    free(env.big);
    return 0;
}


static h2_pool_t *pool_for_port_opts(fixture_t *f, int port,
                                     const pool_options_t *opts)
{
    struct sockaddr_in sin;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sin), 0);
    h2_pool_t *pool =
        h2_pool_new(&f->loop, (const struct sockaddr *)&sin, opts);
    assert_non_null(pool);
    return pool;
}


static h2_pool_t *pool_for_port(fixture_t *f, int port)
{
    return pool_for_port_opts(f, port, NULL);
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
    if (running_fake != NULL) {
        fake_stop(running_fake);
    }
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


/* nghttpd announces the file size in content-length, so a body over
 * max_body fails the call on the response head, before any DATA is kept,
 * and the connection serves the next call. */
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
                        "response body larger than the max_response_body_bytes "
                        "limit of 1000 bytes (Content-Length: 3145728)");
    assert_int_equal(big.call.body_out.len, 0);
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


static void fake_run_stop(fixture_t *f, fake_server_t *fake, h2_pool_t *pool)
{
    h2_pool_close(pool);
    if (f->other_pool == pool) {
        f->other_pool = NULL;
    }
    run_for(f, 20);
    fake_stop(fake);
}


static void assert_ok_body(const test_call_t *t, const char *body)
{
    assert_int_equal(t->done, 1);
    assert_int_equal(t->err, 0);
    assert_string_equal(t->call.errmsg, "");
    assert_int_equal(t->call.status, 200);
    assert_int_equal(t->call.body_out.len, strlen(body));
    assert_memory_equal(t->call.body_out.data, body, strlen(body));
}


static uint64_t ms_since(uint64_t start_ns)
{
    return (uv_hrtime() - start_ns) / 1000000;
}


/* With no options the pool uses a 250 ms connect timeout, so a connect
 * that gets no reply fails with TE_CONNECT after about that long. */
static void test_h2_connect_timeout_default(void **state)
{
    fixture_t *f = *state;
    blackhole_t bh;
    blackhole_start(&bh);
    h2_pool_t *pool = pool_for_port(f, bh.port);
    f->other_pool = pool;
    test_call_t a;
    call_init(&a, f, "/item0.json");

    uint64_t start = uv_hrtime();
    assert_int_equal(h2_pool_submit(pool, &a.call), 0);
    assert_int_equal(h2_pool_connections(pool), 1);
    RUN_UNTIL(f, a.done > 0);
    uint64_t elapsed = ms_since(start);

    char expected[96];
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d timed out after 250 ms", bh.port);
    assert_int_equal(a.done, 1);
    assert_int_equal(a.err, TE_CONNECT);
    assert_string_equal(a.call.errmsg, expected);
    assert_true(elapsed >= 240);
    assert_true(elapsed < 2000);
    assert_int_equal(h2_pool_connections(pool), 0);
    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    blackhole_stop(&bh);
    call_free(&a);
}


/* The connect timeout is clipped to the time the waiting call has left,
 * so a black-holed address does not use up the call's whole deadline. */
static void test_h2_connect_timeout_clipped(void **state)
{
    fixture_t *f = *state;
    blackhole_t bh;
    blackhole_start(&bh);
    pool_options_t opts = {.max_connections = 4,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 5000,
                           .ping_interval_ms = 0};
    h2_pool_t *pool = pool_for_port_opts(f, bh.port, &opts);
    f->other_pool = pool;
    test_call_t a;
    call_init(&a, f, "/item0.json");
    a.call.deadline_ns = uv_hrtime() + 100 * 1000000ULL;

    uint64_t start = uv_hrtime();
    assert_int_equal(h2_pool_submit(pool, &a.call), 0);
    RUN_UNTIL(f, a.done > 0);
    uint64_t elapsed = ms_since(start);

    char prefix[96];
    snprintf(prefix, sizeof(prefix), "connect to 127.0.0.1:%d timed out after ",
             bh.port);
    assert_int_equal(a.err, TE_CONNECT);
    assert_int_equal(strncmp(a.call.errmsg, prefix, strlen(prefix)), 0);
    long ms = strtol(a.call.errmsg + strlen(prefix), NULL, 10);
    assert_true(ms > 50);
    assert_true(ms <= 100);
    assert_true(elapsed < 1000);
    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    blackhole_stop(&bh);
    call_free(&a);
}


/* A response without content-length whose DATA passes max_body fails
 * when the DATA arrives, with the plain limit message. */
static void test_h2_body_over_limit_no_length(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {0};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/echo");
    t.call.method = "POST";
    t.call.body = "0123456789";
    t.call.body_len = 10;
    t.call.max_body = 4;

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_int_equal(t.err, TE_BAD_RESPONSE);
    assert_string_equal(t.call.errmsg,
                        "response body larger than the max_response_body_bytes "
                        "limit of 4 bytes");
    assert_int_equal(t.call.status, 200);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


static fake_action_t script_head_only(fake_conn_t *c, fake_stream_t *s)
{
    return strcmp(s->path, "/announce") == 0 ? FAKE_HEAD_ONLY : FAKE_RESPOND;
}


/* A response head whose content-length is above max_body fails the call
 * at once with TE_BAD_RESPONSE, although no DATA follows, and resets only
 * that stream. A content-length equal to max_body, and one on a response
 * to HEAD, fail nothing. */
static void test_h2_content_length_over_limit(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.script = script_head_only,
                          .content_length = "100000000"};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t big;
    test_call_t at_limit;
    test_call_t head;
    test_call_t next;
    call_init(&big, f, "/announce");
    big.call.max_body = 1000;
    call_init(&at_limit, f, "/announce");
    at_limit.call.max_body = 100000000;
    call_init(&head, f, "/announce");
    head.call.method = "HEAD";
    head.call.max_body = 1000;
    call_init(&next, f, "/next");

    assert_int_equal(h2_pool_submit(pool, &big.call), 0);
    RUN_UNTIL(f, big.done > 0);
    assert_int_equal(big.err, TE_BAD_RESPONSE);
    assert_string_equal(big.call.errmsg,
                        "response body larger than the max_response_body_bytes "
                        "limit of 1000 bytes (Content-Length: 100000000)");
    assert_int_equal(big.call.status, 200);
    assert_int_equal(big.call.body_out.len, 0);
    /* The server's threads count without waking the loop. */
    for (int i = 0; i < 200 && atomic_load(&fake.cancels) == 0; i++) {
        run_for(f, 10);
    }
    assert_int_equal(atomic_load(&fake.cancels), 1);

    assert_int_equal(h2_pool_submit(pool, &at_limit.call), 0);
    assert_int_equal(h2_pool_submit(pool, &head.call), 0);
    RUN_UNTIL(f, head.done > 0);
    assert_ok_body(&head, "");
    run_for(f, 100);
    assert_int_equal(at_limit.done, 0);
    assert_int_equal(at_limit.call.phase, UPCALL_RECEIVING);
    h2_pool_cancel(pool, &at_limit.call);

    assert_int_equal(h2_pool_submit(pool, &next.call), 0);
    RUN_UNTIL(f, next.done > 0);
    assert_ok_body(&next, "ok");
    assert_int_equal(next.call.stream_id, 7);
    assert_int_equal(atomic_load(&fake.connections), 1);
    fake_run_stop(f, &fake, pool);
    call_free(&big);
    call_free(&at_limit);
    call_free(&head);
    call_free(&next);
}


/* SETTINGS_MAX_CONCURRENT_STREAMS 2 and ten concurrent calls: the pool
 * opens more connections instead of exceeding the limit, and every call
 * succeeds. */
static void test_h2_stream_cap_opens_connections(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.max_streams = 2, .hold_ms = 50};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t calls[SMALL_FILES];
    for (int i = 0; i < SMALL_FILES; i++) {
        call_init(&calls[i], f, "/capped");
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
    }
    RUN_UNTIL(f, all_done(calls, SMALL_FILES));

    for (int i = 0; i < SMALL_FILES; i++) {
        assert_ok_body(&calls[i], "ok");
    }
    int conns = atomic_load(&fake.connections);
    /* Once the first SETTINGS tell the limit, the eight waiting calls
     * need four more connections. */
    assert_int_equal(conns, 5);
    assert_int_equal(h2_pool_connections(pool), 5);
    assert_int_equal(atomic_load(&fake.max_open), 2);
    assert_int_equal(atomic_load(&fake.refused), 0);
    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < SMALL_FILES; i++) {
        call_free(&calls[i]);
    }
}


/* The same with max_connections 1: the calls queue in order on one
 * connection, two at a time, and all succeed. */
static void test_h2_stream_cap_queues_calls(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.max_streams = 2, .hold_ms = 200};
    fake_start(&fake);
    pool_options_t opts = {.max_connections = 1,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 1000,
                           .ping_interval_ms = 10000};
    h2_pool_t *pool = pool_for_port_opts(f, fake.port, &opts);
    f->other_pool = pool;
    test_call_t calls[SMALL_FILES];
    for (int i = 0; i < SMALL_FILES; i++) {
        call_init(&calls[i], f, "/queued");
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
        assert_int_equal(calls[i].call.phase, UPCALL_CONNECTING);
    }
    /* Half way through the first two responses. */
    run_for(f, 100);
    assert_int_equal(atomic_load(&fake.requests), 2);
    int queued = 0;
    for (int i = 0; i < SMALL_FILES; i++) {
        queued += calls[i].call.phase == UPCALL_CONNECTING;
    }
    assert_int_equal(queued, SMALL_FILES - 2);
    RUN_UNTIL(f, all_done(calls, SMALL_FILES));

    for (int i = 0; i < SMALL_FILES; i++) {
        assert_ok_body(&calls[i], "ok");
        /* First in, first out. */
        assert_int_equal(calls[i].call.stream_id, 1 + 2 * i);
    }
    assert_int_equal(atomic_load(&fake.connections), 1);
    assert_int_equal(h2_pool_connections(pool), 1);
    assert_int_equal(atomic_load(&fake.max_open), 2);
    assert_int_equal(atomic_load(&fake.refused), 0);
    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < SMALL_FILES; i++) {
        call_free(&calls[i]);
    }
}


static fake_action_t script_hang(fake_conn_t *c, fake_stream_t *s)
{
    return strcmp(s->path, "/hang") == 0 ? FAKE_IGNORE : FAKE_RESPOND;
}


/* A queued call neither fails nor starts while the only stream slot is
 * taken. The caller's deadline timer cancels it, which takes it out of
 * the queue, and the pool carries on. */
static void test_h2_queued_call_until_cancel(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.max_streams = 1, .script = script_hang};
    fake_start(&fake);
    pool_options_t opts = {.max_connections = 1,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 1000,
                           .ping_interval_ms = 10000};
    h2_pool_t *pool = pool_for_port_opts(f, fake.port, &opts);
    f->other_pool = pool;
    test_call_t hang;
    test_call_t queued;
    test_call_t after;
    call_init(&hang, f, "/hang");
    call_init(&queued, f, "/queued");
    call_init(&after, f, "/after");
    queued.call.deadline_ns = uv_hrtime() + 100 * 1000000ULL;

    assert_int_equal(h2_pool_submit(pool, &hang.call), 0);
    assert_int_equal(h2_pool_submit(pool, &queued.call), 0);
    run_for(f, 300);
    assert_int_equal(hang.done, 0);
    assert_int_equal(queued.done, 0);
    assert_int_equal(queued.call.phase, UPCALL_CONNECTING);
    assert_int_equal(atomic_load(&fake.requests), 1);

    h2_pool_cancel(pool, &queued.call);
    assert_int_equal(queued.call.phase, UPCALL_CANCELLED);
    h2_pool_cancel(pool, &hang.call);
    assert_int_equal(h2_pool_submit(pool, &after.call), 0);
    RUN_UNTIL(f, after.done > 0);
    run_for(f, 50);

    assert_int_equal(hang.done, 0);
    assert_int_equal(queued.done, 0);
    assert_ok_body(&after, "ok");
    assert_int_equal(after.call.stream_id, 3);
    assert_int_equal(atomic_load(&fake.requests), 2);
    assert_int_equal(atomic_load(&fake.refused), 0);
    fake_run_stop(f, &fake, pool);
    call_free(&hang);
    call_free(&queued);
    call_free(&after);
}


/* On the third request the server lowers MAX_CONCURRENT_STREAMS to 1. */
static fake_action_t script_lower(fake_conn_t *c, fake_stream_t *s)
{
    if (c->requests == 3) {
        nghttp2_settings_entry max = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                      1};
        nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, &max, 1);
        c->lowered = 1;
    }
    return FAKE_RESPOND;
}


/* A limit lowered mid-connection holds for new streams: the four calls
 * submitted while three streams are open wait until they end and then
 * go one at a time. */
static void test_h2_stream_cap_lowered(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.script = script_lower, .hold_ms = 100};
    fake_start(&fake);
    pool_options_t opts = {.max_connections = 1,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 1000,
                           .ping_interval_ms = 10000};
    h2_pool_t *pool = pool_for_port_opts(f, fake.port, &opts);
    f->other_pool = pool;
    test_call_t first[3];
    test_call_t later[4];
    for (int i = 0; i < 3; i++) {
        call_init(&first[i], f, "/first");
        assert_int_equal(h2_pool_submit(pool, &first[i].call), 0);
    }
    RUN_UNTIL(f, atomic_load(&fake.requests) == 3);
    /* Lets the new SETTINGS arrive while the three streams are open. */
    run_for(f, 30);
    assert_false(all_done(first, 1));
    for (int i = 0; i < 4; i++) {
        call_init(&later[i], f, "/later");
        assert_int_equal(h2_pool_submit(pool, &later[i].call), 0);
    }
    RUN_UNTIL(f, all_done(first, 3) && all_done(later, 4));

    for (int i = 0; i < 3; i++) {
        assert_ok_body(&first[i], "ok");
    }
    for (int i = 0; i < 4; i++) {
        assert_ok_body(&later[i], "ok");
    }
    assert_int_equal(atomic_load(&fake.max_open), 3);
    assert_int_equal(atomic_load(&fake.max_open_lowered), 1);
    assert_int_equal(atomic_load(&fake.refused), 0);
    assert_int_equal(atomic_load(&fake.connections), 1);
    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < 3; i++) {
        call_free(&first[i]);
    }
    for (int i = 0; i < 4; i++) {
        call_free(&later[i]);
    }
}


/* Every connection advertises SETTINGS_MAX_CONCURRENT_STREAMS 0: the
 * pool opens a second connection in case the limit was that
 * connection's own, then no more, and the call waits until cancelled. */
static void test_h2_zero_streams_two_connections(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.zero_streams = 1};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t calls[3];
    for (int i = 0; i < 3; i++) {
        call_init(&calls[i], f, "/zero");
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
    }
    run_for(f, 300);

    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].done, 0);
        assert_int_equal(calls[i].call.phase, UPCALL_CONNECTING);
    }
    assert_int_equal(atomic_load(&fake.connections), 2);
    assert_int_equal(h2_pool_connections(pool), 2);
    assert_int_equal(atomic_load(&fake.requests), 0);
    for (int i = 0; i < 3; i++) {
        h2_pool_cancel(pool, &calls[i].call);
    }
    run_for(f, 50);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(calls[i].done, 0);
    }
    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < 3; i++) {
        call_free(&calls[i]);
    }
}


/* The first connection lowers its limit to 0 on its first request. */
static fake_action_t script_lower_to_zero(fake_conn_t *c, fake_stream_t *s)
{
    if (c->index == 0 && c->requests == 1) {
        nghttp2_settings_entry max = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS,
                                      0};
        nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, &max, 1);
    }
    return FAKE_RESPOND;
}


/* A limit of 0 on one connection only: the next calls go to one new
 * connection, which serves them all. */
static void test_h2_zero_streams_on_one_connection(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.script = script_lower_to_zero};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t first;
    test_call_t later[3];
    call_init(&first, f, "/first");
    assert_int_equal(h2_pool_submit(pool, &first.call), 0);
    RUN_UNTIL(f, first.done > 0);
    assert_ok_body(&first, "ok");
    /* Lets the SETTINGS that follow the response arrive. */
    run_for(f, 30);

    for (int i = 0; i < 3; i++) {
        call_init(&later[i], f, "/later");
        assert_int_equal(h2_pool_submit(pool, &later[i].call), 0);
    }
    RUN_UNTIL(f, all_done(later, 3));

    for (int i = 0; i < 3; i++) {
        assert_ok_body(&later[i], "ok");
        assert_int_equal(later[i].call.stream_id, 1 + 2 * i);
    }
    assert_int_equal(atomic_load(&fake.connections), 2);
    assert_int_equal(h2_pool_connections(pool), 2);
    fake_run_stop(f, &fake, pool);
    call_free(&first);
    for (int i = 0; i < 3; i++) {
        call_free(&later[i]);
    }
}


/* On its first connection the server resets stream 3 with INTERNAL_ERROR
 * and responds to stream 5 with GOAWAY(last_stream_id 3, NO_ERROR).
 * Later connections respond to everything. */
static fake_action_t script_goaway(fake_conn_t *c, fake_stream_t *s)
{
    if (c->index > 0) {
        return FAKE_RESPOND;
    }
    if (s->id == 3) {
        return FAKE_RESET;
    }
    if (s->id == 5) {
        nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, 3,
                              NGHTTP2_NO_ERROR, NULL, 0);
        return FAKE_IGNORE;
    }
    return FAKE_RESPOND;
}


/* GOAWAY mid-flight: the stream below last_stream_id completes on the old
 * connection, the reset stream fails, the POST above last_stream_id is
 * sent again with its body on a new connection, and the old connection
 * closes once drained. */
static void test_h2_goaway_resends_unprocessed(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.script = script_goaway};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t calls[3];
    static const char *const paths[] = {"/ok", "/reset", "/goaway"};
    for (int i = 0; i < 3; i++) {
        call_init(&calls[i], f, paths[i]);
    }
    calls[0].call.method = "POST";
    calls[0].call.body = "first body";
    calls[0].call.body_len = strlen("first body");
    calls[2].call.method = "POST";
    calls[2].call.body = "third body";
    calls[2].call.body_len = strlen("third body");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
    }
    RUN_UNTIL(f, all_done(calls, 3));

    assert_ok_body(&calls[0], "first body");
    assert_int_equal(calls[0].call.stream_id, 1);
    assert_int_equal(calls[1].done, 1);
    assert_int_equal(calls[1].err, TE_RESET);
    assert_string_equal(calls[1].call.errmsg,
                        "stream reset by server: INTERNAL_ERROR");
    assert_ok_body(&calls[2], "third body");
    /* The first stream of the second connection. */
    assert_int_equal(calls[2].call.stream_id, 1);
    assert_int_equal(atomic_load(&fake.connections), 2);
    RUN_UNTIL(f, h2_pool_connections(pool) == 1);

    test_call_t next;
    call_init(&next, f, "/next");
    assert_int_equal(h2_pool_submit(pool, &next.call), 0);
    RUN_UNTIL(f, next.done > 0);
    assert_ok_body(&next, "ok");
    assert_int_equal(next.call.stream_id, 3);
    assert_int_equal(h2_pool_connections(pool), 1);
    assert_int_equal(atomic_load(&fake.connections), 2);

    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < 3; i++) {
        call_free(&calls[i]);
    }
    call_free(&next);
}


/* Connections with an index below this get GOAWAY(INTERNAL_ERROR) and a
 * close on their first request. The GOAWAY's last_stream_id is 0, or the
 * request's own stream with goaway_covers_request. */
static int goaway_error_conns;
static int goaway_covers_request;


static fake_action_t script_goaway_error(fake_conn_t *c, fake_stream_t *s)
{
    if (c->index < goaway_error_conns) {
        int32_t last = goaway_covers_request ? s->id : 0;
        nghttp2_session_terminate_session2(c->session, last,
                                           NGHTTP2_INTERNAL_ERROR);
        return FAKE_IGNORE;
    }
    return FAKE_RESPOND;
}


/* A stream refused by a GOAWAY with an error code is sent once more. */
static void test_h2_goaway_error_retried_once(void **state)
{
    fixture_t *f = *state;
    goaway_error_conns = 1;
    goaway_covers_request = 0;
    fake_server_t fake = {.script = script_goaway_error};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/post");
    t.call.method = "POST";
    t.call.body = "payload";
    t.call.body_len = strlen("payload");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_ok_body(&t, "payload");
    assert_int_equal(atomic_load(&fake.requests), 2);
    assert_int_equal(atomic_load(&fake.connections), 2);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* A second GOAWAY with an error code fails the call with TE_RESET and
 * names the error code. */
static void test_h2_goaway_error_twice_fails(void **state)
{
    fixture_t *f = *state;
    goaway_error_conns = FAKE_MAX_CONNS;
    goaway_covers_request = 0;
    fake_server_t fake = {.script = script_goaway_error};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/post");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    run_for(f, 50);

    assert_int_equal(t.done, 1);
    assert_int_equal(t.err, TE_RESET);
    assert_string_equal(t.call.errmsg,
                        "connection closed by GOAWAY: INTERNAL_ERROR");
    assert_int_equal(t.call.status, 0);
    assert_int_equal(atomic_load(&fake.requests), 2);
    assert_int_equal(atomic_load(&fake.connections), 2);
    assert_int_equal(h2_pool_connections(pool), 0);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* GOAWAY(INTERNAL_ERROR) whose last_stream_id covers the request, then a
 * close: the server may have processed it, so a GET gets its one retry
 * and a POST fails. */
static void test_h2_goaway_error_covered_stream(void **state)
{
    fixture_t *f = *state;
    goaway_error_conns = 1;
    goaway_covers_request = 1;
    fake_server_t fake = {.script = script_goaway_error};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t get;
    call_init(&get, f, "/get");

    assert_int_equal(h2_pool_submit(pool, &get.call), 0);
    RUN_UNTIL(f, get.done > 0);
    assert_ok_body(&get, "ok");
    assert_int_equal(atomic_load(&fake.requests), 2);
    assert_int_equal(atomic_load(&fake.connections), 2);
    fake_run_stop(f, &fake, pool);
    call_free(&get);

    goaway_error_conns = FAKE_MAX_CONNS;
    fake_server_t fake2 = {.script = script_goaway_error};
    fake_start(&fake2);
    pool = pool_for_port(f, fake2.port);
    f->other_pool = pool;
    test_call_t post;
    call_init(&post, f, "/post");
    post.call.method = "POST";
    post.call.body = "once";
    post.call.body_len = strlen("once");

    assert_int_equal(h2_pool_submit(pool, &post.call), 0);
    RUN_UNTIL(f, post.done > 0);
    assert_int_equal(post.err, TE_RESET);
    assert_string_equal(post.call.errmsg,
                        "connection closed by GOAWAY: INTERNAL_ERROR");
    assert_int_equal(atomic_load(&fake2.requests), 1);
    fake_run_stop(f, &fake2, pool);
    call_free(&post);
}


/* Every request gets GOAWAY(NO_ERROR, last_stream_id 0): the server
 * processed nothing on the connection. */
static fake_action_t script_goaway_unprocessed(fake_conn_t *c, fake_stream_t *s)
{
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR,
                          NULL, 0);
    return FAKE_IGNORE;
}


/* A server that refuses every stream with a graceful GOAWAY gets three
 * attempts per call, with a deadline or without, not one connection per
 * loop iteration until the deadline. */
static void test_h2_goaway_unprocessed_bounded(void **state)
{
    fixture_t *f = *state;
    static const uint64_t budgets_ms[] = {0, 3000};
    for (size_t i = 0; i < 2; i++) {
        fake_server_t fake = {.script = script_goaway_unprocessed};
        fake_start(&fake);
        h2_pool_t *pool = pool_for_port(f, fake.port);
        f->other_pool = pool;
        test_call_t t;
        call_init(&t, f, "/refused");
        if (budgets_ms[i] > 0) {
            t.call.deadline_ns = uv_hrtime() + budgets_ms[i] * 1000000ULL;
        }

        assert_int_equal(h2_pool_submit(pool, &t.call), 0);
        RUN_UNTIL(f, t.done > 0);
        RUN_UNTIL(f, h2_pool_connections(pool) == 0);

        assert_int_equal(t.done, 1);
        assert_int_equal(t.err, TE_RESET);
        assert_string_equal(t.call.errmsg,
                            "stream refused by GOAWAY (NO_ERROR) 3 times");
        assert_int_equal(t.call.status, 0);
        assert_int_equal(atomic_load(&fake.requests), 3);
        assert_int_equal(atomic_load(&fake.connections), 3);
        fake_run_stop(f, &fake, pool);
        call_free(&t);
    }
}


/* GOAWAY(NO_ERROR, 0) right after SETTINGS on every connection: the
 * waiting call never gets a stream, and each such connection counts as a
 * refusal, so the pool stops after three connections. */
static void test_h2_goaway_at_start_bounded(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.goaway_at_start = 1};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/never");
    t.call.deadline_ns = uv_hrtime() + 3000 * 1000000ULL;

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    RUN_UNTIL(f, h2_pool_connections(pool) == 0);
    run_for(f, 50);

    assert_int_equal(t.done, 1);
    assert_int_equal(t.err, TE_RESET);
    assert_string_equal(t.call.errmsg,
                        "stream refused by GOAWAY (NO_ERROR) 3 times");
    assert_int_equal(atomic_load(&fake.requests), 0);
    assert_int_equal(atomic_load(&fake.connections), 3);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* Each connection responds to its first stream and turns the others away
 * with GOAWAY(NO_ERROR, last_stream_id 1), as a server that ends every
 * connection after one request would. */
static fake_action_t script_one_per_connection(fake_conn_t *c, fake_stream_t *s)
{
    if (c->requests > 1) {
        return FAKE_IGNORE;
    }
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE, s->id,
                          NGHTTP2_NO_ERROR, NULL, 0);
    return FAKE_RESPOND;
}


/* A graceful GOAWAY that processed some streams is not capped at three
 * attempts: the sixth call is turned away five times and still succeeds
 * within its deadline. */
static void test_h2_goaway_with_progress_not_capped(void **state)
{
    fixture_t *f = *state;
    enum { N = 6 };
    fake_server_t fake = {.script = script_one_per_connection};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t calls[N];
    for (int i = 0; i < N; i++) {
        call_init(&calls[i], f, "/one");
        calls[i].call.deadline_ns = uv_hrtime() + 5000 * 1000000ULL;
        assert_int_equal(h2_pool_submit(pool, &calls[i].call), 0);
    }
    RUN_UNTIL(f, all_done(calls, N));

    for (int i = 0; i < N; i++) {
        assert_ok_body(&calls[i], "ok");
        assert_int_equal(calls[i].call.stream_id, 1);
    }
    assert_int_equal(atomic_load(&fake.connections), N);
    fake_run_stop(f, &fake, pool);
    for (int i = 0; i < N; i++) {
        call_free(&calls[i]);
    }
}


/* Requests up to this number (over all connections) are refused. */
static int refuse_requests;


static fake_action_t script_refuse(fake_conn_t *c, fake_stream_t *s)
{
    if (atomic_load(&c->fake->requests) <= refuse_requests) {
        return FAKE_REFUSE;
    }
    return FAKE_RESPOND;
}


/* REFUSED_STREAM twice, then a response: the call succeeds on the same
 * connection. */
static void test_h2_refused_stream_retried(void **state)
{
    fixture_t *f = *state;
    refuse_requests = 2;
    fake_server_t fake = {.script = script_refuse};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/refused");
    t.call.method = "POST";
    t.call.body = "again";
    t.call.body_len = strlen("again");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    assert_ok_body(&t, "again");
    assert_int_equal(t.call.stream_id, 5);
    assert_int_equal(atomic_load(&fake.requests), 3);
    assert_int_equal(atomic_load(&fake.refused), 2);
    assert_int_equal(atomic_load(&fake.connections), 1);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* REFUSED_STREAM is retried at most twice, then the call fails. */
static void test_h2_refused_stream_gives_up(void **state)
{
    fixture_t *f = *state;
    refuse_requests = 1000;
    fake_server_t fake = {.script = script_refuse};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/refused");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    run_for(f, 50);

    assert_int_equal(t.done, 1);
    assert_int_equal(t.err, TE_RESET);
    assert_string_equal(t.call.errmsg,
                        "stream reset by server: REFUSED_STREAM");
    assert_int_equal(atomic_load(&fake.requests), 3);
    assert_int_equal(h2_pool_connections(pool), 1);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* Refuses every request, after a delay that outlasts the call's
 * deadline. Blocking the connection's thread is fine for one request. */
static fake_action_t script_refuse_late(fake_conn_t *c, fake_stream_t *s)
{
    struct timespec delay = {0, 300 * 1000 * 1000};
    nanosleep(&delay, NULL);
    return FAKE_REFUSE;
}


/* No retry once the call's deadline has passed. */
static void test_h2_retry_needs_time_left(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.script = script_refuse_late};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/refused");
    t.call.deadline_ns = uv_hrtime() + 150 * 1000000ULL;

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    run_for(f, 50);

    assert_int_equal(t.err, TE_RESET);
    assert_string_equal(t.call.errmsg,
                        "stream reset by server: REFUSED_STREAM");
    assert_int_equal(atomic_load(&fake.requests), 1);
    fake_run_stop(f, &fake, pool);
    call_free(&t);
}


/* The first connection gets an invalid frame (a connection error); the
 * second one, and the calls on it, are not affected. */
static fake_action_t script_garbage(fake_conn_t *c, fake_stream_t *s)
{
    return c->index == 0 ? FAKE_GARBAGE : FAKE_RESPOND;
}


static void test_h2_connection_error_stays_local(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {
        .max_streams = 1, .hold_ms = 50, .script = script_garbage};
    fake_start(&fake);
    h2_pool_t *pool = pool_for_port(f, fake.port);
    f->other_pool = pool;
    test_call_t a;
    test_call_t b;
    test_call_t c;
    call_init(&a, f, "/a");
    call_init(&b, f, "/b");
    call_init(&c, f, "/c");

    assert_int_equal(h2_pool_submit(pool, &a.call), 0);
    assert_int_equal(h2_pool_submit(pool, &b.call), 0);
    RUN_UNTIL(f, a.done > 0 && b.done > 0);
    assert_int_equal(a.err, TE_RESET);
    assert_int_equal(a.call.status, 0);
    assert_ok_body(&b, "ok");
    assert_int_equal(atomic_load(&fake.connections), 2);
    RUN_UNTIL(f, h2_pool_connections(pool) == 1);

    assert_int_equal(h2_pool_submit(pool, &c.call), 0);
    RUN_UNTIL(f, c.done > 0);
    assert_ok_body(&c, "ok");
    /* The second stream of the surviving connection. */
    assert_int_equal(c.call.stream_id, 3);
    assert_int_equal(atomic_load(&fake.connections), 2);
    fake_run_stop(f, &fake, pool);
    call_free(&a);
    call_free(&b);
    call_free(&c);
}


static int count_receiving(test_call_t *const *calls, int n)
{
    int receiving = 0;
    for (int i = 0; i < n; i++) {
        receiving += calls[i]->call.phase == UPCALL_RECEIVING;
    }
    return receiving;
}


/* Cancelled downloads leave DATA in flight that nghttp2 discards. Two
 * rounds of twelve cancelled 3 MiB downloads send more than the 16 MiB
 * connection window, so the last download only completes if the window
 * of discarded DATA is given back. */
static void test_h2_cancel_keeps_window_open(void **state)
{
    fixture_t *f = *state;
    enum { N = 12 };
    for (int round = 0; round < 2; round++) {
        test_call_t *calls[N];
        for (int i = 0; i < N; i++) {
            /* On the heap, so that ASan reports any use after cancel. */
            calls[i] = malloc(sizeof(*calls[i]));
            assert_non_null(calls[i]);
            call_init(calls[i], f, "/big.bin");
            assert_int_equal(h2_pool_submit(f->pool, &calls[i]->call), 0);
        }
        RUN_UNTIL(f, count_receiving(calls, N) == N);
        for (int i = 0; i < N; i++) {
            assert_int_equal(calls[i]->done, 0);
            h2_pool_cancel(f->pool, &calls[i]->call);
            call_free(calls[i]);
            free(calls[i]);
        }
    }
    run_for(f, 100);

    test_call_t t;
    call_init(&t, f, "/big.bin");
    assert_int_equal(h2_pool_submit(f->pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    assert_int_equal(t.err, 0);
    assert_int_equal(t.call.status, 200);
    assert_int_equal(t.call.body_out.len, BIG_SIZE);
    assert_memory_equal(t.call.body_out.data, env.big, BIG_SIZE);
    assert_int_equal(h2_pool_connections(f->pool), 1);
    call_free(&t);
}


/* Returns whether |server|'s log contains |needle|, waiting up to 2 s. */
static int server_log_has(const server_t *server, const char *needle)
{
    for (int i = 0; i < 40; i++) {
        FILE *f = fopen(server->log, "r");
        if (f != NULL) {
            char line[512];
            while (fgets(line, sizeof(line), f) != NULL) {
                if (strstr(line, needle) != NULL) {
                    fclose(f);
                    return 1;
                }
            }
            fclose(f);
        }
        struct timespec delay = {0, 50 * 1000 * 1000};
        nanosleep(&delay, NULL);
    }
    return 0;
}


/* An idle connection sends PINGs, which nghttpd acknowledges, and is
 * closed with GOAWAY(NO_ERROR) after idle_timeout_ms. The pool keeps its
 * own copy of the options. */
static void test_h2_ping_and_idle_timeout(void **state)
{
    fixture_t *f = *state;
    server_t server;
    server_start(&server, env.dir);
    pool_options_t opts = {.max_connections = 8,
                           .idle_timeout_ms = 500,
                           .connect_timeout_ms = 1000,
                           .ping_interval_ms = 60};
    h2_pool_t *pool = pool_for_port_opts(f, server.port, &opts);
    memset(&opts, 0, sizeof(opts));
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/item1.json");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);
    uint64_t idle_start = uv_hrtime();
    assert_int_equal(t.err, 0);
    run_for(f, 300);
    assert_int_equal(h2_pool_connections(pool), 1);
    assert_true(server_log_has(&server, "recv PING frame <length=8, "
                                        "flags=0x00, stream_id=0>"));

    RUN_UNTIL(f, h2_pool_connections(pool) == 0);
    uint64_t idle = ms_since(idle_start);
    assert_true(idle >= 450);
    assert_true(idle < 2000);
    assert_true(server_log_has(&server, "recv GOAWAY frame"));
    assert_true(server_log_has(&server, "error_code=NO_ERROR"));
    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    server_stop(&server, SIGTERM);
    call_free(&t);
}


/* A PING that gets no ACK within the interval closes the connection, and
 * the stream open on it fails with TE_RESET. */
static void test_h2_ping_timeout_closes(void **state)
{
    fixture_t *f = *state;
    fake_server_t fake = {.no_ping_ack = 1, .script = script_hang};
    fake_start(&fake);
    pool_options_t opts = {.max_connections = 8,
                           .idle_timeout_ms = 0,
                           .connect_timeout_ms = 1000,
                           .ping_interval_ms = 100};
    h2_pool_t *pool = pool_for_port_opts(f, fake.port, &opts);
    f->other_pool = pool;
    test_call_t a;
    test_call_t hang;
    call_init(&a, f, "/a");
    call_init(&hang, f, "/hang");

    assert_int_equal(h2_pool_submit(pool, &a.call), 0);
    RUN_UNTIL(f, a.done > 0);
    assert_ok_body(&a, "ok");
    /* The PING goes out 100 ms after the call ends. Waiting for it with
     * RUN_UNTIL would block the loop until the ACK deadline. */
    run_for(f, 140);
    uint64_t ping_seen = uv_hrtime();
    assert_int_equal(atomic_load(&fake.pings), 1);
    assert_int_equal(h2_pool_connections(pool), 1);
    assert_int_equal(h2_pool_submit(pool, &hang.call), 0);
    RUN_UNTIL(f, hang.done > 0);

    char expected[96];
    snprintf(expected, sizeof(expected),
             "no PING ACK from 127.0.0.1:%d within 100 ms", fake.port);
    assert_int_equal(hang.err, TE_RESET);
    assert_string_equal(hang.call.errmsg, expected);
    assert_true(ms_since(ping_seen) < 500);
    assert_int_equal(h2_pool_connections(pool), 0);
    assert_int_equal(atomic_load(&fake.pings), 1);
    fake_run_stop(f, &fake, pool);
    call_free(&a);
    call_free(&hang);
}


static tls_context_t *tls_context_for_tests(void)
{
    char ca[96];
    char err[256];
    snprintf(ca, sizeof(ca), "%s/tls.pem", env.dir);
    tls_options_t tls = {.ca_file = ca, .verify = true, .alpn = "h2"};
    tls_context_t *ctx = NULL;
    if (tls_context_new(&tls, &ctx, err, sizeof(err)) != 0) {
        fail_msg("tls_context_new: %s", err);
    }
    return ctx;
}


/* h2:// against nghttpd with TLS and ALPN h2: a GET, an upload larger
 * than the stream window and a 3 MiB download share one verified
 * connection. */
static void test_h2_tls_requests(void **state)
{
    fixture_t *f = *state;
    server_t server;
    server_start_mode(&server, env.dir, 1);
    tls_context_t *ctx = tls_context_for_tests();
    pool_options_t opts = {.max_connections = 4,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 2000,
                           .ping_interval_ms = 10000,
                           .tls = ctx,
                           .server_name = "localhost"};
    h2_pool_t *pool = pool_for_port_opts(f, server.port, &opts);
    f->other_pool = pool;
    test_call_t get;
    test_call_t post;
    test_call_t big;
    call_init(&get, f, "/item5.json");
    call_init(&post, f, "/echo");
    post.call.method = "POST";
    post.call.body = env.big + 777;
    post.call.body_len = UPLOAD_SIZE;
    call_init(&big, f, "/big.bin");

    assert_int_equal(h2_pool_submit(pool, &get.call), 0);
    assert_int_equal(h2_pool_submit(pool, &post.call), 0);
    assert_int_equal(h2_pool_submit(pool, &big.call), 0);
    RUN_UNTIL(f, get.done > 0 && post.done > 0 && big.done > 0);

    assert_ok_body(&get, env.small[5]);
    assert_int_equal(post.err, 0);
    assert_int_equal(post.call.status, 200);
    assert_int_equal(post.call.body_out.len, UPLOAD_SIZE);
    assert_memory_equal(post.call.body_out.data, env.big + 777, UPLOAD_SIZE);
    assert_int_equal(big.err, 0);
    assert_int_equal(big.call.body_out.len, BIG_SIZE);
    assert_memory_equal(big.call.body_out.data, env.big, BIG_SIZE);
    assert_int_equal(h2_pool_connections(pool), 1);
    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    server_stop(&server, SIGTERM);
    tls_context_free(ctx);
    call_free(&get);
    call_free(&post);
    call_free(&big);
}


/* A certificate that does not match server_name fails the call with
 * TE_CONNECT and the transport's reason. */
static void test_h2_tls_verify_fails(void **state)
{
    fixture_t *f = *state;
    server_t server;
    server_start_mode(&server, env.dir, 1);
    tls_context_t *ctx = tls_context_for_tests();
    pool_options_t opts = {.max_connections = 4,
                           .idle_timeout_ms = 30000,
                           .connect_timeout_ms = 2000,
                           .ping_interval_ms = 10000,
                           .tls = ctx,
                           .server_name = "other.test"};
    h2_pool_t *pool = pool_for_port_opts(f, server.port, &opts);
    f->other_pool = pool;
    test_call_t t;
    call_init(&t, f, "/item0.json");

    assert_int_equal(h2_pool_submit(pool, &t.call), 0);
    RUN_UNTIL(f, t.done > 0);

    static const char prefix[] =
        "TLS certificate verification failed for other.test: ";
    assert_int_equal(t.err, TE_CONNECT);
    assert_int_equal(strncmp(t.call.errmsg, prefix, strlen(prefix)), 0);
    assert_int_equal(h2_pool_connections(pool), 0);
    h2_pool_close(pool);
    f->other_pool = NULL;
    run_for(f, 20);
    server_stop(&server, SIGTERM);
    tls_context_free(ctx);
    call_free(&t);
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
        cmocka_unit_test_setup_teardown(test_h2_body_over_limit_no_length,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_content_length_over_limit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_reentrant_cancel_and_submit,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_close_with_open_stream, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_server_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_submit_invalid, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_connect_timeout_default, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_connect_timeout_clipped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_stream_cap_opens_connections,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_stream_cap_queues_calls, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_queued_call_until_cancel, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_stream_cap_lowered, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_zero_streams_two_connections,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_zero_streams_on_one_connection,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_resends_unprocessed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_error_retried_once,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_error_twice_fails, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_error_covered_stream,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_unprocessed_bounded,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_at_start_bounded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_goaway_with_progress_not_capped,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_refused_stream_retried, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_refused_stream_gives_up, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_retry_needs_time_left, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_connection_error_stays_local,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_cancel_keeps_window_open, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_ping_and_idle_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_ping_timeout_closes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h2_tls_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2_tls_verify_fails, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
