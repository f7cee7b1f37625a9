"""Overload protection: load shedding at max_in_flight, the per-service
bulkhead (max_concurrent_calls), the inbound header, URL and connection
limits, the slow-client timeout, behaviour at the file-descriptor limit,
and a soak of mixed outcomes after which descriptors and memory settle.

TUTTI_SOAK_REQUESTS sets the soak's request count (default 10000). The
full count took 8 to 10 s with each of the plain, ASan and TSan builds on
a 2-core machine (one run each), so the runner keeps the default."""

import http.client
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import WORKERS, call, describe_fds, error_of, open_fds, route
from test_fds import fd_changes, live_connections

SLOW_MS = 1500

# tutti decides a shed or bulkhead 503 without waiting for anything; the
# bound is loose for sanitizer builds on a loaded machine.
FAST_S = 0.5


def concurrent_gets(port, target, count, timeout=10.0):
    """Send |count| GETs at once, each on its own connection, and return
    the responses (or exceptions) in completion order."""
    barrier = threading.Barrier(count)

    def one(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.connect()
            barrier.wait(timeout=timeout)
            sent = time.monotonic()
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
            return (resp.status, dict(resp.headers), body,
                    time.monotonic() - sent)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def slow_gateway(gateway, faultd, workers, **top):
    services = {"slow": {"url": faultd.h1_url}}
    services["slow"].update(top.pop("service_options", {}))
    routes = [
        route("/slow", [call("a", "slow", f"/p?delay_ms={SLOW_MS}")],
              deadline_ms=5000),
        route("/fast", [call("a", "slow", "/p")]),
    ]
    return gateway(services, routes, workers=workers, **top)


@pytest.mark.parametrize("workers", WORKERS)
def test_shed_over_max_in_flight(gateway, faultd, workers):
    """With max_in_flight 5, 5 of 20 concurrent slow requests are served
    and 15 get 503 overloaded with Retry-After at once, over all
    workers."""
    gw = slow_gateway(gateway, faultd, workers, max_in_flight=5)

    results = concurrent_gets(gw.port, "/slow", 20)

    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) == 5, [r[0] for r in results]
    assert len(shed) == 15, [r[0] for r in results]
    for status, headers, body, elapsed in shed:
        assert headers.get("Retry-After") == "1", headers
        assert b'"kind":"overloaded"' in body, body
        assert elapsed < FAST_S, elapsed
    for status, headers, body, elapsed in ok:
        assert elapsed >= SLOW_MS / 1000 * 0.9, elapsed


def test_shed_slots_released(gateway, faultd):
    """Slots come back when requests end, whatever their outcome: after
    shed, served and failed requests, a new burst is admitted again."""
    gw = slow_gateway(gateway, faultd, 1, max_in_flight=2)
    concurrent_gets(gw.port, "/slow", 6)
    assert gw.get("/missing").status == 404

    results = concurrent_gets(gw.port, "/fast", 2)

    assert [r[0] for r in results] == [200, 200]
    shed_lines = [line for line in gw.access_lines()
                  if line.get("status") == 503]
    assert len(shed_lines) == 4, shed_lines


@pytest.mark.parametrize("workers", WORKERS)
def test_bulkhead_required_call(gateway, faultd, workers):
    """With max_concurrent_calls 5 on the service, 5 of 20 concurrent
    requests are served and 15 fail at once with 503 kind overloaded
    naming the call."""
    gw = slow_gateway(gateway, faultd, workers,
                      service_options={"max_concurrent_calls": 5})

    results = concurrent_gets(gw.port, "/slow", 20)

    ok = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 503]
    assert len(ok) == 5, [r[0] for r in results]
    assert len(rejected) == 15, [r[0] for r in results]
    for status, headers, body, elapsed in rejected:
        assert headers.get("Retry-After") == "1", headers
        assert b'"call":"a"' in body, body
        assert b'"kind":"overloaded"' in body, body
        assert elapsed < FAST_S, elapsed
    # The slots are given back: the service takes calls again.
    assert gw.get("/fast").status == 200


def test_bulkhead_optional_call(gateway, faultd):
    """An optional call over the limit lands in "errors" with kind
    overloaded, and the answer is a partial 200."""
    services = {"main": {"url": faultd.h1_url},
                "limited": {"url": faultd.h1_url,
                            "max_concurrent_calls": 1}}
    routes = [route("/mixed", [
        call("a", "main", "/p"),
        call("b", "limited", f"/p?delay_ms={SLOW_MS}", required=False),
    ], deadline_ms=5000)]
    gw = gateway(services, routes)

    results = concurrent_gets(gw.port, "/mixed", 2)

    assert [r[0] for r in results] == [200, 200]
    partial = [r for r in results if r[1].get("Tutti-Partial") == "b"]
    assert len(partial) == 1, results
    assert b'"errors":{"b":{"call":"b","kind":"overloaded"' in partial[0][2]
    assert partial[0][3] < FAST_S, partial[0][3]


def test_bulkhead_in_defaults(gateway, faultd):
    """max_concurrent_calls in "defaults" limits each service on its
    own."""
    services = {"one": {"url": faultd.h1_url},
                "two": {"url": faultd.h1_url}}
    routes = [route("/both", [
        call("a", "one", f"/p?delay_ms={SLOW_MS}"),
        call("b", "two", f"/p?delay_ms={SLOW_MS}"),
    ], deadline_ms=5000)]
    gw = gateway(services, routes, defaults={"max_concurrent_calls": 2})

    results = concurrent_gets(gw.port, "/both", 4)

    assert sorted(r[0] for r in results) == [200, 200, 503, 503]


def raw_exchange(port, data, timeout=5.0):
    """Send |data| on a new connection and read until the server closes
    it or |timeout| passes; return the bytes received."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_header_limit(gateway, faultd):
    """Headers beyond max_header_bytes get 431 from libmicrohttpd; a
    request well inside the limit is served."""
    gw = slow_gateway(gateway, faultd, 1, max_header_bytes=8192)

    small = gw.get("/fast", headers={"X-Pad": "a" * 2000})
    big = raw_exchange(gw.port, b"GET /fast HTTP/1.1\r\nHost: t\r\n"
                       b"X-Pad: " + b"a" * 10000 + b"\r\n\r\n")

    assert small.status == 200, small
    assert big.startswith(b"HTTP/1.1 431 "), big[:200]


def test_header_limit_default(gateway, faultd):
    """The default limit (16 KiB) lets 12 KiB of headers through and
    answers 431 to 20 KiB."""
    gw = slow_gateway(gateway, faultd, 1)

    ok = gw.get("/fast", headers={"X-Pad": "a" * 12288})
    big = raw_exchange(gw.port, b"GET /fast HTTP/1.1\r\nHost: t\r\n"
                       b"X-Pad: " + b"a" * 20480 + b"\r\n\r\n")

    assert ok.status == 200, ok
    assert big.startswith(b"HTTP/1.1 431 "), big[:200]


def test_url_limit(gateway, faultd):
    """A path and query longer than max_url_bytes get a JSON 414; a URL
    at the limit is routed."""
    gw = slow_gateway(gateway, faultd, 1, max_url_bytes=1024)
    at_limit = "/fast?q=" + "a" * (1024 - len("/fast?q="))
    long_path = "/" + "a" * 1100
    long_query = "/fast?q=" + "a" * 1100

    ok = gw.get(at_limit)
    by_path = gw.get(long_path)
    by_query = gw.get(long_query)

    assert ok.status == 200, ok
    for resp in (by_path, by_query):
        assert resp.status == 414, resp
        assert error_of(resp)["kind"] == "uri_too_long"
        assert "max_url_bytes limit of 1024 bytes" in \
            error_of(resp)["message"], resp


def test_request_line_beyond_header_limit(gateway, faultd):
    """A request line that does not fit in max_header_bytes is answered
    414 by libmicrohttpd before tutti sees it."""
    gw = slow_gateway(gateway, faultd, 1, max_header_bytes=4096,
                      max_url_bytes=4096)

    reply = raw_exchange(gw.port, b"GET /fast?q=" + b"a" * 6000 +
                         b" HTTP/1.1\r\nHost: t\r\n\r\n")

    assert reply.startswith(b"HTTP/1.1 414 "), reply[:200]


def test_slow_client_timeout(gateway, faultd):
    """A client that sends part of its headers and stops is disconnected
    after client_timeout_ms (rounded up to whole seconds), and so is an
    idle keep-alive connection."""
    gw = slow_gateway(gateway, faultd, 1, client_timeout_ms=1000)

    started = time.monotonic()
    partial = raw_exchange(gw.port, b"GET /fast HTTP/1.1\r\nHost: t\r\n",
                           timeout=10.0)
    partial_s = time.monotonic() - started
    started = time.monotonic()
    idle = raw_exchange(gw.port, b"", timeout=10.0)
    idle_s = time.monotonic() - started

    assert partial == b"", partial
    assert 0.9 <= partial_s < 4.0, partial_s
    assert idle == b""
    assert 0.9 <= idle_s < 4.0, idle_s


def test_slow_fanout_outlives_client_timeout(gateway, faultd):
    """A request waiting for its fan-out is not cut by the client
    timeout: the timeout is about a silent client, not a slow answer."""
    gw = slow_gateway(gateway, faultd, 1, client_timeout_ms=1000)
    routes_target = "/slow"

    resp = gw.get(routes_target)

    assert resp.status == 200, resp
    assert resp.elapsed >= SLOW_MS / 1000 * 0.9


def wait_closed(sock, timeout):
    """Return True when the peer closes |sock| within |timeout|."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("workers", WORKERS)
def test_connection_limit(gateway, faultd, workers):
    """Beyond max_connections_inbound a new connection is closed at once;
    once a connection ends, a new one is served."""
    gw = slow_gateway(gateway, faultd, workers, max_connections_inbound=3)
    client_socks = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", gw.port))
            s.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
            s.settimeout(5.0)
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            client_socks.append(s)

        extra = socket.create_connection(("127.0.0.1", gw.port))
        started = time.monotonic()
        closed = wait_closed(extra, 3.0)
        extra.close()
        assert closed
        assert time.monotonic() - started < FAST_S

        client_socks.pop().close()
        time.sleep(0.2)
        assert gw.get("/fast").status == 200
    finally:
        for s in client_socks:
            s.close()


def cpu_seconds(pid):
    """User plus system CPU time of process |pid|, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def assert_closed_without_spin(gw, request, idle_s, max_cpu_s):
    """A new connection (sending |request|, if any) is closed at once, and
    the gateway uses under |max_cpu_s| of CPU in the |idle_s| after."""
    probe = socket.create_connection(("127.0.0.1", gw.port))
    if request:
        probe.sendall(request)
    started = time.monotonic()
    closed = wait_closed(probe, 3.0)
    probe.close()
    assert closed
    assert time.monotonic() - started < FAST_S

    cpu_before = cpu_seconds(gw.proc.pid)
    time.sleep(idle_s)
    cpu_used = cpu_seconds(gw.proc.pid) - cpu_before
    assert cpu_used < max_cpu_s, \
        f"{cpu_used:.2f} s of CPU in {idle_s} s at the limit"


def assert_serves_again(gw, within_s=5.0):
    """/fast gets a 200 within |within_s| seconds."""
    deadline = time.monotonic() + within_s
    status = None
    while time.monotonic() < deadline and status != 200:
        try:
            status = gw.get("/fast", timeout=2.0).status
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    assert status == 200


@pytest.mark.parametrize("workers", WORKERS)
def test_fd_limit(gateway, faultd, workers):
    """At the descriptor limit (prlimit --nofile=64:64) new connections
    are closed at once, the process does not spin, and it serves again
    when connections go away."""
    gw = slow_gateway(gateway, faultd, workers)
    assert gw.get("/fast").status == 200
    subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--nofile=64:64"],
                   check=True)
    client_socks = []
    try:
        # Idle connections take every free descriptor; the rest are
        # closed by the gateway as soon as it accepts them.
        for _ in range(80):
            client_socks.append(socket.create_connection(("127.0.0.1", gw.port)))
        time.sleep(0.5)
        # The gateway keeps 16 descriptors free for downstream calls.
        assert len(open_fds(gw.proc.pid)) >= 64 - 16 - 4

        assert_closed_without_spin(
            gw, b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n", 2.0, 0.5)
    finally:
        for s in client_socks:
            s.close()

    assert_serves_again(gw)
    warnings = [line for line in gw.logs()
                if "too many open files" in line.get("msg", "")]
    assert warnings, "no warning logged at the descriptor limit"


def test_fd_limit_emfile(gateway, faultd):
    """When downstream connections take the last descriptors, accept fails
    with EMFILE: the worker gives up its spare descriptor to close the new
    connection at once, and does not spin."""
    services = {"slow": {"url": faultd.h1_url}}
    calls = [call(f"c{i}", "slow", f"/p?action=hang&n={i}", required=False)
             for i in range(8)]
    routes = [route("/hang", calls, deadline_ms=3000),
              route("/fast", [call("a", "slow", "/p")])]
    gw = gateway(services, routes)
    assert gw.get("/fast").status == 200
    subprocess.run(["prlimit", f"--pid={gw.proc.pid}", "--nofile=64:64"],
                   check=True)
    client_socks = []
    try:
        for _ in range(80):
            client_socks.append(socket.create_connection(("127.0.0.1", gw.port)))
        time.sleep(0.5)
        # The first connection was accepted; the calls of its request take
        # the descriptors kept free.
        client_socks[0].sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)

        assert_closed_without_spin(gw, None, 1.0, 0.25)
    finally:
        for s in client_socks:
            s.close()
    emfile = [line for line in gw.logs()
              if "accept failed with EMFILE" in line.get("msg", "")]
    assert emfile, "no EMFILE warning logged"
    assert_serves_again(gw)


# ---------------------------------------------------------------- soak

SOAK_REQUESTS = int(os.environ.get("TUTTI_SOAK_REQUESTS", "10000"))
SOAK_THREADS = 20

# Each request picks its kind from its number: mostly successes, then
# call timeouts, first errors (a required call fails while a slower one
# is cancelled) and client aborts (the client closes while the fan-out
# runs).
SOAK_KINDS = ["ok", "ok", "ok", "ok", "timeout", "first_error", "abort",
              "ok", "timeout", "abort"]


def soak_gateway(gateway, faultd):
    services = {"h1": {"url": faultd.h1_url}, "h2": {"url": faultd.h2_url}}
    routes = [
        route("/ok", [call("a", "h1", "/p"), call("b", "h2", "/p")]),
        route("/timeout", [call("a", "h1", "/p?delay_ms=200", timeout_ms=50),
                           call("b", "h2", "/p")]),
        route("/first_error", [call("a", "h2", "/p?status=500"),
                               call("b", "h1", "/p?delay_ms=40"),
                               call("c", "h2", "/p?delay_ms=40")]),
        route("/abort", [call("a", "h1", "/p?delay_ms=40"),
                         call("b", "h2", "/p?delay_ms=40")]),
    ]
    # A small ASan quarantine lets the RSS of an ASan build settle; other
    # builds ignore the variable.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"ASAN_OPTIONS": (asan + ":" if asan else "") +
           "quarantine_size_mb=4"}
    return gateway(services, routes, workers=2, env=env)


def soak_one(port, kind):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        if kind == "abort":
            conn.connect()
            conn.sock.sendall(b"GET /abort HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.01)
            return "aborted"
        conn.request("GET", f"/{kind}")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def run_soak(port, first, count):
    with ThreadPoolExecutor(max_workers=SOAK_THREADS) as pool:
        kinds = [SOAK_KINDS[i % len(SOAK_KINDS)]
                 for i in range(first, first + count)]
        return list(pool.map(lambda k: soak_one(port, k), kinds))


def test_soak_fds_and_memory(gateway, faultd):
    """After SOAK_REQUESTS requests mixing successes, timeouts, first
    errors and client aborts, the open descriptors are back to the
    baseline plus the pool's live connections, and RSS has stopped
    growing between the middle and the end of the run."""
    gw = soak_gateway(gateway, faultd)
    # Warm up both workers: the first requests on a worker open
    # descriptors that it keeps for good (/dev/null, for one).
    run_soak(gw.port, 0, 200)
    time.sleep(0.5)
    baseline_fds = describe_fds(gw.proc.pid)
    baseline = len(baseline_fds) - live_connections(faultd)

    half = SOAK_REQUESTS // 2
    started = time.monotonic()
    first = run_soak(gw.port, 0, half)
    rss_half = rss_kib(gw.proc.pid)
    second = run_soak(gw.port, half, SOAK_REQUESTS - half)
    rss_end = rss_kib(gw.proc.pid)
    elapsed = time.monotonic() - started

    statuses = first + second
    # A sanitizer build on a loaded machine may turn a few successes into
    # timeouts; the descriptor and memory checks below are the point.
    assert statuses.count(200) >= SOAK_REQUESTS // 2 * 0.9, statuses[:50]
    assert statuses.count(504) >= SOAK_REQUESTS // 10 * 2 * 0.9
    assert statuses.count(502) >= SOAK_REQUESTS // 10 * 0.9
    assert statuses.count("aborted") == SOAK_REQUESTS // 10 * 2
    assert gw.proc.running()

    deadline = time.monotonic() + 10.0
    while True:
        count = len(open_fds(gw.proc.pid))
        want = baseline + live_connections(faultd)
        if count == want or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert count == want, (fd_changes(baseline_fds, gw.proc.pid),
                           live_connections(faultd))
    # Allocator arenas and caches grow in steps; 10 % plus 4 MiB is well
    # under what a per-request leak of even 1 KiB would add.
    assert rss_end <= rss_half * 1.10 + 4096, \
        f"RSS {rss_half} KiB after {half} requests, {rss_end} KiB after " \
        f"{SOAK_REQUESTS} ({elapsed:.1f} s)"
