"""HTTP/1.1 keep-alive pool against faultd: servers that close idle
connections, requests lost on a reused connection, chunk extensions and
trailers, truncated bodies, Connection: close, Keep-Alive: timeout and
the connection cap. A small server in this file sends bytes that no
request asked for, which faultd never does."""

import socket
import ssl
import threading
import time
import uuid

import pytest

from conftest import EVENT_WAIT_S, call, error_of, route


def h1_gateway(gateway, server, path, method="GET", deadline_ms=3000,
               **options):
    """Start a gateway whose /x/{n} route makes one call to |path| (a
    template that may use {n}) on |server| over HTTP/1.1."""
    svc = {"url": server.h1_url}
    svc.update(options)
    return gateway({"svc": svc},
                   [route("/x/{n}", [call("a", "svc", path, method=method)],
                          method=method, deadline_ms=deadline_ms)])


def marker():
    return f"id={uuid.uuid4().hex}"


def request_conns(server):
    """Return the faultd connection of each request, in order."""
    return [ev["conn"] for ev in server.select(event="request")]


# ------------------------------------------------- stale connections


def test_stale_keepalive_not_502(gateway, start_faultd):
    """A server that closes keep-alive connections idle for 300 ms: a call
    after the close gets a fresh connection, never a 502."""
    server = start_faultd("closer", args=["--idle-close-ms", "300"])
    gw = h1_gateway(gateway, server, "/p/{n}")

    assert gw.get("/x/0").status == 200
    assert server.wait_for(event="conn_close", by="self", timeout=3.0)
    resp = gw.get("/x/1")

    assert resp.status == 200, resp
    conns = request_conns(server)
    assert len(conns) == 2
    assert conns[0] != conns[1], server.events()


def test_stale_keepalive_race(gateway, start_faultd):
    """Calls sent around the moment the server closes the idle
    connection all succeed: the close either is seen before reuse or the
    lost request is retried on a new connection."""
    server = start_faultd("racer", args=["--idle-close-ms", "300"])
    gw = h1_gateway(gateway, server, "/p/{n}")

    for n, pause in enumerate([0.27, 0.29, 0.30, 0.30, 0.31, 0.33] * 2):
        resp = gw.get(f"/x/{n}")
        assert resp.status == 200, (n, resp)
        time.sleep(pause)

    resp = gw.get("/x/last")
    assert resp.status == 200, resp


def test_reused_connection_closed_without_answer_retried(gateway,
                                                         start_faultd):
    """A GET whose reused connection is closed before any response byte is
    retried once on a new connection."""
    server = start_faultd("dropper")
    once = f"action=goaway&times=1&{marker()}"
    gw = gateway({"svc": {"url": server.h1_url}},
                 [route("/warm", [call("a", "svc", "/warm")]),
                  route("/x", [call("a", "svc", f"/drop?{once}")],
                        deadline_ms=3000)])

    assert gw.get("/warm").status == 200
    resp = gw.get("/x")

    assert resp.status == 200, resp
    conns = request_conns(server)
    assert len(conns) == 3, server.events()
    assert conns[0] == conns[1], server.events()
    assert conns[2] != conns[1], server.events()


def test_reused_connection_post_not_retried(gateway, start_faultd):
    """A POST that was written on a reused connection and got no response is
    not sent again (it may have been processed): 502 kind reset."""
    server = start_faultd("post-dropper")
    gw = gateway({"svc": {"url": server.h1_url}},
                 [route("/warm", [call("a", "svc", "/warm")]),
                  route("/x", [call("a", "svc", "/drop?action=goaway",
                                    method="POST")],
                        method="POST", deadline_ms=3000)])

    assert gw.get("/warm").status == 200
    resp = gw.request("POST", "/x", body=b"{}")

    assert resp.status == 502, resp
    assert error_of(resp)["kind"] == "reset", resp
    assert len(server.select(event="request", path="/drop")) == 1, \
        server.events()


# -------------------------------------------------------------- framing


@pytest.mark.parametrize("query", [
    "chunked=1&ext=1",
    "chunked=1&trailers=1",
    "chunked=1&ext=1&trailers=1",
    "chunked=1&ext=1&trailers=1&body=huge&size=300000",
])
def test_chunked_ext_trailers_then_reuse(gateway, start_faultd, query):
    """Chunk extensions and trailers are parsed, the body is complete, and
    the connection serves the next request."""
    server = start_faultd("chunks")
    gw = h1_gateway(gateway, server, f"/c/{{n}}?{query}")

    first = gw.get("/x/1")
    second = gw.get("/x/2")

    for n, resp in ((1, first), (2, second)):
        assert resp.status == 200, resp
        value = resp.json()["a"]
        if "body=huge" in query:
            assert len(value) == 300000 - 2
        else:
            assert value["path"] == f"/c/{n}?{query}", value
    conns = request_conns(server)
    assert len(conns) == 2
    assert conns[0] == conns[1], server.events()


@pytest.mark.parametrize("query", [
    "truncate=10",
    "body=huge&size=100000&truncate=50000",
    "chunked=1&truncate=10",
    "chunked=1&body=huge&size=1000&truncate=1000",
])
def test_truncated_body_bad_response(gateway, start_faultd, query):
    """A body cut short (below its Content-Length, or chunked without the
    last chunk) is 502 bad_response, and the next call uses a new
    connection."""
    server = start_faultd("cutter")
    gw = gateway({"svc": {"url": server.h1_url}},
                 [route("/x", [call("a", "svc", f"/t?{query}")],
                        deadline_ms=3000),
                  route("/ok", [call("a", "svc", "/ok")])])

    resp = gw.get("/x")

    assert resp.status == 502, resp
    assert error_of(resp)["kind"] == "bad_response", resp
    assert resp.elapsed < 2.0, resp
    assert gw.get("/ok").status == 200
    conns = request_conns(server)
    assert conns[0] != conns[1], server.events()


def test_connection_close_honoured(gateway, start_faultd):
    """After a response with Connection: close, the next call opens a new
    connection."""
    server = start_faultd("closing")
    gw = h1_gateway(gateway, server, "/p/{n}?close=1")

    assert gw.get("/x/1").status == 200
    assert gw.get("/x/2").status == 200

    conns = request_conns(server)
    assert conns[0] != conns[1], server.events()
    assert not server.select(event="cancel"), server.events()


def test_pool_idle_below_keepalive_timeout(gateway, start_faultd):
    """With Keep-Alive: timeout=1 from the server, the gateway closes its
    idle connection before the server's one second is up, so the server
    (which closes at 1.5 s) never closes it first."""
    server = start_faultd("ka", args=["--idle-close-ms", "1500"])
    gw = h1_gateway(gateway, server, "/p/{n}?keepalive_timeout=1",
                    idle_timeout_ms=30000)

    assert gw.get("/x/1").status == 200
    closed = server.wait_for(event="conn_close", timeout=4.0)

    assert closed, server.events()
    assert closed[0]["by"] == "peer", closed
    answered = server.select(event="response")[0]["t"]
    assert closed[0]["t"] - answered < 1.2, (closed, answered)


def test_idle_timeout_closes_connection(gateway, start_faultd):
    """The pool closes a connection idle for idle_timeout_ms."""
    server = start_faultd("idle-h1")
    gw = h1_gateway(gateway, server, "/p/{n}", idle_timeout_ms=300)

    assert gw.get("/x/1").status == 200
    closed = server.wait_for(event="conn_close", timeout=3.0)

    assert closed, server.events()
    assert closed[0]["by"] == "peer", closed


def test_max_connections_caps_pool(gateway, start_faultd):
    """With max_connections 2, six concurrent calls use two connections,
    one request at a time on each, and all succeed."""
    server = start_faultd("capped-h1")
    gw = gateway({"svc": {"url": server.h1_url, "max_connections": 2}},
                 [route("/x", [call(f"c{i}", "svc", f"/c{i}?delay_ms=150")
                               for i in range(6)], deadline_ms=5000)])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert len(set(request_conns(server))) <= 2, server.events()
    assert resp.elapsed >= 0.4, resp


# ------------------------------------------------ unrequested bytes

STRAY_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 14\r\n\r\n{\"injected\":1}")

# Content-Length of a HEAD response is the size a GET would get, so
# this body is announced but not expected. A server that sends it anyway
# sends bytes that no request asked for.
HEAD_BODY = b'{"ok":true}'
HEAD_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(HEAD_BODY))


def json_response(target):
    """A response whose body names the request target."""
    body = b'{"path":"%s"}' % target.encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


class StrayServer:
    """A keep-alive HTTP/1.1 server on 127.0.0.1, optionally over TLS. It
    responds to each request with a body naming its target and, on the
    paths below, also sends bytes that no request asked for:

    - /late: a second response 100 ms after the first.
    - /late-head: a HEAD response, and 50 ms later the body it announced.
    - /double: a second response in the same write as the first.
    - /head-body: a HEAD response and the body it announced in one write.
    - /split-records: with TLS, the response and a second response as two
      TLS records in one TCP segment.

    It records each request and each close, with the connection's number
    in accept order."""

    def __init__(self, tls_context=None):
        self.tls_context = tls_context
        self.events = []
        self.changed = threading.Condition()
        self.conns = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _record(self, **event):
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def select(self, event):
        with self.changed:
            return [e for e in self.events if e["event"] == event]

    def wait_for(self, event, timeout=EVENT_WAIT_S):
        """Return the events named |event|, waiting for the first one."""
        with self.changed:
            self.changed.wait_for(
                lambda: any(e["event"] == event for e in self.events),
                timeout=timeout)
        return self.select(event)

    def _accept(self):
        number = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            number += 1
            t = threading.Thread(target=self._serve, args=(conn, number),
                                 daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn, number):
        conn.settimeout(5.0)
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            self.conns[number] = conn
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                method, target = head.decode().split(" ")[:2]
                self._record(event="request", conn=number, method=method,
                             target=target)
                self._answer(conn, method, target)
        except OSError:
            return
        finally:
            self._record(event="close", conn=number)
            conn.close()

    def _answer(self, conn, method, target):
        response = HEAD_RESPONSE if method == "HEAD" else json_response(target)
        if target == "/late":
            conn.sendall(response)
            time.sleep(0.1)
            conn.sendall(STRAY_RESPONSE)
        elif target == "/late-head":
            conn.sendall(response)
            time.sleep(0.05)
            conn.sendall(HEAD_BODY)
        elif target == "/double":
            conn.sendall(response + STRAY_RESPONSE)
        elif target == "/head-body":
            conn.sendall(response + HEAD_BODY)
        elif target == "/split-records":
            # Each sendall on a TLS socket is one record. The cork keeps
            # both back until they leave in one segment.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            conn.sendall(response)
            conn.sendall(STRAY_RESPONSE)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        else:
            conn.sendall(response)

    def stop(self):
        # shutdown, unlike close, wakes a thread blocked in accept or recv.
        for sock in [self.sock] + list(self.conns.values()):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sock.close()
        self.acceptor.join(timeout=2)
        for t in self.threads:
            t.join(timeout=2)


@pytest.fixture
def stray_server():
    server = StrayServer()
    yield server
    server.stop()


def stray_gateway(gateway, url, first_path, first_method="GET", **options):
    """A gateway with /first calling |first_path| and /own/{n} calling
    /own/{n}, both on one service at |url|."""
    svc = {"url": url}
    svc.update(options)
    return gateway({"svc": svc},
                   [route("/first", [call("a", "svc", first_path,
                                          method=first_method)],
                          deadline_ms=3000),
                    route("/own/{n}", [call("a", "svc", "/own/{n}")],
                          deadline_ms=3000)])


def assert_own_result(gw, server, n):
    """The next call gets its own response, on a new connection."""
    resp = gw.get(f"/own/{n}")

    assert resp.status == 200, resp
    assert resp.json() == {"a": {"path": f"/own/{n}"}}, resp
    requests = server.select("request")
    assert requests[-1]["target"] == f"/own/{n}", requests
    assert requests[-1]["conn"] != requests[0]["conn"], server.events


@pytest.mark.parametrize("path,method,first", [
    ("/late", "GET", {"path": "/late"}),
    ("/late-head", "HEAD", None),
    ("/double", "GET", {"path": "/double"}),
    ("/head-body", "HEAD", None),
])
def test_unrequested_bytes_close_connection(gateway, stray_server, path,
                                            method, first):
    """Bytes after a complete response (a second response, a body after a
    HEAD response), in the same write or later while the connection is
    idle, close the connection. The next call gets its own response on a
    new connection."""
    gw = stray_gateway(gateway, f"http://127.0.0.1:{stray_server.port}",
                       path, first_method=method)

    resp = gw.get("/first")
    assert resp.status == 200, resp
    assert resp.json() == {"a": first}, resp
    assert stray_server.wait_for("close"), stray_server.events

    assert_own_result(gw, stray_server, 2)


def test_extra_tls_record_closes_connection(gateway, tls_pki):
    """With max_connections 1, the second call of a fan-out waits for the
    first call's connection. A TLS record that follows the first response
    in the same segment closes that connection, and the waiting call gets
    its own response on a new one, not the unrequested one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls_pki.server), str(tls_pki.server_key))
    context.set_alpn_protocols(["http/1.1"])
    server = StrayServer(tls_context=context)
    try:
        gw = gateway({"svc": {"url": f"https://127.0.0.1:{server.port}",
                              "ca_file": str(tls_pki.ca),
                              "max_connections": 1}},
                     [route("/pair", [call("a", "svc", "/split-records"),
                                      call("b", "svc", "/own/b")],
                            deadline_ms=3000)])

        resp = gw.get("/pair")

        assert resp.status == 200, resp
        assert resp.json() == {"a": {"path": "/split-records"},
                               "b": {"path": "/own/b"}}, resp
        requests = server.select("request")
        assert [r["target"] for r in requests] == ["/split-records",
                                                   "/own/b"], requests
        assert requests[0]["conn"] != requests[1]["conn"], requests
    finally:
        server.stop()
