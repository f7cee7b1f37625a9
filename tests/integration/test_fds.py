"""File descriptors: after calls that meet every fault faultd, dnsmasq and
nginx can inject, the gateway's open descriptors (/proc/PID/fd) come
back to what it had at start plus the pool's live connections."""

import time
from collections import Counter

from conftest import call, describe_fds, free_port, open_fds, route

# Each fault is one route with one call: (route path, service, call path).
H1_FAULTS = [
    "/p?action=reset",
    "/p?action=goaway",
    "/p?truncate=10",
    "/p?chunked=1&truncate=10",
    "/p?chunked=1&ext=1&trailers=1",
    "/p?delay_ms=2000",  # beyond the call timeout: cancelled
    "/p?action=hang",
    "/p?close=1",
]
H2_FAULTS = [
    "/p?action=reset",
    "/p?action=rst_stream",
    "/p?action=goaway",
    "/p?action=refuse",
    "/p?action=goaway&error_code=0&last_stream_id=0",
    "/p?action=lower_streams&to=1",
    "/p?truncate=10",
    "/p?delay_ms=2000",
    "/p?action=hang",
    "/p?body=huge&size=3000000",
]


def fault_routes():
    routes = []
    for n, path in enumerate(H1_FAULTS):
        routes.append(("h1", path, f"/h1/{n}"))
    for n, path in enumerate(H2_FAULTS):
        routes.append(("h2", path, f"/h2/{n}"))
    for n in range(4):
        routes.append(("rolling", f"/p?delay_ms=100&n={n}", f"/rolling/{n}"))
    routes.append(("closer", "/p", "/closer/0"))
    routes.append(("refused", "/p", "/refused/0"))
    routes.append(("nxdomain", "/p", "/nxdomain/0"))
    return routes


def faulty_gateway(gateway, servers, extra_services=None, **top):
    plain, rolling, closer = servers
    services = {
        "h1": {"url": plain.h1_url, "timeout_ms": 300},
        "h2": {"url": plain.h2_url, "timeout_ms": 300},
        "rolling": {"url": rolling.h2_url},
        "closer": {"url": closer.h1_url},
        "refused": {"url": f"http://127.0.0.1:{free_port()}"},
        "nxdomain": {"url": "h2c://missing.test:80"},
    }
    services.update(extra_services or {})
    routes = [route(path, [call("a", svc, call_path)], deadline_ms=2000)
              for svc, call_path, path in fault_routes()]
    routes += [route(f"/extra/{name}", [call("a", name, "/static.json")],
                     deadline_ms=2000)
               for name in extra_services or {}]
    routes.append(route("/rolling-burst",
                        [call(f"c{i}", "rolling", f"/b{i}?delay_ms=100")
                         for i in range(8)], deadline_ms=3000))
    return gateway(services, routes, **top)


def inject_faults(gw, extra_paths=()):
    """Send every fault route twice, the closer one after its server's
    idle close, and return the statuses."""
    statuses = []
    paths = [path for _, _, path in fault_routes()] + ["/rolling-burst"]
    paths += list(extra_paths)
    for _ in range(2):
        for path in paths:
            statuses.append(gw.get(path, timeout=15.0).status)
        time.sleep(0.4)  # longer than the closer's --idle-close-ms
    return statuses


def start_servers(start_faultd):
    return (start_faultd("plain"),
            start_faultd("rolling",
                         args=["--goaway-after", "2", "--max-streams", "2"]),
            start_faultd("closer", args=["--idle-close-ms", "300"]))


def live_connections(server):
    """Connections faultd has accepted and not yet seen closed."""
    return (len(server.select(event="conn_open"))
            - len(server.select(event="conn_close")))


def fd_changes(before, pid):
    """Return the descriptors added and removed since |before|."""
    now = Counter(describe_fds(pid))
    then = Counter(before)
    return {"added": sorted((now - then).elements()),
            "removed": sorted((then - now).elements())}


def warm_up(gw, paths):
    """Send one successful call per service. The first requests make the
    process open descriptors it keeps for good (libraries open some
    lazily, /dev/null for one), which are not the pool's."""
    for path in paths:
        resp = gw.get(path)
        assert resp.status == 200, resp


def wait_fds(pid, expected, timeout):
    """Poll until |expected()| descriptors are open; return the last
    count and expected value."""
    deadline = time.monotonic() + timeout
    while True:
        count = len(open_fds(pid))
        want = expected()
        if count == want or time.monotonic() >= deadline:
            return count, want
        time.sleep(0.1)


def test_fds_return_after_idle_timeout(gateway, start_faultd, nginx_tls,
                                       tls_pki):
    """With a 1 s idle timeout, every pool connection closes after the
    faults, so the count comes back to the one before them."""
    servers = start_servers(start_faultd)
    tls_services = {
        "tls_bad": {"url": f"https://tls.test:{nginx_tls.self_signed_port}",
                    "ca_file": str(tls_pki.ca)},
        "tls_good": {"url": f"https://tls.test:{nginx_tls.port}",
                     "ca_file": str(tls_pki.ca)},
        "tls_h2": {"url": f"h2://tls.test:{nginx_tls.port}",
                   "ca_file": str(tls_pki.ca)},
    }
    gw = faulty_gateway(gateway, servers, extra_services=tls_services,
                        defaults={"idle_timeout_ms": 1000})
    warm_up(gw, ["/h1/4", "/h2/5", "/closer/0", "/extra/tls_good"])
    time.sleep(2.5)  # the warm-up connections go idle and close
    baseline_fds = describe_fds(gw.proc.pid)
    baseline = len(baseline_fds)

    statuses = inject_faults(gw, [f"/extra/{name}" for name in tls_services])

    assert 200 in statuses, statuses
    assert 502 in statuses, statuses
    count, want = wait_fds(gw.proc.pid, lambda: baseline, timeout=10.0)
    assert count == want, fd_changes(baseline_fds, gw.proc.pid)


def test_fds_equal_baseline_plus_pool(gateway, start_faultd):
    """With the default idle timeout, the open descriptors settle at the
    count without connections plus the ones faultd still has open."""
    servers = start_servers(start_faultd)
    gw = faulty_gateway(gateway, servers)
    warm_up(gw, ["/h1/4", "/h2/5", "/closer/0"])
    time.sleep(0.5)
    baseline_fds = describe_fds(gw.proc.pid)
    warm_connections = sum(live_connections(s) for s in servers)
    baseline = len(baseline_fds) - warm_connections

    statuses = inject_faults(gw)

    assert 200 in statuses, statuses
    assert 502 in statuses, statuses
    count, want = wait_fds(
        gw.proc.pid,
        lambda: baseline + sum(live_connections(s) for s in servers),
        timeout=8.0)
    assert count == want, (fd_changes(baseline_fds, gw.proc.pid),
                           [live_connections(s) for s in servers])
