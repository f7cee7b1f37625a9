"""TLS to downstreams: https:// (HTTP/1.1) and h2:// (HTTP/2, ALPN h2)
against nginx and nghttpd with certificates made by openssl for the
test: verification on by default, ca_file, host-name checks, SNI,
client certificates (mTLS) and tls_verify false."""

import json

import pytest

from conftest import (NGHTTPD_BODY, NGINX_BODY, call, error_of, route,
                      wait_access_entries,
                      run_tutti)

PROTOCOL = {"https": "HTTP/1.1", "h2": "HTTP/2.0"}


def tls_gateway(gateway, url, path="/tls.json", **options):
    svc = {"url": url}
    svc.update(options)
    return gateway({"svc": svc},
                   [route("/x", [call("a", "svc", path)], deadline_ms=3000)])


def assert_verify_failure(resp):
    """A failed verification is a 502 kind connect whose message
    names the certificate problem."""
    assert resp.status == 502, resp
    err = error_of(resp)
    assert err["kind"] == "connect", err
    message = err["message"].lower()
    assert "verif" in message or "certificate" in message, err
    return err


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_verified_with_ca_file(gateway, nginx_tls, tls_pki, scheme):
    """A certificate from the CA in ca_file, for the URL's host name, is
    accepted; ALPN picks the protocol and SNI carries the host name."""
    gw = tls_gateway(gateway, f"{scheme}://tls.test:{nginx_tls.port}",
                     ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert resp.status == 200, resp
    seen = resp.json()["a"]
    assert seen["protocol"] == PROTOCOL[scheme], seen
    assert seen["sni"] == "tls.test", seen


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_verified_ip_literal(gateway, nginx_tls, tls_pki, scheme):
    """A URL with an IP address is checked against the certificate's IP
    subjectAltName."""
    gw = tls_gateway(gateway, f"{scheme}://127.0.0.1:{nginx_tls.port}",
                     path="/static.json", ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json() == {"a": NGINX_BODY}


def test_h2_nghttpd(gateway, nghttpd_tls, tls_pki):
    """h2:// works against nghttpd, which speaks only HTTP/2 over TLS."""
    gw = tls_gateway(gateway, f"h2://tls.test:{nghttpd_tls}",
                     path="/data.json", ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json() == {"a": NGHTTPD_BODY}


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_self_signed_rejected(gateway, nginx_tls, tls_pki, scheme):
    """A self-signed certificate fails verification: 502 kind connect,
    fast."""
    gw = tls_gateway(gateway,
                     f"{scheme}://tls.test:{nginx_tls.self_signed_port}",
                     ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert_verify_failure(resp)
    assert resp.elapsed < 1.5, resp


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_system_store_rejects_test_ca(gateway, nginx_tls, scheme):
    """Without ca_file the system's CA store is used, which does not
    contain the test CA."""
    gw = tls_gateway(gateway, f"{scheme}://tls.test:{nginx_tls.port}")

    resp = gw.get("/x")

    assert_verify_failure(resp)


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_wrong_host_name_rejected(gateway, nginx_tls, tls_pki, scheme):
    """ok.test resolves to the server, but its certificate names only
    tls.test, localhost and 127.0.0.1."""
    gw = tls_gateway(gateway, f"{scheme}://ok.test:{nginx_tls.port}",
                     ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert_verify_failure(resp)


def test_server_name_overrides_host(gateway, nginx_tls, tls_pki):
    """server_name sets the SNI and the name verified, whatever the URL's
    host."""
    gw = tls_gateway(gateway, f"https://ok.test:{nginx_tls.port}",
                     ca_file=str(tls_pki.ca), server_name="tls.test")

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["a"]["sni"] == "tls.test"


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_verify_off_accepts_self_signed(gateway, nginx_tls, scheme):
    """tls_verify false accepts any certificate."""
    gw = tls_gateway(gateway,
                     f"{scheme}://tls.test:{nginx_tls.self_signed_port}",
                     tls_verify=False)

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["a"]["protocol"] == PROTOCOL[scheme]


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_mtls_client_certificate(gateway, nginx_tls, tls_pki, scheme):
    """With cert_file and key_file the gateway presents its client
    certificate, and nginx (ssl_verify_client on) accepts it."""
    gw = tls_gateway(gateway, f"{scheme}://tls.test:{nginx_tls.mtls_port}",
                     ca_file=str(tls_pki.ca), cert_file=str(tls_pki.client),
                     key_file=str(tls_pki.client_key))

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["a"]["client"] == "CN=tutti-client"


def test_mtls_without_client_certificate(gateway, nginx_tls, tls_pki):
    """Without a client certificate, nginx responds 400 ("No required SSL
    certificate was sent"), which passes through as the call's status."""
    gw = tls_gateway(gateway, f"https://tls.test:{nginx_tls.mtls_port}",
                     ca_file=str(tls_pki.ca))

    resp = gw.get("/x")

    assert resp.status == 400, resp


def test_defaults_apply_tls_settings(gateway, nginx_tls, tls_pki):
    """TLS keys in the top-level "defaults" object apply to every
    service."""
    gw = gateway({"svc": {"url": f"h2://tls.test:{nginx_tls.mtls_port}"}},
                 [route("/x", [call("a", "svc", "/tls.json")])],
                 defaults={"ca_file": str(tls_pki.ca),
                           "cert_file": str(tls_pki.client),
                           "key_file": str(tls_pki.client_key)})

    resp = gw.get("/x")

    assert resp.status == 200, resp
    assert resp.json()["a"]["client"] == "CN=tutti-client"


@pytest.mark.parametrize("scheme", ["https", "h2"])
def test_tls_connection_reused(gateway, nginx_tls, tls_pki, scheme):
    """Sequential calls share one TLS connection (nginx's $connection)."""
    gw = tls_gateway(gateway, f"{scheme}://tls.test:{nginx_tls.port}",
                     path="/static.json", ca_file=str(tls_pki.ca))
    ids = [f"tls-{scheme}-{n}" for n in range(3)]

    for request_id in ids:
        resp = gw.get("/x", headers={"X-Request-Id": request_id})
        assert resp.status == 200, resp

    entries = [e[0] for e in wait_access_entries(nginx_tls.access_log, ids)]
    assert len(entries) == 3, nginx_tls.access_log.read_text()[-2000:]
    assert len(set(entries)) == 1, entries


def test_check_rejects_tls_keys_on_plain_service(tmp_path):
    """TLS keys are only valid on https:// and h2:// services."""
    config = {
        "listen": "127.0.0.1:8080",
        "services": {"svc": {"url": "http://127.0.0.1:9", "ca_file": "x"}},
        "routes": [{"method": "GET", "path": "/x",
                    "calls": [{"name": "a", "service": "svc",
                               "path": "/"}]}],
    }
    (tmp_path / "gw.json").write_text(json.dumps(config))

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 2, result
    assert "gw.json: services.svc.ca_file:" in result.stderr, result.stderr
