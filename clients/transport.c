/* Client connections on libuv: TCP, optionally wrapped in TLS. OpenSSL
 * reads and writes two memory BIOs while libuv moves their ciphertext to
 * and from the socket, so no OpenSSL call ever blocks the loop.
 *
 * Writes keep their order through one list per transport. A cleartext
 * write is handed to uv_write as it is. A TLS write is encrypted into the
 * write BIO, whose contents go out as a "flush" (one uv_write of
 * ciphertext). Flushes are numbered, and a write is done when the flush
 * that carries its last byte completes. */
#include "transport.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "errors.h"
#include "sockaddr.h"

/* Size of the socket read buffer. One buffer per thread serves every
 * transport, because libuv calls the alloc callback, read(2) and the read
 * callback back to back on the loop thread, and TLS copies the
 * ciphertext into its read BIO at once. */
#define READ_SIZE 65536

/* Maximum plaintext in one TLS record, the most SSL_read returns. */
#define TLS_RECORD_SIZE 16384

/* Largest piece handed to one SSL_write, whose length is an int. */
#define TLS_WRITE_CHUNK (1 << 20)

struct tls_context_s {
    SSL_CTX *ctx;
    char *server_name; /* default for connections, or NULL */
    bool require_h2;   /* ALPN "h2" was requested: fail without it */
};

typedef enum {
    WRITE_QUEUED,    /* waiting for the connection, or for SSL_write */
    WRITE_SUBMITTED, /* cleartext: handed to uv_write */
    WRITE_ENCRYPTED, /* TLS: in the write BIO or in a flush */
} write_state_t;

typedef struct transport_write_s {
    struct transport_write_s *next;
    uv_write_t req; /* cleartext only */
    transport_t *t;
    transport_write_cb done;
    void *arg;
    uv_buf_t *bufs; /* |small| or an allocated copy of the caller's array */
    unsigned nbufs;
    unsigned buf_index; /* TLS: first buffer not fully encrypted */
    size_t buf_offset;  /* TLS: bytes of bufs[buf_index] encrypted */
    size_t remaining;   /* bytes still counted in t->queued_bytes */
    uint64_t flush_seq; /* TLS: the flush that carries the last byte */
    write_state_t state;
    uv_buf_t small[4];
} write_t;

/* Ciphertext on its way to the socket, the bytes after the struct. */
typedef struct flush_s {
    uv_write_t req;
    transport_t *t;
    uint64_t seq;
    char data[];
} flush_t;

struct transport_tls_s {
    SSL *ssl;
    BIO *rbio;          /* ciphertext from the server; owned by |ssl| */
    BIO *wbio;          /* ciphertext to the server; owned by |ssl| */
    uint64_t flush_seq; /* number of the last flush started */
    bool require_h2;
    bool handshake_done;
    bool fatal;          /* OpenSSL failed: the SSL object is unusable */
    char fatal_msg[256]; /* reason, reported by on_eof */
    char server_name[256];
};

static _Thread_local char read_buf[READ_SIZE];


/* Writes the first error of OpenSSL's queue for this thread as
 * ERR_error_string_n does, and clears the queue. */
static void ssl_error_string(char *out, size_t len)
{
    unsigned long e = ERR_peek_error();

    if (e == 0) {
        snprintf(out, len, "unknown OpenSSL error");
    } else {
        ERR_error_string_n(e, out, len);
    }
    ERR_clear_error();
}


/* Writes only the reason of the first queued error, e.g. "No such file or
 * directory", and clears the queue. ERR_reason_error_string() has no text
 * for system errors, so their reason is cut from the full string
 * "error:CODE:LIB:FUNC:REASON". */
static void ssl_error_reason(char *out, size_t len)
{
    unsigned long e = ERR_peek_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;

    if (reason != NULL) {
        snprintf(out, len, "%s", reason);
        ERR_clear_error();
        return;
    }
    char full[256];
    ssl_error_string(full, sizeof(full));
    const char *p = full;
    for (int colons = 0; colons < 4 && p != NULL; colons++) {
        p = strchr(p, ':');
        if (p != NULL) {
            p++;
        }
    }
    snprintf(out, len, "%s", p != NULL && *p != '\0' ? p : full);
}


static void context_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void context_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}


/* Loads the trust anchors: |ca_file|, or the system's store when it is
 * NULL and verification is on. */
static int context_load_ca(SSL_CTX *ctx, const tls_options_t *opts, char *err,
                           size_t errlen)
{
    char reason[256];

    if (opts->ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, opts->ca_file, NULL) != 1) {
            ssl_error_reason(reason, sizeof(reason));
            context_error(err, errlen, "cannot load CA file %s: %s",
                          opts->ca_file, reason);
            return TE_INVALID;
        }
        return 0;
    }
    if (opts->verify && SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ssl_error_reason(reason, sizeof(reason));
        context_error(err, errlen, "cannot load the system CA store: %s",
                      reason);
        return TE_INVALID;
    }
    return 0;
}


static int context_load_client_cert(SSL_CTX *ctx, const tls_options_t *opts,
                                    char *err, size_t errlen)
{
    char reason[256];

    if (opts->cert_file == NULL && opts->key_file == NULL) {
        return 0;
    }
    if (opts->key_file == NULL) {
        context_error(err, errlen,
                      "client certificate %s given without a key file",
                      opts->cert_file);
        return TE_INVALID;
    }
    if (opts->cert_file == NULL) {
        context_error(err, errlen,
                      "client key %s given without a certificate file",
                      opts->key_file);
        return TE_INVALID;
    }
    /* The key goes first: loading a certificate that does not match it
     * drops the key, and the check below reports the mismatch. The other
     * order would fail inside the key loading with a less clear error. */
    if (SSL_CTX_use_PrivateKey_file(ctx, opts->key_file, SSL_FILETYPE_PEM) !=
        1) {
        ssl_error_reason(reason, sizeof(reason));
        context_error(err, errlen, "cannot load client key %s: %s",
                      opts->key_file, reason);
        return TE_INVALID;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, opts->cert_file) != 1) {
        ssl_error_reason(reason, sizeof(reason));
        context_error(err, errlen, "cannot load client certificate %s: %s",
                      opts->cert_file, reason);
        return TE_INVALID;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        context_error(err, errlen,
                      "client certificate %s and key %s do not match",
                      opts->cert_file, opts->key_file);
        return TE_INVALID;
    }
    return 0;
}


/* Offers one ALPN protocol. SSL_CTX_set_alpn_protos() wants the wire
 * format: a length byte, then the name. */
static int context_set_alpn(SSL_CTX *ctx, const char *alpn, char *err,
                            size_t errlen)
{
    unsigned char wire[256];
    size_t len = strlen(alpn);

    if (len == 0 || len > 255) {
        context_error(err, errlen, "invalid ALPN protocol name \"%s\"", alpn);
        return TE_INVALID;
    }
    wire[0] = (unsigned char)len;
    memcpy(wire + 1, alpn, len);
    /* Unlike most OpenSSL functions, this one returns 0 on success. */
    if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)len + 1) != 0) {
        context_error(err, errlen, "cannot set ALPN protocol %s", alpn);
        return TE_NOMEM;
    }
    return 0;
}


int tls_context_new(const tls_options_t *opts, tls_context_t **out, char *err,
                    size_t errlen)
{
    char reason[256];
    int rv;

    *out = NULL;
    if (opts == NULL) {
        context_error(err, errlen, "no TLS options given");
        return TE_INVALID;
    }
    tls_context_t *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        context_error(err, errlen, "out of memory for a TLS context");
        return TE_NOMEM;
    }
    ERR_clear_error();
    ctx->ctx = SSL_CTX_new(TLS_client_method());
    if (ctx->ctx == NULL) {
        ssl_error_reason(reason, sizeof(reason));
        context_error(err, errlen, "cannot create a TLS context: %s", reason);
        rv = TE_NOMEM;
        goto fail;
    }
    if (SSL_CTX_set_min_proto_version(ctx->ctx, TLS1_2_VERSION) != 1) {
        ssl_error_reason(reason, sizeof(reason));
        context_error(err, errlen, "cannot require TLS 1.2: %s", reason);
        rv = TE_INVALID;
        goto fail;
    }
    SSL_CTX_set_verify(ctx->ctx,
                       opts->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    /* Partial writes let a write resume where it stopped when a
     * renegotiation makes SSL_write wait for the server. Idle pooled
     * connections need not keep their record buffers. */
    SSL_CTX_set_mode(ctx->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                   SSL_MODE_RELEASE_BUFFERS);

    rv = context_load_ca(ctx->ctx, opts, err, errlen);
    if (rv != 0) {
        goto fail;
    }
    rv = context_load_client_cert(ctx->ctx, opts, err, errlen);
    if (rv != 0) {
        goto fail;
    }
    if (opts->alpn != NULL && opts->alpn[0] != '\0') {
        rv = context_set_alpn(ctx->ctx, opts->alpn, err, errlen);
        if (rv != 0) {
            goto fail;
        }
        ctx->require_h2 = strcmp(opts->alpn, "h2") == 0;
    }
    if (opts->server_name != NULL && opts->server_name[0] != '\0') {
        ctx->server_name = strdup(opts->server_name);
        if (ctx->server_name == NULL) {
            context_error(err, errlen, "out of memory for a TLS context");
            rv = TE_NOMEM;
            goto fail;
        }
    }
    *out = ctx;
    return 0;

fail:
    ERR_clear_error();
    tls_context_free(ctx);
    return rv;
}


void tls_context_free(tls_context_t *ctx)
{
    if (ctx == NULL) {
        return;
    }
    SSL_CTX_free(ctx->ctx);
    free(ctx->server_name);
    free(ctx);
}


static void list_append(transport_t *t, write_t *w)
{
    w->next = NULL;
    if (t->writes_tail != NULL) {
        t->writes_tail->next = w;
    } else {
        t->writes_head = w;
    }
    t->writes_tail = w;
}


static void list_remove(transport_t *t, write_t *w)
{
    write_t *prev = NULL;

    for (write_t *p = t->writes_head; p != NULL; prev = p, p = p->next) {
        if (p != w) {
            continue;
        }
        if (prev != NULL) {
            prev->next = w->next;
        } else {
            t->writes_head = w->next;
        }
        if (t->writes_tail == w) {
            t->writes_tail = prev;
        }
        w->next = NULL;
        return;
    }
}


static void write_free(write_t *w)
{
    if (w->bufs != w->small) {
        free(w->bufs);
    }
    free(w);
}


/* Unlinks |w|, frees it and calls its callback with |err|, last, so the
 * callback may write or close. */
static void write_finish(transport_t *t, write_t *w, int err)
{
    transport_write_cb done = w->done;
    void *arg = w->arg;

    list_remove(t, w);
    t->queued_bytes -= w->remaining;
    write_free(w);
    if (done != NULL) {
        done(t, err, arg);
    }
}


/* Reports a failed connect once. The owner closes the transport then. */
static void fail_connect(transport_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail_connect(transport_t *t, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (t->failed || t->connected || t->closing) {
        return;
    }
    t->failed = true;
    uv_timer_stop(&t->timer);
    uv_read_stop((uv_stream_t *)&t->tcp);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    t->cb->on_connect(t, TE_CONNECT, msg);
}


/* Reports the end of the stream once; no read follows. */
static void report_eof(transport_t *t, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report_eof(transport_t *t, int err, const char *fmt, ...)
{
    char msg[512] = "";
    va_list ap;

    if (t->eof_reported || t->closing) {
        return;
    }
    t->eof_reported = true;
    uv_read_stop((uv_stream_t *)&t->tcp);
    if (fmt != NULL) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    t->cb->on_eof(t, err, err != 0 ? msg : NULL);
}


/* uv_write_cb for a cleartext write. libuv completes writes in order, and
 * with UV_ECANCELED when the handle closes. */
static void on_clear_write(uv_write_t *req, int status)
{
    write_t *w = req->data;

    write_finish(w->t, w, status == 0 ? 0 : TE_RESET);
}


static int clear_submit(transport_t *t, write_t *w)
{
    int rv = uv_write(&w->req, (uv_stream_t *)&t->tcp, w->bufs, w->nbufs,
                      on_clear_write);
    if (rv != 0) {
        return rv;
    }
    w->state = WRITE_SUBMITTED;
    t->queued_bytes -= w->remaining;
    w->remaining = 0;
    return 0;
}


/* Marks the TLS session as failed and stores the message, "|prefix| NAME
 * (IP:PORT) failed: OPENSSL ERROR", that on_eof reports later. */
static void tls_set_fatal(transport_t *t, const char *prefix)
{
    struct transport_tls_s *tls = t->tls;
    char reason[256];

    ssl_error_string(reason, sizeof(reason));
    tls->fatal = true;
    snprintf(tls->fatal_msg, sizeof(tls->fatal_msg), "%s %s (%s) failed: %s",
             prefix, tls->server_name, t->peer, reason);
}


/* uv_write_cb for a flush: finishes the writes whose last byte it
 * carried. */
static void on_tls_flush(uv_write_t *req, int status)
{
    flush_t *f = req->data;
    transport_t *t = f->t;
    uint64_t seq = f->seq;
    int err = status == 0 ? 0 : TE_RESET;

    free(f);
    for (;;) {
        write_t *w = t->writes_head;
        if (w == NULL || w->state != WRITE_ENCRYPTED || w->flush_seq > seq) {
            break;
        }
        write_finish(t, w, err);
    }
}


/* Sends what OpenSSL wrote to the write BIO. With |force|, an empty flush
 * still goes out, because a write that added no ciphertext (an empty
 * one) waits for the completion of this flush number. */
static int tls_flush(transport_t *t, bool force)
{
    struct transport_tls_s *tls = t->tls;
    size_t pending = BIO_ctrl_pending(tls->wbio);

    if ((pending == 0 && !force) || t->closing) {
        return 0;
    }
    flush_t *f = malloc(sizeof(*f) + pending);
    if (f == NULL) {
        tls->fatal = true;
        snprintf(tls->fatal_msg, sizeof(tls->fatal_msg),
                 "out of memory for TLS data to %s", t->peer);
        return TE_NOMEM;
    }
    size_t got = 0;
    while (got < pending) {
        size_t chunk = pending - got;
        if (chunk > INT_MAX) {
            chunk = INT_MAX;
        }
        int n = BIO_read(tls->wbio, f->data + got, (int)chunk);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
    }
    f->t = t;
    f->seq = ++tls->flush_seq;
    f->req.data = f;
    uv_buf_t buf = uv_buf_init(f->data, (unsigned)got);
    int rv = uv_write(&f->req, (uv_stream_t *)&t->tcp, &buf, 1, on_tls_flush);
    if (rv != 0) {
        free(f);
        tls->fatal = true;
        snprintf(tls->fatal_msg, sizeof(tls->fatal_msg),
                 "write to %s failed: %s", t->peer, uv_strerror(rv));
        return TE_RESET;
    }
    return 0;
}


/* Encrypts queued writes in order and sends the result. A write stops the
 * queue when SSL_write wants to read first (during a renegotiation); the
 * read path calls this again once data came. */
static int tls_encrypt(transport_t *t)
{
    struct transport_tls_s *tls = t->tls;
    bool finished_any = false;

    if (tls->fatal) {
        return TE_RESET;
    }
    for (write_t *w = t->writes_head; w != NULL; w = w->next) {
        if (w->state != WRITE_QUEUED) {
            continue;
        }
        while (w->buf_index < w->nbufs) {
            const uv_buf_t *b = &w->bufs[w->buf_index];
            if (w->buf_offset == b->len) {
                w->buf_index++;
                w->buf_offset = 0;
                continue;
            }
            size_t len = b->len - w->buf_offset;
            if (len > TLS_WRITE_CHUNK) {
                len = TLS_WRITE_CHUNK;
            }
            ERR_clear_error();
            int n = SSL_write(tls->ssl, b->base + w->buf_offset, (int)len);
            if (n > 0) {
                w->buf_offset += (size_t)n;
                w->remaining -= (size_t)n;
                t->queued_bytes -= (size_t)n;
                continue;
            }
            int e = SSL_get_error(tls->ssl, n);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                return tls_flush(t, finished_any);
            }
            tls_set_fatal(t, "TLS write to");
            return TE_RESET;
        }
        w->state = WRITE_ENCRYPTED;
        w->flush_seq = tls->flush_seq + 1;
        finished_any = true;
    }
    return tls_flush(t, finished_any);
}


/* Hands the writes made before the connection was ready to libuv or
 * TLS. */
static void start_queued_writes(transport_t *t)
{
    if (t->tls != NULL) {
        /* A failure leaves tls->fatal set for connect_done(). */
        tls_encrypt(t);
        return;
    }
    write_t *w = t->writes_head;
    while (w != NULL) {
        write_t *next = w->next;
        if (w->state == WRITE_QUEUED) {
            int rv = clear_submit(t, w);
            if (rv != 0) {
                /* Not reachable on a connected stream that is not closing;
                 * the write stays queued and gets TE_RESET on close. */
                break;
            }
        }
        w = next;
    }
}


static void on_timer(uv_timer_t *timer);


/* Ends connecting successfully: queued writes go first, then on_connect,
 * whose own writes follow them. */
static void connect_done(transport_t *t)
{
    uv_timer_stop(&t->timer);
    t->connected = true;
    start_queued_writes(t);
    if (t->tls != NULL && t->tls->fatal) {
        uv_timer_start(&t->timer, on_timer, 0, 0);
    }
    t->cb->on_connect(t, 0, NULL);
}


/* Reads decrypted data until the read BIO runs dry, and sends what
 * SSL_read wrote meanwhile (a KeyUpdate response, renegotiation records). */
static void tls_read(transport_t *t)
{
    struct transport_tls_s *tls = t->tls;
    char plain[TLS_RECORD_SIZE];

    for (;;) {
        if (t->closing || t->eof_reported || tls->fatal) {
            return;
        }
        ERR_clear_error();
        int n = SSL_read(tls->ssl, plain, sizeof(plain));
        if (n > 0) {
            t->cb->on_read(t, plain, (size_t)n);
            continue;
        }
        int e = SSL_get_error(tls->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify from the server. */
            tls_flush(t, false);
            report_eof(t, 0, NULL);
            return;
        }
        tls_set_fatal(t, "TLS connection to");
        /* Sends the alert OpenSSL wrote, if any. */
        tls_flush(t, false);
        report_eof(t, TE_RESET, "%s", tls->fatal_msg);
        return;
    }
    /* A renegotiation that blocked SSL_write may have finished. */
    if (tls_encrypt(t) != 0) {
        report_eof(t, TE_RESET, "%s", tls->fatal_msg);
    }
}


/* Ends the handshake: checks ALPN, then reports the connection. */
static void tls_handshake_done(transport_t *t)
{
    struct transport_tls_s *tls = t->tls;
    const unsigned char *proto = NULL;
    unsigned len = 0;

    SSL_get0_alpn_selected(tls->ssl, &proto, &len);
    if (proto != NULL && len > 0 && len < sizeof(t->alpn)) {
        memcpy(t->alpn, proto, len);
        t->alpn[len] = '\0';
    }
    if (tls->require_h2 && strcmp(t->alpn, "h2") != 0) {
        fail_connect(t, "server did not negotiate h2 via ALPN");
        return;
    }
    tls->handshake_done = true;
    connect_done(t);
    /* Application data may have come with the end of the handshake. */
    tls_read(t);
}


static void tls_handshake(transport_t *t)
{
    struct transport_tls_s *tls = t->tls;
    char reason[256] = "";

    ERR_clear_error();
    int rv = SSL_do_handshake(tls->ssl);
    int e = rv == 1 ? SSL_ERROR_NONE : SSL_get_error(tls->ssl, rv);
    bool failed =
        rv != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
    if (failed) {
        ssl_error_string(reason, sizeof(reason));
    }
    /* Sends handshake records, or the alert with the reason the client
     * gives up. */
    if (tls_flush(t, false) != 0 && !failed) {
        fail_connect(t, "TLS handshake with %s (%s) failed: %s",
                     tls->server_name, t->peer, tls->fatal_msg);
        return;
    }
    if (rv == 1) {
        tls_handshake_done(t);
        return;
    }
    if (!failed) {
        return;
    }
    tls->fatal = true;
    long verify = SSL_get_verify_result(tls->ssl);
    if ((SSL_get_verify_mode(tls->ssl) & SSL_VERIFY_PEER) != 0 &&
        verify != X509_V_OK) {
        fail_connect(t, "TLS certificate verification failed for %s: %s",
                     tls->server_name, X509_verify_cert_error_string(verify));
        return;
    }
    fail_connect(t, "TLS handshake with %s (%s) failed: %s", tls->server_name,
                 t->peer, reason);
}


/* uv_timer_cb: the connect timeout, a uv_tcp_connect() error to report,
 * or a TLS failure that happened inside transport_write. */
static void on_timer(uv_timer_t *timer)
{
    transport_t *t = timer->data;

    if (t->closing) {
        return;
    }
    if (t->connect_status != 0) {
        int status = t->connect_status;
        t->connect_status = 0;
        fail_connect(t, "connect to %s failed: %s", t->peer,
                     uv_strerror(status));
        return;
    }
    if (!t->connected) {
        if (t->tcp_connected && t->tls != NULL) {
            fail_connect(t,
                         "TLS handshake with %s (%s) timed out after %llu ms",
                         t->tls->server_name, t->peer,
                         (unsigned long long)t->connect_timeout_ms);
        } else {
            fail_connect(t, "connect to %s timed out after %llu ms", t->peer,
                         (unsigned long long)t->connect_timeout_ms);
        }
        return;
    }
    if (t->tls != NULL && t->tls->fatal) {
        report_eof(t, TE_RESET, "%s", t->tls->fatal_msg);
    }
}


/* uv_alloc_cb */
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    buf->base = read_buf;
    buf->len = sizeof(read_buf);
}


/* The socket reached EOF or failed (|status| < 0). */
static void on_stream_end(transport_t *t, ssize_t status)
{
    const char *reason = status == UV_EOF ? "connection closed by the server"
                                          : uv_strerror((int)status);

    if (!t->connected && t->tls != NULL) {
        fail_connect(t, "TLS handshake with %s (%s) failed: %s",
                     t->tls->server_name, t->peer, reason);
        return;
    }
    /* NOTE: with TLS, a TCP close without close_notify is an EOF too.
     * Content-Length and chunked framing still catch a truncated body,
     * but a cut close-delimited body goes unnoticed. */
    if (status == UV_EOF) {
        report_eof(t, 0, NULL);
    } else {
        report_eof(t, TE_RESET, "read from %s failed: %s", t->peer, reason);
    }
}


/* uv_read_cb */
static void on_tcp_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    transport_t *t = stream->data;

    if (t->closing || t->failed || t->eof_reported || nread == 0) {
        return;
    }
    if (nread < 0) {
        on_stream_end(t, nread);
        return;
    }
    if (t->tls == NULL) {
        t->cb->on_read(t, buf->base, (size_t)nread);
        return;
    }
    struct transport_tls_s *tls = t->tls;
    if (tls->fatal) {
        return;
    }
    if (BIO_write(tls->rbio, buf->base, (int)nread) != (int)nread) {
        tls_set_fatal(t, "TLS connection to");
        if (!t->connected) {
            fail_connect(t, "%s", tls->fatal_msg);
        } else {
            report_eof(t, TE_RESET, "%s", tls->fatal_msg);
        }
        return;
    }
    if (!tls->handshake_done) {
        tls_handshake(t);
    } else {
        tls_read(t);
    }
}


/* uv_connect_cb */
static void on_tcp_connect(uv_connect_t *req, int status)
{
    transport_t *t = req->data;

    /* After transport_close the status is UV_ECANCELED, and after a
     * timeout on_connect has reported the failure already. */
    if (t->closing || t->failed) {
        return;
    }
    if (status < 0) {
        fail_connect(t, "connect to %s failed: %s", t->peer,
                     uv_strerror(status));
        return;
    }
    t->tcp_connected = true;
    /* A failure only costs latency, so it is not fatal. */
    uv_tcp_nodelay(&t->tcp, 1);
    int rv = uv_read_start((uv_stream_t *)&t->tcp, on_alloc, on_tcp_read);
    if (rv != 0) {
        fail_connect(t, "connect to %s failed: %s", t->peer, uv_strerror(rv));
        return;
    }
    if (t->tls == NULL) {
        connect_done(t);
        return;
    }
    tls_handshake(t);
}


static bool is_ip_literal(const char *name)
{
    unsigned char addr[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, name, addr) == 1 ||
           inet_pton(AF_INET6, name, addr) == 1;
}


static void tls_free(struct transport_tls_s *tls)
{
    if (tls == NULL) {
        return;
    }
    SSL_free(tls->ssl); /* frees both BIOs */
    free(tls);
}


/* Creates the SSL object. The certificate must match |name|: a host name,
 * which is also sent as SNI, or an IP address, which RFC 6066 forbids in
 * SNI. */
static int tls_new(transport_t *t, tls_context_t *ctx, const char *name,
                   const struct sockaddr *addr)
{
    char ip[INET6_ADDRSTRLEN] = "";

    if (name == NULL || name[0] == '\0') {
        name = ctx->server_name;
    }
    if (name == NULL || name[0] == '\0') {
        const void *src =
            addr->sa_family == AF_INET
                ? (const void *)&((const struct sockaddr_in *)addr)->sin_addr
                : (const void *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
        inet_ntop(addr->sa_family, src, ip, sizeof(ip));
        name = ip;
    }
    struct transport_tls_s *tls = calloc(1, sizeof(*tls));
    if (tls == NULL) {
        return TE_NOMEM;
    }
    int rv = TE_INVALID;
    if (strlen(name) >= sizeof(tls->server_name)) {
        goto fail;
    }
    snprintf(tls->server_name, sizeof(tls->server_name), "%s", name);
    tls->require_h2 = ctx->require_h2;

    ERR_clear_error();
    rv = TE_NOMEM;
    tls->ssl = SSL_new(ctx->ctx);
    if (tls->ssl == NULL) {
        goto fail;
    }
    tls->rbio = BIO_new(BIO_s_mem());
    tls->wbio = BIO_new(BIO_s_mem());
    if (tls->rbio == NULL || tls->wbio == NULL) {
        BIO_free(tls->rbio);
        BIO_free(tls->wbio);
        goto fail;
    }
    SSL_set_bio(tls->ssl, tls->rbio, tls->wbio);
    SSL_set_connect_state(tls->ssl);

    rv = TE_INVALID;
    if (is_ip_literal(name)) {
        X509_VERIFY_PARAM *param = SSL_get0_param(tls->ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1) {
            goto fail;
        }
    } else {
        if (SSL_set_tlsext_host_name(tls->ssl, name) != 1) {
            goto fail;
        }
        SSL_set_hostflags(tls->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(tls->ssl, name) != 1) {
            goto fail;
        }
    }
    t->tls = tls;
    return 0;

fail:
    ERR_clear_error();
    tls_free(tls);
    return rv;
}


int transport_connect(transport_t *t, uv_loop_t *loop,
                      const struct sockaddr *addr, tls_context_t *tls,
                      const char *server_name, uint64_t connect_timeout_ms,
                      const transport_callbacks_t *cb, void *data)
{
    memset(t, 0, sizeof(*t));
    if (addr == NULL || cb == NULL || cb->on_connect == NULL ||
        cb->on_read == NULL || cb->on_eof == NULL || cb->on_close == NULL) {
        return TE_INVALID;
    }
    if (sockaddr_describe(addr, t->peer, sizeof(t->peer)) == 0) {
        return TE_INVALID;
    }
    t->cb = cb;
    t->data = data;
    t->connect_timeout_ms = connect_timeout_ms;
    if (tls != NULL) {
        int rv = tls_new(t, tls, server_name, addr);
        if (rv != 0) {
            return rv;
        }
    }
    /* uv_tcp_init() creates no socket yet, so it fails only on invalid
     * arguments. */
    int rv = uv_tcp_init(loop, &t->tcp);
    if (rv != 0) {
        tls_free(t->tls);
        t->tls = NULL;
        return TE_NOMEM;
    }
    uv_timer_init(loop, &t->timer);
    t->open_handles = 2;
    t->tcp.data = t;
    t->timer.data = t;
    t->connect_req.data = t;

    rv = uv_tcp_connect(&t->connect_req, &t->tcp, addr, on_tcp_connect);
    if (rv != 0) {
        /* Reported from the loop, never from inside this call. */
        t->connect_status = rv;
        uv_timer_start(&t->timer, on_timer, 0, 0);
    } else if (connect_timeout_ms > 0) {
        uv_timer_start(&t->timer, on_timer, connect_timeout_ms, 0);
    }
    return 0;
}


int transport_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs,
                    transport_write_cb done, void *arg)
{
    if (t->closing || t->failed || (t->tls != NULL && t->tls->fatal)) {
        return TE_RESET;
    }
    if (nbufs > 0 && bufs == NULL) {
        return TE_INVALID;
    }
    write_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return TE_NOMEM;
    }
    /* uv_write() wants at least one buffer, so an empty write has one. */
    unsigned n = nbufs > 0 ? nbufs : 1;
    w->bufs = w->small;
    if (n > sizeof(w->small) / sizeof(w->small[0])) {
        w->bufs = malloc(n * sizeof(*w->bufs));
        if (w->bufs == NULL) {
            free(w);
            return TE_NOMEM;
        }
    }
    if (nbufs == 0) {
        w->bufs[0] = uv_buf_init(NULL, 0);
    } else {
        memcpy(w->bufs, bufs, n * sizeof(*bufs));
    }
    w->nbufs = n;
    for (unsigned i = 0; i < n; i++) {
        w->remaining += w->bufs[i].len;
    }
    w->t = t;
    w->done = done;
    w->arg = arg;
    w->req.data = w;
    w->state = WRITE_QUEUED;
    list_append(t, w);
    t->queued_bytes += w->remaining;

    if (!t->connected) {
        return 0;
    }
    if (t->tls == NULL) {
        int rv = clear_submit(t, w);
        if (rv != 0) {
            list_remove(t, w);
            t->queued_bytes -= w->remaining;
            write_free(w);
            return TE_RESET;
        }
        return 0;
    }
    if (tls_encrypt(t) != 0) {
        /* |w| stays queued and gets TE_RESET on close; on_eof reports
         * the failure from the loop, not from inside this call. */
        uv_timer_start(&t->timer, on_timer, 0, 0);
    }
    return 0;
}


size_t transport_try_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs)
{
    if (t->tls != NULL || !t->connected || t->closing || t->failed ||
        t->writes_head != NULL || nbufs == 0) {
        return 0;
    }
    /* uv_try_write returns UV_EAGAIN while libuv still queues bytes. */
    int n = uv_try_write((uv_stream_t *)&t->tcp, bufs, nbufs);
    return n > 0 ? (size_t)n : 0;
}


/* uv_close_cb for both handles. Writes that never reached libuv fail
 * once the socket is gone, and on_close comes after both handles. */
static void on_handle_close(uv_handle_t *handle)
{
    transport_t *t = handle->data;

    if (handle == (uv_handle_t *)&t->tcp) {
        while (t->writes_head != NULL) {
            write_finish(t, t->writes_head, TE_RESET);
        }
    }
    if (--t->open_handles > 0) {
        return;
    }
    tls_free(t->tls);
    t->tls = NULL;
    t->cb->on_close(t);
}


void transport_close(transport_t *t)
{
    if (t->closing) {
        return;
    }
    t->closing = true;
    uv_close((uv_handle_t *)&t->tcp, on_handle_close);
    uv_close((uv_handle_t *)&t->timer, on_handle_close);
}


size_t transport_write_queue_size(const transport_t *t)
{
    return t->queued_bytes + t->tcp.write_queue_size;
}
