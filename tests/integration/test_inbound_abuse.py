"""Inbound abuse over raw sockets: request smuggling, oversized heads,
slow and idle clients, Expect: 100-continue, and malformed paths.

Every test checks the status or behaviour it expects and then that the
gateway still serves a normal request. Where libmicrohttpd 0.9.75 answers
by itself (its HTML error pages), the test pins what it does; see
KNOWN_BUGS.md.
"""

import json
import socket
import threading
import time

import pytest

from conftest import call, open_fds, route, run_tutti, service

# Loose bounds: sanitizer builds on 2 shared cores are slow.
FAST_S = 2.0


def abuse_gateway(gateway, faultd, **top):
    """/items/{id} calls faultd's echo; PUT /items/{id} forwards the body."""
    services = {"svc": service(faultd.h1_url)}
    services["svc"].update(top.pop("service_options", {}))
    return gateway(services, [
        route("/items/{id}", [call("item", "svc", "/i/{id}")]),
        route("/items/{id}", [call("store", "svc", "/store/{id}",
                                   method="POST", forward_body=True)],
              method="PUT"),
        route("/search", [call("found", "svc", "/s?q={query.q}")]),
        route("/slow", [call("slow", "svc", "/s?delay_ms=1000")],
              deadline_ms=3000),
    ], **top)


def assert_alive(gw):
    assert gw.proc.running(), gw.proc.stderr()[-2000:]
    resp = gw.get("/items/alive", timeout=5.0)
    assert resp.status == 200, resp
    assert resp.json()["item"]["path"] == "/i/alive", resp


def read_all(s):
    """Return everything received on |s| until the gateway closes it or
    the socket's timeout passes, and whether it closed."""
    chunks = []
    closed = False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    return b"".join(chunks), closed


def exchange(port, data, timeout=3.0):
    """Send |data| on a new connection; return everything received until
    the gateway closes it or |timeout| passes, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def status_of(reply):
    line = reply.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), reply[:300]
    return int(line.split()[1])


def body_of(reply):
    return reply.split(b"\r\n\r\n", 1)[1]


def rejected(port, head):
    """Send |head| (request line and fields) with Connection: close;
    check that the response is a JSON 400 bad_request in valid UTF-8 and
    return its error object and its body."""
    reply, _ = exchange(port, head + b"Connection: close\r\n\r\n")
    assert status_of(reply) == 400, reply
    body = body_of(reply)
    body.decode("utf-8")
    err = json.loads(body)["error"]
    assert err["kind"] == "bad_request", err
    return err, body


def get_head(target):
    return b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n"


def store_requests(faultd):
    return [e for e in faultd.events()
            if e["event"] == "request" and e["path"].startswith("/store/")]


# ---------------------------------------------------------- smuggling


SMUGGLED = b"GET /items/smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

FRAMING_400_JSON = {
    "cl-then-te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "te-then-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "two-cl": b"Content-Length: 4\r\nContent-Length: 40\r\n",
    "te-gzip-chunked": b"Content-Length: 4\r\n"
                       b"Transfer-Encoding: gzip, chunked\r\n",
}


UNSUPPORTED_FRAMING = {
    "te-unknown": (b"Transfer-Encoding: xchunked\r\n",
                   'Transfer-Encoding \\"xchunked\\" is not supported'),
    "te-gzip-only": (b"Transfer-Encoding: gzip\r\n",
                     'Transfer-Encoding \\"gzip\\" is not supported'),
    "te-chunked-not-last": (b"Transfer-Encoding: chunked, gzip\r\n",
                            'Transfer-Encoding \\"chunked, gzip\\" is not '
                            'supported'),
    "space-before-colon": (b"Transfer-Encoding : chunked\r\n",
                           "it contains whitespace; remove any space before "
                           "the colon"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED_FRAMING))
def test_unsupported_framing_400_at_once(gateway, faultd, name):
    """A Transfer-Encoding other than a lone chunked, or a field name with
    a space before its colon, gets a JSON 400 naming the field at once,
    not a wait for the client timeout, and nothing reaches the service."""
    gw = abuse_gateway(gateway, faultd)
    field, message = UNSUPPORTED_FRAMING[name]
    head = b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n" + field + b"\r\n"

    started = time.monotonic()
    reply, closed = exchange(gw.port, head + b"4\r\nabcd\r\n0\r\n\r\n")

    assert time.monotonic() - started < FAST_S
    assert status_of(reply) == 400, reply
    assert message.replace('\\"', '"') in \
        json.loads(body_of(reply))["error"]["message"], reply
    assert closed
    assert faultd.select(event="request") == []
    assert_alive(gw)


@pytest.mark.parametrize("name", list(FRAMING_400_JSON))
def test_ambiguous_framing_400(gateway, faultd, name):
    """A request whose body length is ambiguous gets a JSON 400 with
    Connection: close; the bytes behind it are never read as a second
    request and nothing reaches the service."""
    gw = abuse_gateway(gateway, faultd)
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n" + FRAMING_400_JSON[name] +
            b"\r\n")

    reply, closed = exchange(gw.port, head + b"4\r\nabcd\r\n0\r\n\r\n" +
                             SMUGGLED)

    assert status_of(reply) == 400, reply
    assert b"connection: close" in reply.lower().split(b"\r\n\r\n")[0]
    assert json.loads(body_of(reply))["error"]["kind"] == "bad_request"
    assert reply.count(b"HTTP/1.1 ") == 1, reply
    assert closed
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_same_content_length_twice_is_one(gateway, faultd):
    """Two Content-Length fields with the same value frame the body as
    one (RFC 9112, 6.3): exactly those bytes reach the service."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Content-Length: 4\r\nContent-Length: 4\r\n"
                        b"Connection: close\r\n\r\n[12]")

    assert status_of(reply) == 200, reply
    assert json.loads(body_of(reply))["store"]["body"] == "[12]"
    assert_alive(gw)


@pytest.mark.parametrize("value", [b"4, 4", b"+4", b"0x4", b"4 4", b"-1",
                                   b"99999999999999999999999"])
def test_malformed_content_length(gateway, faultd, value):
    """A Content-Length that is not one decimal number is refused before
    any call, by libmicrohttpd itself (400, or 413 for a number it cannot
    hold), and the connection is closed."""
    gw = abuse_gateway(gateway, faultd)

    reply, closed = exchange(gw.port, b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: " + value + b"\r\n\r\n[12]" +
                             SMUGGLED)

    assert status_of(reply) in (400, 413), reply
    assert b"/i/smuggled" not in reply
    assert closed
    assert store_requests(faultd) == []
    assert_alive(gw)


def test_obs_fold_field_rejected(gateway, faultd):
    """libmicrohttpd 0.9.75 glues a folded line onto the field before it,
    so the field name contains whitespace, and tutti rejects the request with
    400, one of the two answers RFC 9112, 5.2 allows. Nothing reaches the
    service."""
    gw = abuse_gateway(gateway, faultd, service_options={
        "forward_headers": ["X-Folded", "X-Other"]})

    reply, closed = exchange(gw.port, b"GET /items/1 HTTP/1.1\r\nHost: t\r\n"
                             b"X-Folded: a\r\n Content-Length: 5\r\n"
                             b"X-Other: c\r\nConnection: close\r\n\r\n")

    assert status_of(reply) == 400, reply
    assert "do not fold header lines" in \
        json.loads(body_of(reply))["error"]["message"], reply
    assert closed
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_obs_fold_transfer_encoding_ignored(gateway, faultd):
    """A folded Transfer-Encoding is dropped the same way, so the body is
    framed by Content-Length alone. The bytes after it make no request of
    their own, and no smuggled call is made."""
    gw = abuse_gateway(gateway, faultd)

    reply, closed = exchange(gw.port, b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Type: application/json\r\n"
                             b"Content-Length: 4\r\nTransfer-Encoding:\r\n"
                             b" chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n" +
                             SMUGGLED)

    assert status_of(reply) == 200, reply
    first = reply.split(b"HTTP/1.1 ")[1]
    assert json.loads(first.split(b"\r\n\r\n", 1)[1])["store"]["body"] \
        == "4\r\na"
    assert b"/i/smuggled" not in reply
    assert closed
    assert faultd.select(event="request", path="/i/smuggled") == []
    assert_alive(gw)


def test_bare_lf_line_endings(gateway, faultd):
    """Bare LF line endings are read as line ends (RFC 9112, 2.2 allows
    it), consistently for the request line, the fields and the end of
    the head: one request, one response."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GET /items/lf HTTP/1.1\nHost: t\n"
                        b"Connection: close\n\n")

    assert status_of(reply) == 200, reply
    assert reply.count(b"HTTP/1.1 ") == 1, reply
    assert json.loads(body_of(reply))["item"]["path"] == "/i/lf"
    assert_alive(gw)


@pytest.mark.parametrize("chunk", [
    b"zz\r\nabcd\r\n0\r\n\r\n",
    b"-4\r\nabcd\r\n0\r\n\r\n",
    b"fffffffffffffffffffff\r\nabcd\r\n0\r\n\r\n",
    b"4\r\nabcdEXTRA\r\n0\r\n\r\n",
], ids=["not-hex", "negative", "overflow", "longer-than-size"])
def test_invalid_chunk_size(gateway, faultd, chunk):
    """A malformed chunked body is refused by libmicrohttpd, with 400 or
    with 413 for a size it cannot hold, and the connection closed; nothing reaches the service and no smuggled
    request is answered."""
    gw = abuse_gateway(gateway, faultd)

    reply, closed = exchange(gw.port, b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + chunk +
                             SMUGGLED)

    assert status_of(reply) in (400, 413), reply
    assert b"/i/smuggled" not in reply
    assert closed
    assert store_requests(faultd) == []
    assert_alive(gw)


# ---------------------------------------------------- oversized heads


def test_many_header_fields_431(gateway, faultd):
    """3000 small header fields do not fit in max_header_bytes: 431 from
    libmicrohttpd, and the connection is closed."""
    gw = abuse_gateway(gateway, faultd, max_header_bytes=8192)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(3000))

    reply, closed = exchange(gw.port, b"GET /items/1 HTTP/1.1\r\nHost: t\r\n" +
                             fields + b"\r\n")

    assert status_of(reply) == 431, reply[:300]
    assert closed
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_long_url_json_414_and_mhd_414(gateway, faultd):
    """A URL over max_url_bytes that fits in the header buffer gets
    tutti's JSON 414; one over the buffer gets libmicrohttpd's 414."""
    gw = abuse_gateway(gateway, faultd, max_header_bytes=8192,
                       max_url_bytes=2048)

    reply, _ = exchange(gw.port, b"GET /items/" + b"a" * 3000 +
                        b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    huge, closed = exchange(gw.port, b"GET /items/" + b"a" * 20000 +
                            b" HTTP/1.1\r\nHost: t\r\n\r\n")

    assert status_of(reply) == 414, reply[:300]
    assert json.loads(body_of(reply))["error"]["kind"] == "uri_too_long"
    assert status_of(huge) == 414, huge[:300]
    assert closed
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_request_trailers(gateway, faultd):
    """Trailer fields of a chunked request body are read and dropped; a
    trailer section over max_header_bytes gets 431 from libmicrohttpd,
    like a header section."""
    gw = abuse_gateway(gateway, faultd, max_header_bytes=8192,
                       service_options={"forward_headers": ["X-Trailer"]})
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\n[42]\r\n0\r\n")

    small, _ = exchange(gw.port, head + b"X-Trailer: v\r\n\r\n")
    big, closed = exchange(gw.port, head + b"".join(
        b"X-T%d: %s\r\n" % (i, b"v" * 16) for i in range(3000)) + b"\r\n")

    assert status_of(small) == 200, small
    store = json.loads(body_of(small))["store"]
    assert store["body"] == "[42]"
    assert "x-trailer" not in store["headers"], store
    assert status_of(big) == 431, big[:300]
    assert closed
    assert len(store_requests(faultd)) == 1
    assert_alive(gw)


# ---------------------------------------------------- slow clients


class Trickle(threading.Thread):
    """Sends |data| in |step|-byte pieces every |interval| seconds until
    done, the peer closes, or |limit| seconds pass; records when the
    gateway closed the connection and what it sent."""

    def __init__(self, port, data, step, interval, limit):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.data = data
        self.step = step
        self.interval = interval
        self.limit = limit
        self.sent = 0
        self.closed_after = None
        self.reply = b""

    def run(self):
        started = time.monotonic()
        self.sock.setblocking(False)
        try:
            while time.monotonic() - started < self.limit:
                if self.sent < len(self.data):
                    piece = self.data[self.sent:self.sent + self.step]
                    self.sock.send(piece)
                    self.sent += len(piece)
                time.sleep(self.interval)
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.closed_after = time.monotonic() - started
                    return
                self.reply += chunk
        except (BrokenPipeError, ConnectionResetError):
            self.closed_after = time.monotonic() - started
        finally:
            self.sock.close()


def serve_while_trickling(gw, trickles, served=1):
    """Start |trickles|, send |served| normal requests meanwhile, wait for
    the trickles to end, and check the normal requests were served at
    once."""
    for t in trickles:
        t.start()
    time.sleep(0.3)
    responses = [gw.get("/items/meanwhile", timeout=5.0)
                 for _ in range(served)]
    for t in trickles:
        t.join(timeout=12.0)
    for resp in responses:
        assert resp.status == 200, resp
        assert resp.elapsed < FAST_S, resp


def assert_closed(trickles, low, high, silent=True):
    """Each trickle's connection was closed between |low| and |high|
    seconds after it started; with |silent|, without a response."""
    for t in trickles:
        assert t.closed_after is not None, "still open"
        assert low < t.closed_after < high, t.closed_after
        if silent:
            assert t.reply == b"", t.reply


def test_slowloris_pause_closed(gateway, faultd):
    """Clients that send their head a byte at a time with pauses longer
    than client_timeout_ms (1 s) are closed after one pause, while other
    clients are served meanwhile."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)
    head = b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    slow = [Trickle(gw.port, head, 1, 2.5, 8.0) for _ in range(20)]

    serve_while_trickling(gw, slow, served=5)

    # libmicrohttpd counts whole seconds: closed 1 to 2 s after the first
    # byte, before the second arrives at 2.5 s.
    assert_closed(slow, 0.0, 4.0)
    assert faultd.select(event="request", path="/i/1") == []
    assert_alive(gw)


def test_slowloris_steady_closed(gateway, faultd):
    """Clients that keep sending their head a byte every 100 ms, never
    silent for long, are closed client_timeout_ms (1 s) after the
    connection started, without a response; other clients are served
    meanwhile."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)
    head = b"GET /items/1 HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
    steady = [Trickle(gw.port, head, 1, 0.1, 8.0) for _ in range(20)]

    serve_while_trickling(gw, steady, served=5)

    assert_closed(steady, 0.9, 3.0)
    assert faultd.select(event="request", path="/i/1") == []
    assert_alive(gw)


def test_slowloris_after_keepalive_request(gateway, faultd):
    """On a keep-alive connection the next head gets client_timeout_ms
    from the end of the previous request: a second head trickled byte by
    byte is cut 1 s after the first answer."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)

    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /items/first HTTP/1.1\r\nHost: t\r\n\r\n")
        first = s.recv(65536)
        answered = time.monotonic()
        closed_after = None
        for byte in b"GET /items/second HTTP/1.1\r\nHost: t\r\nX-Slow: " + \
                b"a" * 100:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - answered
                break
            s.settimeout(0.1)
            try:
                if s.recv(65536) == b"":
                    closed_after = time.monotonic() - answered
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - answered
                break

    assert first.startswith(b"HTTP/1.1 200 "), first
    assert closed_after is not None, "still open"
    assert 0.9 < closed_after < 3.0, closed_after
    assert faultd.select(event="request", path="/i/second") == []
    assert_alive(gw)


def test_slow_head_within_timeout_served(gateway, faultd):
    """A head that arrives a few bytes at a time but whole within
    client_timeout_ms is served."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=2000)
    head = b"GET /items/slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for i in range(0, len(head), 8):
            s.sendall(head[i:i + 8])
            time.sleep(0.05)
        reply, _ = read_all(s)

    assert status_of(reply) == 200, reply
    assert json.loads(body_of(reply))["item"]["path"] == "/i/slow"


def test_stalled_request_body_times_out(gateway, faultd):
    """A forward_body request whose body stops half-way is closed after
    client_timeout_ms; the call never starts, and the worker serves other
    requests while it waits."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    stalled = [Trickle(gw.port, head + b"[1,2,3", 4096, 0.05, 6.0)
               for _ in range(10)]

    serve_while_trickling(gw, stalled)

    assert_closed(stalled, 0.9, 4.0, silent=False)
    assert store_requests(faultd) == []
    assert_alive(gw)


def test_steady_trickled_body_closed(gateway, faultd):
    """A body sent a byte every 100 ms, never silent for long, is cut
    client_timeout_ms (1 s) after the connection started: the head and
    the body must arrive together within that time. The call never
    starts, and other clients are served meanwhile."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    steady = [Trickle(gw.port, head + b"[" + b"1," * 499, 1, 0.1, 8.0)
              for _ in range(10)]
    for t in steady:
        t.sent = len(head)
        t.sock.sendall(head)

    serve_while_trickling(gw, steady)

    assert_closed(steady, 0.6, 3.0)
    assert store_requests(faultd) == []
    assert_alive(gw)


def test_trickled_request_body_forwarded_once(gateway, faultd):
    """A body that arrives a few bytes at a time, each piece inside
    client_timeout_ms, is forwarded once complete, whole. The route's
    deadline (1 s) runs from the request head, so the body must come in
    well before it."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=1000)
    body = b'{"items": [1, 2, 3, 4, 5, 6, 7, 8, 9]}'
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        for i in range(0, len(body), 4):
            time.sleep(0.03)
            s.sendall(body[i:i + 4])
        reply, _ = read_all(s)

    assert status_of(reply) == 200, reply
    assert json.loads(body_of(reply))["store"]["body"] == body.decode()
    assert len(store_requests(faultd)) == 1
    assert_alive(gw)


def test_many_idle_connections(gateway, faultd):
    """2000 idle connections neither block nor slow down normal requests,
    and client_timeout_ms closes them."""
    gw = abuse_gateway(gateway, faultd, client_timeout_ms=2000)
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", gw.port)))
        time.sleep(0.2)

        served = [gw.get(f"/items/n{i}", timeout=5.0) for i in range(10)]
        for resp in served:
            assert resp.status == 200, resp
            assert resp.elapsed < FAST_S, resp

        # All of them are closed by the timeout: 2 to 3 s after they
        # opened, plus slack.
        deadline = time.monotonic() + 6.0
        open_left = list(idle)
        while open_left and time.monotonic() < deadline:
            still = []
            for s in open_left:
                s.setblocking(False)
                try:
                    if s.recv(1) != b"":
                        still.append(s)
                except BlockingIOError:
                    still.append(s)
                except ConnectionResetError:
                    pass
            open_left = still
            time.sleep(0.1)
        assert open_left == [], f"{len(open_left)} idle connections open"
    finally:
        for s in idle:
            s.close()
    assert_alive(gw)


def test_idle_connections_bounded(gateway, faultd):
    """With max_connections_inbound 500, 800 idle connections leave 300
    closed at once; once the idle ones end, requests are served."""
    gw = abuse_gateway(gateway, faultd, max_connections_inbound=500)
    idle = []
    try:
        for _ in range(800):
            idle.append(socket.create_connection(("127.0.0.1", gw.port)))
        time.sleep(0.5)
        closed = 0
        for s in idle:
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == 300, closed
    finally:
        for s in idle:
            s.close()
    time.sleep(0.3)
    assert_alive(gw)


# ----------------------------------------------------- Expect


def test_expect_100_continue(gateway, faultd):
    """Expect: 100-continue gets an interim 100 before the body, then the
    answer; the service gets the body without the Expect field."""
    gw = abuse_gateway(gateway, faultd)
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4\r\n"
            b"Connection: close\r\n\r\n")

    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        interim = s.recv(65536)
        s.sendall(b"[42]")
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk

    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
    assert status_of(reply) == 200, reply
    store = json.loads(body_of(reply))["store"]
    assert store["body"] == "[42]"
    assert "expect" not in store["headers"], store
    assert_alive(gw)


def test_expect_100_continue_rejected_early(gateway, faultd):
    """A body announced over max_request_body_bytes gets its 413 at once,
    without a 100 Continue, so the client never sends it."""
    gw = abuse_gateway(gateway, faultd, max_request_body_bytes=100)
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100000\r\n\r\n")

    reply, closed = exchange(gw.port, head)

    assert status_of(reply) == 413, reply
    assert b" 100 " not in reply.split(b"\r\n", 1)[0]
    assert json.loads(body_of(reply))["error"]["kind"] == "payload_too_large"
    assert store_requests(faultd) == []
    assert_alive(gw)


def test_unknown_expectation_ignored(gateway, faultd):
    """libmicrohttpd 0.9.75 ignores an expectation other than
    100-continue (RFC 9110 allows 417 as well): the request is served at
    once and the field is not forwarded."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                        b"Expect: fancy\r\nContent-Length: 4\r\n"
                        b"Connection: close\r\n\r\n[42]")

    assert status_of(reply) == 200, reply
    store = json.loads(body_of(reply))["store"]
    assert store["body"] == "[42]"
    assert "expect" not in store["headers"], store
    assert_alive(gw)


def test_expect_field_never_forwarded(gateway, faultd, tmp_path):
    """Expect is handled by tutti: forward_headers may not list it."""
    config = {
        "services": {"svc": {"url": faultd.h1_url,
                             "forward_headers": ["Expect"]}},
        "routes": [route("/x", [call("a", "svc", "/x")])],
    }
    path = tmp_path / "expect.json"
    path.write_text(json.dumps(config))

    result = run_tutti(["check", str(path)], cwd=tmp_path)

    assert result.returncode == 2, result
    assert "forward_headers" in result.stdout + result.stderr
    assert "Expect" in result.stdout + result.stderr


# ------------------------------------------------------------ paths


@pytest.mark.parametrize("target", [
    b"/items/%zz", b"/items/%", b"/items/%4", b"/items/a%G1b",
])
def test_bad_percent_encoding_400(gateway, faultd, target):
    """A malformed escape in a path parameter gets a JSON 400 whose
    message names percent-encoding, and no call is made."""
    gw = abuse_gateway(gateway, faultd)

    err, _ = rejected(gw.port, get_head(target))

    assert "percent-encoding" in err["message"], err
    assert faultd.select(event="request") == []
    assert_alive(gw)


@pytest.mark.parametrize("target", [
    b"/items/\xff", b"/items/caf\xc3\xa9", b"/\xfe\xff/x", b"/items/a\x7fb",
])
def test_non_ascii_path(gateway, faultd, target):
    """Raw bytes that are not visible ASCII in the path get a JSON 400
    that names the byte by its value, whether a route matches or not.
    The answer is valid UTF-8 and never echoes the byte."""
    gw = abuse_gateway(gateway, faultd)

    err, body = rejected(gw.port, get_head(target))

    bad = next(b for b in target if b < 0x21 or b > 0x7e)
    assert f"byte 0x{bad:02X} at offset {target.index(bytes([bad]))}" \
        in err["message"], err
    assert "percent-encode" in err["message"], err
    for byte in target:
        if byte >= 0x7f:
            assert bytes([byte]) not in body, body
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_escaped_non_ascii_path_served(gateway, faultd):
    """A correctly escaped UTF-8 parameter is routed and reaches the
    service escaped."""
    gw = abuse_gateway(gateway, faultd)

    resp = gw.get("/items/caf%C3%A9")

    assert resp.status == 200, resp
    assert resp.json()["item"]["path"] == "/i/caf%C3%A9"
    assert_alive(gw)


# ------------------------------------------------------------ queries


BAD_QUERIES = {
    "nul": (b"/items/1?q=%00", 'invalid query parameter "q"', "%00 (NUL)"),
    "bad-escape": (b"/search?q=%zz", 'invalid query parameter "q"',
                   "malformed percent-encoding"),
    "cut-escape": (b"/search?a=1&q=ab%4", 'invalid query parameter "q"',
                   "malformed percent-encoding"),
    "lone-percent": (b"/search?q=100%", 'invalid query parameter "q"',
                     'write a literal "%" as %25'),
    "bad-name": (b"/search?q%zz=1", 'invalid query parameter "q%zz"',
                 "malformed percent-encoding"),
    "raw-byte": (b"/search?q=caf\xc3\xa9", "invalid query: byte 0xC3 at "
                 "offset 13", "not visible ASCII; percent-encode it"),
    "raw-space": (b"/search?q=a b", "invalid query: byte 0x20 at offset 11",
                  "percent-encode it"),
    "unused": (b"/items/1?utm=%G0", 'invalid query parameter "utm"',
               "malformed percent-encoding"),
    "fragment": (b"/search?q=#frag", 'invalid query parameter "q"',
                 'percent-encode it as %23'),
}


@pytest.mark.parametrize("name", list(BAD_QUERIES))
def test_bad_query_400(gateway, faultd, name):
    """A query argument that cannot be decoded gets a JSON 400 naming the
    argument, whether the route uses it or not, and no call is made: a
    service never receives a value re-encoded from what the client
    sent."""
    gw = abuse_gateway(gateway, faultd)
    target, argument, problem = BAD_QUERIES[name]

    err, _ = rejected(gw.port, get_head(target))

    assert argument in err["message"], err
    assert problem in err["message"], err
    assert faultd.select(event="request") == []
    assert_alive(gw)


@pytest.mark.parametrize("count,status", [(100, 200), (300, 414),
                                          (1000, 414)])
def test_query_argument_count(gateway, faultd, count, status):
    """A query may have one argument per 128 bytes that the URL leaves of
    max_header_bytes, about 120 by default. More get a JSON 414 at once
    that names the setting, where libmicrohttpd alone would send no
    response until client_timeout_ms."""
    gw = abuse_gateway(gateway, faultd)
    query = "&".join(f"x{i}=1" for i in range(count)).encode()

    started = time.monotonic()
    reply, _ = exchange(gw.port, get_head(b"/search?" + query) +
                        b"Connection: close\r\n\r\n")

    assert time.monotonic() - started < FAST_S
    assert status_of(reply) == status, reply[:300]
    if status == 414:
        err = json.loads(body_of(reply))["error"]
        assert err["kind"] == "uri_too_long", err
        assert f"the query has {count} arguments, more than the " in \
            err["message"], err
        assert "max_header_bytes" in err["message"], err
    assert_alive(gw)


def test_query_arguments_in_small_buffer(gateway, faultd):
    """With a small max_header_bytes, the most arguments allowed, each as
    long as the URL limit lets it be, still get a response at once."""
    gw = abuse_gateway(gateway, faultd, max_header_bytes=4096,
                       max_url_bytes=3000)
    value = b"v" * 80
    query = b"&".join(b"x%d=%s" % (i, value) for i in range(32))

    started = time.monotonic()
    reply, _ = exchange(gw.port, get_head(b"/search?" + query) +
                        b"X-Pad: " + b"p" * 600 +
                        b"\r\nConnection: close\r\n\r\n")

    assert time.monotonic() - started < FAST_S
    assert status_of(reply) in (200, 414, 431), reply[:300]
    assert_alive(gw)


def test_query_value_reaches_service_as_meant(gateway, faultd):
    """A well-formed query value is decoded once and encoded once: "+" and
    %20 arrive as %20, an escaped "+" stays escaped, UTF-8 stays as
    sent."""
    gw = abuse_gateway(gateway, faultd)

    resp = gw.get("/search?q=a+b%20c%2Bd%C3%A9")

    assert resp.status == 200, resp
    assert resp.json()["found"]["path"] == "/s?q=a%20b%20c%2Bd%C3%A9", resp


# ----------------------------------------------- targets and Host


BAD_HEADS = {
    "no-host": (b"GET /items/1 HTTP/1.1\r\n",
                "no Host header field, which HTTP/1.1 requires"),
    "two-hosts": (b"GET /items/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
                  "2 Host header fields; send exactly one"),
    "two-hosts-1.0": (b"GET /items/1 HTTP/1.0\r\nHost: a\r\nHost: a\r\n",
                      "2 Host header fields"),
    "name-not-token": (b"GET /items/1 HTTP/1.1\r\nHost: a\r\nX(a): 1\r\n",
                       'invalid header field name "X(a)": a name may '
                       "contain only letters, digits"),
    "name-at": (b"GET /items/1 HTTP/1.1\r\nHost: a\r\nFo@o: 1\r\n",
                'invalid header field name "Fo@o"'),
    "asterisk": (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n",
                 'invalid request target "*"'),
    "authority-form": (b"GET t:80 HTTP/1.1\r\nHost: t\r\n",
                       'invalid request target "t:80"'),
    "userinfo": (b"GET http://u@t/items/1 HTTP/1.1\r\nHost: t\r\n",
                 'invalid request target "http://u@t/items/1"'),
    "no-authority": (b"GET http:///items/1 HTTP/1.1\r\nHost: t\r\n",
                     'invalid request target "http:///items/1"'),
    "other-scheme": (b"GET ftp://t/items/1 HTTP/1.1\r\nHost: t\r\n",
                     'invalid request target "ftp://t/items/1"'),
    "fragment-in-host": (b"GET http://t#/items/1 HTTP/1.1\r\nHost: t\r\n",
                         'invalid path: "#" at offset 8'),
    "host-syntax": (b"GET /items/1 HTTP/1.1\r\nHost: a b@c/d\r\n",
                    'invalid Host header "a b@c/d": expected HOST[:PORT]'),
    "host-empty": (b"GET /items/1 HTTP/1.1\r\nHost:\r\n",
                   'invalid Host header ""'),
    "host-port": (b"GET /items/1 HTTP/1.1\r\nHost: t:65536\r\n",
                  'invalid Host header "t:65536"'),
    "host-literal": (b"GET /items/1 HTTP/1.1\r\nHost: [a&b]\r\n",
                     'invalid Host header "[a&b]"'),
    "host-escape": (b"GET /items/1 HTTP/1.1\r\nHost: a%zz\r\n",
                    'invalid Host header "a%zz"'),
    "host-nul": (b"GET /items/1 HTTP/1.1\r\nHost: a%00b\r\n",
                 'invalid Host header "a%00b"'),
    "fragment-in-path": (b"GET /search#frag?q=1 HTTP/1.1\r\nHost: t\r\n",
                         'invalid path: "#" at offset 7'),
    "fragment-absolute": (b"GET http://t/items/1#f HTTP/1.1\r\nHost: t\r\n",
                          'invalid path: "#"'),
    "method-syntax": (b"G\xffT /items/1 HTTP/1.1\r\nHost: t\r\n",
                      'invalid method "(not printable)"'),
    "te-twice": (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
                 b"Transfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n",
                 "Transfer-Encoding is given more than once"),
    "te-http10": (b"PUT /items/1 HTTP/1.0\r\n"
                  b"Transfer-Encoding: chunked\r\n",
                  "Transfer-Encoding is not allowed in HTTP/1.0"),
}


@pytest.mark.parametrize("name", list(BAD_HEADS))
def test_bad_request_head_400(gateway, faultd, name):
    """Each head of BAD_HEADS breaks a rule of RFC 9110 or 9112 and gets a
    JSON 400 naming the problem. Nothing reaches the service."""
    gw = abuse_gateway(gateway, faultd)
    head, message = BAD_HEADS[name]

    err, _ = rejected(gw.port, head)

    assert message in err["message"], err
    assert faultd.select(event="request") == []
    assert_alive(gw)


def test_long_method_501(gateway, faultd):
    """A method longer than any route may have gets 501 with a JSON body,
    never a match on its first 15 characters, and the access line records
    it as "-"."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GETXXXXXXXXXXXXXXXXXXX /items/1 HTTP/1.1\r\n"
                        b"Host: t\r\nConnection: close\r\n\r\n")

    assert status_of(reply) == 501, reply
    err = json.loads(body_of(reply))["error"]
    assert err["kind"] == "not_implemented", err
    assert "at most 15 characters" in err["message"], err
    assert faultd.select(event="request") == []
    deadline = time.monotonic() + 3.0
    lines = []
    while not lines and time.monotonic() < deadline:
        lines = [line for line in gw.logs()
                 if line.get("msg") == "access" and line.get("status") == 501]
        time.sleep(0.05)
    assert [line["method"] for line in lines] == ["-"], lines


@pytest.mark.parametrize("host", [b"api.example.com", b"10.0.0.1:8080",
                                  b"[::1]:443", b"t:"])
def test_valid_hosts_served(gateway, faultd, host):
    """Host values of each valid form are accepted."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GET /items/h HTTP/1.1\r\nHost: " + host +
                        b"\r\nConnection: close\r\n\r\n")

    assert status_of(reply) == 200, reply


def test_http10_without_host_served(gateway, faultd):
    """HTTP/1.0 has no Host field requirement: such a request is served."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GET /items/10 HTTP/1.0\r\n\r\n")

    assert status_of(reply) == 200, reply
    assert json.loads(body_of(reply))["item"]["path"] == "/i/10"


@pytest.mark.parametrize("target,path", [
    (b"http://gw.example:9/items/5?q=1", "/i/5"),
    (b"HTTPS://gw.example:9/items/5", "/i/5"),
])
def test_absolute_form_target_served(gateway, faultd, target, path):
    """An absolute-form target is routed by its path, and its host stands
    for the Host field in X-Forwarded-Host (RFC 9112, 3.2.2)."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GET " + target + b" HTTP/1.1\r\n"
                        b"Host: other.example\r\nConnection: close\r\n\r\n")

    assert status_of(reply) == 200, reply
    item = json.loads(body_of(reply))["item"]
    assert item["path"] == path
    assert item["headers"]["x-forwarded-host"] == "gw.example:9", item
    assert_alive(gw)


def test_absolute_form_without_path(gateway, faultd):
    """An absolute-form target with no path stands for "/"."""
    gw = abuse_gateway(gateway, faultd)

    reply, _ = exchange(gw.port, b"GET http://gw.example HTTP/1.1\r\n"
                        b"Host: gw.example\r\nConnection: close\r\n\r\n")

    assert status_of(reply) == 404, reply
    assert json.loads(body_of(reply))["error"]["message"] == \
        "no route for path /"


# ------------------------------------------------------ closing clients


def test_partial_request_then_close_frees_slot(gateway, faultd):
    """Clients that send part of a request and close at once, the FIN in
    the same segment as the bytes, give their max_in_flight slots and
    descriptors back at once, not after client_timeout_ms."""
    gw = abuse_gateway(gateway, faultd, max_in_flight=5,
                       client_timeout_ms=20000)
    assert_alive(gw)  # opens the pooled downstream connection
    fds_before = len(open_fds(gw.proc.pid))
    head = (b"PUT /items/1 HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n[1")
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(head)

    # Before client_timeout_ms (20 s) by far, the slots are free again.
    deadline = time.monotonic() + 3.0
    resp = gw.get("/items/after", timeout=5.0)
    while resp.status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        resp = gw.get("/items/after", timeout=5.0)
    assert resp.status == 200, resp
    while (len(open_fds(gw.proc.pid)) > fds_before and
           time.monotonic() < deadline):
        time.sleep(0.05)
    assert len(open_fds(gw.proc.pid)) <= fds_before
    assert store_requests(faultd) == []


def test_half_closed_client_gets_no_response(gateway, faultd):
    """A client that sends its request and then closes its side is taken
    as gone, as nginx does: its calls are cancelled, nothing is sent to
    it, and the access line records 499."""
    gw = abuse_gateway(gateway, faultd)

    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.2)
        s.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        reply, closed = read_all(s)

    assert reply == b"", reply
    assert closed
    assert time.monotonic() - started < FAST_S
    deadline = time.monotonic() + 3.0
    lines = []
    while not lines and time.monotonic() < deadline:
        lines = [line for line in gw.logs()
                 if line.get("msg") == "access" and line.get("path") == "/slow"]
        time.sleep(0.05)
    assert [line["status"] for line in lines] == [499], lines
    assert "not_sent" in lines[0], lines
    assert_alive(gw)
