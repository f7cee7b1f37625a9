"""Shared fixtures for the tutti integration suite.

Every server the suite needs (tutti, faultd, nginx, nghttpd, dnsmasq) is
started by a fixture on 127.0.0.1 and stopped by its PID in teardown.
Binaries come from TUTTI_BIN and FAULTD_BIN, relative to the repository
root unless absolute, so the same suite runs against the ASan and TSan
builds.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]

# Sanitizer reports found in a process's stderr fail the test that
# started it, because the process itself usually keeps running.
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "runtime error:",
)

# Wait this long for an event or a log line that should follow at once.
# The bound is loose because sanitizer builds on 2 shared cores are slow.
EVENT_WAIT_S = 2.0

# The default grace keeps teardown short when a test leaves requests
# running; shutdown tests set their own.
DEFAULT_GRACE_MS = 2000


def binary(env_name, default):
    path = Path(os.environ.get(env_name, default))
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.fail(f"{env_name}: {path} not found; build it with "
                    f"`make -C {REPO} && make -C {REPO} fixture`")
    return str(path)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multiworker: runs tutti with --workers 2 (the TSan run selects "
        "these with -m multiworker)")


# Parametrize a test over one and two gateway workers; only the
# two-worker case carries the multiworker marker.
WORKERS = [
    pytest.param(1, id="workers1"),
    pytest.param(2, id="workers2", marks=pytest.mark.multiworker),
]


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process with stdout and stderr captured in files."""

    def __init__(self, name, argv, workdir, env=None):
        self.name = name
        self.argv = argv
        self.stdout_path = Path(workdir) / f"{name}.stdout"
        self.stderr_path = Path(workdir) / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, \
                open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=workdir, env=env)

    @property
    def pid(self):
        return self.popen.pid

    def stdout(self):
        return self.stdout_path.read_text(errors="replace")

    def stderr(self):
        return self.stderr_path.read_text(errors="replace")

    def running(self):
        return self.popen.poll() is None

    def signal(self, signum):
        if self.running():
            os.kill(self.popen.pid, signum)

    def wait(self, timeout):
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout=10.0):
        """Terminate, wait up to |timeout| seconds, then kill."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def sanitizer_report(self):
        text = self.stderr()
        for marker in SANITIZER_MARKERS:
            index = text.find(marker)
            if index >= 0:
                return text[max(0, index - 200):index + 3000]
        return None

    def wait_ready(self, ready, timeout=10.0):
        """Poll |ready()| until it returns a true value or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            if not self.running():
                pytest.fail(f"{self.name} exited with status "
                            f"{self.popen.returncode} before it was ready:"
                            f"\n{self.stderr()[-3000:]}")
            time.sleep(0.02)
        pytest.fail(f"{self.name} not ready after {timeout} s:\n"
                    f"{self.stderr()[-3000:]}")


def stop_and_check(proc, timeout=10.0):
    proc.stop(timeout)
    report = proc.sanitizer_report()
    if report is not None:
        pytest.fail(f"sanitizer report from {proc.name}:\n{report}")


# ---------------------------------------------------------------- HTTP


class Response:
    def __init__(self, status, headers, body, sent_at, done_at):
        self.status = status
        self.headers = headers
        self.body = body
        self.sent_at = sent_at
        self.done_at = done_at

    @property
    def elapsed(self):
        return self.done_at - self.sent_at

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            pytest.fail(f"response {self.status} body is not JSON: "
                        f"{self.body[:500]!r}")

    def __repr__(self):
        return (f"<Response {self.status} {dict(self.headers)} "
                f"{self.body[:300]!r} in {self.elapsed * 1000:.0f} ms>")


def http_request(port, method, target, headers=None, body=None,
                 timeout=10.0):
    """Send one request on a new connection and read the whole response."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent_at = time.monotonic()
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        done_at = time.monotonic()
        return Response(resp.status, resp.headers, data, sent_at, done_at)
    finally:
        conn.close()


# --------------------------------------------------------------- faultd


def event_path(event):
    """Return an event's path without its query string."""
    return (event.get("path") or "").split("?", 1)[0]


class Faultd:
    """A running faultd and its events file."""

    def __init__(self, workdir, name="faultd"):
        self.events_path = Path(workdir) / f"{name}-events.jsonl"
        self.proc = Process(name, [binary("FAULTD_BIN", "build/faultd"),
                                   "--port", "0",
                                   "--events", str(self.events_path)],
                            workdir)
        self.port = self.proc.wait_ready(self._listening_port)
        self.h1_url = f"http://127.0.0.1:{self.port}"
        self.h2_url = f"h2c://127.0.0.1:{self.port}"

    def _listening_port(self):
        first = self.proc.stdout().split("\n", 1)[0]
        if not first.startswith("listening 127.0.0.1:"):
            return None
        if "\n" not in self.proc.stdout():
            return None
        return int(first.rsplit(":", 1)[1])

    def events(self):
        """Return every complete event line written so far."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        events = []
        # An event without a path (a cancel or a close, say) gets the path
        # of the last request on its connection and stream.
        last_path = {}
        for line in text.split("\n")[:-1]:
            if not line.strip():
                continue
            ev = json.loads(line)
            key = (ev.get("conn"), ev.get("stream"))
            if ev.get("event") == "request" and ev.get("path"):
                last_path[key] = ev["path"]
            elif not ev.get("path") and key in last_path:
                ev["path"] = last_path[key]
            events.append(ev)
        return events

    def select(self, event=None, path=None, **fields):
        """Return the events of kind |event| on |path| (query ignored)
        whose other fields equal |fields|."""
        found = []
        for ev in self.events():
            if event is not None and ev.get("event") != event:
                continue
            if path is not None and event_path(ev) != path:
                continue
            if all(ev.get(k) == v for k, v in fields.items()):
                found.append(ev)
        return found

    def wait_for(self, count=1, timeout=EVENT_WAIT_S, **query):
        """Poll until |count| events match |query|; return the matches
        (fewer than |count| when time ran out)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.select(**query)
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.01)


@pytest.fixture
def faultd(tmp_path):
    server = Faultd(tmp_path)
    yield server
    stop_and_check(server.proc)


# ------------------------------------------------- third-party servers


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory):
    """A dnsmasq that maps ok.test to 127.0.0.1 and returns NXDOMAIN for
    every other *.test name; returns its port."""
    workdir = tmp_path_factory.mktemp("dnsmasq")
    port = free_port()
    proc = Process("dnsmasq", [
        "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces",
        f"--port={port}", "--address=/ok.test/127.0.0.1", "--local=/test/",
        f"--pid-file={workdir / 'dnsmasq.pid'}"], workdir)
    # dnsmasq serves TCP as well as UDP, so a TCP connect shows it is up.
    proc.wait_ready(lambda: port_open(port))
    yield port
    proc.stop()


NGINX_CONF = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log stderr;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format conns '$connection $connection_requests '
                     '"$http_x_request_id" $request_uri';
    access_log {dir}/access.log conns;
    server {{
        listen 127.0.0.1:{port};
        location = /static.json {{
            default_type application/json;
            return 200 '{{"source": "nginx", "items": [1, 2, 3]}}';
        }}
    }}
}}
"""

NGINX_BODY = {"source": "nginx", "items": [1, 2, 3]}


class Nginx:
    def __init__(self, workdir, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.access_log = Path(workdir) / "access.log"

    def access_entries(self):
        """Return (connection, connection_requests, request_id, uri)."""
        if not self.access_log.exists():
            return []
        entries = []
        for line in self.access_log.read_text().splitlines():
            conn, requests, rest = line.split(" ", 2)
            request_id, uri = rest.rsplit(" ", 1)
            entries.append((int(conn), int(requests),
                            request_id.strip('"'), uri))
        return entries


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    proc = Process("nginx", ["nginx", "-p", str(workdir), "-c", str(conf),
                             "-e", "stderr"], workdir)
    proc.wait_ready(lambda: port_open(port))
    yield Nginx(workdir, port)
    proc.stop()


NGHTTPD_BODY = {"source": "nghttpd", "ok": True}


class Nghttpd:
    def __init__(self, proc, port):
        self.proc = proc
        self.port = port
        self.url = f"h2c://127.0.0.1:{port}"

    def session_ids(self, since=0):
        """Return the HTTP/2 session ids in the verbose output from byte
        offset |since|; nghttpd tags each frame line with [id=N]."""
        ids = set()
        text = self.proc.stdout()[since:]
        for part in text.split("[id=")[1:]:
            ids.add(int(part.split("]", 1)[0]))
        return ids

    def output_size(self):
        return len(self.proc.stdout())


@pytest.fixture(scope="session")
def nghttpd(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nghttpd")
    docroot = workdir / "htdocs"
    docroot.mkdir()
    (docroot / "data.json").write_text(json.dumps(NGHTTPD_BODY))
    port = free_port()
    # -a keeps nghttpd on loopback; -v logs each frame with its session id.
    proc = Process("nghttpd", ["nghttpd", "--no-tls", "-a", "127.0.0.1",
                               "-v", "-d", str(docroot), str(port)], workdir)
    proc.wait_ready(lambda: port_open(port))
    yield Nghttpd(proc, port)
    proc.stop()


# ---------------------------------------------------------------- tutti


def service(url, timeout_ms=None):
    svc = {"url": url}
    if timeout_ms is not None:
        svc["timeout_ms"] = timeout_ms
    return svc


def call(name, service_name, path, **options):
    """Build one call; |options| are method, timeout_ms, required and
    forward_body, passed through as written."""
    entry = {"name": name, "service": service_name, "path": path}
    entry.update(options)
    return entry


def route(path, calls, method="GET", deadline_ms=None):
    entry = {"method": method, "path": path, "calls": calls}
    if deadline_ms is not None:
        entry["deadline_ms"] = deadline_ms
    return entry


class Gateway:
    """A running tutti."""

    def __init__(self, proc, port, config_path):
        self.proc = proc
        self.port = port
        self.config_path = config_path

    def request(self, method, target, headers=None, body=None,
                timeout=10.0):
        return http_request(self.port, method, target, headers, body,
                            timeout)

    def get(self, target, headers=None, timeout=10.0):
        return self.request("GET", target, headers, None, timeout)

    def logs(self):
        """Return the JSON log lines on stderr, skipping anything else
        (a sanitizer report, for instance)."""
        lines = []
        for line in self.proc.stderr().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def access_lines(self):
        return [line for line in self.logs() if line.get("msg") == "access"]

    def wait_access(self, request_id=None, path=None, timeout=EVENT_WAIT_S):
        """Poll for the access line of one request; None if it never came."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.access_lines():
                if request_id is not None and \
                        line.get("request_id") != request_id:
                    continue
                if path is not None and line.get("path") != path:
                    continue
                return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def _listening(self):
        # The listening socket accepts before the signal handlers are
        # installed, so only the log line shows that tutti is fully up.
        for line in self.logs():
            if line.get("msg") == "listening":
                return True
        return False


@pytest.fixture
def write_config(tmp_path, dnsmasq):
    """Write a gateway configuration and return its path. Every file
    points the resolver at the suite's dnsmasq, so no test queries the
    machine's resolver."""
    counter = [0]

    def write(services, routes, **top):
        counter[0] += 1
        config = {
            "listen": "127.0.0.1:8080",
            "resolver": {"servers": [f"127.0.0.1:{dnsmasq}"]},
            "shutdown_grace_ms": DEFAULT_GRACE_MS,
            "services": services,
            "routes": routes,
        }
        config.update(top)
        path = tmp_path / f"gateway{counter[0]}.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    return write


@pytest.fixture
def gateway(tmp_path, write_config):
    """Start tutti: gateway(services, routes, workers=1, **top_level_keys).

    Every instance is stopped in teardown, and a sanitizer report on its
    stderr fails the test."""
    started = []

    def start(services, routes, workers=1, log_level="info", **top):
        port = free_port()
        top.setdefault("listen", f"127.0.0.1:{port}")
        config_path = write_config(services, routes, **top)
        argv = [binary("TUTTI_BIN", "build/tutti"),
                "--config", str(config_path),
                "--listen", f"127.0.0.1:{port}",
                "--workers", str(workers),
                "--log-level", log_level]
        proc = Process(f"tutti{len(started) + 1}", argv, tmp_path)
        gw = Gateway(proc, port, config_path)
        started.append(gw)
        proc.wait_ready(gw._listening)
        return gw

    yield start
    failures = []
    for gw in started:
        gw.proc.stop()
        report = gw.proc.sanitizer_report()
        if report is not None:
            failures.append(f"sanitizer report from {gw.proc.name}:\n"
                            f"{report}")
    if failures:
        pytest.fail("\n".join(failures))


def run_tutti(args, cwd, timeout=20.0):
    """Run tutti to completion (check mode, bad configs, --help)."""
    return subprocess.run([binary("TUTTI_BIN", "build/tutti")] + list(args),
                          cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def error_of(resp):
    """Return the error object of a gateway error response."""
    body = resp.json()
    assert isinstance(body, dict) and "error" in body, resp
    return body["error"]


def assert_json_response(resp):
    content_type = resp.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", resp

