"""Many concurrent requests on two workers: all succeed and each response
carries its own request's data."""

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import call, http_request, route, service

REQUESTS = 200
CLIENT_THREADS = 20


@pytest.mark.multiworker
def test_concurrent_requests_two_workers(gateway, faultd):
    """200 requests from 20 client threads against --workers 2 all get
    200 with the bodies of their own calls, and no request is logged
    twice."""
    gw = gateway({"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
                 [route("/load/{n}", [
                     call("a", "h2", "/a/{n}?delay_ms=5"),
                     call("b", "h1", "/b/{n}"),
                 ], deadline_ms=10000)],
                 workers=2)

    def one(n):
        return n, http_request(gw.port, "GET", f"/load/{n}",
                               headers={"X-Request-Id": f"load-{n}"},
                               timeout=30.0)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        results = list(pool.map(one, range(REQUESTS)))
    took = time.monotonic() - started

    failed = [(n, r) for n, r in results if r.status != 200]
    assert failed == [], failed[:5]
    for n, resp in results:
        body = resp.json()
        assert body["a"]["path"] == f"/a/{n}?delay_ms=5", (n, body)
        assert body["b"]["path"] == f"/b/{n}", (n, body)
        assert body["a"]["headers"]["x-request-id"] == f"load-{n}"
        assert resp.header("X-Request-Id") == f"load-{n}"
    assert took < 60.0
    deadline = time.monotonic() + 3.0
    while len(gw.access_lines()) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.05)
    ids = [line["request_id"] for line in gw.access_lines()]
    assert sorted(ids) == sorted(f"load-{n}" for n in range(REQUESTS))
