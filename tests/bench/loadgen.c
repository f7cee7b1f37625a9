/* loadgen: an open-loop HTTP/1.1 load generator for the benchmark. It sends
 * GET requests at fixed scheduled times over a pool of keep-alive
 * connections (rate mode) or one request on each of N connections at once
 * (hold mode), and prints one JSON object with counts and latencies.
 *
 * Build:
 *   cc -O2 -std=c11 -D_GNU_SOURCE -o build/bench/loadgen \
 *      tests/bench/loadgen.c $(pkg-config --cflags --libs libuv) \
 *      -lhttp_parser -lm
 *
 * Usage:
 *   loadgen --url http://127.0.0.1:PORT/PATH --rate R --duration S
 *           [--connections C] [--timeout-ms T] [--max-in-flight N]
 *           [--samples FILE]
 *   loadgen --url http://127.0.0.1:PORT/PATH --hold N [--timeout-ms T]
 *           [--samples FILE]
 *
 * Rate mode schedules request i at t0 + i/R for every i with i/R < S. A
 * timerfd armed at the next scheduled time (CLOCK_MONOTONIC, absolute, ns)
 * wakes the loop through a uv_poll, and each wakeup sends every request
 * whose scheduled time has passed. A libuv timer would wake up to 2 ms late,
 * and that lateness would count in the measured latency. A due request goes to
 * an idle connection, or to a new one while fewer than C are open, or else
 * waits in a FIFO queue. Latency is the completion time minus the scheduled
 * time, so a stalled server shows up as growing latency and not as a lower
 * request rate (no coordinated omission).
 *
 * Every request ends in exactly one of: completed (any status), or the
 * errors connect, timeout, reset, parse and dropped. The timeout counts from
 * the scheduled time and covers the time spent in the queue, connecting and
 * waiting for the response. A request that times out on a connection closes
 * that connection. "dropped" counts requests that became due while
 * --max-in-flight requests were already queued or in flight.
 *
 * Hold mode opens N connections at t0 and sends one request on each as soon
 * as it is established. The connections stay open until every request has
 * completed or failed. Each request's latency and timeout count from the
 * moment its connect call was made, which is its scheduled time in the
 * samples file.
 *
 * Output keys: mode, scheduled, sent, completed, errors, status, latency_ms
 * (min, mean, p50, p90, p99, p99.9, max over completed requests, by nearest
 * rank, null when none completed), duration_s (t0 to the end of the last
 * request), rate_achieved and samples_file. In rate mode rate_achieved is the
 * sent requests per second over the send window, t0 to the last send plus
 * one interval, so a loadgen that keeps up reports R. In hold mode it is
 * completed requests divided by duration_s.
 *
 * --samples FILE writes one line per completed request: "scheduled_s done_s
 * status", both times in CLOCK_MONOTONIC seconds with 6 decimals.
 *
 * Exit status: 0 after a run (errors are in the JSON), 1 when the run cannot
 * start, 2 for an invalid command line. Only loopback targets (127.0.0.0/8,
 * localhost) are accepted. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>
#include <uv.h>

#define NS_PER_S INT64_C(1000000000)
#define NS_PER_MS INT64_C(1000000)

#define DEFAULT_CONNECTIONS 64
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_IN_FLIGHT 100000

/* Limits that keep a mistyped command line from exhausting memory: every
 * scheduled request may store a 24-byte sample. */
#define MAX_RATE 1000000.0
#define MAX_DURATION_S 3600.0
#define MAX_TOTAL_REQUESTS INT64_C(20000000)
#define MAX_CONNECTIONS 1000000
#define MAX_TIMEOUT_MS 3600000
#define MAX_REQUEST_SIZE 8192

/* The run ends by itself this long after the last request's deadline, in
 * case a request was not accounted for. */
#define SAFETY_MARGIN_MS 2000

/* One read buffer serves every connection, because libuv calls the read
 * callback right after each allocation on the same thread. */
#define READ_BUFFER_SIZE 65536

enum error_kind {
    ERROR_CONNECT,
    ERROR_TIMEOUT,
    ERROR_RESET,
    ERROR_PARSE,
    ERROR_DROPPED,
    ERROR_KIND_COUNT
};

static const char *const error_names[ERROR_KIND_COUNT] = {
    "connect", "timeout", "reset", "parse", "dropped"};

enum conn_state {
    CONN_FREE,       /* no socket, and the slot is on the free stack */
    CONN_CONNECTING, /* connect in progress, with a bound request */
    CONN_BUSY,       /* request sent or being sent, response pending */
    CONN_DRAINING,   /* response complete, own write still pending */
    CONN_IDLE,       /* keep-alive connection on the idle list */
    CONN_CLOSING     /* uv_close called, waiting for on_conn_close */
};

typedef struct conn_s {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    uv_timer_t timer; /* deadline of the bound request */
    http_parser parser;
    enum conn_state state;
    bool has_request; /* a request is bound (CONNECTING or BUSY) */
    bool writing;     /* write_req is in use */
    bool keep_alive;  /* the last response allows another request */
    int64_t scheduled_ns;
    int64_t deadline_ns;
    struct conn_s *idle_prev;
    struct conn_s *idle_next;
} conn_t;

typedef struct {
    int64_t scheduled_ns;
    int64_t done_ns;
    int status;
} sample_t;

typedef struct {
    /* command line */
    const char *url;
    double rate;
    double duration_s;
    long connections;
    long hold;
    long timeout_ms;
    long max_in_flight;
    const char *samples_path;

    /* target */
    struct sockaddr_in addr;
    char request[MAX_REQUEST_SIZE];
    size_t request_len;

    /* schedule */
    bool hold_mode;
    int64_t t0_ns;
    int64_t total;      /* requests to schedule */
    int64_t next_index; /* next request to schedule */
    int64_t timeout_ns;

    /* FIFO of scheduled times of requests waiting for a connection */
    int64_t *queue;
    size_t queue_cap;
    size_t queue_head;
    size_t queue_len;

    /* connection pool */
    conn_t *conns;
    size_t conn_count;
    conn_t **free_stack;
    size_t free_len;
    conn_t *idle_head;
    size_t bound; /* connections with a bound request */

    /* results */
    int64_t sent;
    int64_t completed;
    int64_t errors[ERROR_KIND_COUNT];
    int64_t status_counts[1000];
    sample_t *samples;
    int64_t last_send_ns;
    int64_t end_ns;
    bool finished;

    uv_loop_t *loop;
    int tick_fd;         /* timerfd armed at the next scheduled send */
    uv_poll_t tick_poll; /* watches tick_fd */
    uv_timer_t safety;
    http_parser_settings parser_settings;
    FILE *samples_file;
} loadgen_t;

static loadgen_t lg;
static char read_buffer[READ_BUFFER_SIZE];

static void dispatch(void);
static void finish_if_done(void);

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Converts a duration to a libuv timer timeout, rounded up so that the
 * timer does not fire before the instant. */
static uint64_t ns_to_timer_ms(int64_t ns)
{
    if (ns <= 0) {
        return 0;
    }
    return (uint64_t)((ns + NS_PER_MS - 1) / NS_PER_MS);
}

static int64_t scheduled_time(int64_t index)
{
    if (lg.hold_mode) {
        return lg.t0_ns;
    }
    return lg.t0_ns + (int64_t)((double)index * 1e9 / lg.rate);
}

/* ---- command line ---- */

static void print_usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen --url http://127.0.0.1:PORT/PATH --rate R "
            "--duration S [--connections C] [--timeout-ms T] "
            "[--max-in-flight N] [--samples FILE]\n"
            "       loadgen --url http://127.0.0.1:PORT/PATH --hold N "
            "[--timeout-ms T] [--samples FILE]\n"
            "  --rate R           requests per second\n"
            "  --duration S       seconds of scheduled requests\n"
            "  --connections C    keep-alive connection pool size (default "
            "%d)\n"
            "  --timeout-ms T     per-request timeout in ms from its scheduled "
            "time (default %d)\n"
            "  --max-in-flight N  queued plus in-flight requests before new "
            "ones are dropped (default %d)\n"
            "  --hold N           open N connections with one request each\n"
            "  --samples FILE     write \"scheduled_s done_s status\" per "
            "completed request\n",
            DEFAULT_CONNECTIONS, DEFAULT_TIMEOUT_MS, DEFAULT_MAX_IN_FLIGHT);
}

static void usage_error(const char *option, const char *message)
{
    fprintf(stderr, "loadgen: %s: %s\n", option, message);
    print_usage(stderr);
    exit(2);
}

/* Reports an invalid option value, quoting it, and exits with status 2. */
static void invalid_value(const char *option, const char *value,
                          const char *expected)
{
    char message[256];
    snprintf(message, sizeof(message), "invalid value '%.100s', %s", value,
             expected);
    usage_error(option, message);
}

static double parse_double(const char *option, const char *text, double min,
                           double max)
{
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !isfinite(value)) {
        invalid_value(option, text, "expected a number");
    }
    if (value < min || value > max) {
        char expected[128];
        snprintf(expected, sizeof(expected), "expected %g to %g", min, max);
        invalid_value(option, text, expected);
    }
    return value;
}

static long parse_long(const char *option, const char *text, long min, long max)
{
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0') {
        invalid_value(option, text, "expected an integer");
    }
    if (value < min || value > max) {
        char expected[128];
        snprintf(expected, sizeof(expected), "expected %ld to %ld", min, max);
        invalid_value(option, text, expected);
    }
    return value;
}

/* Parses the --url value into lg.addr and the request text. Only http://
 * URLs whose host is an IPv4 loopback address or "localhost" are accepted,
 * because the benchmark must not send traffic off the machine. */
static void parse_url(const char *url)
{
    struct http_parser_url parts;
    http_parser_url_init(&parts);
    if (http_parser_parse_url(url, strlen(url), 0, &parts) != 0) {
        usage_error("--url", "invalid URL");
    }
    if ((parts.field_set & (1 << UF_SCHEMA)) == 0 ||
        (parts.field_set & (1 << UF_HOST)) == 0) {
        usage_error("--url", "invalid URL, expected http://HOST[:PORT]/PATH");
    }
    const char *schema = url + parts.field_data[UF_SCHEMA].off;
    if (parts.field_data[UF_SCHEMA].len != 4 ||
        strncasecmp(schema, "http", 4) != 0) {
        usage_error("--url", "only http:// URLs are supported");
    }
    if ((parts.field_set & (1 << UF_USERINFO)) != 0) {
        usage_error("--url", "user information is not supported");
    }

    char host[64];
    size_t host_len = parts.field_data[UF_HOST].len;
    if (host_len >= sizeof(host)) {
        usage_error("--url", "host must be 127.x.x.x or localhost");
    }
    memcpy(host, url + parts.field_data[UF_HOST].off, host_len);
    host[host_len] = '\0';

    struct in_addr ip;
    if (strcasecmp(host, "localhost") == 0) {
        inet_pton(AF_INET, "127.0.0.1", &ip);
    } else if (inet_pton(AF_INET, host, &ip) != 1 ||
               (ntohl(ip.s_addr) >> 24) != 127) {
        usage_error("--url", "host must be 127.x.x.x or localhost");
    }

    uint16_t port = 80;
    if ((parts.field_set & (1 << UF_PORT)) != 0) {
        port = parts.port;
        if (port == 0) {
            usage_error("--url", "port must be between 1 and 65535");
        }
    }
    memset(&lg.addr, 0, sizeof(lg.addr));
    lg.addr.sin_family = AF_INET;
    lg.addr.sin_port = htons(port);
    lg.addr.sin_addr = ip;

    /* The request target runs from the path through the query, without the
     * fragment. */
    const char *target = "/";
    size_t target_len = 1;
    if ((parts.field_set & (1 << UF_PATH)) != 0) {
        target = url + parts.field_data[UF_PATH].off;
        target_len = parts.field_data[UF_PATH].len;
        if ((parts.field_set & (1 << UF_QUERY)) != 0) {
            target_len = parts.field_data[UF_QUERY].off +
                         parts.field_data[UF_QUERY].len -
                         parts.field_data[UF_PATH].off;
        }
    } else if ((parts.field_set & (1 << UF_QUERY)) != 0) {
        usage_error("--url", "a query needs a path, as in /path?query");
    }

    const char *authority = url + parts.field_data[UF_HOST].off;
    size_t authority_len = host_len;
    if ((parts.field_set & (1 << UF_PORT)) != 0) {
        authority_len = parts.field_data[UF_PORT].off +
                        parts.field_data[UF_PORT].len -
                        parts.field_data[UF_HOST].off;
    }

    int n = snprintf(lg.request, sizeof(lg.request),
                     "GET %.*s HTTP/1.1\r\n"
                     "Host: %.*s\r\n"
                     "User-Agent: tutti-loadgen\r\n"
                     "Accept: */*\r\n"
                     "\r\n",
                     (int)target_len, target, (int)authority_len, authority);
    if (n < 0 || (size_t)n >= sizeof(lg.request)) {
        usage_error("--url", "URL is too long");
    }
    lg.request_len = (size_t)n;
}

static void parse_args(int argc, char **argv)
{
    bool have_rate = false;
    bool have_duration = false;
    bool have_connections = false;
    bool have_max_in_flight = false;

    lg.connections = DEFAULT_CONNECTIONS;
    lg.timeout_ms = DEFAULT_TIMEOUT_MS;
    lg.max_in_flight = DEFAULT_MAX_IN_FLIGHT;

    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            print_usage(stdout);
            exit(0);
        }
        static const char *const known[] = {
            "--url",        "--rate",          "--duration", "--connections",
            "--timeout-ms", "--max-in-flight", "--hold",     "--samples",
        };
        bool is_known = false;
        for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
            is_known = is_known || strcmp(option, known[k]) == 0;
        }
        if (!is_known) {
            usage_error(option, "unknown option");
        }
        if (i + 1 >= argc) {
            usage_error(option, "missing value");
        }
        const char *value = argv[++i];
        if (strcmp(option, "--url") == 0) {
            lg.url = value;
        } else if (strcmp(option, "--rate") == 0) {
            lg.rate = parse_double(option, value, 0.001, MAX_RATE);
            have_rate = true;
        } else if (strcmp(option, "--duration") == 0) {
            lg.duration_s = parse_double(option, value, 0.001, MAX_DURATION_S);
            have_duration = true;
        } else if (strcmp(option, "--connections") == 0) {
            lg.connections = parse_long(option, value, 1, MAX_CONNECTIONS);
            have_connections = true;
        } else if (strcmp(option, "--timeout-ms") == 0) {
            lg.timeout_ms = parse_long(option, value, 1, MAX_TIMEOUT_MS);
        } else if (strcmp(option, "--max-in-flight") == 0) {
            lg.max_in_flight = parse_long(option, value, 1, LONG_MAX);
            have_max_in_flight = true;
        } else if (strcmp(option, "--hold") == 0) {
            lg.hold = parse_long(option, value, 1, MAX_CONNECTIONS);
        } else if (strcmp(option, "--samples") == 0) {
            lg.samples_path = value;
        } else {
            usage_error(option, "unknown option");
        }
    }

    if (lg.url == NULL) {
        usage_error("--url", "missing, and it is required");
    }
    parse_url(lg.url);

    if (lg.hold > 0) {
        if (have_rate) {
            usage_error("--rate", "cannot be combined with --hold");
        }
        if (have_duration) {
            usage_error("--duration", "cannot be combined with --hold");
        }
        if (have_connections) {
            usage_error("--connections", "cannot be combined with --hold");
        }
        if (have_max_in_flight) {
            usage_error("--max-in-flight", "cannot be combined with --hold");
        }
        lg.hold_mode = true;
        lg.connections = lg.hold;
        lg.max_in_flight = lg.hold;
        lg.total = lg.hold;
        return;
    }

    if (!have_rate) {
        usage_error("--rate",
                    "missing, so give --rate and --duration, or --hold");
    }
    if (!have_duration) {
        usage_error("--duration", "missing, and it is required with --rate");
    }
    /* Request i is sent at i/R for every i with i/R < S. The small epsilon
     * keeps R * S = 1000 from becoming 1001 through rounding. */
    double total = ceil(lg.rate * lg.duration_s - 1e-9);
    if (total < 1) {
        total = 1;
    }
    if (total > (double)MAX_TOTAL_REQUESTS) {
        char message[128];
        snprintf(message, sizeof(message),
                 "rate times duration must be at most %" PRId64 " requests",
                 MAX_TOTAL_REQUESTS);
        usage_error("--duration", message);
    }
    lg.total = (int64_t)total;
}

/* Raises the soft limit on open files to the hard limit, because hold mode
 * opens one socket per connection. */
static void raise_nofile_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return;
    }
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
            fprintf(stderr, "loadgen: setrlimit(RLIMIT_NOFILE) failed\n");
            return;
        }
    }
    if (limit.rlim_cur != RLIM_INFINITY &&
        limit.rlim_cur < (rlim_t)lg.connections + 32) {
        fprintf(stderr,
                "loadgen: the open file limit %llu is below %ld connections; "
                "the connections beyond it count as connect errors\n",
                (unsigned long long)limit.rlim_cur, lg.connections);
    }
}

/* ---- request queue ---- */

static void queue_push(int64_t scheduled_ns)
{
    size_t tail = (lg.queue_head + lg.queue_len) % lg.queue_cap;
    lg.queue[tail] = scheduled_ns;
    lg.queue_len++;
}

static int64_t queue_pop(void)
{
    int64_t scheduled_ns = lg.queue[lg.queue_head];
    lg.queue_head = (lg.queue_head + 1) % lg.queue_cap;
    lg.queue_len--;
    return scheduled_ns;
}

/* Counts queued requests whose deadline has passed as timeouts. The queue is
 * ordered by scheduled time, so expired requests are at its head. */
static void expire_queue(int64_t now)
{
    while (lg.queue_len > 0 && lg.queue[lg.queue_head] + lg.timeout_ns <= now) {
        queue_pop();
        lg.errors[ERROR_TIMEOUT]++;
    }
}

/* ---- connection pool ---- */

static void idle_push(conn_t *conn)
{
    conn->state = CONN_IDLE;
    conn->idle_prev = NULL;
    conn->idle_next = lg.idle_head;
    if (lg.idle_head != NULL) {
        lg.idle_head->idle_prev = conn;
    }
    lg.idle_head = conn;
}

static void idle_remove(conn_t *conn)
{
    if (conn->idle_prev != NULL) {
        conn->idle_prev->idle_next = conn->idle_next;
    } else {
        lg.idle_head = conn->idle_next;
    }
    if (conn->idle_next != NULL) {
        conn->idle_next->idle_prev = conn->idle_prev;
    }
    conn->idle_prev = NULL;
    conn->idle_next = NULL;
}

static conn_t *idle_pop(void)
{
    conn_t *conn = lg.idle_head;
    if (conn != NULL) {
        idle_remove(conn);
    }
    return conn;
}

/* Unbinds the connection's request, if any. */
static void release_request(conn_t *conn)
{
    if (conn->has_request) {
        conn->has_request = false;
        lg.bound--;
        uv_timer_stop(&conn->timer);
    }
}

/* Called by libuv once the TCP handle is closed (uv_close_cb). */
static void on_conn_close(uv_handle_t *handle)
{
    conn_t *conn = handle->data;
    conn->state = CONN_FREE;
    lg.free_stack[lg.free_len++] = conn;
    if (!lg.finished) {
        dispatch();
        finish_if_done();
    }
}

static void conn_close(conn_t *conn)
{
    if (conn->state == CONN_CLOSING || conn->state == CONN_FREE) {
        return;
    }
    if (conn->state == CONN_IDLE) {
        idle_remove(conn);
    }
    release_request(conn);
    conn->state = CONN_CLOSING;
    uv_close((uv_handle_t *)&conn->tcp, on_conn_close);
}

/* Counts the bound request as failed with |kind| and closes the
 * connection. A connection without a bound request is closed silently. */
static void conn_fail(conn_t *conn, enum error_kind kind)
{
    if (conn->has_request) {
        lg.errors[kind]++;
    }
    conn_close(conn);
}

static void bind_request(conn_t *conn, int64_t scheduled_ns)
{
    conn->has_request = true;
    conn->scheduled_ns = scheduled_ns;
    conn->deadline_ns = scheduled_ns + lg.timeout_ns;
    lg.bound++;
}

/* Called by libuv when the bound request's deadline timer fires
 * (uv_timer_cb). libuv's loop time is cached in whole milliseconds, so the
 * timer may fire early, and then it is started again for the rest. */
static void on_request_timeout(uv_timer_t *timer)
{
    conn_t *conn = timer->data;
    if (!conn->has_request) {
        return;
    }
    int64_t remaining = conn->deadline_ns - now_ns();
    if (remaining > 0) {
        uv_timer_start(&conn->timer, on_request_timeout,
                       ns_to_timer_ms(remaining), 0);
        return;
    }
    conn_fail(conn, ERROR_TIMEOUT);
}

static void start_deadline_timer(conn_t *conn)
{
    int64_t remaining = conn->deadline_ns - now_ns();
    uv_timer_start(&conn->timer, on_request_timeout, ns_to_timer_ms(remaining),
                   0);
}

/* Called by libuv when the fallback write finishes (uv_write_cb). */
static void on_write(uv_write_t *req, int status)
{
    conn_t *conn = req->data;
    conn->writing = false;
    if (status == UV_ECANCELED || conn->state == CONN_CLOSING) {
        return;
    }
    if (status < 0) {
        conn_fail(conn, ERROR_RESET);
        return;
    }
    if (conn->state == CONN_DRAINING) {
        idle_push(conn);
        dispatch();
    }
}

/* Writes the request on an established connection. Most writes complete in
 * uv_try_write, and the rest of a partial write goes through uv_write. */
static void send_request(conn_t *conn)
{
    conn->state = CONN_BUSY;
    http_parser_init(&conn->parser, HTTP_RESPONSE);
    conn->parser.data = conn;
    lg.sent++;
    lg.last_send_ns = now_ns();

    uv_buf_t buf = uv_buf_init(lg.request, (unsigned int)lg.request_len);
    int written = uv_try_write((uv_stream_t *)&conn->tcp, &buf, 1);
    if (written == (int)lg.request_len) {
        return;
    }
    if (written < 0 && written != UV_EAGAIN) {
        conn_fail(conn, ERROR_RESET);
        return;
    }
    if (written > 0) {
        buf = uv_buf_init(lg.request + written,
                          (unsigned int)(lg.request_len - (size_t)written));
    }
    conn->writing = true;
    int rc = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, &buf, 1,
                      on_write);
    if (rc != 0) {
        conn->writing = false;
        conn_fail(conn, ERROR_RESET);
    }
}

/* Called by libuv before each read (uv_alloc_cb). */
static void on_alloc(uv_handle_t *handle, size_t suggested_size, uv_buf_t *buf)
{
    buf->base = read_buffer;
    buf->len = sizeof(read_buffer);
}

/* Called by http_parser at the end of each response (http_cb). */
static int on_message_complete(http_parser *parser)
{
    conn_t *conn = parser->data;
    int status = (int)parser->status_code;
    if (status >= 100 && status < 200 && status != 101) {
        /* An interim (1xx) response. The final one follows on the same
         * parser. */
        return 0;
    }
    if (!conn->has_request) {
        return 1;
    }

    int64_t done = now_ns();
    conn->keep_alive = http_should_keep_alive(parser) != 0;
    release_request(conn);
    /* Stop here: bytes after the response were not requested. */
    http_parser_pause(parser, 1);

    if (done > conn->deadline_ns) {
        /* The deadline timer has 1 ms resolution and may not have fired
         * yet, so a response after the deadline is counted here. */
        lg.errors[ERROR_TIMEOUT]++;
        return 0;
    }
    sample_t *sample = &lg.samples[lg.completed];
    sample->scheduled_ns = conn->scheduled_ns;
    sample->done_ns = done;
    sample->status = status;
    lg.completed++;
    if (status >= 0 && status < 1000) {
        lg.status_counts[status]++;
    }
    return 0;
}

/* Makes the connection available again after a complete response, or closes
 * it when the server asked for that or sent more than one response. */
static void reuse_or_close(conn_t *conn, bool extra_bytes)
{
    if (!conn->keep_alive || extra_bytes) {
        conn_close(conn);
        return;
    }
    if (conn->writing) {
        conn->state = CONN_DRAINING;
        return;
    }
    idle_push(conn);
}

/* Called by libuv with received bytes or a read error (uv_read_cb). */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *conn = stream->data;
    if (nread == 0) {
        return;
    }
    if (conn->state != CONN_BUSY) {
        /* Bytes or EOF on a connection with no request in flight: a server
         * closing an idle keep-alive connection, or one that sends data
         * that was not requested. Neither is counted. */
        conn_close(conn);
        dispatch();
        return;
    }

    if (nread < 0) {
        if (nread == UV_EOF) {
            /* A response delimited by the end of the connection completes
             * here. */
            http_parser_execute(&conn->parser, &lg.parser_settings, NULL, 0);
        }
        if (!conn->has_request) {
            conn_close(conn);
        } else {
            conn_fail(conn, ERROR_RESET);
        }
        dispatch();
        return;
    }

    size_t parsed = http_parser_execute(&conn->parser, &lg.parser_settings,
                                        buf->base, (size_t)nread);
    enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);
    if (err == HPE_PAUSED) {
        http_parser_pause(&conn->parser, 0);
        reuse_or_close(conn, parsed < (size_t)nread);
    } else if (err != HPE_OK) {
        conn_fail(conn, ERROR_PARSE);
    }
    dispatch();
    finish_if_done();
}

/* Called by libuv when the TCP handshake finishes (uv_connect_cb). */
static void on_connect(uv_connect_t *req, int status)
{
    conn_t *conn = req->data;
    if (status == UV_ECANCELED || conn->state != CONN_CONNECTING) {
        return;
    }
    if (status < 0) {
        conn_fail(conn, ERROR_CONNECT);
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_fail(conn, ERROR_CONNECT);
        return;
    }
    send_request(conn);
}

/* Opens a new connection on a free slot for a request that is due. */
static void open_connection(conn_t *conn, int64_t scheduled_ns)
{
    bind_request(conn, scheduled_ns);
    int rc = uv_tcp_init(lg.loop, &conn->tcp);
    if (rc != 0) {
        release_request(conn);
        lg.errors[ERROR_CONNECT]++;
        lg.free_stack[lg.free_len++] = conn;
        return;
    }
    conn->tcp.data = conn;
    conn->state = CONN_CONNECTING;
    conn->writing = false;
    conn->keep_alive = false;
    start_deadline_timer(conn);
    rc = uv_tcp_connect(&conn->connect_req, &conn->tcp,
                        (const struct sockaddr *)&lg.addr, on_connect);
    if (rc != 0) {
        conn_fail(conn, ERROR_CONNECT);
        return;
    }
    uv_tcp_nodelay(&conn->tcp, 1);
}

/* Hands queued requests to idle connections, then to new connections while
 * fewer than the pool size are open. */
static void dispatch(void)
{
    if (lg.finished) {
        return;
    }
    expire_queue(now_ns());
    while (lg.queue_len > 0) {
        conn_t *conn = idle_pop();
        if (conn != NULL) {
            int64_t scheduled_ns = queue_pop();
            bind_request(conn, scheduled_ns);
            start_deadline_timer(conn);
            send_request(conn);
            continue;
        }
        if (lg.free_len == 0) {
            break;
        }
        conn = lg.free_stack[--lg.free_len];
        int64_t scheduled_ns = queue_pop();
        if (lg.hold_mode) {
            /* Measure each connection from its own connect call, so that
             * the time spent starting the other connects is not counted. */
            scheduled_ns = now_ns();
        }
        open_connection(conn, scheduled_ns);
    }
}

/* ---- schedule and end ---- */

static void finish(void)
{
    if (lg.finished) {
        return;
    }
    lg.finished = true;
    lg.end_ns = now_ns();
    uv_stop(lg.loop);
}

static void finish_if_done(void)
{
    if (lg.finished || lg.next_index < lg.total || lg.queue_len > 0 ||
        lg.bound > 0) {
        return;
    }
    finish();
}

/* Arms the scheduler's timerfd to expire at |at_ns| (CLOCK_MONOTONIC). */
static void arm_tick(int64_t at_ns)
{
    struct itimerspec its = {0};
    /* An all-zero value would disarm; any time in the past fires at once. */
    if (at_ns <= 0) {
        at_ns = 1;
    }
    its.it_value.tv_sec = (time_t)(at_ns / NS_PER_S);
    its.it_value.tv_nsec = (long)(at_ns % NS_PER_S);
    if (timerfd_settime(lg.tick_fd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
        fprintf(stderr, "loadgen: timerfd_settime: %s\n",
                uv_strerror(uv_translate_sys_error(errno)));
        exit(1);
    }
}

/* Queues every request whose scheduled time has passed and sends what the
 * pool allows, then arms the timerfd for the next scheduled time. */
static void send_due(void)
{
    int64_t now = now_ns();
    while (lg.next_index < lg.total && scheduled_time(lg.next_index) <= now) {
        int64_t outstanding = (int64_t)(lg.queue_len + lg.bound);
        if (outstanding >= lg.max_in_flight) {
            lg.errors[ERROR_DROPPED]++;
        } else {
            queue_push(scheduled_time(lg.next_index));
        }
        lg.next_index++;
    }
    dispatch();
    finish_if_done();
    if (lg.finished || lg.next_index >= lg.total) {
        /* Nothing left to schedule: the loop lives on the requests. */
        uv_poll_stop(&lg.tick_poll);
        return;
    }
    arm_tick(scheduled_time(lg.next_index));
}

/* Called by libuv when the timerfd expired (uv_poll_cb). */
static void on_tick(uv_poll_t *poll, int status, int events)
{
    uint64_t expirations;
    /* Clears the readiness; EAGAIN when nothing is pending is harmless. */
    if (read(lg.tick_fd, &expirations, sizeof(expirations)) < 0 &&
        errno != EAGAIN) {
        fprintf(stderr, "loadgen: timerfd read: %s\n",
                uv_strerror(uv_translate_sys_error(errno)));
    }
    send_due();
}

/* Called by libuv if the run outlives every request's deadline
 * (uv_timer_cb). Requests still open count as timeouts. */
static void on_safety_timeout(uv_timer_t *timer)
{
    lg.errors[ERROR_TIMEOUT] += (int64_t)(lg.queue_len + lg.bound);
    lg.errors[ERROR_TIMEOUT] += lg.total - lg.next_index;
    lg.queue_len = 0;
    lg.bound = 0;
    lg.next_index = lg.total;
    fprintf(stderr, "loadgen: requests were still open after the last "
                    "deadline; they count as timeouts\n");
    finish();
}

/* ---- report ---- */

static void print_json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0';
         p++) {
        if (*p == '"' || *p == '\\') {
            printf("\\%c", *p);
        } else if (*p < 0x20) {
            printf("\\u%04x", *p);
        } else {
            putchar(*p);
        }
    }
    putchar('"');
}

static int compare_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a;
    int64_t y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Returns the nearest-rank percentile of sorted values, in ms. */
static double percentile_ms(const int64_t *sorted, size_t count, double p)
{
    double rank = ceil(p / 100.0 * (double)count);
    size_t index = rank < 1 ? 0 : (size_t)rank - 1;
    if (index >= count) {
        index = count - 1;
    }
    return (double)sorted[index] / 1e6;
}

static void print_latency(void)
{
    size_t count = (size_t)lg.completed;
    printf("\"latency_ms\": {");
    if (count == 0) {
        printf("\"min\": null, \"mean\": null, \"p50\": null, \"p90\": null, "
               "\"p99\": null, \"p99.9\": null, \"max\": null}");
        return;
    }
    int64_t *latencies = malloc(count * sizeof(*latencies));
    if (latencies == NULL) {
        fprintf(stderr, "loadgen: out of memory for %zu latencies\n", count);
        exit(1);
    }
    double sum = 0;
    for (size_t i = 0; i < count; i++) {
        latencies[i] = lg.samples[i].done_ns - lg.samples[i].scheduled_ns;
        sum += (double)latencies[i];
    }
    qsort(latencies, count, sizeof(*latencies), compare_int64);
    printf("\"min\": %.3f, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
           "\"p99\": %.3f, \"p99.9\": %.3f, \"max\": %.3f}",
           (double)latencies[0] / 1e6, sum / (double)count / 1e6,
           percentile_ms(latencies, count, 50),
           percentile_ms(latencies, count, 90),
           percentile_ms(latencies, count, 99),
           percentile_ms(latencies, count, 99.9),
           (double)latencies[count - 1] / 1e6);
    free(latencies);
}

static int write_samples(void)
{
    for (int64_t i = 0; i < lg.completed; i++) {
        const sample_t *s = &lg.samples[i];
        fprintf(lg.samples_file, "%.6f %.6f %d\n",
                (double)s->scheduled_ns / 1e9, (double)s->done_ns / 1e9,
                s->status);
    }
    if (fclose(lg.samples_file) != 0) {
        fprintf(stderr, "loadgen: --samples: writing %s failed\n",
                lg.samples_path);
        return -1;
    }
    lg.samples_file = NULL;
    return 0;
}

static void print_report(void)
{
    double duration_s = (double)(lg.end_ns - lg.t0_ns) / 1e9;
    double rate_achieved = 0;
    if (lg.hold_mode) {
        if (duration_s > 0) {
            rate_achieved = (double)lg.completed / duration_s;
        }
    } else if (lg.sent > 0) {
        double window_s =
            (double)(lg.last_send_ns - lg.t0_ns) / 1e9 + 1.0 / lg.rate;
        rate_achieved = (double)lg.sent / window_s;
    }

    printf("{\"mode\": \"%s\", ", lg.hold_mode ? "hold" : "rate");
    printf("\"scheduled\": %" PRId64 ", \"sent\": %" PRId64
           ", \"completed\": %" PRId64 ", ",
           lg.total, lg.sent, lg.completed);
    printf("\"errors\": {");
    for (int kind = 0; kind < ERROR_KIND_COUNT; kind++) {
        printf("%s\"%s\": %" PRId64, kind > 0 ? ", " : "", error_names[kind],
               lg.errors[kind]);
    }
    printf("}, \"status\": {");
    bool first = true;
    for (int status = 0; status < 1000; status++) {
        if (lg.status_counts[status] > 0) {
            printf("%s\"%d\": %" PRId64, first ? "" : ", ", status,
                   lg.status_counts[status]);
            first = false;
        }
    }
    printf("}, ");
    print_latency();
    printf(", \"duration_s\": %.6f, \"rate_achieved\": %.3f, ", duration_s,
           rate_achieved);
    printf("\"samples_file\": ");
    if (lg.samples_path != NULL) {
        print_json_string(lg.samples_path);
    } else {
        printf("null");
    }
    printf("}\n");
    fflush(stdout);
}

/* ---- setup ---- */

static void *allocate(size_t count, size_t size, const char *description)
{
    void *memory = calloc(count, size);
    if (memory == NULL) {
        fprintf(stderr, "loadgen: out of memory for %zu %s\n", count,
                description);
        exit(1);
    }
    return memory;
}

static void setup(void)
{
    lg.timeout_ns = (int64_t)lg.timeout_ms * NS_PER_MS;
    lg.queue_cap = (size_t)lg.max_in_flight;
    if (lg.queue_cap > (size_t)lg.total) {
        lg.queue_cap = (size_t)lg.total;
    }
    lg.queue = allocate(lg.queue_cap, sizeof(*lg.queue), "queue entries");
    lg.samples = allocate((size_t)lg.total, sizeof(*lg.samples), "samples");

    lg.conn_count = (size_t)lg.connections;
    lg.conns = allocate(lg.conn_count, sizeof(*lg.conns), "connections");
    lg.free_stack =
        allocate(lg.conn_count, sizeof(*lg.free_stack), "connections");
    /* Push in reverse so that the first connection opened is conns[0]. */
    for (size_t i = lg.conn_count; i > 0; i--) {
        conn_t *conn = &lg.conns[i - 1];
        conn->state = CONN_FREE;
        conn->connect_req.data = conn;
        conn->write_req.data = conn;
        uv_timer_init(lg.loop, &conn->timer);
        conn->timer.data = conn;
        lg.free_stack[lg.free_len++] = conn;
    }

    memset(&lg.parser_settings, 0, sizeof(lg.parser_settings));
    lg.parser_settings.on_message_complete = on_message_complete;

    lg.tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (lg.tick_fd < 0) {
        fprintf(stderr, "loadgen: timerfd_create: %s\n",
                uv_strerror(uv_translate_sys_error(errno)));
        exit(1);
    }
    uv_poll_init(lg.loop, &lg.tick_poll, lg.tick_fd);
    uv_poll_start(&lg.tick_poll, UV_READABLE, on_tick);
    uv_timer_init(lg.loop, &lg.safety);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();

    if (lg.samples_path != NULL) {
        lg.samples_file = fopen(lg.samples_path, "w");
        if (lg.samples_file == NULL) {
            fprintf(stderr, "loadgen: --samples: cannot open %s: %s\n",
                    lg.samples_path,
                    uv_strerror(uv_translate_sys_error(errno)));
            return 1;
        }
    }

    lg.loop = uv_default_loop();
    setup();

    uv_update_time(lg.loop);
    lg.t0_ns = now_ns();
    send_due();

    /* Started after the first tick, because in hold mode that tick makes
     * every connect call and each request's deadline counts from its own
     * call. */
    uint64_t safety_ms = (uint64_t)lg.timeout_ms + SAFETY_MARGIN_MS;
    if (!lg.hold_mode) {
        safety_ms += (uint64_t)ceil(lg.duration_s * 1000.0);
    }
    uv_update_time(lg.loop);
    uv_timer_start(&lg.safety, on_safety_timeout, safety_ms, 0);
    if (!lg.finished) {
        uv_run(lg.loop, UV_RUN_DEFAULT);
    }
    if (!lg.finished) {
        /* The loop ran out of handles before every request ended, which
         * the accounting above should make impossible. */
        fprintf(stderr, "loadgen: the event loop stopped early\n");
        finish();
    }

    int rc = 0;
    if (lg.samples_file != NULL && write_samples() != 0) {
        rc = 1;
    }
    print_report();
    return rc;
}
