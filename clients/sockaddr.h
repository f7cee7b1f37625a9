/* Socket address helpers shared by the clients. */
#ifndef TUTTI_SOCKADDR_H
#define TUTTI_SOCKADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Writes |sa| as "ip:port", or "[ip]:port" for IPv6, to |out|. Returns
 * the size of the address structure (for copying it), or 0 when |sa| is
 * neither IPv4 nor IPv6. */
size_t sockaddr_describe(const struct sockaddr *sa, char *out, size_t len);

#endif
