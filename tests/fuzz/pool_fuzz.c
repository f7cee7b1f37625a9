/* The loop and the on_done callback shared by the pool fuzz targets. */
#include "pool_fuzz.h"

#include <stdlib.h>

static uv_loop_t loop;
static int loop_ready;


uv_loop_t *pool_fuzz_loop(void)
{
    if (!loop_ready) {
        uv_loop_init(&loop);
        loop_ready = 1;
    }
    return &loop;
}


void pool_fuzz_on_done(upcall_t *call, int err)
{
    pool_fuzz_result_t *r = call->data;

    r->done++;
    r->err = err;
    if (r->done > 1) {
        abort(); /* on_done must be called once */
    }
}
