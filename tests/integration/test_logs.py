"""Logs: JSON lines that carry the request id, the text format, repeated
call failures rate-limited with a count, and no Authorization, Cookie or
secret header value in any line."""

import json
import re
import time

import pytest

from conftest import (Process, binary, call, free_port, route, service,
                      stop_and_check)

# log.h: LOG_RATE_LIMIT_DEFAULT.
RATE_LIMIT = 10


def closed_port_url():
    """An h2c URL on 127.0.0.1 where nothing listens, so calls fail with
    kind "connect" at once."""
    return f"h2c://127.0.0.1:{free_port()}"


def test_log_lines_are_json_with_request_id(gateway, faultd):
    """Every stderr line is one JSON object with time, level, worker and
    msg; the access line and the call failure carry the request id."""
    gw = gateway({"ok": service(faultd.h2_url),
                  "down": service(closed_port_url())},
                 [route("/l", [call("a", "ok", "/a"),
                               call("b", "down", "/b", required=False)])])

    resp = gw.get("/l", headers={"X-Request-Id": "log-json-1"})

    assert resp.status == 200, resp
    assert gw.wait_access(request_id="log-json-1") is not None
    lines = gw.proc.stderr().splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        for key in ("time", "level", "worker", "msg"):
            assert key in entry, line
    mine = [json.loads(line) for line in lines
            if json.loads(line).get("request_id") == "log-json-1"]
    msgs = {entry["msg"] for entry in mine}
    assert {"access", "call failed"} <= msgs, mine
    access = next(e for e in mine if e["msg"] == "access")
    assert access["status"] == 200
    assert [c["name"] for c in access["calls"]] == ["a", "b"]


TEXT_LINE = re.compile(r'^(\S+) (debug|info|warn|error) (\S+) ("(?:[^"\\]|'
                       r'\\.)*"|\S+)( [^ =]+=("(?:[^"\\]|\\.)*"|\S*))*$')


def parse_text_fields(line):
    """Return the key=value pairs after the four positional fields."""
    pairs = re.findall(r' ([^ ="]+)=("(?:[^"\\]|\\.)*"|[^ ]*)', line)
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in pairs}


def test_text_format(tmp_path, write_config, faultd):
    """--log-format text writes "time level worker msg key=value ...",
    quoting values with spaces and flattening the calls list."""
    port = free_port()
    config = write_config({"ok": service(faultd.h2_url)},
                          [route("/t", [call("a", "ok", "/a")])],
                          listen=f"127.0.0.1:{port}")
    proc = Process("tutti-text", [binary("TUTTI_BIN", "build/tutti"),
                                  "--config", str(config), "--workers", "1",
                                  "--log-format", "text"], tmp_path)
    try:
        proc.wait_ready(lambda: " listening " in proc.stderr())
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/t", headers={"X-Request-Id": "text-1"})
        assert conn.getresponse().status == 200
        conn.close()
        deadline = time.monotonic() + 5
        while " access " not in proc.stderr() and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop_and_check(proc)

    lines = proc.stderr().splitlines()
    for line in lines:
        assert not line.startswith("{"), line
        assert TEXT_LINE.match(line), line
    access = [line for line in lines if line.split(" ")[3] == "access"]
    assert len(access) == 1, lines
    time_text, level, worker = access[0].split(" ")[:3]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
                        time_text)
    assert level == "info"
    assert worker == "0"
    fields = parse_text_fields(access[0])
    assert fields["request_id"] == "text-1"
    assert fields["status"] == "200"
    assert fields["calls.0.name"] == "a"
    assert fields["calls.0.outcome"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{32}", fields["trace_id"])
    listening = next(line for line in lines if " listening " in line)
    assert listening.split(" ")[2] == "main"
    # A message with spaces is quoted like any other value.
    # (the stop on SIGTERM logs such a message, e.g. "draining: ...").
    assert any(re.match(r'^\S+ \S+ \S+ "[^" ]+ [^"]*"', line)
               for line in lines), lines


def test_repeated_failures_rate_limited(gateway):
    """Many failures of the same call within a second write at most the
    rate limit of "call failed" lines. Summary lines count the others, so
    the written and suppressed lines add up to the failures."""
    gw = gateway({"down": service(closed_port_url())},
                 [route("/down", [call("a", "down", "/a")])])
    total = 3 * RATE_LIMIT

    started = time.monotonic()
    for i in range(total):
        resp = gw.get("/down", headers={"X-Request-Id": f"limit-{i}"})
        assert resp.status == 502, resp
    elapsed = time.monotonic() - started
    # The summary is written with the next line after its window ends.
    time.sleep(1.2)
    resp = gw.get("/down", headers={"X-Request-Id": "limit-last"})
    assert resp.status == 502, resp
    assert gw.wait_access(request_id="limit-last") is not None

    logs = gw.logs()
    failed = [e for e in logs if e["msg"] == "call failed"]
    summaries = [e for e in logs
                 if e["msg"] == "repeated log lines suppressed"]
    suppressed = sum(e["suppressed"] for e in summaries)
    assert len(failed) + suppressed == total + 1, (len(failed), summaries)
    assert summaries, failed
    assert len(failed) <= RATE_LIMIT * (int(elapsed) + 2), (elapsed,
                                                           len(failed))
    for summary in summaries:
        assert summary["repeated_msg"] == "call failed"
        assert summary["repeat_key"] == "call failed|down|a|connect"
        assert summary["level"] == "warn"
    # Every failure still has its access line.
    assert len(gw.access_lines()) == total + 1


SECRETS = {
    "Authorization": "Bearer SECRET-AUTH-7f3a",
    "X-Api-Key": "SECRET-API-KEY-91bc",
    "Cookie": "session=SECRET-COOKIE-22de",
    "Proxy-Authorization": "Basic SECRET-PROXY-5e01",
}


def test_secret_headers_never_logged(gateway, faultd):
    """With debug logging, which lists each call's header fields, the
    values of Authorization, Cookie and a configured secret header appear
    in no log line, though the service receives them."""
    svc = service(faultd.h2_url)
    svc["forward_headers"] = ["Authorization", "X-Api-Key", "Cookie"]
    gw = gateway({"ok": svc, "down": service(closed_port_url())},
                 [route("/s", [call("a", "ok", "/a"),
                               call("b", "down", "/b", required=False)]),
                  route("/fail", [call("c", "down", "/c")])],
                 log_level="debug", secret_headers=["X-Api-Key"])

    ok = gw.get("/s", headers={**SECRETS, "X-Request-Id": "secret-ok"})
    failed = gw.get("/fail", headers={**SECRETS,
                                      "X-Request-Id": "secret-fail"})
    missing = gw.get("/nowhere", headers=SECRETS)

    assert ok.status == 200, ok
    assert failed.status == 502, failed
    assert missing.status == 404, missing
    got = ok.json()["a"]["headers"]
    assert got["authorization"] == SECRETS["Authorization"]
    assert got["x-api-key"] == SECRETS["X-Api-Key"]
    assert got["cookie"] == SECRETS["Cookie"]
    assert gw.wait_access(request_id="secret-fail") is not None
    text = gw.proc.stderr()
    for name, value in SECRETS.items():
        secret = value.split("SECRET-", 1)[1]
        assert secret not in text, f"{name} value found in the log"
    started = [e for e in gw.logs() if e["msg"] == "call started"
               and e.get("request_id") == "secret-ok" and e["call"] == "a"]
    assert len(started) == 1
    headers = started[0]["headers"]
    assert headers["authorization"] == "[redacted]"
    assert headers["x-api-key"] == "[redacted]"
    assert headers["cookie"] == "[redacted]"
    assert headers["x-request-id"] == "secret-ok"


def test_bad_log_format_rejected(tmp_path):
    """An unknown --log-format exits 2 with the accepted values."""
    from conftest import run_tutti
    result = run_tutti(["--config", "x.json", "--log-format", "yaml"],
                       tmp_path)
    assert result.returncode == 2
    assert "expected json or text" in result.stderr
