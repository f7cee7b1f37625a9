"""HTTP/2 connection handling against faultd: GOAWAY (graceful and with an
error code), REFUSED_STREAM, SETTINGS_MAX_CONCURRENT_STREAMS (at start,
zero, and lowered mid-connection), content-length above the body limit,
flow control on large bodies, PING and the idle timeout."""

import uuid

import pytest

from conftest import call, error_of, route


def h2_gateway(gateway, server, calls, deadline_ms=5000, method="GET",
               **options):
    """Start a gateway whose /x route makes |calls| (name, path) to one
    h2c service on |server|; |options| are service keys."""
    svc = {"url": server.h2_url}
    svc.update(options)
    return gateway({"svc": svc},
                   [route("/x", [call(name, "svc", path, method=method)
                                 for name, path in calls],
                          method=method, deadline_ms=deadline_ms)])


def marker():
    """A query parameter faultd ignores, making a target unique so that
    times=N counts only this test's requests."""
    return f"id={uuid.uuid4().hex}"


def max_concurrent(events):
    """Return the peak number of requests open at once on one
    connection, from the request events and the response, cancel or
    aborted events that end them."""
    open_now = {}
    peak = 0
    for ev in events:
        key = ev.get("conn")
        if ev["event"] == "request":
            open_now[key] = open_now.get(key, 0) + 1
            peak = max(peak, open_now[key])
        elif ev["event"] in ("response", "cancel", "aborted"):
            open_now[key] = open_now.get(key, 0) - 1
    return peak


def error_goaways(server):
    return [ev for ev in server.select(event="goaway")
            if ev["error_code"] != 0]


def assert_all_paths_answered(resp, calls):
    assert resp.status == 200, resp
    body = resp.json()
    for name, path in calls:
        assert body[name]["path"] == path, body[name]


# ---------------------------------------------------------------- GOAWAY


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_goaway_after_loses_no_request(gateway, start_faultd, method):
    """A server that sends GOAWAY(NO_ERROR) after every third request, as
    one being rolled would: the streams above last_stream_id are re-sent
    on a new connection, POST included, and every call succeeds."""
    server = start_faultd("rolling", args=["--goaway-after", "3"])
    calls = [(f"c{i}", f"/c{i}?delay_ms=200") for i in range(10)]
    gw = h2_gateway(gateway, server, calls, method=method)

    for _ in range(3):
        resp = gw.request(method, "/x", body=b"" if method == "POST" else None)
        assert_all_paths_answered(resp, calls)

    responses = server.select(event="response")
    assert len(responses) == 30, server.events()
    assert server.select(event="goaway"), server.events()
    assert not error_goaways(server), server.events()


def test_goaway_burst_resent_until_deadline(gateway, start_faultd):
    """Thirty streams against a server that processes three per
    connection: a stream may be turned away ten times, and is re-sent as
    long as its deadline allows, never failed for a retry count."""
    server = start_faultd("rolling", args=["--goaway-after", "3"])
    calls = [(f"c{i}", f"/c{i}?delay_ms=30") for i in range(30)]
    gw = h2_gateway(gateway, server, calls)

    resp = gw.get("/x")

    assert_all_paths_answered(resp, calls)
    assert len(server.select(event="response")) == 30, server.events()


def test_goaway_last_stream_zero_resends_in_flight(gateway, start_faultd):
    """A GOAWAY(NO_ERROR, last_stream_id=0) while six calls are in flight:
    none was processed, so all are re-sent on a new connection."""
    server = start_faultd("drain")
    goaway = (f"/g?action=goaway&error_code=0&last_stream_id=0&times=1"
              f"&delay_ms=100&{marker()}")
    calls = [("g", goaway)] + [(f"c{i}", f"/c{i}?delay_ms=400")
                               for i in range(5)]
    gw = h2_gateway(gateway, server, calls)

    resp = gw.get("/x")

    assert_all_paths_answered(resp, calls)
    [goaway_ev] = server.select(event="goaway")
    assert goaway_ev["last_stream_id"] == 0
    conns = {ev["conn"] for ev in server.select(event="response")}
    assert goaway_ev["conn"] not in conns, server.events()


def test_goaway_error_retried_once_then_succeeds(gateway, start_faultd):
    """A GOAWAY with INTERNAL_ERROR that covers the call's own stream is
    retried once on a new connection, where it succeeds."""
    server = start_faultd("flaky")
    path = f"/p?action=goaway&times=1&{marker()}"
    gw = h2_gateway(gateway, server, [("a", path)])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert len(server.select(event="request")) == 2, server.events()
    assert len(server.select(event="conn_open")) == 2, server.events()


def test_goaway_error_twice_is_reset(gateway, start_faultd):
    """A call that meets GOAWAY with an error code on its retry as well
    fails with 502 kind reset after exactly one retry, and the error code
    is logged."""
    server = start_faultd("broken")
    gw = h2_gateway(gateway, server, [("a", "/p?action=goaway")])

    resp = gw.get("/x")

    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "reset", err
    assert resp.elapsed < 2.0, resp
    assert len(server.select(event="request")) == 2, server.events()
    logged = [line for line in gw.logs()
              if "internal_error" in str(line).lower()]
    assert logged, gw.logs()[-10:]


def test_goaway_refusing_every_stream_bounded(gateway, start_faultd):
    """A server that responds to every stream with GOAWAY(NO_ERROR,
    last_stream_id=0) processed nothing, so the call gets three attempts
    on three connections, not a new connection per loop iteration until
    its deadline, and fails with 502 kind reset naming GOAWAY and the
    error code."""
    server = start_faultd("goaway-every-stream")
    path = "/g?action=goaway&error_code=0&last_stream_id=0"
    gw = h2_gateway(gateway, server, [("a", path)], deadline_ms=3000)

    resp = gw.get("/x")

    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "reset", err
    assert "stream refused by GOAWAY (NO_ERROR) 3 times" in err["message"], err
    assert resp.elapsed < 1.0, resp
    assert len(server.select(event="conn_open")) == 3, server.events()
    assert len(server.select(event="request")) == 3, server.events()


# ------------------------------------------------------- REFUSED_STREAM


def test_refused_stream_retried(gateway, start_faultd):
    """RST_STREAM(REFUSED_STREAM) means the server did not process the
    request, so the call is re-sent and succeeds."""
    server = start_faultd("refusing")
    path = f"/p?action=refuse&times=1&{marker()}"
    gw = h2_gateway(gateway, server, [("a", path)], method="POST")

    resp = gw.request("POST", "/x", body=b"{}")

    assert resp.status == 200, resp
    assert resp.json()["a"]["path"] == path
    assert len(server.select(event="request")) == 2, server.events()


def test_refused_stream_retries_bounded(gateway, start_faultd):
    """A server that refuses every attempt gets a bounded number of them,
    and the call fails with 502 before its deadline."""
    server = start_faultd("always-refusing")
    gw = h2_gateway(gateway, server, [("a", "/p?action=refuse")],
                    deadline_ms=5000)

    resp = gw.get("/x")

    assert resp.status == 502, resp
    assert error_of(resp)["kind"] == "reset", resp
    assert resp.elapsed < 3.0, resp
    attempts = len(server.select(event="request"))
    assert 2 <= attempts <= 10, server.events()


# ---------------------------------------------------- concurrent streams


def test_stream_cap_two_ten_concurrent(gateway, start_faultd):
    """With SETTINGS_MAX_CONCURRENT_STREAMS 2, ten concurrent calls all
    succeed and no connection ever carries more than two streams."""
    server = start_faultd("capped", args=["--max-streams", "2"])
    calls = [(f"c{i}", f"/c{i}?delay_ms=200") for i in range(10)]
    gw = h2_gateway(gateway, server, calls)

    resp = gw.get("/x")

    assert_all_paths_answered(resp, calls)
    events = server.events()
    assert max_concurrent(events) <= 2, events
    assert not server.select(event="refused"), events
    assert not error_goaways(server), events
    # Full connections make the pool open more (max_connections 128).
    assert len(server.select(event="conn_open")) >= 2, events
    assert resp.elapsed < 2.0, resp


def test_stream_cap_queues_at_max_connections(gateway, start_faultd):
    """With one connection allowed and two streams on it, ten calls queue
    and all succeed, in about five rounds."""
    server = start_faultd("queued", args=["--max-streams", "2"])
    calls = [(f"c{i}", f"/c{i}?delay_ms=150") for i in range(10)]
    gw = h2_gateway(gateway, server, calls, max_connections=1)

    resp = gw.get("/x")

    assert_all_paths_answered(resp, calls)
    assert len(server.select(event="conn_open")) == 1, server.events()
    assert max_concurrent(server.events()) <= 2
    assert resp.elapsed >= 0.7, resp


def test_queued_call_ends_at_deadline_504(gateway, start_faultd):
    """A call queued behind a full connection still ends at the route
    deadline with 504 kind deadline, not with a protocol error."""
    server = start_faultd("full", args=["--max-streams", "1"])
    calls = [("slow", "/slow?delay_ms=2000"), ("queued", "/q")]
    gw = h2_gateway(gateway, server, calls, deadline_ms=600,
                    max_connections=1)

    resp = gw.get("/x")

    assert resp.status == 504, resp
    assert error_of(resp)["kind"] == "deadline", resp
    assert resp.elapsed < 1.5, resp
    assert not error_goaways(server), server.events()


def test_zero_stream_limit_opens_two_connections(gateway, start_faultd):
    """Every connection advertises SETTINGS_MAX_CONCURRENT_STREAMS 0: the
    pool opens one more connection in case the limit was that
    connection's own, then no more (not max_connections of them), and
    the call ends at the route deadline with 504."""
    server = start_faultd("zero", args=["--max-streams", "0"])
    gw = h2_gateway(gateway, server, [("a", "/p")], deadline_ms=800)

    resp = gw.get("/x")

    assert resp.status == 504, resp
    assert error_of(resp)["kind"] in ("deadline", "timeout"), resp
    assert len(server.select(event="conn_open")) == 2, server.events()
    assert not server.select(event="request"), server.events()


def test_lowered_stream_limit_respected(gateway, start_faultd):
    """SETTINGS lowering MAX_CONCURRENT_STREAMS to 1 mid-connection: the
    later calls respect the new limit and all succeed."""
    server = start_faultd("lowering")
    gw = gateway({"svc": {"url": server.h2_url}},
                 [route("/lower", [call("a", "svc",
                                        "/l?action=lower_streams&to=1")]),
                  route("/x", [call(f"c{i}", "svc", f"/c{i}?delay_ms=100")
                               for i in range(6)], deadline_ms=5000)])

    resp = gw.get("/lower")
    assert resp.status == 200, resp
    lowered = [ev for ev in server.select(event="settings")
               if ev["max_concurrent_streams"] == 1]
    assert lowered, server.events()
    mark = len(server.events())

    resp = gw.get("/x")

    assert resp.status == 200, resp
    # The limit was lowered on that connection only; new ones start with
    # faultd's usual 10000.
    lowered_conn = lowered[0]["conn"]
    later = [ev for ev in server.events()[mark:]
             if ev["conn"] == lowered_conn]
    assert max_concurrent(later) <= 1, later
    assert not server.select(event="refused"), server.events()
    assert not error_goaways(server), server.events()


# ----------------------------------------------- bodies, PING, idleness


def test_content_length_over_limit_fails_at_head(gateway, start_faultd):
    """A response head whose content-length is above
    max_response_body_bytes fails the call with 502 kind bad_response
    when the head arrives, and the message names the limit and the
    announced length. faultd sends none of the body (truncate=0) and then
    resets the stream, which ends a call that waited for the body with
    kind reset instead."""
    server = start_faultd("announcing")
    size = 2 * 1024 * 1024
    path = f"/b?body=huge&size={size}&truncate=0"
    gw = gateway({"svc": {"url": server.h2_url}},
                 [route("/x", [call("a", "svc", path)], deadline_ms=3000)],
                 max_response_body_bytes=1024 * 1024)

    resp = gw.get("/x")

    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "bad_response", err
    assert ("max_response_body_bytes limit of 1048576 bytes "
            f"(Content-Length: {size})") in err["message"], err
    assert resp.elapsed < 1.0, resp


def test_large_body_needs_window_updates(gateway, start_faultd):
    """A 5 MiB response is far above the initial 64 KiB windows, so it
    arrives only if the gateway sends WINDOW_UPDATE frames."""
    server = start_faultd("big")
    size = 5 * 1024 * 1024
    gw = h2_gateway(gateway, server, [("a", f"/b?body=huge&size={size}")])

    resp = gw.get("/x", timeout=20.0)

    assert resp.status == 200, resp
    text = resp.json()["a"]
    assert len(text) == size - 2
    assert text[:26] == "abcdefghijklmnopqrstuvwxyz"


def test_ping_keeps_idle_connection_alive(gateway, start_faultd):
    """An idle connection receives PING frames at ping_interval_ms and is
    reused afterwards."""
    server = start_faultd("pinged")
    gw = h2_gateway(gateway, server, [("a", "/p")], ping_interval_ms=200,
                    idle_timeout_ms=10000)

    assert gw.get("/x").status == 200
    pings = server.wait_for(event="ping", count=2, timeout=3.0)
    resp = gw.get("/x")

    assert len(pings) >= 2, server.events()
    assert resp.status == 200, resp
    assert len(server.select(event="conn_open")) == 1, server.events()


def test_idle_connection_closed_after_idle_timeout(gateway, start_faultd):
    """The pool closes an h2 connection idle for idle_timeout_ms."""
    server = start_faultd("idle")
    gw = h2_gateway(gateway, server, [("a", "/p")], idle_timeout_ms=300)

    assert gw.get("/x").status == 200
    closed = server.wait_for(event="conn_close", timeout=3.0)

    assert closed, server.events()
    assert closed[0]["by"] == "peer", closed
    assert closed[0]["t"] - server.select(event="response")[0]["t"] >= 0.25


def test_stream_reset_leaves_other_streams(gateway, start_faultd):
    """RST_STREAM on one stream fails only that call; an optional call's
    failure leaves the others on the same connection untouched."""
    server = start_faultd("mixed")
    gw = gateway({"svc": {"url": server.h2_url}},
                 [route("/x", [call("bad", "svc", "/bad?action=rst_stream",
                                    required=False)]
                        + [call(f"c{i}", "svc", f"/c{i}?delay_ms=100")
                           for i in range(3)], deadline_ms=3000)])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    body = resp.json()
    for i in range(3):
        assert body[f"c{i}"]["path"] == f"/c{i}?delay_ms=100", body
    assert len(server.select(event="conn_open")) == 1, server.events()
