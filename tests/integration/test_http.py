"""Inbound HTTP handling: routing errors, body limits, hop-by-hop headers
and forwarding of the inbound body."""

import json
import socket

import pytest

from conftest import assert_json_response, call, route, service


def http_gateway(gateway, faultd, url=None, **top):
    url = url or faultd.h2_url
    return gateway({"svc": service(url)},
                   [route("/items/{id}", [call("item", "svc", "/i/{id}")]),
                    route("/items/{id}", [
                        call("store", "svc", "/store/{id}", method="POST",
                             forward_body=True),
                        call("audit", "svc", "/audit/{id}", method="POST"),
                    ], method="PUT")], **top)


def test_unknown_path_404(gateway, faultd):
    """A path no route matches is a 404 JSON error and makes no call."""
    gw = http_gateway(gateway, faultd)

    resp = gw.get("/nothing/here")

    assert resp.status == 404, resp
    assert_json_response(resp)
    assert "error" in resp.json()
    assert faultd.select(event="request") == []


def test_other_method_405_with_allow(gateway, faultd):
    """A known path with another method is a 405 whose Allow header
    lists the methods the path has."""
    gw = http_gateway(gateway, faultd)

    resp = gw.request("DELETE", "/items/7")

    assert resp.status == 405, resp
    assert_json_response(resp)
    assert "error" in resp.json()
    allow = resp.header("Allow")
    assert allow is not None, resp
    methods = {m.strip() for m in allow.split(",")}
    assert {"GET", "PUT"} <= methods, allow
    assert "DELETE" not in methods, allow
    assert faultd.select(event="request") == []


def test_body_over_limit_413(gateway, faultd):
    """A request body over max_request_body_bytes is a 413."""
    gw = http_gateway(gateway, faultd, max_request_body_bytes=100)

    resp = gw.request("PUT", "/items/7", body=b"x" * 1000,
                      headers={"Content-Type": "application/json"})

    assert resp.status == 413, resp
    assert_json_response(resp)
    assert "max_request_body_bytes limit of 100 bytes" in \
        resp.json()["error"]["message"], resp
    assert faultd.select(event="request") == []


def test_body_at_limit_accepted(gateway, faultd):
    """A body of exactly max_request_body_bytes is accepted."""
    gw = http_gateway(gateway, faultd, max_request_body_bytes=100)
    body = json.dumps({"pad": "y" * 89}).encode()
    assert len(body) == 100

    resp = gw.request("PUT", "/items/7", body=body,
                      headers={"Content-Type": "application/json"})

    assert resp.status == 200, resp


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_forward_body_sent(gateway, faultd, scheme):
    """A call with forward_body sends the inbound body; one without
    sends none."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = http_gateway(gateway, faultd, url=url)
    payload = json.dumps({"name": "widget", "qty": 3})

    resp = gw.request("PUT", "/items/9", body=payload.encode(),
                      headers={"Content-Type": "application/json"})

    assert resp.status == 200, resp
    body = resp.json()
    assert body["store"]["method"] == "POST"
    assert body["store"]["path"] == "/store/9"
    assert body["store"]["body"] == payload
    assert body["audit"]["method"] == "POST"
    assert not body["audit"]["body"], body["audit"]


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_forward_body_chunked_inbound(gateway, faultd, scheme):
    """A chunked inbound body is forwarded whole, without the inbound
    Transfer-Encoding."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = http_gateway(gateway, faultd, url=url)
    parts = [b'{"part": ', b'"one", "more": ', b'"two"}']

    # http.client sends an iterator body chunked and adds the
    # Transfer-Encoding header itself.
    resp = gw.request("PUT", "/items/3", body=iter(parts),
                      headers={"Content-Type": "application/json"})

    assert resp.status == 200, resp
    store = resp.json()["store"]
    assert store["body"] == b"".join(parts).decode()
    if scheme == "h2":
        assert "transfer-encoding" not in store["headers"], store


HOP_BY_HOP = {
    "Keep-Alive": "timeout=99",
    "TE": "trailers",
    "Upgrade": "h2c",
    "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
    "Proxy-Connection": "keep-alive",
    "Proxy-Secret": "hop",
    "Connection": "keep-alive, X-Hop-Secret",
    "X-Hop-Secret": "listed in Connection",
}


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_hop_by_hop_not_forwarded(gateway, faultd, scheme):
    """Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade and Proxy-*
    headers sent by the client never reach a downstream."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = http_gateway(gateway, faultd, url=url)

    resp = gw.get("/items/1", headers=HOP_BY_HOP)

    assert resp.status == 200, resp
    seen = resp.json()["item"]["headers"]
    for name in ("keep-alive", "te", "upgrade", "proxy-authorization",
                 "proxy-connection", "proxy-secret"):
        assert name not in seen, (name, seen)
    for value in seen.values():
        assert "c2VjcmV0OnNlY3JldA" not in value, seen
    # The gateway may send its own Connection header on HTTP/1.1, but
    # never the client's; HTTP/2 has none at all.
    connection = seen.get("connection", "")
    assert "x-hop-secret" not in connection.lower(), seen
    if scheme == "h2":
        assert "connection" not in seen, seen
        assert "transfer-encoding" not in seen, seen


def raw_exchange(port, data, timeout=5.0):
    """Send |data| on a new connection and return everything the gateway
    writes until it closes the connection or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


def test_chunked_body_over_limit_413(gateway, faultd):
    """A chunked body over the limit (no Content-Length to reject early)
    still gets its 413, once the body has been read."""
    gw = http_gateway(gateway, faultd, max_request_body_bytes=100)

    resp = gw.request("PUT", "/items/7", body=iter([b"x" * 80] * 3),
                      headers={"Content-Type": "application/json"})

    assert resp.status == 413, resp
    assert_json_response(resp)
    assert "max_request_body_bytes limit of 100 bytes" in \
        resp.json()["error"]["message"], resp
    assert faultd.select(event="request") == []


@pytest.mark.parametrize("framing", [
    b"Content-Length: 3\r\nContent-Length: 4\r\n",
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
], ids=["two-lengths", "length-and-chunked"])
def test_ambiguous_framing_rejected(gateway, faultd, framing):
    """A request whose body length is ambiguous is rejected with 400 and
    the connection is closed, so no second request can be smuggled."""
    gw = http_gateway(gateway, faultd)

    out = raw_exchange(gw.port,
                       b"PUT /items/1 HTTP/1.1\r\nHost: x\r\n" + framing +
                       b"\r\n4\r\nabcd\r\n0\r\n\r\n", timeout=3.0)

    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 400"), out
    assert b"connection: close" in head, out
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert faultd.select(event="request") == []
