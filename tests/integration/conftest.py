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
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[2]

# Process, free_port and port_open come from tests/lib/process.py, which
# the soak test (tests/soak/soak.py) imports too.
sys.path.insert(0, str(REPO / "tests" / "lib"))
import process  # noqa: E402
from process import free_port, port_open  # noqa: E402,F401

# Wait this long for an event or a log line that should follow at once.
# The bound is loose because sanitizer builds on 2 shared cores are slow.
EVENT_WAIT_S = 2.0

# The default grace keeps teardown short when a test leaves requests
# running; shutdown tests set their own.
DEFAULT_GRACE_MS = 2000

# Tests stop accepting as soon as the drain starts (the gateway's default
# of 5000 ms gives load balancers time); drain tests set their own.
DEFAULT_DRAIN_DELAY_MS = 0

# TUTTI_WRAPPER is a command put before tutti wherever the suite starts it
# through gateway() or run_tutti(), for instance valgrind in the
# integration-memcheck stage of tests/run.sh. The wrapper must exit with
# WRAPPER_ERROR_STATUS when it found an error: that status fails the test.
# A wrapped tutti is much slower, so it gets longer to start and to stop.
TUTTI_WRAPPER = shlex.split(os.environ.get("TUTTI_WRAPPER", ""))
WRAPPER_ERROR_STATUS = 99
WRAPPER_SLOWDOWN = 6 if TUTTI_WRAPPER else 1


def binary(env_name, default):
    path = Path(os.environ.get(env_name, default))
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        pytest.fail(f"{env_name}: {path} not found; build it with "
                    f"`make -C {REPO} && make -C {REPO} fixture`")
    return str(path)


def tutti_argv(args):
    """The command that runs tutti with |args|, behind TUTTI_WRAPPER."""
    return TUTTI_WRAPPER + [binary("TUTTI_BIN", "build/tutti")] + list(args)


def wrapper_report(proc):
    """Return the wrapper's error report on |proc|'s stderr, or None."""
    if not TUTTI_WRAPPER:
        return None
    status = proc.popen.returncode
    if status == WRAPPER_ERROR_STATUS:
        lines = [line for line in proc.stderr().splitlines()
                 if line.startswith("==")]
        return (f"{TUTTI_WRAPPER[0]} found errors (exit status "
                f"{status}):\n" + "\n".join(lines)[-6000:])
    if status is not None and status < 0:
        return (f"{proc.name} killed by signal {-status} before "
                f"{TUTTI_WRAPPER[0]} could check it")
    return None


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multiworker: runs tutti with --workers 2 (the TSan run selects "
        "these with -m multiworker)")
    config.addinivalue_line(
        "markers",
        "memcheck: runs under valgrind in the integration-memcheck stage "
        "(set from MEMCHECK_FILES)")


# The tests of the integration-memcheck stage (-m memcheck): whole files
# whose tests set no upper bound on latency, which a tutti 20 to 50 times
# slower under valgrind would miss, less the tests in MEMCHECK_TIMED.
MEMCHECK_FILES = {
    "test_aggregate.py", "test_check.py", "test_contracts_emit.py",
    "test_headers.py", "test_http.py", "test_request_id.py",
    "test_trace.py",
}
MEMCHECK_TIMED = {"test_calls_run_concurrently"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (Path(str(item.fspath)).name in MEMCHECK_FILES
                and getattr(item, "originalname", None)
                not in MEMCHECK_TIMED):
            item.add_marker(pytest.mark.memcheck)


# Parametrize a test over one and two gateway workers; only the
# two-worker case carries the multiworker marker.
WORKERS = [
    pytest.param(1, id="workers1"),
    pytest.param(2, id="workers2", marks=pytest.mark.multiworker),
]


class Process(process.Process):
    """A server process of a test. A sanitizer report in its stderr fails
    that test (stop_and_check), and so does a failed start (wait_ready)."""

    def fail(self, message):
        pytest.fail(message)


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
    """A running faultd and its events file. |args| are extra command-line
    options such as ["--goaway-after", "3"]; |host| is a 127.x.y.z
    address, so several instances can share one port."""

    def __init__(self, workdir, name="faultd", args=(), host="127.0.0.1",
                 port=0):
        self.host = host
        self.events_path = Path(workdir) / f"{name}-events.jsonl"
        self.proc = Process(name, [binary("FAULTD_BIN", "build/faultd"),
                                   "--host", host, "--port", str(port),
                                   "--events", str(self.events_path)]
                            + list(args), workdir)
        self.port = self.proc.wait_ready(self._listening_port)
        self.h1_url = f"http://{host}:{self.port}"
        self.h2_url = f"h2c://{host}:{self.port}"

    def _listening_port(self):
        first = self.proc.stdout().split("\n", 1)[0]
        if not first.startswith(f"listening {self.host}:"):
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


@pytest.fixture
def start_faultd(tmp_path):
    """Start extra faultd instances: start_faultd(name, args=(), host=...,
    port=0). Each is stopped by its PID in teardown."""
    started = []

    def start(name, args=(), host="127.0.0.1", port=0):
        server = Faultd(tmp_path, name=name, args=args, host=host,
                        port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_and_check(server.proc)


# ------------------------------------------------- third-party servers


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory):
    """A dnsmasq that maps ok.test and tls.test to 127.0.0.1 and returns
    NXDOMAIN for every other *.test name; returns its port."""
    workdir = tmp_path_factory.mktemp("dnsmasq")
    port = free_port()
    proc = Process("dnsmasq", [
        "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces",
        f"--port={port}", "--address=/ok.test/127.0.0.1",
        # The name in the certificates that tls_pki issues.
        "--address=/tls.test/127.0.0.1", "--local=/test/",
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


def read_access_entries(access_log):
    """Return (connection, connection_requests, request_id, uri) for each
    line of an nginx access log in the suite's "conns" format."""
    if not access_log.exists():
        return []
    entries = []
    for line in access_log.read_text().splitlines():
        conn, requests, rest = line.split(" ", 2)
        request_id, uri = rest.rsplit(" ", 1)
        entries.append((int(conn), int(requests), request_id.strip('"'), uri))
    return entries


def wait_access_entries(access_log, request_ids, timeout=3.0):
    """Poll until every id in |request_ids| has its access log line (nginx
    writes the line after it sent the response) and return those entries
    in log order."""
    wanted = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in read_access_entries(access_log)
                   if e[2] in wanted]
        if len(entries) >= len(wanted) or time.monotonic() >= deadline:
            return entries
        time.sleep(0.02)


class Nginx:
    def __init__(self, workdir, port):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.access_log = Path(workdir) / "access.log"

    def access_entries(self):
        """Return (connection, connection_requests, request_id, uri)."""
        return read_access_entries(self.access_log)


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
            "drain_delay_ms": DEFAULT_DRAIN_DELAY_MS,
            "services": services,
            "routes": routes,
        }
        config.update(top)
        # TLS handshakes on a loaded 2-core machine under a sanitizer can
        # take longer than the 250 ms default; tests of the timeout itself
        # set connect_timeout_ms on the service, which overrides this.
        defaults = dict(config.get("defaults", {}))
        defaults.setdefault("connect_timeout_ms", 2000)
        config["defaults"] = defaults
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

    def start(services, routes, workers=1, log_level="info", env=None,
              **top):
        port = free_port()
        top.setdefault("listen", f"127.0.0.1:{port}")
        config_path = write_config(services, routes, **top)
        argv = tutti_argv(["--config", str(config_path),
                           "--listen", f"127.0.0.1:{port}",
                           "--workers", str(workers),
                           "--log-level", log_level])
        if env is not None:
            env = {**os.environ, **env}
        proc = Process(f"tutti{len(started) + 1}", argv, tmp_path, env=env)
        gw = Gateway(proc, port, config_path)
        started.append(gw)
        proc.wait_ready(gw._listening, timeout=10.0 * WRAPPER_SLOWDOWN)
        return gw

    yield start
    failures = []
    for gw in started:
        gw.proc.stop(timeout=10.0 * WRAPPER_SLOWDOWN)
        report = gw.proc.sanitizer_report() or wrapper_report(gw.proc)
        if report is not None:
            failures.append(f"sanitizer report from {gw.proc.name}:\n"
                            f"{report}")
    if failures:
        pytest.fail("\n".join(failures))


def run_tutti(args, cwd, timeout=20.0):
    """Run tutti to completion (check mode, bad configs, --help)."""
    done = subprocess.run(tutti_argv(args),
                          cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True,
                          timeout=timeout * WRAPPER_SLOWDOWN)
    if TUTTI_WRAPPER and done.returncode == WRAPPER_ERROR_STATUS:
        pytest.fail(f"{TUTTI_WRAPPER[0]} found errors in tutti "
                    f"{' '.join(args)}:\n{done.stderr[-6000:]}")
    return done


def error_of(resp):
    """Return the error object of a gateway error response."""
    body = resp.json()
    assert isinstance(body, dict) and "error" in body, resp
    return body["error"]


def assert_json_response(resp):
    content_type = resp.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", resp



# ------------------------------------------------ DNS with new records


class Dnsmasq:
    """A dnsmasq on 127.0.0.1 serving |records| (dnsmasq options, see
    host_record and srv_record) and NXDOMAIN for every other *.test name.
    restart() replaces the records on the same port, and stop() makes the
    port go silent, as in a DNS outage."""

    def __init__(self, workdir, records):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.proc = None
        self.generation = 0
        self.start(records)

    def start(self, records):
        self.generation += 1
        name = f"dnsmasq-records{self.generation}"
        # --local-ttl sets the TTL of SRV records; host_record sets its own.
        argv = ["dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--listen-address=127.0.0.1",
                "--bind-interfaces", f"--port={self.port}",
                "--local=/test/", "--local-ttl=1",
                f"--pid-file={self.workdir / (name + '.pid')}"]
        self.proc = Process(name, argv + list(records), self.workdir)
        self.proc.wait_ready(lambda: port_open(self.port))

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, records):
        self.stop()
        self.start(records)

    @property
    def resolver(self):
        """The gateway's top-level "resolver" object for this server."""
        return {"servers": [f"127.0.0.1:{self.port}"], "timeout_ms": 200,
                "tries": 2}


def host_record(name, *addresses, ttl=1):
    """A, AAAA or both for |name|, with a TTL in seconds. Repeat the call
    for more addresses of the same family."""
    return f"--host-record={name},{','.join(addresses)},{ttl}"


def srv_record(name, target, port, priority=10, weight=10):
    return f"--srv-host={name},{target},{port},{priority},{weight}"


def srv_no_service(name):
    """An SRV record whose target is ".": the service does not exist."""
    return f"--srv-host={name}"


@pytest.fixture
def dns_server(tmp_path):
    """Start a Dnsmasq with dns_server(records); stopped in teardown."""
    started = []

    def start(records):
        server = Dnsmasq(tmp_path, records)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ------------------------------------------------------------------- TLS


class Pki:
    """Certificates made with the openssl command: a CA, a server
    certificate it signed for tls.test, localhost and 127.0.0.1, a
    self-signed certificate for the same names, and a client certificate
    the CA signed."""

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.server = self.dir / "server.pem"
        self.server_key = self.dir / "server.key"
        self.self_signed = self.dir / "self.pem"
        self.self_signed_key = self.dir / "self.key"
        self.client = self.dir / "client.pem"
        self.client_key = self.dir / "client.key"
        san = "subjectAltName=DNS:tls.test,DNS:localhost,IP:127.0.0.1"
        self._openssl("req", "-x509", *self._new_key(self.ca_key),
                      "-out", self.ca, "-days", "2",
                      "-subj", "/CN=tutti test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._signed(self.server, self.server_key, "/CN=tls.test",
                     [san, "extendedKeyUsage=serverAuth"])
        self._signed(self.client, self.client_key, "/CN=tutti-client",
                     ["extendedKeyUsage=clientAuth"])
        self._openssl("req", "-x509", *self._new_key(self.self_signed_key),
                      "-out", self.self_signed, "-days", "2",
                      "-subj", "/CN=tls.test", "-addext", san)

    @staticmethod
    def _new_key(path):
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", path]

    def _openssl(self, *args):
        result = subprocess.run(["openssl"] + [str(a) for a in args],
                                cwd=self.dir, capture_output=True,
                                text=True, timeout=30)
        if result.returncode != 0:
            pytest.fail(f"openssl {' '.join(map(str, args))} failed:\n"
                        f"{result.stderr}")

    def _signed(self, cert, key, subject, extensions):
        csr = cert.with_suffix(".csr")
        ext = cert.with_suffix(".ext")
        ext.write_text("\n".join(extensions) + "\n")
        self._openssl("req", "-new", *self._new_key(key), "-out", csr,
                      "-subj", subject)
        self._openssl("x509", "-req", "-in", csr, "-CA", self.ca,
                      "-CAkey", self.ca_key, "-CAcreateserial",
                      "-out", cert, "-days", "2", "-extfile", ext)


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


# Each TLS server block responds to /tls.json with what nginx saw of the
# connection, so tests can check the protocol, SNI and client certificate.
NGINX_TLS_JSON = ('{"protocol": "$server_protocol", '
                  '"sni": "$ssl_server_name", "client": "$ssl_client_s_dn"}')

NGINX_TLS_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {extra}
        location = /static.json {{
            default_type application/json;
            return 200 '{{"source": "nginx", "items": [1, 2, 3]}}';
        }}
        location = /tls.json {{
            default_type application/json;
            return 200 '{tls_json}';
        }}
    }}
"""

NGINX_TLS_CONF = """\
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
{servers}
}}
"""


class NginxTls:
    """nginx with three TLS ports, each serving HTTP/1.1 and HTTP/2 by
    ALPN: |port| has the certificate the test CA signed, |self_signed_port|
    a self-signed one, and |mtls_port| the CA-signed one and requires a
    client certificate from the test CA."""

    def __init__(self, workdir, pki):
        self.port = free_port()
        self.self_signed_port = free_port()
        self.mtls_port = free_port()
        self.access_log = Path(workdir) / "access.log"
        servers = [
            NGINX_TLS_SERVER.format(port=self.port, cert=pki.server,
                                    key=pki.server_key, extra="",
                                    tls_json=NGINX_TLS_JSON),
            NGINX_TLS_SERVER.format(port=self.self_signed_port,
                                    cert=pki.self_signed,
                                    key=pki.self_signed_key, extra="",
                                    tls_json=NGINX_TLS_JSON),
            NGINX_TLS_SERVER.format(
                port=self.mtls_port, cert=pki.server, key=pki.server_key,
                tls_json=NGINX_TLS_JSON,
                extra=(f"ssl_verify_client on; "
                       f"ssl_client_certificate {pki.ca};")),
        ]
        conf = Path(workdir) / "nginx.conf"
        conf.write_text(NGINX_TLS_CONF.format(dir=workdir,
                                              servers="".join(servers)))
        self.proc = Process("nginx-tls", ["nginx", "-p", str(workdir),
                                          "-c", str(conf), "-e", "stderr"],
                            workdir)
        for port in (self.port, self.self_signed_port, self.mtls_port):
            self.proc.wait_ready(lambda p=port: port_open(p))


@pytest.fixture(scope="session")
def nginx_tls(tmp_path_factory, tls_pki):
    server = NginxTls(tmp_path_factory.mktemp("nginx-tls"), tls_pki)
    yield server
    server.proc.stop()


@pytest.fixture(scope="session")
def nghttpd_tls(tmp_path_factory, tls_pki):
    """nghttpd over TLS (ALPN h2) with the CA-signed certificate; returns
    its port. It serves data.json with NGHTTPD_BODY."""
    workdir = tmp_path_factory.mktemp("nghttpd-tls")
    docroot = workdir / "htdocs"
    docroot.mkdir()
    (docroot / "data.json").write_text(json.dumps(NGHTTPD_BODY))
    port = free_port()
    proc = Process("nghttpd-tls", [
        "nghttpd", "-a", "127.0.0.1", "-d", str(docroot), str(port),
        str(tls_pki.server_key), str(tls_pki.server)], workdir)
    proc.wait_ready(lambda: port_open(port))
    yield port
    proc.stop()


# ------------------------------------------------------ gateway internals


def open_fds(pid):
    """Return the descriptors open in process |pid|, as link targets
    ("socket:[123]", "/dev/null", "anon_inode:[eventfd]", ...)."""
    targets = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            targets.append(os.readlink(entry))
        except FileNotFoundError:
            continue  # closed while listing
    return targets


def _socket_table(pid):
    """Map socket inodes to "proto local -> remote state" from
    /proc/PID/net, for failure messages."""
    table = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            fields = line.split()
            local, remote, state, inode = (fields[1], fields[2], fields[3],
                                           fields[9])
            table[inode] = f"{proto} {_hex_addr(local)} -> " \
                           f"{_hex_addr(remote)} state {state}"
    return table


def _hex_addr(text):
    address, port = text.split(":")
    if len(address) == 8:
        raw = bytes.fromhex(address)[::-1]
        host = socket.inet_ntop(socket.AF_INET, raw)
    else:
        raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1]
                       for i in range(0, 32, 8))
        host = socket.inet_ntop(socket.AF_INET6, raw)
    return f"{host}:{int(port, 16)}"


def describe_fds(pid):
    """Return open_fds(pid) with each socket replaced by its addresses."""
    table = _socket_table(pid)
    described = []
    for target in open_fds(pid):
        if target.startswith("socket:["):
            target = table.get(target[8:-1], target)
        described.append(target)
    return described


def log_lines_with(gw, text):
    """Return the gateway's JSON log lines whose text contains |text|."""
    return [line for line in gw.logs() if text in json.dumps(line)]
