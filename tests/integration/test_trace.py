"""W3C Trace Context. A valid inbound traceparent is continued, and an
invalid or missing one starts a new trace. Every call carries its own
span id under the request's trace id and, for a continued trace, the
inbound tracestate. The access line names the trace and the spans."""

import re
import socket

import pytest

from conftest import call, route, service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INBOUND = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def trace_gateway(gateway, faultd):
    return gateway({"h2": service(faultd.h2_url),
                    "h1": service(faultd.h1_url)},
                   [route("/t", [call("a", "h2", "/a"),
                                 call("b", "h1", "/b")])])


def call_traceparents(resp):
    """Return the parsed traceparent each call received, by call name."""
    body = resp.json()
    parsed = {}
    for name in ("a", "b"):
        value = body[name]["headers"].get("traceparent")
        assert value is not None, body[name]
        match = TRACEPARENT.match(value)
        assert match, value
        parsed[name] = match.groups()
    return parsed


def test_traceparent_continued(gateway, faultd):
    """Each call gets the inbound trace id and flags with a span id of
    its own, and the access line records trace, gateway span, client span
    and each call's span."""
    gw = trace_gateway(gateway, faultd)

    resp = gw.get("/t", headers={"traceparent": INBOUND,
                                 "X-Request-Id": "trace-continued"})

    assert resp.status == 200, resp
    sent = call_traceparents(resp)
    assert sent["a"][0] == TRACE_ID
    assert sent["b"][0] == TRACE_ID
    assert sent["a"][2] == "01"
    assert sent["a"][1] != PARENT_ID
    assert sent["a"][1] != sent["b"][1]
    access = gw.wait_access(request_id="trace-continued")
    assert access is not None, gw.proc.stderr()[-2000:]
    assert access["trace_id"] == TRACE_ID
    assert access["parent_span_id"] == PARENT_ID
    assert re.fullmatch(r"[0-9a-f]{16}", access["span_id"]), access
    assert access["span_id"] not in (PARENT_ID, sent["a"][1], sent["b"][1])
    spans = {c["name"]: c["span_id"] for c in access["calls"]}
    assert spans == {"a": sent["a"][1], "b": sent["b"][1]}


def test_sampled_flag_kept(gateway, faultd):
    """An unsampled trace stays unsampled downstream."""
    gw = trace_gateway(gateway, faultd)

    resp = gw.get("/t", headers={
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})

    assert resp.status == 200, resp
    sent = call_traceparents(resp)
    assert sent["a"][2] == "00"
    assert sent["b"][2] == "00"


def test_traceparent_generated(gateway, faultd):
    """Without traceparent a new trace starts: both calls share a random
    trace id, the access line names it, and two requests differ."""
    gw = trace_gateway(gateway, faultd)

    first = gw.get("/t", headers={"X-Request-Id": "trace-new-1"})
    second = gw.get("/t", headers={"X-Request-Id": "trace-new-2"})

    assert first.status == 200, first
    assert second.status == 200, second
    one = call_traceparents(first)
    two = call_traceparents(second)
    assert one["a"][0] == one["b"][0]
    assert one["a"][0] != "0" * 32
    assert one["a"][0] != two["a"][0]
    access = gw.wait_access(request_id="trace-new-1")
    assert access is not None
    assert access["trace_id"] == one["a"][0]
    assert "parent_span_id" not in access


def test_tracestate_passed_through(gateway, faultd):
    """The inbound tracestate reaches every call unchanged, repeated
    fields joined with a comma as RFC 9110 allows for lists."""
    gw = trace_gateway(gateway, faultd)
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

    resp = gw.get("/t", headers={"traceparent": INBOUND,
                                 "tracestate": state})

    assert resp.status == 200, resp
    body = resp.json()
    assert body["a"]["headers"]["tracestate"] == state
    assert body["b"]["headers"]["tracestate"] == state


@pytest.mark.parametrize("value", [
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",
    f"00-{'0' * 32}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{'0' * 16}-01",
    f"ff-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    "garbage",
], ids=["upper", "zero-trace", "zero-parent", "version-ff", "too-long",
        "short-trace", "garbage"])
def test_invalid_traceparent_replaced(gateway, faultd, value):
    """An invalid traceparent starts a new trace, and its tracestate is
    dropped with it."""
    gw = trace_gateway(gateway, faultd)

    resp = gw.get("/t", headers={"traceparent": value,
                                 "tracestate": "congo=t61rcWkgMzE",
                                 "X-Request-Id": "trace-invalid"})

    assert resp.status == 200, resp
    sent = call_traceparents(resp)
    assert sent["a"][0] != TRACE_ID.lower()
    assert sent["a"][0] == sent["b"][0]
    body = resp.json()
    assert "tracestate" not in body["a"]["headers"], body["a"]
    access = gw.wait_access(request_id="trace-invalid")
    assert access is not None
    assert access["trace_id"] == sent["a"][0]


def test_two_traceparent_fields_replaced(gateway, faultd):
    """Two traceparent fields make the context invalid: a new trace."""
    gw = trace_gateway(gateway, faultd)
    other = f"00-{'1' * 32}-{PARENT_ID}-01"

    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(("GET /t HTTP/1.1\r\nHost: x\r\n"
                   f"traceparent: {INBOUND}\r\ntraceparent: {other}\r\n"
                   "X-Request-Id: trace-two\r\nConnection: close\r\n\r\n")
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk

    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    access = gw.wait_access(request_id="trace-two")
    assert access is not None
    assert access["trace_id"] not in (TRACE_ID, "1" * 32)
    assert "parent_span_id" not in access
