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
    const char *server_name; /* SNI and verified name, unless the connect
                                sets one */
    bool verify;             /* verify the chain and the host name */
    const char *alpn;        /* "h2" or "http/1.1" */
} tls_options_t;

/* An OpenSSL client context built from tls_options_t. Read-only after
 * creation, so one context may serve every worker. */
typedef struct tls_context_s tls_context_t;

/* Builds a client context: TLS 1.2 or later, the CA bundle, the client
 * certificate and key (both or neither), ALPN. Returns 0, or TE_INVALID
 * (TE_NOMEM when out of memory) with a message naming the file and the
 * reason in |err|. */
int tls_context_new(const tls_options_t *opts, tls_context_t **out, char *err,
                    size_t errlen);
void tls_context_free(tls_context_t *ctx);

typedef struct transport_s transport_t;

/* The connection is usable (TCP connected and, with TLS, the handshake
 * done and the certificate verified), or failed: |err| is 0 or
 * TE_CONNECT with the reason in |msg|, e.g. "TLS certificate
 * verification failed for orders.test: certificate has expired". */
typedef void (*transport_connect_cb)(transport_t *t, int err, const char *msg);

/* Plaintext arrived. |data| is valid during the call only. */
typedef void (*transport_read_cb)(transport_t *t, const char *data, size_t len);

/* The peer closed (|err| 0) or the connection failed (TE_RESET, with the
 * reason in |msg|). No read follows. With TLS, both a close_notify and a
 * TCP close without one count as a close, so the HTTP framing has to
 * detect truncation. A TLS 1.3 server checks the client certificate only
 * after the client's handshake is done, so its rejection arrives here as
 * TE_RESET naming the alert, not as a connect error. */
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

struct transport_tls_s;
struct transport_write_s;

/* Embedded in the owner's connection struct. Only |data| and |alpn| are
 * meant for the owner; the other fields are private. */
struct transport_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* connect and handshake timeout, deferred reports */
    uv_connect_t connect_req;
    const transport_callbacks_t *cb;
    void *data;                            /* owner's pointer */
    struct transport_tls_s *tls;           /* NULL for cleartext */
    struct transport_write_s *writes_head; /* writes not yet finished */
    struct transport_write_s *writes_tail;
    size_t queued_bytes; /* plaintext not yet handed to libuv or to TLS */
    uint64_t connect_timeout_ms;
    int connect_status; /* uv_tcp_connect() error, reported from the timer */
    int open_handles;   /* handles not yet closed: tcp and timer */
    bool tcp_connected; /* the TCP connect succeeded */
    bool connected;     /* on_connect(0) was called */
    bool failed;        /* on_connect(TE_CONNECT) was called */
    bool eof_reported;  /* on_eof was called */
    bool closing;       /* transport_close was called */
    char peer[64];      /* "ip:port" for messages */
    char alpn[16];      /* negotiated ALPN protocol, "" if none */
};

/* Starts connecting to |addr|. |tls| NULL means cleartext; otherwise
 * |server_name| (NULL: the context's server_name, else the IP address of
 * |addr|) is sent as SNI unless it is an IP address, and the certificate
 * is verified against it. The connect callback follows (never from inside
 * this call), after at most |connect_timeout_ms| for TCP and the TLS
 * handshake together (0: no limit). After a failed connect, the owner
 * calls transport_close. |cb| sets all four callbacks and must stay valid
 * until on_close. Returns 0, or TE_NOMEM / TE_INVALID with nothing
 * started: no callback follows and |t| must not be closed. */
int transport_connect(transport_t *t, uv_loop_t *loop,
                      const struct sockaddr *addr, tls_context_t *tls,
                      const char *server_name, uint64_t connect_timeout_ms,
                      const transport_callbacks_t *cb, void *data);

/* Writes plaintext. Writes go out in the order of the calls, and their
 * |done| callbacks run in that order; a write made before on_connect is
 * sent once connected. The memory |bufs| point to must stay valid until
 * |done| is called (the uv_buf_t array itself is copied). |done| may be
 * NULL and is never called from inside this function. Returns 0, or
 * TE_RESET when the transport is closing or failed (|done| is then not
 * called), or TE_NOMEM. */
int transport_write(transport_t *t, const uv_buf_t *bufs, unsigned nbufs,
                    transport_write_cb done, void *arg);

/* Writes as much of |bufs| as the socket takes at once, without a write
 * request and without a callback, when the transport is cleartext,
 * connected, not closing and has no write pending; else writes nothing.
 * Returns the number of bytes written; the caller passes the rest, if
 * any, to transport_write. A socket error also returns 0, and the
 * transport_write of the same bytes then reports it. It saves the
 * epoll_ctl that libuv 1.44 makes after each completed uv_write. */
size_t transport_try_write(transport_t *t, const uv_buf_t *bufs,
                           unsigned nbufs);

/* Closes the connection at once (no wait for a TLS close_notify). Write
 * callbacks still pending get TE_RESET, in order, then on_close follows,
 * once both libuv handles are closed. No other callback follows. Safe to
 * call more than once and from inside any transport callback. */
void transport_close(transport_t *t);

/* Bytes not yet written to the kernel: plaintext waiting for the
 * connection or for TLS, plus what libuv still has queued (ciphertext
 * with TLS). */
size_t transport_write_queue_size(const transport_t *t);

#endif
