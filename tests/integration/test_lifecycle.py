"""Lifecycle under load: the drain that SIGTERM starts (readiness 503 at
once, the listener open for drain_delay_ms, requests in flight finishing
within shutdown_grace_ms, 503 after it) and configuration reloads by SIGHUP
while requests keep arriving (new routes served at once, an invalid file
rejected with the `tutti check` lines, connections to unchanged services
kept)."""

import http.client
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (WORKERS, call, error_of, free_port, http_request,
                      port_open, route, run_tutti, service)

EXIT_WAIT_S = 15.0
IN_FLIGHT = 20
SLOW_MS = 1500
DRAIN_DELAY_MS = 800

# /readyz must turn 503 this soon after SIGTERM, so that load balancers
# stop sending traffic before the listener closes.
READYZ_BOUND_S = 0.1

RELOAD_REJECTED = ("configuration reload rejected; the previous "
                   "configuration keeps serving")


def admin_get(port, path, timeout=2.0):
    """GET |path| on the admin listener; None when it does not answer."""
    try:
        return http_request(port, "GET", path, timeout=timeout)
    except (ConnectionError, http.client.HTTPException, socket.timeout,
            OSError):
        return None


def assert_not_served(port):
    """A new connection must not be served: refused, reset or closed."""
    try:
        resp = http_request(port, "GET", "/fast", timeout=1.0)
    except (ConnectionError, http.client.HTTPException, socket.timeout):
        return
    pytest.fail(f"request after the drain delay got a response: {resp}")


def start_slow_requests(pool, gw, faultd, count, path="/slow"):
    """Send |count| requests in the background and wait until faultd has
    every one of their calls, so that all are surely in flight."""
    futures = [pool.submit(http_request, gw.port, "GET", path, None, None,
                           30.0) for _ in range(count)]
    seen = faultd.wait_for(count, timeout=10.0, event="request", path="/s")
    assert len(seen) >= count, faultd.events()
    return futures


def drain_gateway(gateway, faultd, workers, delay_ms, grace_ms):
    admin_port = free_port()
    gw = gateway({"down": service(faultd.h1_url)},
                 [route("/slow", [call("s", "down", f"/s?delay_ms={delay_ms}")],
                        deadline_ms=30000),
                  route("/fast", [call("f", "down", "/f")])],
                 workers=workers, shutdown_grace_ms=grace_ms,
                 drain_delay_ms=DRAIN_DELAY_MS,
                 admin={"listen": f"127.0.0.1:{admin_port}"})
    return gw, admin_port


@pytest.mark.parametrize("workers", WORKERS)
def test_drain_under_load(gateway, faultd, workers):
    """SIGTERM with 20 requests in flight: /readyz turns 503 within 100 ms
    while /healthz stays 200, new connections are served (with Connection:
    close) until drain_delay_ms and refused after it, all 20 requests get
    200 without a call cancelled, and the exit status is 0."""
    gw, admin_port = drain_gateway(gateway, faultd, workers, SLOW_MS,
                                   grace_ms=10000)
    admin = admin_get(admin_port, "/readyz") is not None

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = start_slow_requests(pool, gw, faultd, IN_FLIGHT)
        if admin:
            # Readiness follows the first resolution on the workers' next
            # heartbeat.
            ready = admin_get(admin_port, "/readyz")
            started = time.monotonic()
            while ready.status != 200 and time.monotonic() - started < 3.0:
                time.sleep(0.05)
                ready = admin_get(admin_port, "/readyz")
            assert ready.status == 200, ready
        gw.proc.signal(signal.SIGTERM)
        signalled_at = time.monotonic()

        if admin:
            ready = None
            while time.monotonic() - signalled_at < 2.0:
                ready = admin_get(admin_port, "/readyz")
                if ready is not None and ready.status == 503:
                    break
            assert ready is not None and ready.status == 503, ready
            assert ready.done_at - signalled_at < READYZ_BOUND_S, ready
            health = admin_get(admin_port, "/healthz")
            assert health is not None and health.status == 200, health

        # Within the drain delay the listener still accepts new
        # connections, and each response asks the client to close.
        during = http_request(gw.port, "GET", "/fast", timeout=5.0)
        assert time.monotonic() - signalled_at < DRAIN_DELAY_MS / 1000, \
            "the request in the drain delay came too late to count"
        assert during.status == 200, during
        assert (during.header("Connection") or "").lower() == "close", during

        time.sleep(max(0.0, signalled_at + DRAIN_DELAY_MS / 1000 + 0.3
                       - time.monotonic()))
        assert_not_served(gw.port)
        if admin:
            health = admin_get(admin_port, "/healthz")
            assert health is not None and health.status == 200, health

        responses = [f.result(timeout=20) for f in futures]

    assert [r.status for r in responses] == [200] * IN_FLIGHT, responses
    for resp in responses:
        assert set(resp.json()) == {"s"}, resp
    assert gw.proc.wait(timeout=EXIT_WAIT_S) == 0, gw.proc.stderr()[-3000:]
    assert faultd.select(event="cancel") == [], faultd.events()
    if not admin:
        pytest.skip("the admin listener did not answer; the /readyz and "
                    "/healthz checks did not run")


def test_drain_past_grace_gets_503(gateway, faultd):
    """Requests still running when shutdown_grace_ms ends get 503 kind
    shutdown, faultd sees each of their calls cancelled, and the exit
    status is 0."""
    gw, _ = drain_gateway(gateway, faultd, workers=2, delay_ms=20000,
                          grace_ms=500)

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        futures = start_slow_requests(pool, gw, faultd, IN_FLIGHT)
        gw.proc.signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        responses = [f.result(timeout=20) for f in futures]

    for resp in responses:
        assert resp.status == 503, resp
        assert error_of(resp)["kind"] == "shutdown", resp
        # The grace starts when the drain delay ends.
        assert resp.done_at - signalled_at >= (DRAIN_DELAY_MS + 450) / 1000, \
            resp
    cancels = faultd.wait_for(IN_FLIGHT, timeout=3.0, event="cancel",
                              path="/s")
    assert len(cancels) == IN_FLIGHT, faultd.events()
    assert gw.proc.wait(timeout=EXIT_WAIT_S) == 0, gw.proc.stderr()[-3000:]


# ------------------------------------------------------------- reload


def reload_config(gw, config):
    """Replace the gateway's configuration file and send SIGHUP."""
    gw.config_path.write_text(json.dumps(config, indent=2))
    gw.proc.signal(signal.SIGHUP)


def wait_log(gw, msg_prefix, count=1, timeout=5.0):
    """Poll for |count| log lines whose msg starts with |msg_prefix|."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in gw.logs()
                 if str(line.get("msg", "")).startswith(msg_prefix)]
        if len(found) >= count or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


class LoadGenerator:
    """Threads that send GET |target| in a loop, each on a new
    connection, until stopped or |max_seconds| passed, and record every
    answer that is not 200."""

    def __init__(self, port, target, threads=4, max_seconds=20.0):
        self.port = port
        self.target = target
        self.deadline = time.monotonic() + max_seconds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failures = []
        self.threads = [threading.Thread(target=self._run, daemon=True)
                        for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                resp = http_request(self.port, "GET", self.target,
                                    timeout=5.0)
                failure = None if resp.status == 200 else resp
            except (ConnectionError, http.client.HTTPException,
                    socket.timeout, OSError) as exc:
                failure = exc
            with self.lock:
                self.sent += 1
                if failure is not None:
                    self.failures.append(failure)

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)
        return self.sent, self.failures


def reload_configs(kept, changed):
    """The first configuration and the changed one: "kept" stays as it
    is, "changed" gets another max_connections, and the second adds the
    route /new."""
    services = {"kept": service(kept.h1_url), "changed": service(changed.h1_url)}
    routes = [route("/r", [call("k", "kept", "/k"),
                           call("c", "changed", "/c")])]
    second_services = {
        "kept": service(kept.h1_url),
        "changed": dict(service(changed.h1_url), max_connections=64),
    }
    second_routes = routes + [route("/new", [call("k", "kept", "/k2")])]
    return services, routes, second_services, second_routes


def full_config(gw, services, routes):
    config = json.loads(gw.config_path.read_text())
    config["services"] = services
    config["routes"] = routes
    return config


def conns_used(server, path, since=None, until=None):
    """Connection numbers of the requests for |path| received in the
    [since, until) interval of time.monotonic()."""
    conns = set()
    for ev in server.select(event="request", path=path):
        if since is not None and ev["t"] < since:
            continue
        if until is not None and ev["t"] >= until:
            continue
        conns.add(ev["conn"])
    return conns


def conn_opens(server, since):
    return [ev for ev in server.select(event="conn_open") if ev["t"] >= since]


@pytest.mark.parametrize("workers", WORKERS)
def test_reload_under_load(gateway, start_faultd, tmp_path, workers):
    """While four threads keep sending requests, SIGHUP with a changed
    route table and then with an invalid file: no request fails, the new
    route is served at once, the invalid file is rejected with the lines
    `tutti check` prints and the previous configuration keeps serving,
    and the unchanged service keeps its connections while the changed
    one gets new ones."""
    kept = start_faultd("kept")
    changed = start_faultd("changed")
    services, routes, services2, routes2 = reload_configs(kept, changed)
    gw = gateway(services, routes, workers=workers)

    load = LoadGenerator(gw.port, "/r")
    try:
        time.sleep(1.0)
        assert gw.get("/new").status == 404
        before_reload = time.monotonic()
        reload_config(gw, full_config(gw, services2, routes2))
        served = None
        while time.monotonic() - before_reload < 5.0:
            served = gw.get("/new")
            if served.status == 200:
                break
        assert served is not None and served.status == 200, served
        assert served.json() == {"k": served.json()["k"]}
        applied = wait_log(gw, "configuration applied", count=workers)
        assert len(applied) == workers, gw.logs()[-20:]
        for line in applied:
            assert line["services_kept"] == 1, line
            assert line["services_added"] == 1, line
            assert line["services_removed"] == 1, line
        after_reload = time.monotonic()
        time.sleep(1.0)

        invalid = full_config(gw, services2, routes2 + [
            route("/broken", [call("x", "missing", "/x")])])
        reload_config(gw, invalid)
        rejected = wait_log(gw, RELOAD_REJECTED)
        check = run_tutti(["check", str(gw.config_path)], tmp_path)
        time.sleep(1.0)
        assert gw.get("/new").status == 200
        assert gw.get("/broken").status == 404
    finally:
        sent, failures = load.stop()

    assert failures == [], failures[:5]
    assert sent > 50, sent

    assert len(rejected) == 1, gw.logs()[-20:]
    assert check.returncode == 2, check
    assert rejected[0]["errors"] == check.stderr.splitlines(), \
        (rejected[0], check.stderr)

    # The unchanged service serves /r after the reload on connections
    # opened before it, and opens few new ones (one per worker at most,
    # for a moment of higher concurrency).
    old_kept = conns_used(kept, "/k", until=before_reload)
    new_kept = conns_used(kept, "/k", since=after_reload)
    assert old_kept, kept.events()[-20:]
    assert new_kept & old_kept, (old_kept, new_kept)
    assert len(conn_opens(kept, before_reload)) <= workers, \
        conn_opens(kept, before_reload)
    # The changed service got a new state, so new connections.
    old_changed = conns_used(changed, "/c", until=before_reload)
    new_changed = conns_used(changed, "/c", since=after_reload)
    assert new_changed, changed.events()[-20:]
    assert not new_changed & old_changed, (old_changed, new_changed)
    assert conn_opens(changed, before_reload), changed.events()[-20:]


def test_reload_in_flight_keeps_old_config(gateway, start_faultd):
    """A request in flight during a reload that removes its route and
    changes one of its services finishes under the configuration it
    started with, and the retired service's connections close after it."""
    kept = start_faultd("kept")
    changed = start_faultd("changed")
    services, _, _, _ = reload_configs(kept, changed)
    routes = [route("/old", [call("k", "kept", f"/k?delay_ms={SLOW_MS}"),
                             call("c", "changed", f"/c?delay_ms={SLOW_MS}")],
                    deadline_ms=10000)]
    gw = gateway(services, routes, workers=1)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(gw.get, "/old", None, 20.0)
        assert kept.wait_for(event="request", path="/k")
        assert changed.wait_for(event="request", path="/c")
        second = {"kept": service(kept.h1_url),
                  "changed": dict(service(changed.h1_url), max_connections=7)}
        reload_config(gw, full_config(gw, second, [
            route("/other", [call("k", "kept", "/k"),
                             call("c", "changed", "/c")])]))
        assert wait_log(gw, "configuration applied"), gw.logs()[-20:]
        assert gw.get("/old").status == 404
        assert gw.get("/other").status == 200
        resp = future.result(timeout=20)

    assert resp.status == 200, resp
    assert set(resp.json()) == {"k", "c"}, resp
    assert kept.select(event="cancel") == [], kept.events()
    assert changed.select(event="cancel") == [], changed.events()
    # The old state of "changed" closes its idle connection once the
    # request that held the old configuration is gone.
    closes = changed.wait_for(event="conn_close", timeout=3.0)
    assert closes, changed.events()


def test_reload_rejects_invalid_file(gateway, faultd, tmp_path):
    """An invalid file is rejected with the `tutti check` lines, counted
    as one error event, and the old configuration keeps serving; a later
    valid file is applied."""
    gw = gateway({"down": service(faultd.h1_url)},
                 [route("/a", [call("a", "down", "/a")])])
    config = json.loads(gw.config_path.read_text())

    config["routes"][0]["calls"][0]["service"] = "nope"
    config["shutdown_grace_ms"] = -1
    reload_config(gw, config)
    rejected = wait_log(gw, RELOAD_REJECTED)
    check = run_tutti(["check", str(gw.config_path)], tmp_path)

    assert len(rejected) == 1, gw.logs()[-20:]
    assert rejected[0]["level"] == "error", rejected[0]
    assert rejected[0]["errors"] == check.stderr.splitlines(), \
        (rejected[0], check.stderr)
    assert len(rejected[0]["errors"]) == 2, rejected[0]
    assert gw.get("/a").status == 200

    config["routes"][0]["calls"][0]["service"] = "down"
    config["shutdown_grace_ms"] = 2000
    config["routes"][0]["path"] = "/b"
    reload_config(gw, config)
    assert wait_log(gw, "configuration applied"), gw.logs()[-20:]
    assert gw.get("/b").status == 200
    assert gw.get("/a").status == 404
