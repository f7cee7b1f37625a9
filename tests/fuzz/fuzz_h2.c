/* Fuzz target: frames from an HTTP/2 server read by the h2 client pool.
 *
 * The input is the server's byte stream (its SETTINGS first), cut into
 * reads as chunks.h describes. Bit 3 of byte 0 gives the request a body.
 * One call is submitted before the connection exists, as the gateway
 * does. The pool runs unchanged over fake_transport.c. Its writes
 * complete before each read, and zero-delay timers run after it. Other
 * connections it opens for retries fail to connect, and the server closes
 * after the last byte. The call must end exactly once, and a successful
 * one must have a final status and a body within max_body. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "buf.h"
#include "chunks.h"
#include "errors.h"
#include "fake_transport.h"
#include "h2.h"
#include "pool_fuzz.h"

#define MAX_BODY 4096

/* Connects the first transport, fails the connects of the others and
 * completes every pending write. */
static void settle_transports(void)
{
    for (size_t i = 0; i < fake_transport_count(); i++) {
        transport_t *t = fake_transport_get(i);
        if (t == NULL) {
            continue;
        }
        fake_transport_connect(t, i == 0 ? 0 : TE_CONNECT);
        fake_transport_complete_writes(t);
    }
    uv_run(pool_fuzz_loop(), UV_RUN_NOWAIT);
}


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uv_loop_t *loop = pool_fuzz_loop();
    chunks_t chunks;
    chunks_parse(&chunks, data, size);
    int with_body = size > 0 && (data[0] & 0x08) != 0;

    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 9, &addr);
    /* No connect, idle or PING timers: the target drives every event. */
    pool_options_t opts = {.max_connections = 1};
    h2_pool_t *pool = h2_pool_new(loop, (const struct sockaddr *)&addr, &opts);
    if (pool == NULL) {
        return 0;
    }

    static const upcall_header_t headers[] = {
        {"accept", "application/json"},
        {"x-request-id", "fuzz"},
    };
    upcall_t call;
    pool_fuzz_result_t result = {0};
    memset(&call, 0, sizeof(call));
    call.method = with_body ? "POST" : "GET";
    call.path = "/users/alice";
    call.authority = "users.test";
    call.headers = headers;
    call.nheaders = sizeof(headers) / sizeof(headers[0]);
    call.body = with_body ? "{\"user\":\"alice\"}" : NULL;
    call.body_len = with_body ? strlen(call.body) : 0;
    call.max_body = MAX_BODY;
    call.on_done = pool_fuzz_on_done;
    call.data = &result;

    if (h2_pool_submit(pool, &call) == 0) {
        settle_transports();
        const char *piece;
        size_t len;
        for (size_t i = 0; chunks_get(&chunks, i, &piece, &len); i++) {
            transport_t *t = fake_transport_get(0);
            if (t == NULL) {
                break;
            }
            fake_transport_read(t, piece, len);
            settle_transports();
        }
        transport_t *t = fake_transport_get(0);
        if (t != NULL) {
            fake_transport_eof(t);
        }
        /* Closes finish on the next loop iteration, and a stream that is
         * retried needs a few more to fail on the next connection. */
        for (int round = 0; round < 4 * FAKE_TRANSPORT_MAX; round++) {
            settle_transports();
            if (result.done) {
                break;
            }
        }
        if (result.done != 1) {
            abort(); /* a closed connection ends every call */
        }
        if (result.err == 0 &&
            (call.status < 200 || call.body_out.len > MAX_BODY)) {
            abort();
        }
    }

    h2_pool_close(pool);
    uv_run(loop, UV_RUN_DEFAULT);
    fake_transport_reset();
    buf_free(&call.body_out);
    return 0;
}
