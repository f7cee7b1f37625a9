"""The admin listener: /metrics in the Prometheus text format (checked
with promtool) with counters that match the requests made, /debug/inflight
with a parked request and its pending call, /healthz, /readyz and
POST /admin/reload."""

import re
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (EVENT_WAIT_S, WORKERS, call, free_port, http_request,
                      route, service)

# Metrics are updated when a request completes, which can be just after
# the client has read its response, so checks poll for this long.
METRICS_WAIT_S = 5.0

def admin_gateway(gateway, services, routes, workers=1, **top):
    """Start tutti with an admin listener on a free port, stored in
    gw.admin_port."""
    admin_port = free_port()
    gw = gateway(services, routes, workers=workers,
                 admin={"listen": f"127.0.0.1:{admin_port}"}, **top)
    gw.admin_port = admin_port
    return gw


def admin_get(gw, path, method="GET", timeout=10.0):
    return http_request(gw.admin_port, method, path, timeout=timeout)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Map (name, frozenset of label pairs) to the sample's value."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"unparsable sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = frozenset(LABEL.findall(labels or ""))
        samples[(name, pairs)] = float(value)
    return samples


def value(samples, name, **labels):
    """The sample |name| with exactly |labels|; 0 when absent."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(gw):
    resp = admin_get(gw, "/metrics")
    assert resp.status == 200, resp
    content_type = resp.header("Content-Type")
    assert content_type.startswith("text/plain; version=0.0.4"), resp
    return resp.body.decode()


def wait_metrics(gw, ready, timeout=METRICS_WAIT_S):
    """Scrape until ready(samples) is true; return the text and samples of
    the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(gw)
        samples = parse_metrics(text)
        if ready(samples) or time.monotonic() >= deadline:
            return text, samples
        time.sleep(0.05)


def promtool_check(text):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found; install Debian's prometheus "
                    "package with `make deps`")
    result = subprocess.run([promtool, "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


def abort_after_request(gw, faultd, target, path):
    """Send GET |target| and close the connection once faultd has seen
    the call to |path|."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert faultd.wait_for(event="request", path=path), faultd.events()
    finally:
        sock.close()


def counting_routes():
    return [
        route("/ok", [call("a", "h1", "/a"), call("b", "h2", "/b")]),
        route("/partial", [
            call("a", "h1", "/a"),
            call("opt", "h1", "/opt?delay_ms=5000", timeout_ms=150,
                 required=False),
        ]),
        route("/first_error", [
            call("bad", "h1", "/bad?status=500"),
            call("slow", "h2", "/fe?delay_ms=5000"),
        ]),
        route("/deadline", [call("slow", "h1", "/dl?delay_ms=5000")],
              deadline_ms=300),
        route("/abort", [call("slow", "h2", "/abort?delay_ms=5000")],
              deadline_ms=20000),
    ]


@pytest.mark.parametrize("workers", WORKERS)
def test_metrics_match_requests(gateway, faultd, workers):
    """Every counter matches the requests made: statuses per route,
    cancellations by cause, partial responses, wasted calls, call outcomes
    and fan-out widths, and promtool accepts the output."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url),
                                 "h2": service(faultd.h2_url)},
                       counting_routes(), workers=workers)
    for _ in range(3):
        assert gw.get("/ok").status == 200
    assert gw.get("/partial").status == 200
    assert gw.get("/first_error").status == 502
    assert gw.get("/deadline").status == 504
    assert gw.get("/nope").status == 404
    abort_after_request(gw, faultd, "/abort", "/abort")

    text, samples = wait_metrics(gw, lambda s: value(
        s, "tutti_requests_total", route="/abort", method="GET",
        status="499") == 1 and value(s, "tutti_calls_in_flight") == 0)
    promtool_check(text)

    requests = {("/ok", "200"): 3, ("/partial", "200"): 1,
                ("/first_error", "502"): 1, ("/deadline", "504"): 1,
                ("/abort", "499"): 1, ("", "404"): 1}
    for (path, status), count in requests.items():
        assert value(samples, "tutti_requests_total", route=path,
                     method="GET", status=status) == count, (path, text)
    assert value(samples, "tutti_request_duration_seconds_count",
                 route="/ok", method="GET") == 3, text

    cancelled = {"deadline": 1, "first_error": 1, "client_abort": 1,
                 "shutdown": 0}
    for cause, count in cancelled.items():
        assert value(samples, "tutti_calls_cancelled_total",
                     cause=cause) == count, (cause, text)
    assert value(samples, "tutti_partial_responses_total") == 1, text

    # Abandoned: the optional call's timeout, the call cancelled by the
    # first error, the one at the deadline and the one of the aborted
    # request.
    assert value(samples, "tutti_wasted_calls_total") == 4, text
    assert 0.4 < value(samples, "tutti_wasted_call_seconds_total") < 60, text

    outcomes = {("h1", "http", "ok"): 4, ("h1", "http", "error"): 1,
                ("h1", "http", "timeout"): 2, ("h1", "http", "cancelled"): 0,
                ("h2", "h2c", "ok"): 3, ("h2", "h2c", "cancelled"): 2,
                ("h2", "h2c", "error"): 0, ("h2", "h2c", "timeout"): 0}
    for (svc, protocol, outcome), count in outcomes.items():
        assert value(samples, "tutti_call_duration_seconds_count",
                     service=svc, protocol=protocol,
                     outcome=outcome) == count, (svc, outcome, text)

    assert value(samples, "tutti_fanout_width_count") == 7, text
    assert value(samples, "tutti_fanout_width_sum") == 12, text
    assert value(samples, "tutti_fanout_width_bucket", le="1") == 2, text
    assert value(samples, "tutti_fanout_width_bucket", le="2") == 7, text
    assert value(samples, "tutti_requests_in_flight") == 0, text
    assert value(samples, "tutti_calls_in_flight") == 0, text
    assert ("tutti_downstream_connections",
            frozenset({("service", "h2"), ("protocol", "h2c")})) in samples
    assert value(samples, "tutti_requests_shed_total") == 0, text


def test_metrics_before_any_request(gateway, faultd):
    """An idle gateway's output passes promtool too."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])])
    text = scrape(gw)
    promtool_check(text)
    samples = parse_metrics(text)
    assert value(samples, "tutti_requests_in_flight") == 0, text
    assert value(samples, "tutti_config_reloads_total", result="ok") == 0


def test_metrics_count_shutdown_cancel(gateway, faultd):
    """A call still running when the shutdown grace ends is counted under
    cause "shutdown". A request still sending its body keeps the worker,
    and so the admin listener, up for two more seconds, which is when the
    counter is read."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)}, [
        route("/slow", [call("slow", "h1", "/sd?delay_ms=5000")],
              deadline_ms=20000),
        route("/upload", [call("u", "h1", "/u")], method="POST"),
    ], shutdown_grace_ms=300, drain_delay_ms=0)
    upload = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    try:
        upload.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\n"
                       b"Content-Length: 100\r\n\r\npart")
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(http_request, gw.port, "GET", "/slow",
                                 None, None, 30.0)
            assert faultd.wait_for(event="request", path="/sd"), \
                faultd.events()
            gw.proc.signal(signal.SIGTERM)
            resp = future.result(timeout=10)
            assert resp.status == 503, resp
            _, samples = wait_metrics(gw, lambda s: value(
                s, "tutti_calls_cancelled_total", cause="shutdown") == 1,
                timeout=1.5)
    finally:
        upload.close()
    assert value(samples, "tutti_calls_cancelled_total",
                 cause="shutdown") == 1, samples
    assert value(samples, "tutti_requests_total", route="/slow",
                 method="GET", status="503") == 1, samples
    assert gw.proc.wait(timeout=10) == 0, gw.proc.stderr()[-3000:]


@pytest.mark.parametrize("workers", WORKERS)
def test_inflight_shows_parked_request(gateway, faultd, workers):
    """/debug/inflight lists a request whose call waits on a slow service,
    with the call's service, endpoint and state, next to a call that is
    done."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url),
                                 "h2": service(faultd.h2_url)},
                       [route("/park/{id}", [
                           call("quick", "h1", "/quick"),
                           call("parked", "h2", "/parked?delay_ms=2500"),
                       ], deadline_ms=20000)], workers=workers)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(http_request, gw.port, "GET", "/park/7",
                             {"X-Request-Id": "parked-1"}, None, 30.0)
        assert faultd.wait_for(event="request", path="/parked"), \
            faultd.events()
        assert faultd.wait_for(event="response", path="/quick"), \
            faultd.events()
        time.sleep(0.1)
        resp = admin_get(gw, "/debug/inflight")
        assert future.result(timeout=10).status == 200

    assert resp.status == 200, resp
    assert resp.header("Content-Type") == "application/json", resp
    body = resp.json()
    assert body["workers"] == workers, body
    assert body["workers_missing"] == [], body
    found = [r for r in body["requests"] if r["request_id"] == "parked-1"]
    assert len(found) == 1, body
    req = found[0]
    assert req["route"] == "/park/{id}", req
    assert req["path"] == "/park/7", req
    assert req["method"] == "GET", req
    assert req["state"] == "running", req
    assert 50 <= req["age_ms"] < 2500, req
    calls = {c["name"]: c for c in req["calls"]}
    assert calls["parked"]["service"] == "h2", req
    assert calls["parked"]["state"] == "waiting", req
    assert calls["parked"]["endpoint"] == f"127.0.0.1:{faultd.port}", req
    assert calls["parked"]["required"] is True, req
    assert calls["parked"]["age_ms"] >= 50, req
    assert calls["quick"]["state"] == "done", req


def test_inflight_empty(gateway, faultd):
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])], workers=2)
    resp = admin_get(gw, "/debug/inflight")
    assert resp.status == 200, resp
    assert resp.json() == {"requests": [], "workers": 2,
                           "workers_missing": []}


@pytest.mark.parametrize("workers", WORKERS)
def test_healthz_reports_workers(gateway, faultd, workers):
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])],
                       workers=workers)
    resp = admin_get(gw, "/healthz")
    assert resp.status == 200, resp
    assert resp.header("Content-Type") == "application/json", resp
    body = resp.json()
    assert body["status"] == "ok", body
    assert [w["worker"] for w in body["workers"]] == list(range(workers))
    for worker in body["workers"]:
        assert worker["state"] == "ok", body
        assert worker["heartbeat_age_ms"] < 2000, body


def test_readyz_after_resolution(gateway, faultd):
    """Services of required calls are resolved at start-up, before any
    request, and /readyz then returns 200."""
    gw = admin_gateway(gateway,
                       {"named": service(f"http://ok.test:{faultd.port}")},
                       [route("/x", [call("a", "named", "/a")])], workers=2)
    deadline = time.monotonic() + EVENT_WAIT_S
    resp = admin_get(gw, "/readyz")
    while resp.status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
        resp = admin_get(gw, "/readyz")
    assert resp.status == 200, resp
    assert resp.json() == {"status": "ready"}
    _, samples = wait_metrics(gw, lambda s: value(
        s, "tutti_dns_resolutions_total") >= 2)
    assert value(samples, "tutti_dns_resolutions_total") >= 2, samples


def test_readyz_unresolved_required_service(gateway, faultd):
    """A required call's service that does not resolve keeps /readyz at
    503 with the reason; an optional call's service does not count."""
    gw = admin_gateway(gateway, {
        "missing": service("http://nx.test:80"),
        "extra": service("http://nx2.test:80"),
        "h1": service(faultd.h1_url),
    }, [route("/x", [call("a", "missing", "/a"), call("b", "h1", "/b"),
                     call("c", "extra", "/c", required=False)])])
    time.sleep(0.5)
    resp = admin_get(gw, "/readyz")
    assert resp.status == 503, resp
    body = resp.json()
    assert body["status"] == "not ready", body
    assert len(body["reasons"]) == 1, body
    assert body["reasons"][0].startswith(
        "service missing (nx.test) has not resolved yet"), body
    _, samples = wait_metrics(gw, lambda s: value(
        s, "tutti_dns_failures_total", phase="first") >= 1)
    assert value(samples, "tutti_dns_failures_total", phase="first") >= 1


def test_readyz_503_while_draining(gateway, faultd):
    """SIGTERM turns /readyz to 503 at once, with the reason, while
    /healthz stays 200 during the drain delay."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])],
                       drain_delay_ms=3000)
    # Readiness waits for the service's first resolution, which workers
    # report on their next heartbeat.
    ready = admin_get(gw, "/readyz")
    started = time.monotonic()
    while ready.status != 200 and time.monotonic() - started < 3.0:
        time.sleep(0.05)
        ready = admin_get(gw, "/readyz")
    assert ready.status == 200, ready
    gw.proc.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    resp = admin_get(gw, "/readyz")
    while resp.status == 200 and time.monotonic() - signalled_at < 2.0:
        resp = admin_get(gw, "/readyz")
    turned_after = time.monotonic() - signalled_at
    assert resp.status == 503, resp
    assert turned_after < 0.5, turned_after
    assert any(r.startswith("draining") for r in resp.json()["reasons"]), resp
    health = admin_get(gw, "/healthz")
    assert health.status == 200, health
    assert gw.proc.wait(timeout=10) == 0, gw.proc.stderr()[-3000:]


def test_admin_errors(gateway, faultd):
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])])
    resp = admin_get(gw, "/nothing")
    assert resp.status == 404, resp
    assert resp.json()["error"]["kind"] == "not_found"
    resp = admin_get(gw, "/metrics", method="POST")
    assert resp.status == 405, resp
    assert resp.header("Allow") == "GET, HEAD", resp
    resp = admin_get(gw, "/admin/reload")
    assert resp.status == 405, resp
    assert resp.header("Allow") == "POST", resp
    # The gateway's own listener does not serve admin paths.
    assert gw.get("/metrics").status == 404


def test_admin_reload_counts(gateway, faultd):
    """POST /admin/reload re-reads the file; a valid and an invalid file
    are counted under their result."""
    gw = admin_gateway(gateway, {"h1": service(faultd.h1_url)},
                       [route("/x", [call("a", "h1", "/a")])])
    resp = admin_get(gw, "/admin/reload", method="POST")
    assert resp.status == 202, resp
    _, samples = wait_metrics(gw, lambda s: value(
        s, "tutti_config_reloads_total", result="ok") == 1)
    assert value(samples, "tutti_config_reloads_total", result="ok") == 1

    gw.config_path.write_text("{not json")
    resp = admin_get(gw, "/admin/reload", method="POST")
    assert resp.status == 202, resp
    _, samples = wait_metrics(gw, lambda s: value(
        s, "tutti_config_reloads_total", result="failed") == 1)
    assert value(samples, "tutti_config_reloads_total", result="failed") == 1
    assert gw.get("/x").status == 200
