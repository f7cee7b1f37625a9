"""X-Request-Id: a valid inbound id (printable ASCII, at most 128 bytes)
is kept, anything else is replaced by a generated one, and the id is
sent on every call and returned on the response."""

import pytest

from conftest import call, route, service


def id_gateway(gateway, faultd):
    return gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                   [route("/x", [call("a", "h2", "/a"),
                                 call("b", "h1", "/b")])])


def assert_generated(resp, sent=None):
    """Check that the response carries a valid id that every call got."""
    returned = resp.header("X-Request-Id")
    assert returned, resp
    assert returned != sent, resp
    assert len(returned.encode()) <= 128, returned
    assert all(0x21 <= ord(ch) <= 0x7e for ch in returned), returned
    body = resp.json()
    assert body["a"]["headers"]["x-request-id"] == returned, body
    assert body["b"]["headers"]["x-request-id"] == returned, body
    return returned


@pytest.mark.parametrize("request_id", [
    "abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "x" * 128,
    "punctuation!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~",
])
def test_valid_id_kept_and_forwarded(gateway, faultd, request_id):
    """A printable id of at most 128 bytes is returned and sent on every
    call (h2c and HTTP/1.1) and named in faultd's request events."""
    gw = id_gateway(gateway, faultd)

    resp = gw.get("/x", headers={"X-Request-Id": request_id})

    assert resp.status == 200, resp
    assert resp.header("X-Request-Id") == request_id
    body = resp.json()
    assert body["a"]["headers"]["x-request-id"] == request_id
    assert body["b"]["headers"]["x-request-id"] == request_id
    for ev in faultd.select(event="request"):
        assert ev["request_id"] == request_id, ev


def test_missing_id_generated(gateway, faultd):
    """Without X-Request-Id the gateway makes one, sends it on every call
    and returns it; two requests get different ids."""
    gw = id_gateway(gateway, faultd)

    first = gw.get("/x")
    second = gw.get("/x")

    assert first.status == 200, first
    assert second.status == 200, second
    one = assert_generated(first)
    two = assert_generated(second)
    assert one != two
    line = gw.wait_access(request_id=one)
    assert line is not None, gw.proc.stderr()[-3000:]


@pytest.mark.parametrize("request_id", [
    "x" * 129, "bad\x01id", "caf\xe9", "tab\tinside",
], ids=["too-long", "control-char", "non-ascii", "tab"])
def test_invalid_id_replaced(gateway, faultd, request_id):
    """An id that is too long or not printable ASCII is replaced."""
    gw = id_gateway(gateway, faultd)

    resp = gw.get("/x", headers={"X-Request-Id": request_id})

    assert resp.status == 200, resp
    assert_generated(resp, sent=request_id)
