"""HTTP/1.1 keep-alive pool against faultd: servers that close idle
connections, requests lost on a reused connection, chunk extensions and
trailers, truncated bodies, Connection: close, Keep-Alive: timeout and
the connection cap."""

import time
import uuid

import pytest

from conftest import call, error_of, route


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
