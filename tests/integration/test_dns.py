"""Service discovery against a real dnsmasq: SRV priorities, weights and
failover, re-resolution by TTL, serve-stale during a DNS outage, fast
failures for names that do not exist, and the fallback from AAAA to A.

Every faultd and dnsmasq here binds a 127.x.y.z address, so two
endpoints of one name can share a port on 127.0.0.2 and 127.0.0.3."""

import socket
import time

import pytest

from conftest import (call, error_of, free_port, host_record, log_lines_with,
                      route, srv_no_service, srv_record)


def dns_gateway(gateway, dns, url, path="/p", deadline_ms=3000, **options):
    """Start a gateway whose GET /x calls |path| on one service at |url|,
    resolving through |dns|; |options| are service keys."""
    svc = {"url": url}
    svc.update(options)
    return gateway({"svc": svc},
                   [route("/x", [call("a", "svc", path)],
                          deadline_ms=deadline_ms)],
                   resolver=dns.resolver)


def requests_seen(server):
    return len(server.select(event="request"))


def free_port_on(*hosts):
    """Return a TCP port that is free on every one of |hosts| (tries a few
    kernel-chosen ports)."""
    for _ in range(20):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
            return port
        except OSError:
            continue
    pytest.fail(f"no port free on all of {hosts}")


def assert_resolve_error(resp):
    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "resolve", err
    assert err["call"] == "a", err
    return err


# ------------------------------------------------------------------- SRV


@pytest.mark.parametrize("scheme", ["srv+http", "srv+h2c"])
def test_srv_lower_priority_number_wins(gateway, dns_server, start_faultd,
                                        scheme):
    """Every call goes to the SRV target with the best (lowest) priority
    while it is healthy."""
    best = start_faultd("best")
    backup = start_faultd("backup")
    dns = dns_server([
        srv_record("_http._tcp.orders.test", "best.test", best.port,
                   priority=10, weight=10),
        srv_record("_http._tcp.orders.test", "backup.test", backup.port,
                   priority=20, weight=90),
        host_record("best.test", "127.0.0.1"),
        host_record("backup.test", "127.0.0.1"),
    ])
    gw = dns_gateway(gateway, dns, f"{scheme}://_http._tcp.orders.test")

    for _ in range(20):
        resp = gw.get("/x")
        assert resp.status == 200, resp

    assert requests_seen(best) == 20, best.events()
    assert requests_seen(backup) == 0, backup.events()


def test_srv_weights_spread_calls(gateway, dns_server, start_faultd):
    """Two targets of one priority share the calls, the heavier weight
    getting more of them."""
    heavy = start_faultd("heavy")
    light = start_faultd("light")
    dns = dns_server([
        srv_record("_http._tcp.spread.test", "heavy.test", heavy.port,
                   priority=10, weight=75),
        srv_record("_http._tcp.spread.test", "light.test", light.port,
                   priority=10, weight=25),
        host_record("heavy.test", "127.0.0.1"),
        host_record("light.test", "127.0.0.1"),
    ])
    gw = dns_gateway(gateway, dns, "srv+http://_http._tcp.spread.test")
    total = 120

    for _ in range(total):
        resp = gw.get("/x")
        assert resp.status == 200, resp

    heavy_count = requests_seen(heavy)
    light_count = requests_seen(light)
    assert heavy_count + light_count == total
    # 75:25 expects 90 and 30; the bounds allow for chance.
    assert light_count >= 8, (heavy_count, light_count)
    assert heavy_count > light_count, (heavy_count, light_count)


def test_srv_best_target_kept_past_address_cap(gateway, dns_server,
                                                start_faultd):
    """A lookup keeps at most 64 addresses. When the targets of a worse
    priority have more addresses than that and resolve first, the best
    target's address still replaces one of theirs, so every call goes to
    it."""
    best = start_faultd("best")
    # dnsmasq 2.90 returns its SRV records in the reverse order of its
    # options (checked by hand), so the best target comes last and its
    # lookup ends after the others.
    records = [srv_record("_http._tcp.many.test", "best.test", best.port,
                          priority=10),
               host_record("best.test", "127.0.0.1")]
    for b in range(3):
        name = f"backup{b}.test"
        records.append(srv_record("_http._tcp.many.test", name, best.port,
                                  priority=20))
        # 22 addresses per name (66 in all) fit in one UDP response each.
        records += [host_record(name, f"127.2.{b}.{i + 1}")
                    for i in range(22)]
    dns = dns_server(records)
    gw = dns_gateway(gateway, dns, "srv+http://_http._tcp.many.test")

    for _ in range(10):
        resp = gw.get("/x")
        assert resp.status == 200, resp

    assert requests_seen(best) == 10, best.events()


@pytest.mark.parametrize("scheme", ["srv+http", "srv+h2c"])
def test_srv_fails_over_to_next_priority(gateway, dns_server, start_faultd,
                                         scheme):
    """When the only target of the best priority refuses connections, the
    calls succeed on the next priority, within their deadline."""
    backup = start_faultd("backup")
    dead_port = free_port()  # nothing listens there
    dns = dns_server([
        srv_record("_http._tcp.fail.test", "dead.test", dead_port,
                   priority=10),
        srv_record("_http._tcp.fail.test", "backup.test", backup.port,
                   priority=20),
        host_record("dead.test", "127.0.0.1"),
        host_record("backup.test", "127.0.0.1"),
    ])
    gw = dns_gateway(gateway, dns, f"{scheme}://_http._tcp.fail.test")

    for _ in range(10):
        resp = gw.get("/x")
        assert resp.status == 200, resp
        assert resp.elapsed < 2.0, resp

    assert requests_seen(backup) == 10, backup.events()


def test_srv_target_dot_fails_fast(gateway, dns_server):
    """An SRV answer whose target is "." means there is no such service:
    502 kind resolve at once."""
    dns = dns_server([srv_no_service("_http._tcp.gone.test")])
    gw = dns_gateway(gateway, dns, "srv+http://_http._tcp.gone.test",
                     deadline_ms=5000)

    resp = gw.get("/x")

    assert_resolve_error(resp)
    assert resp.elapsed < 1.0, resp


@pytest.mark.parametrize("scheme", ["srv+http", "srv+h2c"])
def test_srv_nxdomain_fails_fast(gateway, dns_server, scheme):
    """An SRV name that does not exist fails with kind resolve long before
    the deadline."""
    dns = dns_server([host_record("other.test", "127.0.0.1")])
    gw = dns_gateway(gateway, dns, f"{scheme}://_http._tcp.missing.test",
                     deadline_ms=5000)

    resp = gw.get("/x")

    assert_resolve_error(resp)
    assert resp.elapsed < 1.0, resp


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_nxdomain_first_use_fails_fast(gateway, dns_server, scheme):
    """A host name that gets NXDOMAIN on its first resolution fails every
    call at once with kind resolve, the first and the later ones."""
    dns = dns_server([host_record("other.test", "127.0.0.1")])
    gw = dns_gateway(gateway, dns, f"{scheme}://nosuch.test:{free_port()}",
                     deadline_ms=5000)

    for _ in range(3):
        resp = gw.get("/x")
        assert_resolve_error(resp)
        assert resp.elapsed < 1.0, resp


def test_dns_server_down_first_use_fails_fast(gateway, dns_server):
    """With the DNS server gone before the first resolution, calls fail
    with kind resolve within the resolver's own timeouts, not at the call
    deadline."""
    dns = dns_server([host_record("down.test", "127.0.0.1")])
    dns.stop()
    gw = dns_gateway(gateway, dns, f"http://down.test:{free_port()}",
                     deadline_ms=8000)

    resp = gw.get("/x")

    assert_resolve_error(resp)
    assert resp.elapsed < 4.0, resp


def test_silent_dns_fails_within_budget(gateway):
    """A DNS server that never answers: the first call fails with kind
    resolve just before its deadline, not with kind deadline after it, and
    much sooner than c-ares's own retry schedule."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        gw = gateway({"svc": {"url": f"http://silent.test:{free_port()}"}},
                     [route("/x", [call("a", "svc", "/p")],
                            deadline_ms=400)],
                     resolver={"servers": [f"127.0.0.1:{port}"],
                               "timeout_ms": 5000})

        resp = gw.get("/x")

        err = assert_resolve_error(resp)
        assert "did not finish within" in err["message"], err
        assert 0.3 < resp.elapsed < 1.5, resp


def test_cname_followed(gateway, dns_server, start_faultd):
    """A name that is a CNAME reaches the address of its target."""
    server = start_faultd("target")
    dns = dns_server(["--cname=alias.test,real.test",
                      host_record("real.test", "127.0.0.1")])
    gw = dns_gateway(gateway, dns, f"http://alias.test:{server.port}")

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert requests_seen(server) == 1


# ------------------------------------------------------------ A and AAAA


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_aaaa_unreachable_falls_back_to_a(gateway, dns_server, start_faultd,
                                          scheme):
    """A name with AAAA ::1 (nothing listens there on that port) and A
    127.0.0.1 (the service) works for every call, without waiting."""
    server = start_faultd("v4only")
    dns = dns_server([host_record("dual.test", "127.0.0.1", "::1")])
    gw = dns_gateway(gateway, dns, f"{scheme}://dual.test:{server.port}")

    for _ in range(10):
        resp = gw.get("/x")
        assert resp.status == 200, resp
        assert resp.elapsed < 1.5, resp

    assert requests_seen(server) == 10


def test_blackholed_address_skipped(gateway, dns_server, start_faultd):
    """An address that never replies to SYN costs one per-address connect
    timeout at most, and the call succeeds on the other address.

    The black hole is a listening socket whose accept queue is full, so
    the kernel drops further SYNs."""
    port = free_port_on("127.0.0.2", "127.0.0.3")
    hole = socket.socket()
    hole.bind(("127.0.0.2", port))
    hole.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.2", port))
            fillers.append(filler)
        time.sleep(0.2)
        server = start_faultd("alive", host="127.0.0.3", port=port)
        dns = dns_server([host_record("hole.test", "127.0.0.2", ttl=30),
                          host_record("hole.test", "127.0.0.3", ttl=30)])
        gw = dns_gateway(gateway, dns, f"http://hole.test:{port}",
                         deadline_ms=4000, connect_timeout_ms=200)

        for _ in range(6):
            resp = gw.get("/x")
            assert resp.status == 200, resp
            # One 200 ms connect timeout plus the call, with slack for
            # sanitizer builds.
            assert resp.elapsed < 1.5, resp

        assert requests_seen(server) == 6
    finally:
        for filler in fillers:
            filler.close()
        hole.close()


# ------------------------------------------------- TTL and serve-stale


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_ttl_expiry_picks_up_new_address(gateway, dns_server, start_faultd,
                                         scheme):
    """When the record changes, calls move to the new address once the
    old answer's TTL (clamped to dns_max_ttl_ms) runs out, and no call
    fails on the way."""
    port = free_port_on("127.0.0.2", "127.0.0.3")
    old = start_faultd("old", host="127.0.0.2", port=port)
    new = start_faultd("new", host="127.0.0.3", port=port)
    dns = dns_server([host_record("moving.test", "127.0.0.2", ttl=1)])
    gw = dns_gateway(gateway, dns, f"{scheme}://moving.test:{port}",
                     dns_min_ttl_ms=100, dns_max_ttl_ms=500,
                     idle_timeout_ms=300)

    resp = gw.get("/x")
    assert resp.status == 200, resp
    assert requests_seen(old) == 1

    dns.restart([host_record("moving.test", "127.0.0.3", ttl=1)])
    deadline = time.monotonic() + 8.0
    while requests_seen(new) == 0 and time.monotonic() < deadline:
        resp = gw.get("/x")
        assert resp.status == 200, resp
        time.sleep(0.1)

    assert requests_seen(new) >= 1, (old.events()[-5:], gw.logs()[-10:])
    # Once moved, calls stay on the new address.
    before_old = requests_seen(old)
    for _ in range(5):
        resp = gw.get("/x")
        assert resp.status == 200, resp
    assert requests_seen(old) == before_old


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_serve_stale_during_dns_outage(gateway, dns_server, start_faultd,
                                       scheme):
    """With the DNS server stopped, refreshes fail but every call keeps
    using the last good address, and the failure is logged."""
    server = start_faultd("stale")
    dns = dns_server([host_record("stale.test", "127.0.0.1", ttl=1)])
    gw = dns_gateway(gateway, dns, f"{scheme}://stale.test:{server.port}",
                     dns_min_ttl_ms=100, dns_max_ttl_ms=300,
                     dns_max_stale_ms=60000)

    resp = gw.get("/x")
    assert resp.status == 200, resp

    dns.stop()
    statuses = []
    end = time.monotonic() + 3.0  # ten refresh periods or more
    while time.monotonic() < end:
        resp = gw.get("/x")
        statuses.append(resp.status)
        time.sleep(0.05)

    assert statuses, "no request was sent"
    assert set(statuses) == {200}, statuses
    assert requests_seen(server) == len(statuses) + 1
    # The failed refreshes are logged (not only the access lines).
    problems = [line for line in log_lines_with(gw, "stale.test")
                if line.get("msg") != "access"]
    assert problems, gw.logs()[-10:]


def test_stale_answer_expires_after_max_stale(gateway, dns_server,
                                              start_faultd):
    """Past dns_max_stale_ms without a good DNS response, the old address is no
    longer used and calls fail with kind resolve."""
    server = start_faultd("expiring")
    dns = dns_server([host_record("expire.test", "127.0.0.1", ttl=1)])
    gw = dns_gateway(gateway, dns, f"http://expire.test:{server.port}",
                     dns_min_ttl_ms=100, dns_max_ttl_ms=200,
                     dns_max_stale_ms=500)

    resp = gw.get("/x")
    assert resp.status == 200, resp

    dns.stop()
    deadline = time.monotonic() + 8.0
    resp = gw.get("/x")
    while resp.status == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        resp = gw.get("/x")

    assert_resolve_error(resp)


def test_search_list_and_ndots(gateway, dns_server, start_faultd):
    """A short name is completed with the resolver's search list, as pods
    rely on: c-ares reads it from /etc/resolv.conf, or from LOCALDOMAIN and
    RES_OPTIONS, which override the file and keep this test off the
    machine's own resolver configuration."""
    server = start_faultd("short")
    dns = dns_server([host_record("orders.shop.test", "127.0.0.1")])
    gw = gateway({"svc": {"url": f"http://orders:{server.port}"}},
                 [route("/x", [call("a", "svc", "/p")], deadline_ms=3000)],
                 resolver=dns.resolver,
                 env={"LOCALDOMAIN": "shop.test", "RES_OPTIONS": "ndots:2"})

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert requests_seen(server) == 1


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_ip_literal_skips_dns(gateway, faultd, scheme):
    """A service URL with an IP address never asks DNS: with a resolver
    that never answers, its calls still succeed and no query is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        port = silent.getsockname()[1]
        gw = gateway({"svc": {"url": f"{scheme}://127.0.0.1:{faultd.port}"}},
                     [route("/x", [call("a", "svc", "/p")],
                            deadline_ms=2000)],
                     resolver={"servers": [f"127.0.0.1:{port}"]},
                     defaults={"dns_min_ttl_ms": 100,
                               "dns_max_ttl_ms": 100})

        for _ in range(3):
            resp = gw.get("/x")
            assert resp.status == 200, resp
            time.sleep(0.15)

        with pytest.raises(BlockingIOError):
            silent.recv(512)
