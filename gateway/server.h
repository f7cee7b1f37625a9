/* The inbound side: libmicrohttpd callbacks, one request's life from its
 * headers to its access log line, and client-abort detection. */
#ifndef TUTTI_SERVER_H
#define TUTTI_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "worker.h"

/* MHD_AccessHandlerCallback; |cls| is the worker. */
enum MHD_Result server_on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls);

/* MHD_RequestCompletedCallback; |cls| is the worker. */
void server_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe);

/* MHD_UnescapeCallback that keeps the target as sent, so that the router
 * splits the path before decoding and "%2F" stays inside one segment. */
size_t server_keep_escaped(void *cls, struct MHD_Connection *conn, char *s);

/* MHD_OPTION_URI_LOG_CALLBACK; |cls| is the worker. Reads each request
 * target as sent, before libmicrohttpd splits its query, and notes on the
 * connection what server_on_request must refuse: a query byte that is not
 * visible ASCII, or more query arguments than the connection's buffer
 * holds. Returns NULL, the request's first context. */
void *server_on_uri(void *cls, const char *uri, struct MHD_Connection *conn);

/* Shutdown grace over: responds 503 to every request still running. */
void server_abort_all(worker_t *w);

/* Describes every request of |w| between arrival and completion, for the
 * admin listener's /debug/inflight: request_id, worker, method, path,
 * route (null when none matched), state, age_ms and calls (see
 * fanout_inflight_json). Worker thread only. Returns a new reference, or
 * NULL when out of memory. */
json_t *server_inflight_json(worker_t *w);

/* MHD_NotifyConnectionCallback; |cls| is the worker. Counts the inbound
 * connections open over every worker, and keeps in |socket_context| the
 * connection's client-abort watch, from MHD_CONNECTION_NOTIFY_STARTED to
 * MHD_CONNECTION_NOTIFY_CLOSED. */
void server_on_connection(void *cls, struct MHD_Connection *conn,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode toe);

/* Returns whether one more inbound connection fits in
 * max_connections_inbound, counting a refusal when it does not. Two
 * workers that accept at the same moment may both pass at the limit, so
 * the count can exceed it by at most the number of workers minus one. */
bool server_admit_connection(const worker_t *w);

/* Counts a new connection closed at once: at max_connections_inbound
 * (|at_fd_limit| false) or because the process ran out of descriptors. */
void server_count_refused(bool at_fd_limit);

/* Overload counters of the whole gateway, summed over every worker. Safe
 * from any thread: each value is read with one relaxed atomic load, so
 * the values may come from slightly different moments. */
typedef struct server_overload_stats_s {
    uint64_t requests_in_flight; /* requests that hold a max_in_flight slot */
    uint64_t requests_shed;      /* answered 503 at max_in_flight */
    uint64_t connections_open;   /* inbound connections MHD holds */
    uint64_t connections_refused_limit; /* closed at max_connections_inbound */
    uint64_t connections_refused_fd;    /* closed at the descriptor limit */
} server_overload_stats_t;

void server_get_overload_stats(server_overload_stats_t *out);

#endif
