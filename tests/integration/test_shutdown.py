"""Graceful shutdown: on SIGTERM or SIGINT the gateway stops accepting,
lets requests in flight finish until shutdown_grace_ms, then responds to
the rest with 503 kind shutdown (cancelling their calls) and exits 0. A
second signal exits at once with status 1."""

import http.client
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import WORKERS, call, error_of, http_request, route, service

EXIT_WAIT_S = 10.0


def slow_gateway(gateway, faultd, delay_ms, grace_ms, workers=1):
    return gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                   [route("/x", [
                       call("a", "h2", f"/a?delay_ms={delay_ms}"),
                       call("b", "h1", f"/b?delay_ms={delay_ms}"),
                   ], deadline_ms=20000)],
                   workers=workers, shutdown_grace_ms=grace_ms)


def start_in_flight(pool, gw, faultd):
    """Send GET /x in the background and wait until both calls reached
    faultd, so the request is surely in flight."""
    future = pool.submit(http_request, gw.port, "GET", "/x", None, None,
                         30.0)
    for path in ("/a", "/b"):
        assert faultd.wait_for(event="request", path=path), faultd.events()
    return future


def assert_not_served(port):
    """A new request after the signal must get no response: it is refused,
    reset, closed or left waiting."""
    try:
        resp = http_request(port, "GET", "/x", timeout=1.0)
    except (ConnectionError, http.client.HTTPException, socket.timeout):
        return
    pytest.fail(f"request after shutdown began got a response: {resp}")


def check_in_flight_finish(gw, faultd, signum):
    """Send |signum| while GET /x is in flight and check that it finishes
    normally, that nothing new is served and that the exit status is 0."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        future = start_in_flight(pool, gw, faultd)
        gw.proc.signal(signum)
        signalled_at = time.monotonic()
        # The gateway handles the signal asynchronously, so a connection
        # made in the same millisecond may still be served.
        time.sleep(0.15)
        assert_not_served(gw.port)
        resp = future.result(timeout=10)

    assert resp.status == 200, resp
    assert set(resp.json()) == {"a", "b"}
    assert gw.proc.wait(timeout=EXIT_WAIT_S) == 0, gw.proc.stderr()[-3000:]
    assert faultd.select(event="cancel") == [], faultd.events()
    # It exits once the last request has its response, not at the grace's end.
    assert time.monotonic() - signalled_at < 4.0


@pytest.mark.parametrize("workers", WORKERS)
def test_sigterm_in_flight_finish(gateway, faultd, workers):
    """Requests in flight at SIGTERM finish normally within the grace,
    new connections are not served, and the exit status is 0."""
    gw = slow_gateway(gateway, faultd, delay_ms=1000, grace_ms=5000,
                      workers=workers)
    check_in_flight_finish(gw, faultd, signal.SIGTERM)


def test_sigint_in_flight_finish(gateway, faultd):
    """SIGINT shuts down as gracefully as SIGTERM."""
    gw = slow_gateway(gateway, faultd, delay_ms=1000, grace_ms=5000)
    check_in_flight_finish(gw, faultd, signal.SIGINT)


def test_idle_gateway_exits_zero(gateway, faultd):
    """An idle gateway exits 0 on SIGTERM soon, without waiting out the
    grace period."""
    gw = slow_gateway(gateway, faultd, delay_ms=0, grace_ms=20000)

    gw.proc.signal(signal.SIGTERM)

    assert gw.proc.wait(timeout=5.0) == 0, gw.proc.stderr()[-3000:]


def test_past_grace_gets_503(gateway, faultd):
    """Requests still running when the grace ends get 503 kind
    shutdown, their calls are cancelled, and the exit status is 0."""
    gw = slow_gateway(gateway, faultd, delay_ms=5000, grace_ms=300)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = start_in_flight(pool, gw, faultd)
        gw.proc.signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        resp = future.result(timeout=10)

    assert resp.status == 503, resp
    assert error_of(resp)["kind"] == "shutdown"
    responded_after = resp.done_at - signalled_at
    assert responded_after >= 0.25, resp
    assert responded_after < 1.5, resp
    for path in ("/a", "/b"):
        cancels = faultd.wait_for(event="cancel", path=path)
        assert cancels, faultd.events()
        assert cancels[0]["t"] - resp.done_at < 0.15, (cancels, resp)
    assert gw.proc.wait(timeout=EXIT_WAIT_S) == 0, gw.proc.stderr()[-3000:]


def test_second_signal_exits_1(gateway, faultd):
    """A second signal during the grace period exits at once with 1."""
    gw = slow_gateway(gateway, faultd, delay_ms=5000, grace_ms=10000)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = start_in_flight(pool, gw, faultd)
        gw.proc.signal(signal.SIGTERM)
        time.sleep(0.2)
        assert gw.proc.running(), "exited before the grace period ended"
        gw.proc.signal(signal.SIGINT)
        second_at = time.monotonic()

        status = gw.proc.wait(timeout=EXIT_WAIT_S)
        exited_after = time.monotonic() - second_at
        try:
            future.result(timeout=5)
        except (ConnectionError, http.client.HTTPException, socket.timeout):
            pass

    assert status == 1, gw.proc.stderr()[-3000:]
    assert exited_after < 1.5
