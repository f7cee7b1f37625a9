/* A transport without a socket for the h1 and h2 fuzz targets. It
 * implements transport.h, so the clients run unchanged, and the target
 * plays the peer by calling the callbacks itself, as libuv would. */
#ifndef TUTTI_FAKE_TRANSPORT_H
#define TUTTI_FAKE_TRANSPORT_H

#include <stddef.h>

#include "transport.h"

/* Maximum number of transports one input can open; a connect beyond it
 * fails with TE_NOMEM. */
#define FAKE_TRANSPORT_MAX 8

/* Returns the |i|th transport opened since the last fake_transport_reset,
 * or NULL when there is none or it is closed (its owner may have freed
 * it). */
transport_t *fake_transport_get(size_t i);

/* Returns the number of transports opened since the last reset. */
size_t fake_transport_count(void);

/* Forgets the transports opened so far. Call it once every transport is
 * closed (on_close was called). */
void fake_transport_reset(void);

/* Completes the writes pending on |t|, in order, with success, as a peer
 * that reads everything would. A write callback may queue another write,
 * which is completed too. */
void fake_transport_complete_writes(transport_t *t);

/* Returns whether |t| was closed with transport_close. */
int fake_transport_closed(const transport_t *t);

/* Ends the connect of |t|: on_connect with |err| 0 (connected) or
 * TE_CONNECT. Nothing happens when |t| is closing. */
void fake_transport_connect(transport_t *t, int err);

/* Delivers |len| bytes from the peer to |t| (on_read), unless |t| is
 * closing or has reported EOF. */
void fake_transport_read(transport_t *t, const char *data, size_t len);

/* Reports that the peer closed (on_eof with 0), once, unless |t| is
 * closing. */
void fake_transport_eof(transport_t *t);

#endif
