"""Request-Timeout-Ms: it shortens the route deadline (never lengthens
it), each call carries its effective timeout, and a malformed value is a
400."""

import pytest

from conftest import (WORKERS, assert_json_response, call, error_of, route,
                      service)


@pytest.mark.parametrize("workers", WORKERS)
def test_header_shortens_deadline(gateway, faultd, workers):
    """A 1000 ms route with Request-Timeout-Ms: 100 gets 504 deadline
    in about 100 ms."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a?delay_ms=3000")],
                        deadline_ms=1000)],
                 workers=workers)

    resp = gw.get("/x", headers={"Request-Timeout-Ms": "100"})

    assert resp.status == 504, resp
    assert error_of(resp)["kind"] == "deadline"
    assert resp.elapsed >= 0.09, resp
    assert resp.elapsed < 0.5, resp


def test_header_never_lengthens_deadline(gateway, faultd):
    """A larger Request-Timeout-Ms than the route deadline is ignored."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a?delay_ms=3000")],
                        deadline_ms=200)])

    resp = gw.get("/x", headers={"Request-Timeout-Ms": "5000"})

    assert resp.status == 504, resp
    assert error_of(resp)["kind"] == "deadline"
    assert resp.elapsed < 0.8, resp


def test_header_past_int64_is_capped(gateway, faultd):
    """A value too large for any integer type is still a non-negative
    integer: the route's deadline applies, as for 5000."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a")], deadline_ms=500)])

    for value in ("9223372036854775807", "9223372036854775808",
                  "1" + "0" * 40):
        resp = gw.get("/x", headers={"Request-Timeout-Ms": value})
        assert resp.status == 200, (value, resp)
    resp = gw.get("/x", headers={"Request-Timeout-Ms": "-9" + "0" * 40})
    assert resp.status == 400, resp


def timeout_seen(faultd, path):
    [request] = faultd.select(event="request", path=path)
    value = request["request_timeout_ms"]
    assert value is not None, request
    return int(value)


def test_timeout_propagated_to_calls(gateway, faultd):
    """Each call carries request-timeout-ms no larger than the remaining
    budget: the inbound header, or the call's own smaller timeout."""
    gw = gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                 [route("/x", [
                     call("a", "h2", "/a"),
                     call("b", "h1", "/b"),
                     call("c", "h2", "/c", timeout_ms=150),
                 ], deadline_ms=1000)])

    resp = gw.get("/x", headers={"Request-Timeout-Ms": "300"})

    assert resp.status == 200, resp
    body = resp.json()
    for name, path in (("a", "/a"), ("b", "/b")):
        seen = timeout_seen(faultd, path)
        assert 0 < seen <= 300, (path, seen)
        echoed = int(body[name]["headers"]["request-timeout-ms"])
        assert 0 < echoed <= 300, (name, echoed)
    seen_c = timeout_seen(faultd, "/c")
    assert 0 < seen_c <= 150, seen_c


def test_route_deadline_propagated(gateway, faultd):
    """Without the inbound header the route deadline bounds the value."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a")], deadline_ms=700)])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    seen = timeout_seen(faultd, "/a")
    assert 0 < seen <= 700, seen


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "10ms", "+5",
                                   "0x10", ""])
def test_invalid_header_400(gateway, faultd, value):
    """A Request-Timeout-Ms that is not a non-negative integer is a 400
    JSON error and no call is made."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a")], deadline_ms=1000)])

    resp = gw.get("/x", headers={"Request-Timeout-Ms": value})

    assert resp.status == 400, resp
    assert_json_response(resp)
    assert "error" in resp.json()
    assert faultd.select(event="request") == []


def test_header_with_trailing_space_accepted(gateway, faultd):
    """Whitespace around the value is allowed, as for any field value."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a?delay_ms=500")],
                        deadline_ms=3000)])

    resp = gw.get("/x", headers={"Request-Timeout-Ms": "100 "})

    assert resp.status == 504, resp
    assert resp.json()["error"]["kind"] == "deadline", resp
