"""Hostile downstream bodies: deep nesting, bodies past
max_response_body_bytes, \\u0000, invalid UTF-8, duplicate keys, numbers
beyond double and int64, and bodies that are not objects.

faultd serves most bodies (body=raw&text=..., body=huge). Two cases need
what faultd does not do: a body of 100 000 nested brackets, whose target
would not fit in a request line, and a chunked body that arrives a piece
at a time with no end. A small HTTP/1.1 server in this file, on
127.0.0.1, serves those two.
"""

import socket
import threading
import time
import urllib.parse

import pytest

from conftest import call, error_of, route, service

# The nesting tutti accepts in a downstream body (README, Responses).
MAX_JSON_DEPTH = 2047


def raw_path(text):
    """A faultd target that serves |text| (bytes or str) as the body."""
    if isinstance(text, str):
        text = text.encode()
    return "/p?body=raw&text=" + urllib.parse.quote_from_bytes(text, safe="")


def body_gateway(gateway, url, paths, deadline_ms=None, **top):
    """A gateway with route /b/N calling |paths[N]| on |url|, and /ok
    calling faultd's echo, to show the gateway still serves."""
    routes = [route(f"/b/{i}", [call("r", "svc", p)], deadline_ms=deadline_ms)
              for i, p in enumerate(paths)]
    routes.append(route("/ok", [call("r", "svc", "/p?body=raw&text=1")]))
    return gateway({"svc": service(url)}, routes, **top)


def assert_alive(gw):
    assert gw.proc.running(), gw.proc.stderr()[-2000:]
    resp = gw.get("/ok")
    assert resp.status == 200, resp
    assert resp.body == b'{"r":1}', resp


def assert_bad_response(resp):
    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "bad_response", resp
    assert err["call"] == "r", resp
    return err


# ------------------------------------------------------- a small server


class BodyServer:
    """An HTTP/1.1 server on 127.0.0.1 that answers each request with the
    handler registered for its path. A handler gets the socket and writes
    the whole response itself; the server closes the connection after
    it."""

    def __init__(self):
        self.handlers = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = False
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,),
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        with conn:
            data = b""
            conn.settimeout(5.0)
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
            except OSError:
                return
            target = data.split(b" ", 2)[1].decode()
            handler = self.handlers.get(target.split("?", 1)[0])
            if handler is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\n"
                             b"Content-Length: 0\r\n\r\n")
                return
            try:
                handler(conn)
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.sock.close()
        self.acceptor.join(timeout=2)
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def body_server():
    server = BodyServer()
    yield server
    server.stop()


def fixed_body(body):
    def handler(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return handler


class Drip:
    """A chunked body sent as |piece|-byte chunks every |interval_s|, and
    never ended. Records the bytes written and when a write failed."""

    def __init__(self, piece, interval_s, limit_s=10.0):
        self.piece = piece
        self.interval_s = interval_s
        self.limit_s = limit_s
        self.sent = 0
        self.closed_at = None
        self.started_at = None

    def __call__(self, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        # One JSON string that never ends: any prefix is valid so far.
        self.started_at = time.monotonic()
        first = True
        chunk = b"a" * self.piece
        try:
            while time.monotonic() - self.started_at < self.limit_s:
                data = (b'"' + chunk[1:]) if first else chunk
                first = False
                conn.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
                self.sent += len(data)
                time.sleep(self.interval_s)
        except OSError:
            self.closed_at = time.monotonic()


# ------------------------------------------------------------ nesting


@pytest.mark.parametrize("opener,closer", [
    (b"[", b"]"), (b'{"a":', b"}")], ids=["arrays", "objects"])
def test_deep_nesting_rejected(gateway, body_server, opener, closer):
    """100 000 nested arrays or objects, balanced or cut short, are a 502
    bad_response that names the depth limit. The gateway keeps
    serving."""
    depth = 100000
    balanced = opener * depth + b"1" + closer * depth
    unbalanced = opener * depth
    body_server.handlers["/balanced"] = fixed_body(balanced)
    body_server.handlers["/open"] = fixed_body(unbalanced)
    body_server.handlers["/ok"] = fixed_body(b"1")
    gw = gateway({"svc": service(body_server.url)},
                 [route("/balanced", [call("r", "svc", "/balanced")]),
                  route("/open", [call("r", "svc", "/open")]),
                  route("/ok", [call("r", "svc", "/ok")])])

    for target in ("/balanced", "/open"):
        err = assert_bad_response(gw.get(target))
        assert f"deeper than {MAX_JSON_DEPTH}" in err["message"], err

    assert_alive(gw)


def test_nesting_at_limit_accepted(gateway, faultd):
    """A body nested exactly MAX_JSON_DEPTH levels is passed on as it
    is; one level more is a bad_response."""
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    over = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    gw = body_gateway(gateway, faultd.h1_url,
                      [raw_path(at_limit), raw_path(over)])

    ok = gw.get("/b/0")
    bad = gw.get("/b/1")

    assert ok.status == 200, ok
    assert ok.body == b'{"r":' + at_limit.encode() + b"}"
    assert_bad_response(bad)
    assert_alive(gw)


# --------------------------------------------------------- huge bodies


def conn_closes(faultd):
    return [e for e in faultd.events() if e["event"] == "conn_close"]


@pytest.mark.parametrize("scheme,chunked", [
    ("h1", False), ("h1", True), ("h2", False)],
    ids=["h1-content-length", "h1-chunked", "h2"])
def test_huge_body_fails_early(gateway, faultd, scheme, chunked):
    """A 32 MiB body with a 1 MiB limit fails the call at once: faultd
    never finishes writing it (no response event), the gateway closes the
    HTTP/1.1 connection or resets the HTTP/2 stream, and the gateway's RSS
    stays far below the body size. faultd builds each body in memory
    before it sends the head, which takes a while on a loaded machine, so
    the deadline is long."""
    size = 32 * 1024 * 1024
    target = f"/p?body=huge&size={size}" + ("&chunked=1" if chunked else "")
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = body_gateway(gateway, url, [target], deadline_ms=10000,
                      max_response_body_bytes=1024 * 1024)
    before = rss_kib(gw.proc.pid)

    for _ in range(4):
        resp = gw.get("/b/0")
        err = assert_bad_response(resp)
        assert "max_response_body_bytes limit of 1048576 bytes" in err["message"], err
        assert resp.elapsed < 5.0, resp

    if scheme == "h1":
        ends = faultd.wait_for(count=4, event="conn_close", by="peer")
    else:
        ends = faultd.wait_for(count=4, event="cancel", path="/p",
                               how="rst_stream")
    assert len(ends) >= 4, faultd.events()
    assert faultd.select(event="response", path="/p") == [], faultd.events()
    grown = rss_kib(gw.proc.pid) - before
    assert grown < 32 * 1024, f"RSS grew by {grown} KiB"
    assert_alive(gw)


def test_dripped_body_fails_when_limit_passed(gateway, body_server):
    """A chunked body that arrives 16 KiB every 20 ms and never ends
    fails as soon as it passes the 256 KiB limit, long before the
    deadline, and the gateway closes the downstream connection."""
    drip = Drip(16 * 1024, 0.02)
    body_server.handlers["/drip"] = drip
    body_server.handlers["/ok"] = fixed_body(b"1")
    gw = gateway({"svc": service(body_server.url)},
                 [route("/drip", [call("r", "svc", "/drip")],
                        deadline_ms=8000),
                  route("/ok", [call("r", "svc", "/ok")])],
                 max_response_body_bytes=256 * 1024)

    resp = gw.get("/drip")

    err = assert_bad_response(resp)
    assert "max_response_body_bytes limit of 262144 bytes" in err["message"], err
    # 17 pieces pass the limit: 340 ms at 20 ms each, plus slack for a
    # loaded machine, far from the 8 s deadline.
    assert resp.elapsed < 3.0, resp
    deadline = time.monotonic() + 3.0
    while drip.closed_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert drip.closed_at is not None, "the gateway kept the connection"
    # The write that fails comes at most a few pieces after the close.
    assert drip.closed_at - drip.started_at < 3.5
    assert_alive(gw)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS line")


# ---------------------------------------------------- strings and bytes


NUL_BODIES = [
    rb'{"k\u0000ey":"v\u0000al"}',
    rb'"\u0000"',
    rb'["a\u0000", {"\u0000": {"\u0000\u0000": null}}]',
    rb'{"\u0000":1,"\u0000":2}',
]


def test_nul_escapes_kept(gateway, faultd):
    """\\u0000 in strings and in keys is valid JSON and reaches the client
    as the same six bytes."""
    gw = body_gateway(gateway, faultd.h1_url, [raw_path(b) for b in NUL_BODIES])

    for i, body in enumerate(NUL_BODIES):
        resp = gw.get(f"/b/{i}")
        assert resp.status == 200, resp
        assert resp.body == b'{"r":' + body + b"}", resp
    assert_alive(gw)


INVALID_UTF8 = {
    "lone-ff": b'"\xff"',
    "continuation": b'"a\x80b"',
    "overlong-slash": b'"\xc0\xaf"',
    "surrogate": b'"\xed\xa0\x80"',
    "above-10ffff": b'"\xf4\x90\x80\x80"',
    "cut-at-end": b'"\xe2\x82"',
    "in-key": b'{"\xfe":1}',
    "outside-string": b"[1,\xff]",
}


@pytest.mark.parametrize("name", list(INVALID_UTF8))
def test_invalid_utf8_rejected(gateway, faultd, name):
    """A body with bytes that are not UTF-8 is a 502 bad_response, and
    none of its bytes reach the client, in the body or in the message:
    the whole response is valid UTF-8."""
    body = INVALID_UTF8[name]
    gw = body_gateway(gateway, faultd.h1_url, [raw_path(body)])

    resp = gw.get("/b/0")

    err = assert_bad_response(resp)
    resp.body.decode("utf-8")  # raises on any invalid byte
    for byte in body:
        if byte >= 0x80:
            assert bytes([byte]) not in resp.body, resp
    assert "UTF-8" in err["message"], err
    assert_alive(gw)


# ------------------------------------------------------- keys and values


DUPLICATES = [
    b'{"a":1,"a":2}',
    b'{"a":{"b":1},"a":[2],"a":null}',
    b'[{"x":"1","x":"2"}]',
    # A \u0000 escape in the same body, so no shortcut applies.
    b'{"a":"\\u0000","a":"z"}',
]


def test_duplicate_keys_passed_as_written(gateway, faultd):
    """Duplicate keys are neither rejected nor merged: every member is
    passed on, in the order the service wrote them."""
    gw = body_gateway(gateway, faultd.h1_url, [raw_path(b) for b in DUPLICATES])

    for i, body in enumerate(DUPLICATES):
        resp = gw.get(f"/b/{i}")
        assert resp.status == 200, resp
        assert resp.body == b'{"r":' + body + b"}", resp
    assert_alive(gw)


NUMBERS = [
    b"1e400",
    b"-1e400",
    b"2E+10000",
    b"1e-400",
    b"123456789012345678901234567890",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"0.1000000000000000055511151231257827021181583404541015625",
    b"-0",
    b"-0.0e-0",
    b'{"n":1e999,"m":[99999999999999999999999999999999e999]}',
]


def test_big_numbers_kept_as_written(gateway, faultd):
    """Numbers beyond the range of a double or a 64-bit integer are valid
    JSON; the client gets them digit for digit."""
    gw = body_gateway(gateway, faultd.h1_url, [raw_path(b) for b in NUMBERS])

    for i, body in enumerate(NUMBERS):
        resp = gw.get(f"/b/{i}")
        assert resp.status == 200, (body, resp)
        assert resp.body == b'{"r":' + body + b"}", resp
    assert_alive(gw)


NON_OBJECTS = [b"[1,2,3]", b"[]", b'"text"', b"42", b"-1.5", b"true",
               b"false", b"null", b' [ 1 , {"a" : [ ] } ] ']


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_non_object_bodies_placed_unchanged(gateway, faultd, scheme):
    """Arrays, scalars and null are valid results: each lands under the
    call's name byte for byte, white space included."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = body_gateway(gateway, url, [raw_path(b) for b in NON_OBJECTS])

    for i, body in enumerate(NON_OBJECTS):
        resp = gw.get(f"/b/{i}")
        assert resp.status == 200, resp
        assert resp.body == b'{"r":' + body + b"}", resp
    assert_alive(gw)
