"""Fan-out and aggregation: all calls start at once and their JSON bodies
are combined under the call names."""

import pytest

from conftest import (NGHTTPD_BODY, NGINX_BODY, WORKERS,
                      assert_json_response, call, route, service)


def test_aggregates_three_downstreams(gateway, faultd, nginx, nghttpd):
    """One h2c faultd call, one HTTP/1.1 nginx call and one h2c nghttpd
    call are combined into one JSON object keyed by call name."""
    gw = gateway(
        {"profile": service(faultd.h2_url),
         "static": service(nginx.url),
         "files": service(nghttpd.url)},
        [route("/dashboard/{user}", [
            call("profile", "profile", "/users/{user}"),
            call("banner", "static", "/static.json"),
            call("data", "files", "/data.json"),
        ], deadline_ms=3000)])

    resp = gw.get("/dashboard/alice")

    assert resp.status == 200, resp
    assert_json_response(resp)
    assert resp.header("Tutti-Partial") is None
    body = resp.json()
    assert set(body) == {"profile", "banner", "data"}
    assert body["profile"]["path"] == "/users/alice"
    assert body["profile"]["method"] == "GET"
    assert body["banner"] == NGINX_BODY
    assert body["data"] == NGHTTPD_BODY
    requests = faultd.select(event="request", path="/users/alice")
    assert len(requests) == 1
    assert requests[0]["proto"] == "h2"


def test_http1_service_uses_http1(gateway, faultd):
    """An http:// service is called over HTTP/1.1 and an h2c:// one over
    HTTP/2, even when both point at the same server."""
    gw = gateway(
        {"plain": service(faultd.h1_url), "multiplexed": service(
            faultd.h2_url)},
        [route("/both", [
            call("one", "plain", "/one"),
            call("two", "multiplexed", "/two"),
        ])])

    resp = gw.get("/both")

    assert resp.status == 200, resp
    body = resp.json()
    assert body["one"]["path"] == "/one"
    assert body["two"]["path"] == "/two"
    [one] = faultd.select(event="request", path="/one")
    [two] = faultd.select(event="request", path="/two")
    assert one["proto"] == "h1"
    assert two["proto"] == "h2"


@pytest.mark.parametrize("workers", WORKERS)
def test_calls_run_concurrently(gateway, faultd, workers):
    """Three 200 ms calls (two h2c, one HTTP/1.1) complete in well under
    the 600 ms that sequential calls would take."""
    gw = gateway(
        {"h2": service(faultd.h2_url), "h1": service(faultd.h1_url)},
        [route("/slow", [
            call("a", "h2", "/a?delay_ms=200"),
            call("b", "h2", "/b?delay_ms=200"),
            call("c", "h1", "/c?delay_ms=200"),
        ], deadline_ms=5000)],
        workers=workers)

    resp = gw.get("/slow")

    assert resp.status == 200, resp
    assert set(resp.json()) == {"a", "b", "c"}
    assert resp.elapsed >= 0.19, resp
    assert resp.elapsed < 0.4, resp
    starts = [faultd.select(event="request", path=p)[0]["t"]
              for p in ("/a", "/b", "/c")]
    assert max(starts) - min(starts) < 0.15, starts


def test_no_content_contributes_null(gateway, faultd):
    """A 204 response contributes null under its call name."""
    gw = gateway(
        {"svc": service(faultd.h2_url), "old": service(faultd.h1_url)},
        [route("/nc", [
            call("h2", "svc", "/nothing?status=204"),
            call("h1", "old", "/nothing?status=204"),
            call("echo", "svc", "/echo"),
        ])])

    resp = gw.get("/nc")

    assert resp.status == 200, resp
    body = resp.json()
    assert body["h2"] is None
    assert body["h1"] is None
    assert body["echo"]["path"] == "/echo"
    assert "errors" not in body


def test_optional_failure_partial(gateway, faultd):
    """Failed optional calls leave a 200 with an errors object and a
    Tutti-Partial header naming them; required calls still contribute."""
    gw = gateway(
        {"svc": service(faultd.h2_url)},
        [route("/partial", [
            call("main", "svc", "/main"),
            call("ads", "svc", "/ads?status=500", required=False),
            call("recs", "svc", "/recs?delay_ms=3000", timeout_ms=100,
                 required=False),
        ], deadline_ms=2000)])

    resp = gw.get("/partial")

    assert resp.status == 200, resp
    assert_json_response(resp)
    body = resp.json()
    assert body["main"]["path"] == "/main"
    assert set(body["errors"]) == {"ads", "recs"}
    assert body["errors"]["ads"]["kind"] == "status"
    assert body["errors"]["ads"]["status"] == 500
    assert body["errors"]["recs"]["kind"] == "timeout"
    assert "ads" not in body
    assert "recs" not in body
    partial = resp.header("Tutti-Partial")
    assert partial is not None, resp
    assert sorted(n.strip() for n in partial.split(",")) == ["ads", "recs"]
    # The optional timeout must not hold the response up past its timeout.
    assert resp.elapsed < 1.0, resp


def test_access_log_line(gateway, faultd):
    """Each request writes one access line naming its route, status and
    calls."""
    gw = gateway(
        {"svc": service(faultd.h2_url)},
        [route("/dashboard/{user}", [
            call("profile", "svc", "/users/{user}"),
            call("broken", "svc", "/b?status=503", required=False),
        ])])

    resp = gw.get("/dashboard/bob", headers={"X-Request-Id": "log-1"})
    assert resp.status == 200, resp

    line = gw.wait_access(request_id="log-1")
    assert line is not None, gw.proc.stderr()
    assert line["method"] == "GET"
    assert line["path"] == "/dashboard/bob"
    assert line["route"] == "/dashboard/{user}"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], (int, float))
    calls = {c["name"]: c for c in line["calls"]}
    assert set(calls) == {"profile", "broken"}
    assert calls["profile"]["service"] == "svc"
    assert calls["profile"]["status"] == 200
    assert calls["broken"]["status"] == 503
    for entry in calls.values():
        for key in ("endpoint", "outcome", "duration_ms"):
            assert key in entry, entry
    assert len([a for a in gw.access_lines()
                if a.get("request_id") == "log-1"]) == 1


def test_log_lines_have_fields(gateway, faultd):
    """Every log line, the start and stop lines included, is JSON with
    time, level, worker and msg."""
    gw = gateway({"svc": service(faultd.h2_url)},
                 [route("/x", [call("a", "svc", "/a")])])
    assert gw.get("/x").status == 200

    gw.proc.stop()

    lines = gw.logs()
    assert len(lines) >= 2, gw.proc.stderr()
    for entry in lines:
        for key in ("time", "level", "worker", "msg"):
            assert key in entry, entry


def test_bodies_pass_through_unchanged(gateway, faultd):
    """Downstream JSON is placed in the answer byte for byte: a decimal
    keeps its text and an integer wider than 64 bits is not rejected."""
    gw = gateway(
        {"svc": service(faultd.h1_url)},
        [route("/numbers", [
            call("price", "svc", "/p?body=raw&text=%7B%22p%22%3A0.92%7D"),
            call("big", "svc",
                 "/b?body=raw&text=123456789012345678901234567890"),
        ])])

    resp = gw.get("/numbers")

    assert resp.status == 200, resp
    assert resp.body == (b'{"price":{"p":0.92},'
                         b'"big":123456789012345678901234567890}'), resp


def test_head_call_contributes_null(gateway, nginx):
    """A HEAD call has no body to place; like a 204 it contributes
    null instead of failing as an empty body."""
    gw = gateway(
        {"static": service(nginx.url)},
        [route("/meta", [
            call("exists", "static", "/static.json", method="HEAD"),
            call("banner", "static", "/static.json"),
        ])])

    resp = gw.get("/meta")

    assert resp.status == 200, resp
    body = resp.json()
    assert body["exists"] is None, body
    assert body["banner"] == NGINX_BODY, body
