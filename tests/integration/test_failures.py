"""Required call failures: each kind maps to one status and error body,
and the gateway responds as soon as a required call fails."""

import pytest

from conftest import (assert_json_response, call, error_of, free_port,
                      route, service)


def fail_gateway(gateway, url, path, **top):
    """Start a gateway whose GET /x makes one required call |path|."""
    return gateway({"svc": service(url)},
                   [route("/x", [call("profile", "svc", path)],
                          deadline_ms=3000)], **top)


def assert_error(resp, status, kind, call_name="profile"):
    assert resp.status == status, resp
    assert_json_response(resp)
    err = error_of(resp)
    assert err["call"] == call_name, err
    assert err["kind"] == kind, err
    assert isinstance(err.get("message"), str) and err["message"], err
    assert isinstance(err.get("elapsed_ms"), (int, float)), err
    return err


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_call_timeout_504(gateway, faultd, scheme):
    """A call slower than its timeout_ms gives 504 kind timeout at about
    that timeout, well before the route deadline."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = gateway({"svc": service(url)},
                 [route("/x", [call("profile", "svc", "/p?delay_ms=2000",
                                    timeout_ms=150)], deadline_ms=3000)])

    resp = gw.get("/x")

    err = assert_error(resp, 504, "timeout")
    assert "status" not in err, err
    assert resp.elapsed >= 0.14, resp
    assert resp.elapsed < 0.8, resp
    assert err["elapsed_ms"] >= 140, err


def test_service_timeout_504(gateway, faultd):
    """A service's timeout_ms applies to calls that set none."""
    gw = gateway({"svc": service(faultd.h2_url, timeout_ms=150)},
                 [route("/x", [call("profile", "svc", "/p?delay_ms=2000")],
                        deadline_ms=3000)])

    resp = gw.get("/x")

    assert_error(resp, 504, "timeout")
    assert resp.elapsed < 0.8, resp


@pytest.mark.parametrize("scheme", ["h1", "h2"])
@pytest.mark.parametrize("status", [301, 302, 304, 399])
def test_redirect_is_not_a_result(gateway, faultd, scheme, status):
    """tutti follows no redirect: a 3xx from a required call, with a JSON
    body or none, fails as kind status with 502, and the body never
    reaches the client."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, f"/moved?status={status}")

    resp = gw.get("/x")

    err = assert_error(resp, 502, "status")
    assert err["status"] == status, err
    assert f"answered {status}" in err["message"], err
    assert "moved" not in resp.body.decode(), resp


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_client_error_passes_through(gateway, faultd, scheme):
    """A 404 from a required call stays 404, with the JSON error body."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/missing?status=404")

    resp = gw.get("/x")

    err = assert_error(resp, 404, "status")
    assert err["status"] == 404, err


def test_client_error_429_passes_through(gateway, faultd):
    """Any 4xx status, not only 404, reaches the client unchanged."""
    gw = fail_gateway(gateway, faultd.h2_url, "/p?status=429")

    resp = gw.get("/x")

    err = assert_error(resp, 429, "status")
    assert err["status"] == 429, err


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_server_error_becomes_502(gateway, faultd, scheme):
    """A 503 from a required call becomes 502 and keeps 503 in the body."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/p?status=503")

    resp = gw.get("/x")

    err = assert_error(resp, 502, "status")
    assert err["status"] == 503, err


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_invalid_json_bad_response(gateway, faultd, scheme):
    """A 200 whose body is not JSON is a 502 bad_response."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/p?body=invalid")

    resp = gw.get("/x")

    assert_error(resp, 502, "bad_response")


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_empty_body_bad_response(gateway, faultd, scheme):
    """A 200 with an empty body is a 502 bad_response."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/p?body=empty")

    resp = gw.get("/x")

    assert_error(resp, 502, "bad_response")


def test_raw_text_bad_response(gateway, faultd):
    """A 200 whose body is plain text is a 502 bad_response."""
    gw = fail_gateway(gateway, faultd.h1_url, "/p?body=raw&text=hello")

    resp = gw.get("/x")

    assert_error(resp, 502, "bad_response")


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_oversized_body_bad_response(gateway, faultd, scheme):
    """A body over max_response_body_bytes is a 502 bad_response."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/p?body=huge&size=200000",
                      max_response_body_bytes=4096)

    resp = gw.get("/x")

    assert_error(resp, 502, "bad_response")


def test_chunked_body_accepted(gateway, faultd):
    """A chunked HTTP/1.1 response is read in full and aggregated."""
    gw = fail_gateway(gateway, faultd.h1_url, "/p?chunked=1")

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["profile"]["path"] == "/p?chunked=1"


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_connection_reset_502(gateway, faultd, scheme):
    """A downstream that resets the connection gives 502 kind reset."""
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    gw = fail_gateway(gateway, url, "/p?action=reset")

    resp = gw.get("/x")

    err = assert_error(resp, 502, "reset")
    assert "status" not in err, err


def test_rst_stream_502(gateway, faultd):
    """An h2c downstream that resets the stream gives 502 kind reset."""
    gw = fail_gateway(gateway, faultd.h2_url, "/p?action=rst_stream")

    resp = gw.get("/x")

    assert_error(resp, 502, "reset")


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_connection_refused_fails_fast(gateway, scheme):
    """A refused connection gives 502 kind connect long before the
    deadline."""
    port = free_port()  # closed again, so nothing listens there
    gw = gateway({"svc": service(f"{scheme}://127.0.0.1:{port}")},
                 [route("/x", [call("profile", "svc", "/p")],
                        deadline_ms=5000)])

    resp = gw.get("/x")

    assert_error(resp, 502, "connect")
    assert resp.elapsed < 1.0, resp


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_unresolvable_host_fails_fast(gateway, scheme):
    """A name that dnsmasq resolves to NXDOMAIN gives 502 kind resolve long
    before the deadline."""
    gw = gateway({"svc": service(f"{scheme}://missing.test:80")},
                 [route("/x", [call("profile", "svc", "/p")],
                        deadline_ms=5000)])

    resp = gw.get("/x")

    assert_error(resp, 502, "resolve")
    assert resp.elapsed < 1.0, resp


@pytest.mark.parametrize("scheme", ["http", "h2c"])
def test_resolved_name_works(gateway, faultd, scheme):
    """A service named by a host that dnsmasq resolves is reached."""
    gw = gateway({"svc": service(f"{scheme}://ok.test:{faultd.port}")},
                 [route("/x", [call("profile", "svc", "/p")],
                        deadline_ms=3000)])

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["profile"]["path"] == "/p"
    [request] = faultd.select(event="request", path="/p")
    assert request["proto"] == ("h2" if scheme == "h2c" else "h1")
