/* Parts shared by the fuzz targets that drive a client pool over
 * fake_transport.c (fuzz_h1.c and fuzz_h2.c): the libuv loop and the
 * record of how each call ended. */
#ifndef TUTTI_FUZZ_POOL_FUZZ_H
#define TUTTI_FUZZ_POOL_FUZZ_H

#include <uv.h>

#include "upcall.h"

/* Record of how a call ended. The call's data points to it. */
typedef struct pool_fuzz_result_s {
    int done; /* on_done calls */
    int err;  /* |err| of the last on_done */
} pool_fuzz_result_t;

/* Initialises, on the first call, the loop that every input of the target
 * runs on, and returns it. The loop is never closed. */
uv_loop_t *pool_fuzz_loop(void);

/* Records the end of a call whose data is a pool_fuzz_result_t, as the
 * call's on_done: counts the callback and stores |err|. Aborts on a second
 * on_done for the same call. */
void pool_fuzz_on_done(upcall_t *call, int err);

#endif
