/* Fuzz target: HTTP/1.1 responses read by the h1 client pool.
 *
 * The input is a byte stream from the server, cut into reads as
 * chunks.h describes. Bit 3 of byte 0 makes the first request a HEAD.
 * The pool runs unchanged over fake_transport.c. The stream goes to the
 * newest open connection, and a second call is submitted when the first
 * ends, so a kept-alive connection is reused. The server closes after the
 * last byte. Each call must end exactly once, and a successful one must
 * have a final status and a body within max_body. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "chunks.h"
#include "errors.h"
#include "fake_transport.h"
#include "h1.h"
#include "pool_fuzz.h"

#define MAX_BODY 4096
#define NCALLS 2

/* Checks what a pool promises about a call that ended. */
static void check_result(const upcall_t *call, const pool_fuzz_result_t *r,
                         int is_head)
{
    if (r->err != 0) {
        return;
    }
    if (call->status < 200 || call->status > 999) {
        abort();
    }
    if (call->body_out.len > MAX_BODY) {
        abort();
    }
    if ((is_head || call->status == 204 || call->status == 304) &&
        call->body_out.len != 0) {
        abort();
    }
}


/* Returns the newest transport that is not closing, after connecting
 * every transport the pool opened since the last step. */
static transport_t *current_transport(void)
{
    transport_t *current = NULL;

    for (size_t i = 0; i < fake_transport_count(); i++) {
        transport_t *t = fake_transport_get(i);
        if (t == NULL) {
            continue;
        }
        fake_transport_connect(t, 0);
        if (!fake_transport_closed(t)) {
            current = t;
        }
    }
    return current;
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uv_loop_t *loop = pool_fuzz_loop();
    chunks_t chunks;
    chunks_parse(&chunks, data, size);
    int first_head = size > 0 && (data[0] & 0x08) != 0;

    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 9, &addr);
    pool_options_t opts = {.max_connections = 2};
    h1_pool_t *pool = h1_pool_new(loop, (const struct sockaddr *)&addr, &opts);
    if (pool == NULL) {
        return 0;
    }

    upcall_t calls[NCALLS];
    pool_fuzz_result_t results[NCALLS];
    memset(calls, 0, sizeof(calls));
    memset(results, 0, sizeof(results));
    for (int i = 0; i < NCALLS; i++) {
        calls[i].method = i == 0 && first_head ? "HEAD" : "GET";
        calls[i].path = "/users/alice";
        calls[i].authority = "users.test";
        calls[i].max_body = MAX_BODY;
        calls[i].on_done = pool_fuzz_on_done;
        calls[i].data = &results[i];
    }

    int active = 0;
    int submitted = h1_pool_submit(pool, &calls[0]) == 0;
    const char *piece;
    size_t len;
    for (size_t i = 0; submitted && chunks_get(&chunks, i, &piece, &len); i++) {
        if (results[active].done && active + 1 < NCALLS) {
            active++;
            submitted = h1_pool_submit(pool, &calls[active]) == 0;
        }
        transport_t *t = current_transport();
        if (t != NULL) {
            fake_transport_read(t, piece, len);
        }
        uv_run(loop, UV_RUN_NOWAIT);
    }
    /* The server closes; a call that retries on a new connection gets
     * that connection closed too. */
    for (int round = 0; round < 4 * FAKE_TRANSPORT_MAX; round++) {
        if (!submitted || results[active].done) {
            break;
        }
        transport_t *t = current_transport();
        if (t != NULL) {
            fake_transport_eof(t);
        }
        uv_run(loop, UV_RUN_NOWAIT);
    }

    if (submitted && !results[active].done) {
        abort(); /* the server's close ends every call */
    }
    for (int i = 0; i <= active; i++) {
        check_result(&calls[i], &results[i], i == 0 && first_head);
    }
    h1_pool_close(pool);
    uv_run(loop, UV_RUN_DEFAULT);
    fake_transport_reset();
    for (int i = 0; i < NCALLS; i++) {
        buf_free(&calls[i].body_out);
    }
    return 0;
}
