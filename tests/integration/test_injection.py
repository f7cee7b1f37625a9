"""Path parameters and query values reach the downstream still encoded:
an attacker cannot change the downstream path, add query parameters,
cut the target with '#' or inject headers with CR LF."""

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from conftest import call, route, service

RAW_FORBIDDEN = (" ", "#", "\r", "\n", "\t")

SEGMENTS = ["..%2Fadmin", "a%3Fb", "a%23b", "a%0D%0Ab",
            "a%0D%0AX-Injected%3A%201", "a%20b", "a%2Eb"]


def path_gateway(gateway, faultd, scheme):
    url = faultd.h2_url if scheme == "h2" else faultd.h1_url
    return gateway({"svc": service(url)},
                   [route("/dashboard/{user}",
                          [call("profile", "svc", "/users/{user}")]),
                    route("/search",
                          [call("find", "svc", "/find?q={query.q}")])])


@pytest.mark.parametrize("scheme", ["h1", "h2"])
def test_dot_dot_slash_stays_encoded(gateway, faultd, scheme):
    """/dashboard/..%2Fadmin reaches the service as /users/..%2Fadmin."""
    gw = path_gateway(gateway, faultd, scheme)

    resp = gw.get("/dashboard/..%2Fadmin")

    assert resp.status == 200, resp
    assert resp.json()["profile"]["path"] == "/users/..%2Fadmin"


@pytest.mark.parametrize("scheme", ["h1", "h2"])
@pytest.mark.parametrize("segment", SEGMENTS)
def test_path_parameter_stays_one_segment(gateway, faultd, scheme, segment):
    """A path parameter stays one encoded segment with the same decoded
    value, and CR LF adds no header and no second request."""
    gw = path_gateway(gateway, faultd, scheme)

    resp = gw.get(f"/dashboard/{segment}")

    assert resp.status == 200, resp
    echo = resp.json()["profile"]
    received = echo["path"]
    assert received.startswith("/users/"), received
    for char in RAW_FORBIDDEN + ("?", "\0"):
        assert char not in received, received
    sent_segment = received[len("/users/"):]
    assert "/" not in sent_segment, received
    assert unquote(sent_segment) == unquote(segment), received
    assert "x-injected" not in echo["headers"], echo["headers"]
    assert len(faultd.select(event="request")) == 1, faultd.events()


@pytest.mark.parametrize("scheme", ["h1", "h2"])
@pytest.mark.parametrize("segment", ["%2E%2E", "%2e", "..", "."])
def test_dot_segment_never_forwarded(gateway, faultd, scheme, segment):
    """An encoded or bare dot segment as a parameter either gets a 400 or
    reaches the downstream encoded, never as a raw "." or ".." that would
    climb out of /users/."""
    gw = path_gateway(gateway, faultd, scheme)

    # http.client sends the target as written, without normalizing it.
    resp = gw.get(f"/dashboard/{segment}")

    if resp.status == 400:
        assert faultd.select(event="request") == [], faultd.events()
        return
    assert resp.status in (200, 404), resp
    for ev in faultd.select(event="request"):
        parts = ev["path"].split("?", 1)[0].split("/")
        assert "." not in parts, ev
        assert ".." not in parts, ev


@pytest.mark.parametrize("scheme", ["h1", "h2"])
@pytest.mark.parametrize("raw, value", [
    ("a%26b%3Dc", "a&b=c"),
    ("x%26delay_ms%3D3000", "x&delay_ms=3000"),
    ("a%23b", "a#b"),
    ("a%20b", "a b"),
    ("a%0D%0AX-Injected%3A%201", "a\r\nX-Injected: 1"),
])
def test_query_value_stays_one_parameter(gateway, faultd, scheme, raw,
                                         value):
    """A query value with &, =, #, spaces or CR LF stays one encoded
    parameter of the downstream query."""
    gw = path_gateway(gateway, faultd, scheme)

    resp = gw.get(f"/search?q={raw}")

    assert resp.status == 200, resp
    assert resp.elapsed < 1.5, resp  # an injected delay_ms would show
    echo = resp.json()["find"]
    received = echo["path"]
    for char in RAW_FORBIDDEN:
        assert char not in received, received
    parts = urlsplit(received)
    assert parts.path == "/find", received
    assert parse_qs(parts.query, keep_blank_values=True) == {"q": [value]}, \
        received
    assert "x-injected" not in echo["headers"], echo["headers"]


def test_extra_inbound_query_not_forwarded(gateway, faultd):
    """Inbound query parameters the call template does not name do not
    reach the downstream (so faultd's control knobs stay out of reach)."""
    gw = path_gateway(gateway, faultd, "h1")

    resp = gw.get("/search?q=x&delay_ms=3000&status=500")

    assert resp.status == 200, resp
    assert resp.elapsed < 1.5, resp
    received = resp.json()["find"]["path"]
    assert parse_qs(urlsplit(received).query) == {"q": ["x"]}, received
