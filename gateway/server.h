/* The inbound side: libmicrohttpd callbacks, one request's life from its
 * headers to its access log line, and client-abort detection. */
#ifndef TUTTI_SERVER_H
#define TUTTI_SERVER_H

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

/* Shutdown grace over: answers 503 to every request still running. */
void server_abort_all(worker_t *w);

#endif
