/* A client connection on a libuv loop: TCP, optionally wrapped in TLS
 * (OpenSSL with memory BIOs, so the loop never blocks). The HTTP/1.1 and
 * HTTP/2 clients read and write plaintext through it and need not know
 * whether TLS is in use. All functions run on the owning loop's thread. */
#ifndef TUTTI_TRANSPORT_H
#define TUTTI_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* TLS settings of one service. */
typedef struct tls_options_s {
    const char *ca_file;     /* PEM CA bundle; NULL: the system's store */
    const char *cert_file;   /* PEM client certificate for mTLS, or NULL */
    const char *key_file;    /* its private key, or NULL */
    const char *server_name; /* SNI and verified host name */
    bool verify;             /* verify the chain and the host name */
    const char *alpn;        /* "h2" or "http/1.1" */
} tls_options_t;

/* An OpenSSL client context built from tls_options_t. Read-only after
 * creation, so one context may serve every worker. */
typedef struct tls_context_s tls_context_t;

/* Loads the CA bundle and the client certificate. On error returns
 * TE_INVALID with a message naming the file and the reason in |err|. */
int tls_context_new(const tls_options_t *opts, tls_context_t **out, char *err,
                    size_t errlen);
void tls_context_free(tls_context_t *ctx);

typedef struct transport_s transport_t;

/* The connection is usable (TCP connected and, with TLS, the handshake
 * done and the certificate verified), or failed: |err| is 0 or
 * TE_CONNECT with the reason in |msg|, e.g. "TLS certificate
 * verification failed: certificate has expired". */
typedef void (*transport_connect_cb)(transport_t *t, int err, const char *msg);

/* Plaintext arrived. |data| is valid during the call only. */
typedef void (*transport_read_cb)(transport_t *t, const char *data, size_t len);

/* The peer closed (|err| 0) or the connection failed (TE_RESET, with the
 * reason in |msg|). No read follows. */
typedef void (*transport_eof_cb)(transport_t *t, int err, const char *msg);

/* A write finished; |err| is 0 or TE_RESET. */
typedef void (*transport_write_cb)(transport_t *t, int err, void *arg);

/* The handle is closed; the owner may free the memory holding |t|. */
typedef void (*transport_close_cb)(transport_t *t);

typedef struct transport_callbacks_s {
    transport_connect_cb on_connect;
    transport_read_cb on_read;
    transport_eof_cb on_eof;
    transport_close_cb on_close;
} transport_callbacks_t;

/* Embedded in the owner's connection struct; fields are private. */
struct transport_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* connect (and handshake) timeout */
    uv_connect_t connect_req;
    const transport_callbacks_t *cb;
    void *data;      /* owner's pointer */
    void *ssl;       /* SSL *, NULL for cleartext */
    void *tls_state; /* private TLS buffers */
    int open_handles;
    bool connected;
    bool closing;
    bool reading;
    char alpn[16]; /* negotiated ALPN protocol, "" if none */
};

/* Starts connecting to |addr|. |tls| NULL means cleartext; otherwise
 * |server_name| is sent as SNI and verified. The connect callback follows
 * (never from inside this call), after at most |connect_timeout_ms| for
 * TCP and the TLS handshake together (0: no limit). Returns 0 or a TE_*
 * code. */
int transport_connect(transport_t *t, uv_loop_t *loop,
                      const struct sockaddr *addr, tls_context_t *tls,
                      const char *server_name, uint64_t connect_timeout_ms,
                      const transport_callbacks_t *cb, void *data);

/* Writes plaintext. The memory |bufs| point to must stay valid until
 * |done| is called (with TLS it is encrypted at once, but callers need not
 * rely on that). |done| may be NULL. Returns 0 or a TE_* code. */
int transport_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs,
                    transport_write_cb done, void *arg);

/* Closes the connection at once (no wait for a TLS close_notify); pending
 * write callbacks get TE_RESET, then on_close follows. Safe to call more
 * than once and from inside any transport callback. */
void transport_close(transport_t *t);

/* Number of bytes the kernel and TLS layer still have queued to send. */
size_t transport_write_queue_size(const transport_t *t);

#endif
