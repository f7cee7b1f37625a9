"""Downstream connections are reused across requests: one h2c connection
carries successive requests, and an HTTP/1.1 keep-alive connection
serves successive sequential requests."""

import uuid

import pytest

from conftest import (NGHTTPD_BODY, NGINX_BODY, call, route, service,
                      wait_access_entries)


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_faultd_connection_reused(gateway, faultd, scheme):
    """Four sequential requests open one connection to faultd."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = gateway({"svc": service(url)},
                 [route("/x/{n}", [call("a", "svc", "/a/{n}")])])

    for n in range(4):
        resp = gw.get(f"/x/{n}")
        assert resp.status == 200, resp
        assert resp.json()["a"]["path"] == f"/a/{n}"

    assert len(faultd.select(event="conn_open")) == 1, faultd.events()
    requests = faultd.select(event="request")
    assert len(requests) == 4
    assert len({ev["conn"] for ev in requests}) == 1, requests


def test_h2_parallel_calls_share_connection(gateway, faultd):
    """Concurrent calls to one h2c service are multiplexed on one
    connection as separate streams."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call(f"c{i}", "svc", f"/c{i}?delay_ms=100")
                               for i in range(4)])])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    requests = faultd.select(event="request")
    assert len(requests) == 4
    assert len({ev["conn"] for ev in requests}) == 1, requests
    assert len({ev["stream"] for ev in requests}) == 4, requests


def test_nginx_keepalive_reused(gateway, nginx):
    """Two sequential requests to nginx travel on the same keep-alive
    connection ($connection in nginx's access log)."""
    gw = gateway({"web": service(nginx.url)},
                 [route("/x", [call("banner", "web", "/static.json")])])
    ids = [f"nginx-{uuid.uuid4().hex}" for _ in range(2)]

    for request_id in ids:
        resp = gw.get("/x", headers={"X-Request-Id": request_id})
        assert resp.status == 200, resp
        assert resp.json() == {"banner": NGINX_BODY}

    entries = wait_access_entries(nginx.access_log, ids)
    assert [e[2] for e in entries] == ids, nginx.access_entries()
    assert entries[0][0] == entries[1][0], entries
    assert entries[1][1] == entries[0][1] + 1, entries


def test_nghttpd_connection_reused(gateway, nghttpd):
    """Two sequential requests to nghttpd use one HTTP/2 session."""
    gw = gateway({"files": service(nghttpd.url)},
                 [route("/x", [call("data", "files", "/data.json")])])
    offset = nghttpd.output_size()

    for _ in range(2):
        resp = gw.get("/x")
        assert resp.status == 200, resp
        assert resp.json() == {"data": NGHTTPD_BODY}

    assert len(nghttpd.session_ids(since=offset)) == 1, \
        nghttpd.proc.stdout()[offset:][-3000:]
