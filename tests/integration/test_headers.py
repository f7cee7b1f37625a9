"""Header policy: forward_headers and set_headers per service, CR/LF/NUL
rejection, X-Forwarded-* with and without trusted_proxies, and hop-by-hop
fields removed in both directions."""

import json
import socket

import pytest

from conftest import call, route, run_tutti, service


def policy_service(url, **policy):
    svc = service(url)
    svc.update(policy)
    return svc


def raw_request(port, head):
    """Send |head| (request line and fields, without the blank line) on a
    new connection and return the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_forwarded_and_static_headers(gateway, faultd):
    """A service gets the inbound fields it forwards and the ones it sets,
    with placeholders expanded and encoded; a service without a policy
    gets neither."""
    gw = gateway(
        {"users": policy_service(
            faultd.h2_url,
            forward_headers=["X-Tenant", "Authorization", "X-Hidden"],
            set_headers={"X-User": "{user}", "X-Static": "fixed value",
                         "X-Query": "q={query.q}", "X-Hidden": "from-config"}),
         "plain": service(faultd.h1_url)},
        [route("/u/{user}", [call("a", "users", "/a"),
                             call("b", "plain", "/b")])])

    resp = gw.get("/u/al%20ice?q=1%0D%0AX-Evil:%202",
                  headers={"X-Tenant": "acme", "Authorization": "Bearer t",
                           "X-Other": "not forwarded",
                           "X-Hidden": "from-client"})

    assert resp.status == 200, resp
    body = resp.json()
    got = body["a"]["headers"]
    assert got["x-tenant"] == "acme"
    assert got["authorization"] == "Bearer t"
    assert got["x-user"] == "al ice"
    assert got["x-static"] == "fixed value"
    # CR and LF from the query are percent-encoded, never sent raw.
    assert got["x-query"] == "q=1%0D%0AX-Evil: 2"
    assert "x-evil" not in got
    # set_headers wins over a forwarded field of the same name.
    assert got["x-hidden"] == "from-config"
    assert "x-other" not in got
    plain = body["b"]["headers"]
    for name in ("x-tenant", "authorization", "x-user", "x-static",
                 "x-other"):
        assert name not in plain, plain


def test_inbound_cr_rejected(gateway, faultd):
    """An inbound value with a bare CR gets 400 and no call is made."""
    gw = gateway({"users": policy_service(faultd.h2_url,
                                          forward_headers=["X-Tenant"])},
                 [route("/u", [call("a", "users", "/a")])])

    data = raw_request(gw.port, b"GET /u HTTP/1.1\r\nHost: x\r\n"
                       b"X-Tenant: a\rX-Evil: 1")

    assert data.startswith(b"HTTP/1.1 400"), data[:300]
    assert b"contains a control character" in data, data
    assert faultd.select(event="request") == []


@pytest.mark.parametrize("field", [b"Host: a\x01b", b"X-Tenant: a\x1b[31m",
                                   b"X-Tenant: a\x7fb"],
                         ids=["host", "forwarded", "del"])
def test_inbound_control_byte_rejected(gateway, faultd, field):
    """Any control byte but tab in an inbound value gets 400 before a call
    starts: copied into X-Forwarded-Host or a forwarded field it would make
    an HTTP/2 service reset the stream, and count against the endpoint."""
    gw = gateway({"users": policy_service(faultd.h2_url,
                                          forward_headers=["X-Tenant"])},
                 [route("/u", [call("a", "users", "/a")])])

    head = b"GET /u HTTP/1.1\r\n"
    if not field.startswith(b"Host:"):
        head += b"Host: x\r\n"
    data = raw_request(gw.port, head + field)

    assert data.startswith(b"HTTP/1.1 400"), data[:300]
    assert b"contains a control character" in data, data
    if b"\x7f" in field:
        assert b"or DEL 0x7F" in data, data
    assert faultd.select(event="request") == []


def test_inbound_tab_allowed(gateway, faultd):
    """A tab is allowed inside a field value and is forwarded."""
    gw = gateway({"users": policy_service(faultd.h2_url,
                                          forward_headers=["X-Tenant"])},
                 [route("/u", [call("a", "users", "/a")])])

    data = raw_request(gw.port, b"GET /u HTTP/1.1\r\nHost: x\r\n"
                       b"X-Tenant: a\tb")

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    assert json.loads(body)["a"]["headers"]["x-tenant"] == "a\tb"


def test_inbound_nul_never_forwarded(gateway, faultd):
    """A NUL in an inbound value never reaches a service. libmicrohttpd
    0.9.75 ends the value at the NUL before the access handler runs, so
    the request goes on with the bytes before it. A 400 would need the raw
    bytes, which libmicrohttpd does not pass on."""
    gw = gateway({"users": policy_service(faultd.h2_url,
                                          forward_headers=["X-Tenant"])},
                 [route("/u", [call("a", "users", "/a")])])

    data = raw_request(gw.port, b"GET /u HTTP/1.1\r\nHost: x\r\n"
                       b"X-Tenant: a\x00X-Evil: 1")

    head, _, body = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 400"):
        return
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    got = json.loads(body)["a"]["headers"]
    assert got["x-tenant"] == "a", got
    assert "x-evil" not in got, got


def test_check_rejects_crlf_static_value(tmp_path):
    """`tutti check` rejects a static value with CR/LF and reserved or
    invalid names, one line per problem."""
    config = {
        "services": {"users": {
            "url": "http://127.0.0.1:9101",
            "set_headers": {"X-A": "a\r\nX-Evil: 1", "Host": "h"},
            "forward_headers": ["Connection", "X Bad"]}},
        "routes": [{"method": "GET", "path": "/u",
                    "calls": [{"name": "a", "service": "users",
                               "path": "/a"}]}],
        "trusted_proxies": ["10.0.0.0/99"],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))

    result = run_tutti(["check", str(path)], tmp_path)

    assert result.returncode == 2, result
    lines = result.stderr.strip().split("\n")
    assert lines == [
        f"{path}: services.users.forward_headers[0]: header \"Connection\" "
        "is a hop-by-hop field, which is never forwarded; remove it",
        f"{path}: services.users.forward_headers[1]: invalid header name "
        "\"X Bad\": expected an HTTP token of letters, digits and "
        "!#$%&'*+-.^_`|~",
        f"{path}: services.users.set_headers.X-A: invalid header value "
        "\"a\\x0D\\x0AX-Evil: 1\": a header value must not contain CR or LF "
        "(offset 1), which would end the field early",
        f"{path}: services.users.set_headers.Host: header \"Host\" is set "
        "by tutti on every call; remove it",
        f"{path}: trusted_proxies[0]: invalid network \"10.0.0.0/99\": "
        "expected an IPv4 or IPv6 address with an optional /BITS prefix "
        "length, such as 10.0.0.0/8 or fd00::/8",
    ], result.stderr


def forwarded_gateway(gateway, faultd, **top):
    return gateway({"h2": service(faultd.h2_url),
                    "h1": service(faultd.h1_url)},
                   [route("/f", [call("a", "h2", "/a"),
                                 call("b", "h1", "/b")])], **top)


FORWARDED_HEAD = (b"GET /f HTTP/1.1\r\nHost: gw.example:8443\r\n"
                  b"X-Forwarded-For: 203.0.113.9\r\n"
                  b"X-Forwarded-For: 198.51.100.7, 10.0.0.2\r\n"
                  b"X-Forwarded-Proto: https\r\n"
                  b"X-Forwarded-Host: shop.example")


def echo_headers(data):
    """Return the echoed headers of calls a and b from a raw response."""
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    parsed = json.loads(body)
    return parsed["a"]["headers"], parsed["b"]["headers"]


def test_forwarded_for_untrusted_peer(gateway, faultd):
    """From a peer outside trusted_proxies, the inbound X-Forwarded-*
    fields are dropped: one X-Forwarded-For with the peer alone, proto
    http, and the Host as X-Forwarded-Host."""
    gw = forwarded_gateway(gateway, faultd,
                           trusted_proxies=["10.0.0.0/8", "::1/128"])

    for headers in echo_headers(raw_request(gw.port, FORWARDED_HEAD)):
        # faultd joins repeated fields with ", ", so one exact value
        # proves there was one field.
        assert headers["x-forwarded-for"] == "127.0.0.1", headers
        assert headers["x-forwarded-proto"] == "http", headers
        assert headers["x-forwarded-host"] == "gw.example:8443", headers


def test_forwarded_for_trusted_peer(gateway, faultd):
    """From a trusted peer the inbound list gets the peer appended, in one
    field, and the inbound proto and host are kept."""
    gw = forwarded_gateway(gateway, faultd, trusted_proxies=["127.0.0.0/8"])

    for headers in echo_headers(raw_request(gw.port, FORWARDED_HEAD)):
        assert headers["x-forwarded-for"] == \
            "203.0.113.9, 198.51.100.7, 10.0.0.2, 127.0.0.1", headers
        assert headers["x-forwarded-proto"] == "https", headers
        assert headers["x-forwarded-host"] == "shop.example", headers


def test_forwarded_for_trusted_without_list(gateway, faultd):
    """A trusted peer that sends no X-Forwarded-* fields gets the peer,
    http and its Host."""
    gw = forwarded_gateway(gateway, faultd, trusted_proxies=["127.0.0.1"])

    resp = gw.get("/f")

    assert resp.status == 200, resp
    got = resp.json()["a"]["headers"]
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-forwarded-host"] == f"127.0.0.1:{gw.port}"


def test_hop_by_hop_inbound_removed(gateway, faultd):
    """Hop-by-hop fields, and fields the client names in Connection, are
    not forwarded even when forward_headers lists them."""
    gw = gateway({"users": policy_service(
        faultd.h2_url, forward_headers=["X-Tenant", "X-Hop", "X-Also-Hop"])},
        [route("/u", [call("a", "users", "/a")])])

    data = raw_request(gw.port, b"GET /u HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: X-Hop\r\nConnection: x-also-hop\r\n"
                       b"Keep-Alive: timeout=5\r\nTE: trailers\r\n"
                       b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
                       b"Proxy-Connection: keep-alive\r\n"
                       b"X-Hop: 1\r\nX-Also-Hop: 2\r\nX-Tenant: acme")

    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    got = json.loads(body)["a"]["headers"]
    assert got["x-tenant"] == "acme"
    for name in ("connection", "keep-alive", "te", "proxy-authorization",
                 "proxy-connection", "x-hop", "x-also-hop"):
        assert name not in got, got


def test_hop_by_hop_response_removed(gateway, faultd):
    """A downstream response's hop-by-hop fields (here Keep-Alive and
    Connection: close) never reach the client: tutti copies no response
    field from a service."""
    gw = gateway({"h1": service(faultd.h1_url)},
                 [route("/r", [call("a", "h1", "/a?keepalive_timeout=7"),
                               call("b", "h1", "/b?close=1")])])

    resp = gw.get("/r")

    assert resp.status == 200, resp
    assert resp.header("Keep-Alive") is None, resp
    connection = (resp.header("Connection") or "").lower()
    assert "close" not in connection, resp
    # The downstream fields did exist: the calls went to an HTTP/1.1
    # server that sent them.
    assert len(faultd.select(event="request")) == 2
