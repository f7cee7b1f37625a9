"""Cancellation: the first required failure, the deadline and a client
that goes away all cancel the calls still in flight. h2c calls are
cancelled with RST_STREAM CANCEL on their stream only; HTTP/1.1 calls by
closing their connection."""

import socket
import time

import pytest

from conftest import (EVENT_WAIT_S, WORKERS, call, error_of, event_path,
                      route, service)

# RST_STREAM error code CANCEL (RFC 9113, section 7).
H2_CANCEL = 8

# How long after the response (or the client's close) a downstream may
# still see the cancellation. Loose for sanitizer builds on 2 cores.
CANCEL_BOUND_S = 0.15


def wait_cancels(faultd, paths):
    """Poll for a cancel event on each path in |paths|; return them keyed
    by path, failing when one has not come within EVENT_WAIT_S."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        by_path = {}
        for ev in faultd.select(event="cancel"):
            if event_path(ev) in paths:
                by_path.setdefault(event_path(ev), ev)
        if set(by_path) == set(paths) or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    assert set(by_path) == set(paths), faultd.events()
    return by_path


@pytest.mark.parametrize("workers", WORKERS)
def test_first_error_resets_h2_streams(gateway, faultd, workers):
    """A failing h2c call makes the gateway respond at once, and the slow calls on the same
    connection get RST_STREAM CANCEL and the connection stays open."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [
                     call("slow1", "svc", "/slow1?delay_ms=3000"),
                     call("slow2", "svc", "/slow2?delay_ms=3000"),
                     call("bad", "svc", "/bad?delay_ms=100&status=500"),
                 ], deadline_ms=5000)],
                 workers=workers)

    resp = gw.get("/x")

    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["call"] == "bad", err
    assert err["kind"] == "status", err
    assert resp.elapsed < 1.0, resp
    cancels = wait_cancels(faultd, {"/slow1", "/slow2"})
    for path, ev in cancels.items():
        assert ev["how"] == "rst_stream", ev
        assert ev["error_code"] == H2_CANCEL, ev
        assert ev["t"] - resp.done_at < CANCEL_BOUND_S, (ev, resp.done_at)
    conns = {ev["conn"] for ev in faultd.select(event="request")}
    time.sleep(0.3)
    for conn in conns:
        assert faultd.select(event="conn_close", conn=conn) == [], \
            faultd.events()


def test_h2_connection_survives_cancel(gateway, faultd):
    """After RST_STREAM cancellations the next request reuses the same
    h2c connection."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [
                     call("slow", "svc", "/slow?delay_ms=3000"),
                     call("bad", "svc", "/bad?status=500"),
                 ], deadline_ms=5000),
                  route("/ok", [call("ok", "svc", "/fine")])])

    first = gw.get("/x")
    assert first.status == 502, first
    wait_cancels(faultd, {"/slow"})
    second = gw.get("/ok")

    assert second.status == 200, second
    assert len(faultd.select(event="conn_open")) == 1, faultd.events()


@pytest.mark.parametrize("workers", WORKERS)
def test_first_error_closes_h1_calls(gateway, faultd, workers):
    """A failing HTTP/1.1 call makes the gateway respond at once, and the slow HTTP/1.1 calls
    are cancelled by closing their connections."""
    gw = gateway({"svc": service(faultd.h1_url)},
                 [route("/x", [
                     call("slow1", "svc", "/slow1?delay_ms=3000"),
                     call("slow2", "svc", "/slow2?delay_ms=3000"),
                     call("bad", "svc", "/bad?delay_ms=100&status=500"),
                 ], deadline_ms=5000)],
                 workers=workers)

    resp = gw.get("/x")

    assert resp.status == 502, resp
    assert error_of(resp)["call"] == "bad"
    assert resp.elapsed < 1.0, resp
    cancels = wait_cancels(faultd, {"/slow1", "/slow2"})
    for ev in cancels.values():
        assert ev["how"] == "close", ev
        assert ev["t"] - resp.done_at < CANCEL_BOUND_S, (ev, resp.done_at)


def test_first_error_mixed_protocols(gateway, faultd):
    """A failure on one protocol cancels the calls on the other."""
    gw = gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                 [route("/x", [
                     call("slow_h2", "h2", "/slow_h2?delay_ms=3000"),
                     call("slow_h1", "h1", "/slow_h1?delay_ms=3000"),
                     call("bad", "h1", "/bad?action=reset"),
                 ], deadline_ms=5000)])

    resp = gw.get("/x")

    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["call"] == "bad", err
    assert err["kind"] == "reset", err
    assert resp.elapsed < 1.0, resp
    cancels = wait_cancels(faultd, {"/slow_h2", "/slow_h1"})
    assert cancels["/slow_h2"]["how"] == "rst_stream"
    assert cancels["/slow_h2"]["error_code"] == H2_CANCEL
    assert cancels["/slow_h1"]["how"] == "close"


@pytest.mark.parametrize("workers", WORKERS)
def test_deadline_504_cancels_calls(gateway, faultd, workers):
    """When the route deadline passes the gateway responds 504 kind
    deadline and every call in flight is cancelled shortly after."""
    gw = gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                 [route("/x", [
                     call("a", "h2", "/a?delay_ms=3000"),
                     call("b", "h1", "/b?delay_ms=3000"),
                 ], deadline_ms=300)],
                 workers=workers)

    resp = gw.get("/x")

    assert resp.status == 504, resp
    err = error_of(resp)
    assert err["kind"] == "deadline", err
    assert resp.elapsed >= 0.28, resp
    assert resp.elapsed < 0.8, resp
    deadline_at = resp.sent_at + 0.3
    cancels = wait_cancels(faultd, {"/a", "/b"})
    assert cancels["/a"]["how"] == "rst_stream", cancels
    assert cancels["/a"]["error_code"] == H2_CANCEL, cancels
    assert cancels["/b"]["how"] == "close", cancels
    for ev in cancels.values():
        assert ev["t"] >= deadline_at - 0.02, (ev, deadline_at)
        assert ev["t"] - deadline_at < CANCEL_BOUND_S + 0.1, \
            (ev, deadline_at)
        assert ev["t"] - resp.done_at < CANCEL_BOUND_S, (ev, resp.done_at)


@pytest.mark.parametrize("workers", WORKERS)
def test_client_abort_cancels_calls(gateway, faultd, workers):
    """A client that closes its socket mid fan-out gets its calls
    cancelled within a few ms, and the access line has status 499."""
    gw = gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                 [route("/x", [
                     call("a", "h2", "/a?delay_ms=3000"),
                     call("b", "h1", "/b?delay_ms=3000"),
                 ], deadline_ms=5000),
                  route("/ok", [call("ok", "h2", "/fine")])],
                 workers=workers)

    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: tutti\r\n"
                 b"X-Request-Id: abort-1\r\n\r\n")
    arrived = [faultd.wait_for(event="request", path=p) for p in ("/a", "/b")]
    assert all(arrived), faultd.events()
    sock.close()
    closed_at = time.monotonic()

    cancels = wait_cancels(faultd, {"/a", "/b"})
    assert cancels["/a"]["how"] == "rst_stream", cancels
    assert cancels["/b"]["how"] == "close", cancels
    for ev in cancels.values():
        assert ev["t"] - closed_at < CANCEL_BOUND_S, (ev, closed_at)
    line = gw.wait_access(request_id="abort-1")
    assert line is not None, gw.proc.stderr()[-3000:]
    assert line["status"] == 499, line
    # The gateway keeps serving after the abort.
    assert gw.get("/ok").status == 200
