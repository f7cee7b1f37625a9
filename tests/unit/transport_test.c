/* Tests for the client transport: cleartext against an echo server in the
 * test's own loop, TLS against a blocking OpenSSL server in a thread, with
 * certificates made by the openssl command in a temporary directory. */
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <uv.h>

#include "buf.h"
#include "errors.h"
#include "transport.h"

/* Upper bound for one wait, so that a broken test fails instead of
 * hanging. */
#define WAIT_MS 5000

#define MAX_PINGS 8
#define MAX_WRITES 16

static char cert_dir[64];


/* Returns the path of |name| in the certificate directory. The string
 * stays valid until the program ends. */
static const char *cert_path(const char *name)
{
    static char names[32][32];
    static char paths[32][128];
    static int count;

    for (int i = 0; i < count; i++) {
        if (strcmp(names[i], name) == 0) {
            return paths[i];
        }
    }
    assert_true(count < 32);
    snprintf(names[count], sizeof(names[count]), "%s", name);
    snprintf(paths[count], sizeof(paths[count]), "%s/%s", cert_dir, name);
    return paths[count++];
}


/* Makes a CA, server certificates signed by it (for localhost and
 * 127.0.0.1, for other.test, and an expired one), a self-signed server
 * certificate and a client certificate signed by the CA. */
static int make_certificates(void **state)
{
    snprintf(cert_dir, sizeof(cert_dir), "/tmp/transport_test.XXXXXX");
    if (mkdtemp(cert_dir) == NULL) {
        return -1;
    }
    static const char script[] =
        "set -e\n"
        "ec='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'\n"
        "sign='-CA ca.pem -CAkey ca.key -CAcreateserial'\n"
        "openssl req -x509 $ec -keyout ca.key -out ca.pem -days 30"
        " -subj '/CN=transport test CA'"
        " -addext basicConstraints=critical,CA:TRUE"
        " -addext keyUsage=critical,keyCertSign,cRLSign\n"
        "openssl req -new $ec -keyout server.key -out server.csr"
        " -subj /CN=localhost\n"
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext\n"
        "openssl x509 -req -in server.csr $sign -days 30 -extfile server.ext"
        " -out server.pem\n"
        "openssl x509 -req -in server.csr $sign -days -1 -extfile server.ext"
        " -out expired.pem\n"
        "openssl req -new -key server.key -out other.csr -subj /CN=other.test\n"
        "printf 'subjectAltName=DNS:other.test\\n' > other.ext\n"
        "openssl x509 -req -in other.csr $sign -days 30 -extfile other.ext"
        " -out other.pem\n"
        "openssl req -x509 -key server.key -out self.pem -days 30"
        " -subj /CN=localhost"
        " -addext subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "openssl req -new $ec -keyout client.key -out client.csr"
        " -subj '/CN=transport test client'\n"
        "printf 'extendedKeyUsage=clientAuth\\n' > client.ext\n"
        "openssl x509 -req -in client.csr $sign -days 30 -extfile client.ext"
        " -out client.pem\n";
    char cmd[256];
    FILE *f = fopen(cert_path("gen.sh"), "w");
    if (f == NULL) {
        return -1;
    }
    fputs(script, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "cd %s && sh gen.sh > gen.log 2>&1", cert_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "certificate generation failed, see %s/gen.log\n",
                cert_dir);
        return -1;
    }
    return 0;
}


static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    return remove(path);
}


static int remove_certificates(void **state)
{
    if (cert_dir[0] != '\0') {
        nftw(cert_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    }
    return 0;
}


/* ---- TLS server: a blocking OpenSSL server in its own thread ---- */

typedef enum {
    SERVE_ECHO,         /* echo records until the client closes */
    SERVE_KEY_UPDATE,   /* echo, with a KeyUpdate before each reply */
    SERVE_RENEGOTIATE,  /* echo, with a renegotiation before each reply */
    SERVE_CLOSE_NOTIFY, /* send "bye\n" and a close_notify */
} serve_mode_t;

typedef struct tls_server_s {
    /* Settings, filled in before tls_server_start(). */
    const char *cert;
    const char *key;
    const char *client_ca; /* require a client certificate signed by it */
    const char *alpn;      /* protocol selected when the client offers it */
    int max_version;       /* 0: up to TLS 1.3 */
    serve_mode_t mode;

    SSL_CTX *ctx;
    int listen_fd;
    int port;
    pthread_t thread;

    /* Results, read after tls_server_stop(). */
    int accepted;
    int handshake_failures;
    int handshakes_done; /* including renegotiations */
    char sni[256];
    char client_cn[256];
} tls_server_t;


/* SSL_info_callback: counts finished handshakes. */
static void on_server_info(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_HANDSHAKE_DONE) != 0) {
        tls_server_t *s = SSL_get_app_data(ssl);
        s->handshakes_done++;
    }
}


/* SSL_CTX_alpn_select_cb_func */
static int on_server_alpn(SSL *ssl, const unsigned char **out,
                          unsigned char *outlen, const unsigned char *in,
                          unsigned inlen, void *arg)
{
    tls_server_t *s = arg;

    if (s->alpn == NULL) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    size_t want = strlen(s->alpn);
    unsigned i = 0;
    while (i < inlen) {
        unsigned len = in[i];
        if (i + 1 + len > inlen) {
            break;
        }
        if (len == want && memcmp(in + i + 1, s->alpn, len) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}


static int ssl_write_all(SSL *ssl, const char *data, int len)
{
    while (len > 0) {
        int n = SSL_write(ssl, data, len);
        if (n <= 0) {
            return -1;
        }
        data += n;
        len -= n;
    }
    return 0;
}


static void serve(tls_server_t *s, SSL *ssl)
{
    char buf[4096];

    if (s->mode == SERVE_CLOSE_NOTIFY) {
        ssl_write_all(ssl, "bye\n", 4);
        SSL_shutdown(ssl);
        /* Waits for the client to close its side. */
        while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
        }
        return;
    }
    for (;;) {
        int n = SSL_read(ssl, buf, sizeof(buf));
        if (n <= 0) {
            return;
        }
        if (s->mode == SERVE_KEY_UPDATE) {
            SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED);
        } else if (s->mode == SERVE_RENEGOTIATE) {
            /* Sends a HelloRequest; the client's new handshake is read by
             * the next SSL_read. */
            SSL_renegotiate(ssl);
            SSL_do_handshake(ssl);
        }
        if (ssl_write_all(ssl, buf, n) != 0) {
            return;
        }
    }
}


static void *tls_server_main(void *arg)
{
    tls_server_t *s = arg;
    struct pollfd pfd = {.fd = s->listen_fd, .events = POLLIN};

    if (poll(&pfd, 1, WAIT_MS) <= 0) {
        return NULL;
    }
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0) {
        return NULL;
    }
    s->accepted++;
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

    SSL *ssl = SSL_new(s->ctx);
    SSL_set_app_data(ssl, s);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
        s->handshake_failures++;
    } else {
        const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
        if (sni != NULL) {
            snprintf(s->sni, sizeof(s->sni), "%s", sni);
        }
        X509 *peer = SSL_get1_peer_certificate(ssl);
        if (peer != NULL) {
            X509_NAME_get_text_by_NID(X509_get_subject_name(peer),
                                      NID_commonName, s->client_cn,
                                      sizeof(s->client_cn));
            X509_free(peer);
        }
        serve(s, ssl);
    }
    SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    /* Frees this thread's OpenSSL error state before LeakSanitizer
     * looks. */
    OPENSSL_thread_stop();
    return NULL;
}


static void tls_server_start(tls_server_t *s)
{
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(s->ctx);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(s->ctx, s->cert), 1);
    assert_int_equal(
        SSL_CTX_use_PrivateKey_file(s->ctx, s->key, SSL_FILETYPE_PEM), 1);
    if (s->max_version != 0) {
        SSL_CTX_set_max_proto_version(s->ctx, s->max_version);
    }
    if (s->client_ca != NULL) {
        assert_int_equal(
            SSL_CTX_load_verify_locations(s->ctx, s->client_ca, NULL), 1);
        SSL_CTX_set_verify(
            s->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    SSL_CTX_set_alpn_select_cb(s->ctx, on_server_alpn, s);
    SSL_CTX_set_info_callback(s->ctx, on_server_info);

    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->listen_fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)),
                     0);
    assert_int_equal(listen(s->listen_fd, 8), 0);
    socklen_t len = sizeof(addr);
    getsockname(s->listen_fd, (struct sockaddr *)&addr, &len);
    s->port = ntohs(addr.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, tls_server_main, s), 0);
}


static void tls_server_stop(tls_server_t *s)
{
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    SSL_CTX_free(s->ctx);
}


/* ---- Cleartext echo server in the test's loop ---- */

typedef struct echo_server_s {
    uv_tcp_t listener;
    int port;
    int accepted;
} echo_server_t;

typedef struct echo_conn_s {
    uv_tcp_t tcp;
    uv_shutdown_t shutdown_req;
    int closing;
} echo_conn_t;

typedef struct echo_write_s {
    uv_write_t req;
    int close_after; /* the data ended with "bye\n" */
    char data[];
} echo_write_t;


static void on_echo_conn_close(uv_handle_t *handle)
{
    free(handle->data);
}


/* uv_shutdown_cb */
static void on_echo_shutdown(uv_shutdown_t *req, int status)
{
    echo_conn_t *ec = req->data;
    uv_close((uv_handle_t *)&ec->tcp, on_echo_conn_close);
}


/* uv_write_cb: after "bye\n", ends the connection with a FIN. */
static void on_echo_write(uv_write_t *req, int status)
{
    echo_write_t *w = req->data;
    echo_conn_t *ec = req->handle->data;

    if (w->close_after && !ec->closing) {
        ec->closing = 1;
        ec->shutdown_req.data = ec;
        uv_read_stop((uv_stream_t *)&ec->tcp);
        uv_shutdown(&ec->shutdown_req, (uv_stream_t *)&ec->tcp,
                    on_echo_shutdown);
    }
    free(w);
}


static void on_echo_alloc(uv_handle_t *handle, size_t size, uv_buf_t *buf)
{
    buf->base = malloc(size);
    buf->len = size;
}


/* uv_read_cb */
static void on_echo_read(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf)
{
    echo_conn_t *ec = stream->data;

    if (nread < 0) {
        if (!ec->closing) {
            ec->closing = 1;
            uv_close((uv_handle_t *)&ec->tcp, on_echo_conn_close);
        }
    } else if (nread > 0) {
        echo_write_t *w = malloc(sizeof(*w) + (size_t)nread);
        memcpy(w->data, buf->base, (size_t)nread);
        w->close_after =
            nread >= 4 && memcmp(w->data + nread - 4, "bye\n", 4) == 0;
        w->req.data = w;
        uv_buf_t out = uv_buf_init(w->data, (unsigned)nread);
        uv_write(&w->req, stream, &out, 1, on_echo_write);
    }
    free(buf->base);
}


/* uv_connection_cb */
static void on_echo_connection(uv_stream_t *listener, int status)
{
    echo_server_t *es = listener->data;
    echo_conn_t *ec = calloc(1, sizeof(*ec));

    uv_tcp_init(listener->loop, &ec->tcp);
    ec->tcp.data = ec;
    assert_int_equal(uv_accept(listener, (uv_stream_t *)&ec->tcp), 0);
    es->accepted++;
    uv_read_start((uv_stream_t *)&ec->tcp, on_echo_alloc, on_echo_read);
}


static void echo_server_start(echo_server_t *es, uv_loop_t *loop)
{
    struct sockaddr_in addr;

    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_init(loop, &es->listener), 0);
    es->listener.data = es;
    assert_int_equal(
        uv_tcp_bind(&es->listener, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(
        uv_listen((uv_stream_t *)&es->listener, 8, on_echo_connection), 0);
    int len = sizeof(addr);
    uv_tcp_getsockname(&es->listener, (struct sockaddr *)&addr, &len);
    es->port = ntohs(addr.sin_port);
}


/* ---- Raw listening sockets ---- */

/* Returns a socket listening on 127.0.0.1 that nothing accepts on. The
 * kernel still completes TCP handshakes up to the backlog and buffers
 * the data sent, so a TLS handshake with it stalls. */
static int silent_listener(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof(addr);

    assert_true(fd >= 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(fd, backlog), 0);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    *port = ntohs(addr.sin_port);
    return fd;
}


/* A loopback address that drops SYNs: a listener with backlog 0 whose
 * accept queue is full (Linux then drops new SYNs, with
 * tcp_abort_on_overflow at its default 0). */
typedef struct black_hole_s {
    int listen_fd;
    int port;
    int fill[8];
    int nfill;
} black_hole_t;


/* Returns 0 when a connect to the listener was seen to hang. */
static int black_hole_open(black_hole_t *bh)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};

    bh->nfill = 0;
    bh->listen_fd = silent_listener(0, &bh->port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)bh->port);
    while (bh->nfill < 8) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        bh->fill[bh->nfill++] = fd;
        connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, 200) == 0) {
            return 0;
        }
    }
    return -1;
}


static void black_hole_close(black_hole_t *bh)
{
    for (int i = 0; i < bh->nfill; i++) {
        close(bh->fill[i]);
    }
    close(bh->listen_fd);
}


/* ---- Client under test ---- */

typedef struct client_s {
    transport_t t;
    int connects;
    int connect_err;
    char connect_msg[512];
    int connect_in_call; /* on_connect ran inside transport_connect */
    int reads;
    buf_t received;
    int eofs;
    int eof_err;
    char eof_msg[512];
    int closes;
    int ndone;
    intptr_t done_order[MAX_WRITES]; /* |arg| of each finished write */
    int done_err[MAX_WRITES];
    int done_after_close; /* write callbacks that came after on_close */

    /* Script: pings to exchange with an echo server (each one sent once
     * the previous one came back), and where to close. */
    int pings;
    int npings;
    size_t sent;
    char ping_text[MAX_PINGS][32];
    int close_on_connect;
    int close_on_read;
    int close_on_done;
} client_t;

static int in_transport_connect;


static void send_ping(client_t *c);


/* transport_connect_cb */
static void on_client_connect(transport_t *t, int err, const char *msg)
{
    client_t *c = t->data;

    c->connects++;
    c->connect_in_call += in_transport_connect;
    c->connect_err = err;
    snprintf(c->connect_msg, sizeof(c->connect_msg), "%s",
             msg != NULL ? msg : "");
    if (err != 0 || c->close_on_connect) {
        transport_close(t);
        return;
    }
    if (c->pings > 0) {
        send_ping(c);
    }
}


/* transport_read_cb */
static void on_client_read(transport_t *t, const char *data, size_t len)
{
    client_t *c = t->data;

    c->reads++;
    buf_append(&c->received, data, len);
    if (c->close_on_read) {
        transport_close(t);
        return;
    }
    if (c->pings > 0 && c->received.len == c->sent) {
        if (c->npings < c->pings) {
            send_ping(c);
        } else {
            transport_close(t);
        }
    }
}


/* transport_eof_cb */
static void on_client_eof(transport_t *t, int err, const char *msg)
{
    client_t *c = t->data;

    c->eofs++;
    c->eof_err = err;
    snprintf(c->eof_msg, sizeof(c->eof_msg), "%s", msg != NULL ? msg : "");
    transport_close(t);
}


/* transport_close_cb */
static void on_client_close(transport_t *t)
{
    client_t *c = t->data;
    c->closes++;
}


/* transport_write_cb */
static void on_client_write(transport_t *t, int err, void *arg)
{
    client_t *c = t->data;

    if (c->closes > 0) {
        c->done_after_close++;
    }
    if (c->ndone < MAX_WRITES) {
        c->done_order[c->ndone] = (intptr_t)arg;
        c->done_err[c->ndone] = err;
    }
    c->ndone++;
    if (c->close_on_done) {
        transport_close(t);
    }
}


static void send_ping(client_t *c)
{
    int i = c->npings++;
    int len =
        snprintf(c->ping_text[i], sizeof(c->ping_text[i]), "ping %d\n", i);
    uv_buf_t buf = uv_buf_init(c->ping_text[i], (unsigned)len);

    c->sent += (size_t)len;
    assert_int_equal(
        transport_write(&c->t, &buf, 1, on_client_write, (void *)(intptr_t)i),
        0);
}


static const transport_callbacks_t client_callbacks = {
    .on_connect = on_client_connect,
    .on_read = on_client_read,
    .on_eof = on_client_eof,
    .on_close = on_client_close,
};


static int client_connect(client_t *c, uv_loop_t *loop, int port,
                          tls_context_t *tls, const char *server_name,
                          uint64_t timeout_ms)
{
    struct sockaddr_in addr;

    uv_ip4_addr("127.0.0.1", port, &addr);
    in_transport_connect = 1;
    int rv = transport_connect(&c->t, loop, (const struct sockaddr *)&addr, tls,
                               server_name, timeout_ms, &client_callbacks, c);
    in_transport_connect = 0;
    return rv;
}


static void client_free(client_t *c)
{
    buf_free(&c->received);
}


/* uv_timer_cb for the guard timer. */
static void on_guard(uv_timer_t *timer)
{
    *(int *)timer->data = 1;
}


/* Runs the loop until |*flag| is set; fails the test after WAIT_MS. */
static void run_until(uv_loop_t *loop, const int *flag)
{
    uv_timer_t guard;
    int expired = 0;

    uv_timer_init(loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, WAIT_MS, 0);
    while (*flag == 0 && !expired) {
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_false(expired);
}


static void loop_finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}


static tls_context_t *make_context(const char *ca, const char *cert,
                                   const char *key, bool verify,
                                   const char *alpn)
{
    tls_options_t opts = {
        .ca_file = ca,
        .cert_file = cert,
        .key_file = key,
        .verify = verify,
        .alpn = alpn,
    };
    tls_context_t *ctx = NULL;
    char err[256] = "";

    int rv = tls_context_new(&opts, &ctx, err, sizeof(err));
    if (rv != 0) {
        fail_msg("tls_context_new: %s", err);
    }
    return ctx;
}


/* Runs |c| against |s| to the end and stops the server. */
static void run_tls(client_t *c, tls_server_t *s, tls_context_t *ctx,
                    const char *server_name)
{
    uv_loop_t loop;

    uv_loop_init(&loop);
    tls_server_start(s);
    assert_int_equal(client_connect(c, &loop, s->port, ctx, server_name, 2000),
                     0);
    run_until(&loop, &c->closes);
    loop_finish(&loop);
    tls_server_stop(s);
    assert_int_equal(c->closes, 1);
    assert_int_equal(c->connect_in_call, 0);
}


/* ---- Cleartext ---- */

static void test_transport_clear_echo(void **state)
{
    uv_loop_t loop;
    echo_server_t es = {0};
    client_t c = {0};

    uv_loop_init(&loop);
    echo_server_start(&es, &loop);
    c.close_on_connect = 0;
    assert_int_equal(client_connect(&c, &loop, es.port, NULL, NULL, 1000), 0);
    run_until(&loop, &c.connects);
    assert_int_equal(c.connect_err, 0);
    assert_string_equal(c.t.alpn, "");

    uv_buf_t first[2] = {uv_buf_init("hello ", 6), uv_buf_init("world", 5)};
    uv_buf_t second = uv_buf_init("bye\n", 4);
    assert_int_equal(
        transport_write(&c.t, first, 2, on_client_write, (void *)1), 0);
    assert_int_equal(
        transport_write(&c.t, &second, 1, on_client_write, (void *)2), 0);
    run_until(&loop, &c.closes);

    assert_string_equal(c.received.data, "hello worldbye\n");
    assert_int_equal(c.ndone, 2);
    assert_int_equal(c.done_order[0], 1);
    assert_int_equal(c.done_order[1], 2);
    assert_int_equal(c.done_err[0], 0);
    assert_int_equal(c.done_err[1], 0);
    assert_int_equal(c.eofs, 1);
    assert_int_equal(c.eof_err, 0);
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.connect_in_call, 0);
    uv_close((uv_handle_t *)&es.listener, NULL);
    loop_finish(&loop);
    client_free(&c);
}


static void test_transport_clear_write_before_connect(void **state)
{
    uv_loop_t loop;
    echo_server_t es = {0};
    client_t c = {0};

    uv_loop_init(&loop);
    echo_server_start(&es, &loop);
    assert_int_equal(client_connect(&c, &loop, es.port, NULL, NULL, 1000), 0);
    uv_buf_t a = uv_buf_init("early ", 6);
    uv_buf_t b = uv_buf_init("bye\n", 4);
    assert_int_equal(transport_write(&c.t, &a, 1, on_client_write, (void *)1),
                     0);
    assert_int_equal(transport_write(&c.t, &b, 1, on_client_write, (void *)2),
                     0);
    assert_int_equal(transport_write_queue_size(&c.t), 10);
    run_until(&loop, &c.closes);

    assert_int_equal(c.connect_err, 0);
    assert_string_equal(c.received.data, "early bye\n");
    assert_int_equal(c.ndone, 2);
    assert_int_equal(c.done_order[0], 1);
    assert_int_equal(c.done_order[1], 2);
    assert_int_equal(c.done_err[1], 0);
    assert_int_equal(c.eof_err, 0);
    uv_close((uv_handle_t *)&es.listener, NULL);
    loop_finish(&loop);
    client_free(&c);
}


static void test_transport_refused(void **state)
{
    uv_loop_t loop;
    client_t c = {0};
    int port;
    char expected[128];

    /* A port that was just free: bound, then closed without listening. */
    int fd = silent_listener(1, &port);
    close(fd);
    uv_loop_init(&loop);
    assert_int_equal(client_connect(&c, &loop, port, NULL, NULL, 1000), 0);
    assert_int_equal(c.connects, 0);
    run_until(&loop, &c.closes);

    assert_int_equal(c.connects, 1);
    assert_int_equal(c.connect_in_call, 0);
    assert_int_equal(c.connect_err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d failed: connection refused", port);
    assert_string_equal(c.connect_msg, expected);
    assert_int_equal(c.eofs, 0);
    loop_finish(&loop);
    client_free(&c);
}


static void test_transport_connect_timeout(void **state)
{
    uv_loop_t loop;
    client_t c = {0};
    black_hole_t bh;
    char expected[128];

    if (black_hole_open(&bh) != 0) {
        black_hole_close(&bh);
        skip();
    }
    uv_loop_init(&loop);
    uint64_t start = uv_hrtime();
    assert_int_equal(client_connect(&c, &loop, bh.port, NULL, NULL, 200), 0);
    run_until(&loop, &c.closes);
    uint64_t elapsed_ms = (uv_hrtime() - start) / 1000000;

    assert_int_equal(c.connect_err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "connect to 127.0.0.1:%d timed out after 200 ms", bh.port);
    assert_string_equal(c.connect_msg, expected);
    assert_true(elapsed_ms >= 190);
    assert_true(elapsed_ms < 1500);
    loop_finish(&loop);
    black_hole_close(&bh);
    client_free(&c);
}


/* A server that completes TCP but never responds to the ClientHello: the
 * handshake shares the connect timeout. */
static void test_transport_handshake_timeout(void **state)
{
    uv_loop_t loop;
    client_t c = {0};
    int port;
    char expected[160];

    int fd = silent_listener(8, &port);
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, "h2");
    uv_loop_init(&loop);
    uint64_t start = uv_hrtime();
    assert_int_equal(client_connect(&c, &loop, port, ctx, "localhost", 200), 0);
    run_until(&loop, &c.closes);
    uint64_t elapsed_ms = (uv_hrtime() - start) / 1000000;

    assert_int_equal(c.connect_err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "TLS handshake with localhost (127.0.0.1:%d) timed out after "
             "200 ms",
             port);
    assert_string_equal(c.connect_msg, expected);
    assert_true(elapsed_ms >= 190);
    assert_true(elapsed_ms < 1500);
    loop_finish(&loop);
    close(fd);
    tls_context_free(ctx);
    client_free(&c);
}


/* Bytes that libuv could not hand to the kernel count, and a close fails
 * the unfinished write with TE_RESET before on_close. */
static void test_transport_queue_size_and_close(void **state)
{
    uv_loop_t loop;
    client_t c = {0};
    int port;
    const size_t size = 64 << 20;

    int fd = silent_listener(8, &port);
    char *big = calloc(1, size);
    uv_loop_init(&loop);
    assert_int_equal(client_connect(&c, &loop, port, NULL, NULL, 1000), 0);
    run_until(&loop, &c.connects);
    assert_int_equal(c.connect_err, 0);

    uv_buf_t buf = uv_buf_init(big, (unsigned)size);
    assert_int_equal(transport_write(&c.t, &buf, 1, on_client_write, (void *)7),
                     0);
    size_t queued = transport_write_queue_size(&c.t);
    assert_true(queued > 0);
    assert_true(queued <= size);
    transport_close(&c.t);
    transport_close(&c.t);
    assert_int_equal(transport_write(&c.t, &buf, 1, on_client_write, NULL),
                     TE_RESET);
    run_until(&loop, &c.closes);

    assert_int_equal(c.ndone, 1);
    assert_int_equal(c.done_order[0], 7);
    assert_int_equal(c.done_err[0], TE_RESET);
    assert_int_equal(c.done_after_close, 0);
    assert_int_equal(c.closes, 1);
    loop_finish(&loop);
    close(fd);
    free(big);
    client_free(&c);
}


/* transport_close before the connect finished: no on_connect, the queued
 * writes fail in order, on_close last. */
static void test_transport_close_while_connecting(void **state)
{
    uv_loop_t loop;
    echo_server_t es = {0};
    client_t c = {0};
    uv_buf_t buf = uv_buf_init("x", 1);

    uv_loop_init(&loop);
    echo_server_start(&es, &loop);
    assert_int_equal(client_connect(&c, &loop, es.port, NULL, NULL, 1000), 0);
    for (intptr_t i = 0; i < 3; i++) {
        assert_int_equal(
            transport_write(&c.t, &buf, 1, on_client_write, (void *)i), 0);
    }
    transport_close(&c.t);
    run_until(&loop, &c.closes);

    assert_int_equal(c.connects, 0);
    assert_int_equal(c.ndone, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c.done_order[i], i);
        assert_int_equal(c.done_err[i], TE_RESET);
    }
    assert_int_equal(c.done_after_close, 0);
    assert_int_equal(c.closes, 1);
    uv_close((uv_handle_t *)&es.listener, NULL);
    loop_finish(&loop);
    client_free(&c);
}


static void test_transport_close_in_callbacks(void **state)
{
    uv_loop_t loop;
    echo_server_t es = {0};

    uv_loop_init(&loop);
    echo_server_start(&es, &loop);

    /* In on_connect. */
    client_t a = {0};
    a.close_on_connect = 1;
    assert_int_equal(client_connect(&a, &loop, es.port, NULL, NULL, 1000), 0);
    run_until(&loop, &a.closes);
    assert_int_equal(a.connects, 1);
    assert_int_equal(a.connect_err, 0);
    assert_int_equal(a.reads, 0);
    assert_int_equal(a.eofs, 0);

    /* In on_read: no EOF follows although the server closes. */
    client_t b = {0};
    b.close_on_read = 1;
    b.pings = 1;
    assert_int_equal(client_connect(&b, &loop, es.port, NULL, NULL, 1000), 0);
    run_until(&loop, &b.closes);
    assert_int_equal(b.reads, 1);
    assert_int_equal(b.eofs, 0);
    assert_int_equal(b.closes, 1);

    /* In the first write callback, with two more writes in flight. */
    client_t d = {0};
    d.close_on_done = 1;
    assert_int_equal(client_connect(&d, &loop, es.port, NULL, NULL, 1000), 0);
    run_until(&loop, &d.connects);
    uv_buf_t buf = uv_buf_init("abc", 3);
    for (intptr_t i = 0; i < 3; i++) {
        assert_int_equal(
            transport_write(&d.t, &buf, 1, on_client_write, (void *)i), 0);
    }
    run_until(&loop, &d.closes);
    assert_int_equal(d.ndone, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d.done_order[i], i);
    }
    assert_int_equal(d.done_after_close, 0);
    assert_int_equal(d.closes, 1);

    uv_close((uv_handle_t *)&es.listener, NULL);
    loop_finish(&loop);
    client_free(&a);
    client_free(&b);
    client_free(&d);
}


/* ---- TLS ---- */

static void check_pings(const client_t *c, int n)
{
    char expected[MAX_PINGS * 16] = "";
    size_t len = 0;

    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(expected + len, sizeof(expected) - len,
                                "ping %d\n", i);
    }
    assert_non_null(c->received.data);
    assert_string_equal(c->received.data, expected);
    assert_int_equal(c->ndone, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(c->done_order[i], i);
        assert_int_equal(c->done_err[i], 0);
    }
}


static void test_transport_tls_alpn(void **state)
{
    static const char *const protocols[] = {"h2", "http/1.1"};

    for (int i = 0; i < 2; i++) {
        tls_server_t s = {.cert = cert_path("server.pem"),
                          .key = cert_path("server.key"),
                          .alpn = protocols[i]};
        client_t c = {.pings = 3};
        tls_context_t *ctx =
            make_context(cert_path("ca.pem"), NULL, NULL, true, protocols[i]);

        run_tls(&c, &s, ctx, "localhost");
        assert_int_equal(c.connect_err, 0);
        assert_string_equal(c.connect_msg, "");
        assert_string_equal(c.t.alpn, protocols[i]);
        assert_string_equal(s.sni, "localhost");
        check_pings(&c, 3);
        tls_context_free(ctx);
        client_free(&c);
    }
}


/* An IP address as the name: verified against the certificate's IP
 * entry, and not sent as SNI. With no name at all, the peer's address is
 * verified. */
static void test_transport_tls_ip_name(void **state)
{
    static const char *const names[] = {"127.0.0.1", NULL};

    for (int i = 0; i < 2; i++) {
        tls_server_t s = {.cert = cert_path("server.pem"),
                          .key = cert_path("server.key")};
        client_t c = {.pings = 1};
        tls_context_t *ctx =
            make_context(cert_path("ca.pem"), NULL, NULL, true, "http/1.1");

        run_tls(&c, &s, ctx, names[i]);
        assert_int_equal(c.connect_err, 0);
        assert_string_equal(s.sni, "");
        assert_string_equal(c.t.alpn, "");
        check_pings(&c, 1);
        tls_context_free(ctx);
        client_free(&c);
    }
}


static void test_transport_tls_writes_before_handshake(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .mode = SERVE_ECHO};
    client_t c = {0};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);
    uv_loop_t loop;

    uv_loop_init(&loop);
    tls_server_start(&s);
    assert_int_equal(client_connect(&c, &loop, s.port, ctx, "localhost", 2000),
                     0);
    /* These are ping 0 and ping 1 of the script, which then sends ping 2
     * on connect and closes once all three came back. */
    c.pings = 3;
    send_ping(&c);
    send_ping(&c);
    run_until(&loop, &c.closes);
    loop_finish(&loop);
    tls_server_stop(&s);

    assert_int_equal(c.connect_err, 0);
    check_pings(&c, 3);
    tls_context_free(ctx);
    client_free(&c);
}


static void expect_verify_failure(const char *cert, const char *name,
                                  const char *reason)
{
    tls_server_t s = {.cert = cert_path(cert), .key = cert_path("server.key")};
    client_t c = {.pings = 1};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, "h2");
    char expected[256];

    run_tls(&c, &s, ctx, name);
    assert_int_equal(c.connects, 1);
    assert_int_equal(c.connect_err, TE_CONNECT);
    snprintf(expected, sizeof(expected),
             "TLS certificate verification failed for %s: %s", name, reason);
    assert_string_equal(c.connect_msg, expected);
    assert_int_equal(c.reads, 0);
    /* The server saw the client's alert. */
    assert_int_equal(s.handshake_failures, 1);
    tls_context_free(ctx);
    client_free(&c);
}


static void test_transport_tls_wrong_name(void **state)
{
    expect_verify_failure("other.pem", "localhost", "hostname mismatch");
    expect_verify_failure("server.pem", "127.0.0.2", "IP address mismatch");
}


static void test_transport_tls_self_signed(void **state)
{
    expect_verify_failure("self.pem", "localhost", "self-signed certificate");
}


static void test_transport_tls_expired(void **state)
{
    expect_verify_failure("expired.pem", "localhost",
                          "certificate has expired");
}


static void test_transport_tls_verify_off(void **state)
{
    tls_server_t s = {.cert = cert_path("self.pem"),
                      .key = cert_path("server.key"),
                      .alpn = "h2"};
    client_t c = {.pings = 2};
    tls_context_t *ctx = make_context(NULL, NULL, NULL, false, "h2");

    run_tls(&c, &s, ctx, "other.test");
    assert_int_equal(c.connect_err, 0);
    assert_string_equal(c.t.alpn, "h2");
    check_pings(&c, 2);
    tls_context_free(ctx);
    client_free(&c);
}


static void test_transport_tls_no_h2(void **state)
{
    static const char *const server_alpn[] = {"http/1.1", NULL};

    for (int i = 0; i < 2; i++) {
        tls_server_t s = {.cert = cert_path("server.pem"),
                          .key = cert_path("server.key"),
                          .alpn = server_alpn[i]};
        client_t c = {.pings = 1};
        tls_context_t *ctx =
            make_context(cert_path("ca.pem"), NULL, NULL, true, "h2");

        run_tls(&c, &s, ctx, "localhost");
        assert_int_equal(c.connect_err, TE_CONNECT);
        assert_string_equal(c.connect_msg,
                            "server did not negotiate h2 via ALPN");
        assert_int_equal(c.reads, 0);
        tls_context_free(ctx);
        client_free(&c);
    }
}


static void test_transport_tls_client_cert(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .client_ca = cert_path("ca.pem")};
    client_t c = {.pings = 2};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), cert_path("client.pem"),
                     cert_path("client.key"), true, "http/1.1");

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, 0);
    assert_string_equal(s.client_cn, "transport test client");
    check_pings(&c, 2);
    tls_context_free(ctx);
    client_free(&c);
}


/* Without a client certificate, a TLS 1.2 server rejects the handshake,
 * so connecting fails. */
static void test_transport_tls_client_cert_missing_tls12(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .client_ca = cert_path("ca.pem"),
                      .max_version = TLS1_2_VERSION};
    client_t c = {.pings = 1};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, TE_CONNECT);
    assert_non_null(strstr(c.connect_msg, "TLS handshake with localhost"));
    assert_non_null(strstr(c.connect_msg, "alert handshake failure"));
    assert_int_equal(s.handshake_failures, 1);
    tls_context_free(ctx);
    client_free(&c);
}


/* A TLS 1.3 server checks the client certificate after the client's
 * handshake is done: the rejection comes as TE_RESET from on_eof. */
static void test_transport_tls_client_cert_missing_tls13(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .client_ca = cert_path("ca.pem")};
    /* No ping: bytes the server never reads would turn its close into a
     * reset that could overtake the alert. */
    client_t c = {0};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, 0);
    assert_int_equal(c.eofs, 1);
    assert_int_equal(c.eof_err, TE_RESET);
    assert_non_null(strstr(c.eof_msg, "certificate required"));
    assert_int_equal(s.handshake_failures, 1);
    tls_context_free(ctx);
    client_free(&c);
}


static void test_transport_tls_close_notify(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .mode = SERVE_CLOSE_NOTIFY};
    client_t c = {0};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, 0);
    assert_string_equal(c.received.data, "bye\n");
    assert_int_equal(c.eofs, 1);
    assert_int_equal(c.eof_err, 0);
    assert_string_equal(c.eof_msg, "");
    tls_context_free(ctx);
    client_free(&c);
}


/* The server requests a KeyUpdate before each reply; the client must
 * send its own and keep both directions working. */
static void test_transport_tls_key_update(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .mode = SERVE_KEY_UPDATE};
    client_t c = {.pings = 4};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, 0);
    check_pings(&c, 4);
    tls_context_free(ctx);
    client_free(&c);
}


/* TLS 1.2 renegotiation started by the server before each reply. The
 * client writes the next ping from inside the read callback, while its
 * new handshake waits for the server, so SSL_write wants to read first. */
static void test_transport_tls_renegotiation(void **state)
{
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key"),
                      .max_version = TLS1_2_VERSION,
                      .mode = SERVE_RENEGOTIATE};
    client_t c = {.pings = 4};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.connect_err, 0);
    check_pings(&c, 4);
    /* The first handshake and at least one renegotiation finished. */
    assert_true(s.handshakes_done >= 2);
    tls_context_free(ctx);
    client_free(&c);
}


static void test_transport_tls_close_in_callbacks(void **state)
{
    /* In the first read callback of a ping exchange. */
    tls_server_t s = {.cert = cert_path("server.pem"),
                      .key = cert_path("server.key")};
    client_t c = {.pings = 3, .close_on_read = 1};
    tls_context_t *ctx =
        make_context(cert_path("ca.pem"), NULL, NULL, true, NULL);

    run_tls(&c, &s, ctx, "localhost");
    assert_int_equal(c.reads, 1);
    assert_int_equal(c.eofs, 0);
    assert_int_equal(c.ndone, 1);
    client_free(&c);

    /* In on_connect. */
    tls_server_t s2 = {.cert = cert_path("server.pem"),
                       .key = cert_path("server.key")};
    client_t c2 = {.close_on_connect = 1};
    run_tls(&c2, &s2, ctx, "localhost");
    assert_int_equal(c2.connects, 1);
    assert_int_equal(c2.connect_err, 0);
    assert_int_equal(c2.reads, 0);
    client_free(&c2);

    /* In a write callback: the later writes still end exactly once. */
    tls_server_t s3 = {.cert = cert_path("server.pem"),
                       .key = cert_path("server.key")};
    client_t c3 = {.pings = 1, .close_on_done = 1};
    run_tls(&c3, &s3, ctx, "localhost");
    assert_int_equal(c3.ndone, 1);
    assert_int_equal(c3.done_after_close, 0);
    client_free(&c3);

    tls_context_free(ctx);
}


static void expect_context_error(const tls_options_t *opts,
                                 const char *expected)
{
    tls_context_t *ctx = (tls_context_t *)&ctx;
    char err[512] = "";

    assert_int_equal(tls_context_new(opts, &ctx, err, sizeof(err)), TE_INVALID);
    assert_null(ctx);
    assert_string_equal(err, expected);
}


static void test_tls_context_errors(void **state)
{
    char expected[512];
    char missing[128];

    snprintf(missing, sizeof(missing), "%s", cert_path("missing.pem"));
    tls_options_t opts = {.ca_file = missing, .verify = true};
    snprintf(expected, sizeof(expected),
             "cannot load CA file %s: No such file or directory", missing);
    expect_context_error(&opts, expected);

    char cert[128];
    char key[128];
    snprintf(cert, sizeof(cert), "%s", cert_path("client.pem"));
    snprintf(key, sizeof(key), "%s", cert_path("server.key"));
    opts = (tls_options_t){.cert_file = cert, .key_file = key};
    snprintf(expected, sizeof(expected),
             "client certificate %s and key %s do not match", cert, key);
    expect_context_error(&opts, expected);

    opts = (tls_options_t){.cert_file = cert};
    snprintf(expected, sizeof(expected),
             "client certificate %s given without a key file", cert);
    expect_context_error(&opts, expected);

    opts = (tls_options_t){.cert_file = cert, .key_file = missing};
    snprintf(expected, sizeof(expected),
             "cannot load client key %s: No such file or directory", missing);
    expect_context_error(&opts, expected);

    /* A key is not a certificate. */
    opts = (tls_options_t){.ca_file = key, .verify = true};
    snprintf(expected, sizeof(expected),
             "cannot load CA file %s: no certificate or crl found", key);
    expect_context_error(&opts, expected);

    tls_context_t *ctx = NULL;
    char err[256] = "";
    opts = (tls_options_t){.verify = true, .alpn = "h2"};
    assert_int_equal(tls_context_new(&opts, &ctx, err, sizeof(err)), 0);
    assert_non_null(ctx);
    tls_context_free(ctx);
}


int main(void)
{
    /* Peers close while the other side writes, as in any server. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_clear_echo),
        cmocka_unit_test(test_transport_clear_write_before_connect),
        cmocka_unit_test(test_transport_refused),
        cmocka_unit_test(test_transport_connect_timeout),
        cmocka_unit_test(test_transport_handshake_timeout),
        cmocka_unit_test(test_transport_queue_size_and_close),
        cmocka_unit_test(test_transport_close_while_connecting),
        cmocka_unit_test(test_transport_close_in_callbacks),
        cmocka_unit_test(test_transport_tls_alpn),
        cmocka_unit_test(test_transport_tls_ip_name),
        cmocka_unit_test(test_transport_tls_writes_before_handshake),
        cmocka_unit_test(test_transport_tls_wrong_name),
        cmocka_unit_test(test_transport_tls_self_signed),
        cmocka_unit_test(test_transport_tls_expired),
        cmocka_unit_test(test_transport_tls_verify_off),
        cmocka_unit_test(test_transport_tls_no_h2),
        cmocka_unit_test(test_transport_tls_client_cert),
        cmocka_unit_test(test_transport_tls_client_cert_missing_tls12),
        cmocka_unit_test(test_transport_tls_client_cert_missing_tls13),
        cmocka_unit_test(test_transport_tls_close_notify),
        cmocka_unit_test(test_transport_tls_key_update),
        cmocka_unit_test(test_transport_tls_renegotiation),
        cmocka_unit_test(test_transport_tls_close_in_callbacks),
        cmocka_unit_test(test_tls_context_errors),
    };
    return cmocka_run_group_tests(tests, make_certificates,
                                  remove_certificates);
}
