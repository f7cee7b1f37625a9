#!/usr/bin/env python3
"""Soak test: steady load through tutti while every downstream fault that
faultd can inject, and DNS answers that move, hit it at random.

The script starts on loopback a private dnsmasq, two faultd instances on
127.0.0.2 and 127.0.0.3 (same port, one DNS name), one faultd on
127.0.0.1 addressed by IP, and tutti with HTTP/1.1, h2c and SRV services.
Routes are generated from a fixed seed. Each call carries one fault in
its fixed query string, so the client picks a fault mix by picking a
route. See tests/soak/README.md for the checks and the environment.

Exits 0 when every check passed, 1 otherwise. Python standard library
only.
"""

import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Process, free_port and port_open come from tests/lib/process.py, which
# the integration suite (tests/integration/conftest.py) imports too.
sys.path.insert(0, str(REPO / "tests" / "lib"))
import process  # noqa: E402
from process import free_port, port_open  # noqa: E402


def env_int(name, default):
    text = os.environ.get(name, "")
    return int(text) if text.strip() else default


SOAK_SECONDS = env_int("SOAK_SECONDS", 600)
CONCURRENCY = env_int("SOAK_CONCURRENCY", 16)
RATE = env_int("SOAK_RATE", 200)  # requests per second over all threads
MARGIN_MS = env_int("SOAK_MARGIN_MS", 250)
DNS_PERIOD_S = env_int("SOAK_DNS_PERIOD_S", 3)
RELOAD_PERIOD_S = env_int("SOAK_RELOAD_PERIOD_S", 20)
SETTLE_S = env_int("SOAK_SETTLE_S", 20)
SEED = env_int("SOAK_SEED", 1)
WORKERS = env_int("SOAK_WORKERS", 2)
TUTTI_BIN = os.environ.get("TUTTI_BIN", "build/tutti")
FAULTD_BIN = os.environ.get("FAULTD_BIN", "build/faultd")
WORKDIR = Path(os.environ.get("SOAK_DIR", REPO / "build" / "soak")).resolve()

# Descriptors and memory after the load may exceed the baseline by this
# much: a few descriptors for connections still closing, and RSS that the
# allocator keeps for reuse.
FD_MARGIN = 2
RSS_MARGIN_KIB = 16 * 1024
RSS_MARGIN_RATIO = 0.25

# Error kinds and the status of the response that carries them (README,
# "Responses"). Kind "status" depends on the downstream's status.
KIND_STATUS = {
    "timeout": 504,
    "deadline": 504,
    "connect": 502,
    "resolve": 502,
    "reset": 502,
    "bad_response": 502,
    "shutdown": 503,
    "overloaded": 503,
    "internal": 500,
}

# Downstream query strings, with weights. faultd has no slow-drip body,
# so a delay close to the call timeout takes the place of a slow server.
FAULTS = [
    ("", 30),                                   # echo, valid JSON
    ("delay_ms=20", 10),
    ("delay_ms=150", 4),                        # slow, within most timeouts
    ("delay_ms=350", 3),                        # past short timeouts
    ("delay_ms=2000", 3),                       # past every deadline
    ("action=hang", 3),
    ("truncate=10", 3),                         # reset mid-body
    ("body=huge&size=100000&truncate=50000", 2),
    ("chunked=1&truncate=10", 2),
    ("truncate=0", 3),                          # FIN right after headers
    ("action=reset", 3),
    ("delay_ms=30&action=reset", 2),
    ("action=rst_stream", 3),
    ("action=goaway", 3),
    ("action=goaway&error_code=0&last_stream_id=0", 2),
    ("action=refuse", 3),
    ("action=lower_streams&to=1", 1),
    ("body=invalid", 3),
    ("body=empty", 2),
    ("status=503", 3),
    ("status=500", 2),
    ("status=404", 2),
    ("close=1", 2),
    ("chunked=1&ext=1&trailers=1", 2),
]

ROUTE_COUNT = 80


def log(msg):
    print(f"soak: {msg}", flush=True)


def binary(path):
    path = Path(path)
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        sys.exit(f"soak: {path} not found; build it with `make all fixture`")
    return str(path)


class Process(process.Process):
    """A child process with stdout and stderr in files of WORKDIR. A
    failed start raises RuntimeError."""

    ready_timeout = 15.0
    stop_timeout = 15.0

    def __init__(self, name, argv):
        super().__init__(name, argv, WORKDIR)


def start_faultd(name, host, port):
    proc = Process(name, [binary(FAULTD_BIN), "--host", host,
                          "--port", str(port)])

    def listening():
        text = proc.stdout()
        if "\n" not in text or not text.startswith(f"listening {host}:"):
            return None
        return int(text.split("\n", 1)[0].rsplit(":", 1)[1])

    return proc, proc.wait_ready(listening)


class Dns:
    """A private dnsmasq that serves pool.test from a hosts file and an
    SRV record for it; move() rewrites the file and sends SIGHUP."""

    NAME = "pool.test"
    SRV = "_h2._tcp.pool.test"

    def __init__(self, faultd_port):
        self.port = free_port()
        self.hosts = WORKDIR / "pool.hosts"
        self.addresses = ["127.0.0.2", "127.0.0.3"]
        self._write()
        self.proc = Process("dnsmasq", [
            "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--addn-hosts={self.hosts}",
            "--listen-address=127.0.0.1", "--bind-interfaces",
            f"--port={self.port}", "--local=/test/", "--local-ttl=1",
            f"--srv-host={self.SRV},{self.NAME},{faultd_port},10,10",
            f"--pid-file={WORKDIR / 'dnsmasq.pid'}"])
        self.proc.wait_ready(lambda: port_open(self.port))
        self.moves = 0

    def _write(self):
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(f"{a} {self.NAME}\n" for a in self.addresses))
        os.replace(tmp, self.hosts)

    def move(self, addresses):
        """Returns False when dnsmasq has already been stopped."""
        if not self.proc.running():
            return False
        self.addresses = list(addresses)
        self._write()
        try:
            os.kill(self.proc.pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        self.moves += 1
        return True


# ------------------------------------------------------------ configuration


def generate_routes(services):
    """Return ROUTE_COUNT routes, each with 1 to 4 calls to random
    services, each call with a fault drawn from FAULTS by weight."""
    rng = random.Random(SEED)
    queries = [q for q, _ in FAULTS]
    weights = [w for _, w in FAULTS]
    routes = []
    for index in range(ROUTE_COUNT):
        deadline_ms = rng.choice([250, 400, 700])
        calls = []
        for n in range(rng.randint(1, 4)):
            query = rng.choices(queries, weights)[0]
            path = f"/r{index}/c{n}/{{user}}"
            if query:
                path += "?" + query
            entry = {"name": f"c{n}", "service": rng.choice(services),
                     "path": path, "required": rng.random() < 0.6}
            if rng.random() < 0.5:
                entry["timeout_ms"] = rng.choice([100, 200, 300])
            calls.append(entry)
        routes.append({"method": "GET", "path": f"/r{index}/{{user}}",
                       "deadline_ms": deadline_ms, "calls": calls})
    return routes


def build_config(port, admin_port, dns, pool_port, ip_port):
    services = {
        "pool_h1": {"url": f"http://{Dns.NAME}:{pool_port}"},
        "pool_h2": {"url": f"h2c://{Dns.NAME}:{pool_port}"},
        "pool_srv": {"url": f"srv+h2c://{Dns.SRV}"},
        "ip_h1": {"url": f"http://127.0.0.1:{ip_port}"},
        "ip_h2": {"url": f"h2c://127.0.0.1:{ip_port}"},
    }
    routes = generate_routes(list(services))

    # The warm-up route reaches every service once, so that each worker
    # has made its first downstream connection before the descriptor
    # baseline: libuv opens one /dev/null per loop with its first stream
    # (the EMFILE reserve of libuv 1.44) and keeps it until the loop ends.
    routes.append({"method": "GET", "path": "/warm", "deadline_ms": 2000,
                   "calls": [{"name": name, "service": name,
                              "path": "/warm"} for name in services]})
    return {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "resolver": {"servers": [f"127.0.0.1:{dns.port}"],
                     "timeout_ms": 200, "tries": 2},
        "shutdown_grace_ms": 2000,
        "drain_delay_ms": 0,
        # Idle connections close soon after the load, so descriptors can
        # be compared with the baseline within SETTLE_S.
        "client_timeout_ms": 3000,
        "defaults": {"connect_timeout_ms": 200, "idle_timeout_ms": 2000,
                     "ping_interval_ms": 1000, "eject_base_ms": 500,
                     "eject_max_ms": 2000},
        "services": services,
        "routes": routes,
    }


# ------------------------------------------------------------- measurement


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def describe_fds(pid):
    """Return the targets of the open descriptors, with each TCP socket
    replaced by its local and remote address."""
    sockets = {}
    for proto in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()
        except OSError:
            continue
        for line in lines[1:]:
            fields = line.split()
            sockets[fields[9]] = f"{proto} {fields[1]}->{fields[2]} " \
                                 f"st {fields[3]}"
    targets = Counter()
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            target = sockets.get(target[8:-1], target)
        targets[target] += 1
    return dict(targets)


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def http_get(port, target, method="GET", timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(admin_port):
    """Return {(name, frozenset(labels)): value} from /metrics."""
    status, body = http_get(admin_port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    samples = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            samples[(name, frozenset(LABEL.findall(labels or "")))] = \
                float(value)
    return samples


def metric_sum(samples, name, **labels):
    total = 0.0
    for (sample_name, pairs), value in samples.items():
        if sample_name == name and all((k, v) in pairs
                                       for k, v in labels.items()):
            total += value
    return total


def requests_by_status(samples):
    counts = Counter()
    for (name, pairs), value in samples.items():
        if name == "tutti_requests_total":
            counts[int(dict(pairs)["status"])] += int(value)
    return counts


# ------------------------------------------------------------------ checks


def check_response(route, status, headers, body):
    """Return None when the response is valid for |route|, else a reason."""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"status {status}: body is not JSON: {body[:200]!r}"
    if not isinstance(doc, dict):
        return f"status {status}: body is not an object: {body[:200]!r}"
    content_type = (headers.get("Content-Type") or "").split(";")[0]
    if content_type.strip() != "application/json":
        return f"status {status}: Content-Type {content_type!r}"

    calls = {c["name"]: c for c in route["calls"]}
    if status == 200:
        return check_aggregate(calls, headers, doc)

    error = doc.get("error")
    if set(doc) != {"error"} or not isinstance(error, dict):
        return f"status {status}: not an error object: {body[:300]!r}"
    kind = error.get("kind")
    if kind == "status":
        downstream = error.get("status")
        if not isinstance(downstream, int):
            return f"kind status without a status: {error}"
        expected = 502 if downstream >= 500 else downstream
    elif kind in KIND_STATUS:
        expected = KIND_STATUS[kind]
    else:
        return f"status {status}: unknown kind {kind!r}"

    if status != expected:
        return f"kind {kind} with status {status}, expected {expected}"
    name = error.get("call")
    if name not in calls or calls[name].get("required", True) is False:
        return f"error names {name!r}, not a required call of the route"
    return None


def check_aggregate(calls, headers, doc):
    errors = doc.get("errors", {})
    if not isinstance(errors, dict):
        return f"errors is not an object: {doc}"
    for name, call in calls.items():
        if name in doc and name not in errors:
            continue
        if name in errors and name not in doc and not call["required"]:
            continue
        return f"call {name} is missing or misplaced in {str(doc)[:300]}"
    extra = set(doc) - set(calls) - {"errors"}
    if extra:
        return f"unexpected members {sorted(extra)}"
    partial = headers.get("Tutti-Partial")
    if errors:
        listed = {p.strip() for p in (partial or "").split(",")}
        if listed != set(errors):
            return f"Tutti-Partial {partial!r} but errors {sorted(errors)}"
    elif partial:
        return f"Tutti-Partial {partial!r} without errors"
    return None


# -------------------------------------------------------------------- load


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.aborted = 0
        self.statuses = Counter()
        self.kinds = Counter()
        self.failures = []
        self.late = []
        self.max_over_ms = -1e9
        self.transport_errors = Counter()

    def fail(self, text):
        with self.lock:
            if len(self.failures) < 50:
                self.failures.append(text)


def client_thread(port, routes, stats, stop_at, interval, rng):
    conn = None
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if next_at > now:
            time.sleep(next_at - now)
        next_at += interval
        index = rng.randrange(len(routes))
        route = routes[index]
        deadline_ms = route["deadline_ms"]
        headers = {"X-Request-Id": f"soak-{rng.getrandbits(64):016x}"}
        if rng.random() < 0.2:
            deadline_ms = rng.randint(50, deadline_ms)
            headers["Request-Timeout-Ms"] = str(deadline_ms)
        target = f"/r{index}/u{rng.randrange(1000)}"
        abort = rng.random() < 0.03
        if conn is None or rng.random() < 0.1:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port,
                                              timeout=deadline_ms / 1000 + 5)
        sent_at = time.monotonic()
        try:
            conn.request("GET", target, headers=headers)
            with stats.lock:
                stats.sent += 1
            if abort:
                # Let tutti read the request and start its calls, then
                # go away: a client abort, counted as 499 or as the
                # status of the response tutti had already sent.
                time.sleep(0.03)
                conn.close()
                conn = None
                with stats.lock:
                    stats.aborted += 1
                continue
            resp = conn.getresponse()
            body = resp.read()
            done_at = time.monotonic()
        except (OSError, http.client.HTTPException) as exc:
            stats.fail(f"{target}: {type(exc).__name__}: {exc}")
            with stats.lock:
                stats.transport_errors[type(exc).__name__] += 1
            conn.close()
            conn = None
            continue
        elapsed_ms = (done_at - sent_at) * 1000
        reason = check_response(route, resp.status, resp.headers, body)
        with stats.lock:
            stats.statuses[resp.status] += 1
            over = elapsed_ms - deadline_ms
            stats.max_over_ms = max(stats.max_over_ms, over)
            if over > MARGIN_MS and len(stats.late) < 50:
                stats.late.append((headers["X-Request-Id"], deadline_ms,
                                   f"{target} {headers}: {elapsed_ms:.0f} ms "
                                   f"for a {deadline_ms} ms deadline, "
                                   f"status {resp.status}"))
            if resp.status != 200 and reason is None:
                stats.kinds[json.loads(body)["error"]["kind"]] += 1
        if reason is not None:
            stats.fail(f"{target} {headers}: {reason}")
        if resp.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def dns_mover(dns, stop_event, rng):
    """Move pool.test between the two faultd instances, sometimes with a
    dead address (127.0.0.4, nothing listens) beside a live one."""
    phases = [["127.0.0.2", "127.0.0.3"], ["127.0.0.2"], ["127.0.0.3"],
              ["127.0.0.3", "127.0.0.4"], ["127.0.0.2", "127.0.0.3"]]
    while not stop_event.wait(DNS_PERIOD_S):
        if not dns.move(rng.choice(phases)):
            return
    dns.move(["127.0.0.2", "127.0.0.3"])


def reloader(admin_port, stop_event, counter):
    while RELOAD_PERIOD_S > 0 and not stop_event.wait(RELOAD_PERIOD_S):
        try:
            status, _ = http_get(admin_port, "/admin/reload", method="POST")
            if status == 202:
                counter[0] += 1
        except OSError:
            pass


# -------------------------------------------------------------------- main


def wait_until(predicate, timeout, step=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def judge_late(tutti, late):
    """Split the requests the client saw late into problems and warnings.
    A request is a problem when tutti's access line (duration_ms, from the
    first access-handler call to the completion callback) is also past the
    deadline plus the margin, or when it has no access line. Otherwise
    the delay was outside tutti's request handling, usually in a client
    thread that the busy machine did not schedule, and is only listed."""
    if not late:
        return [], []
    wanted = {request_id for request_id, _, _ in late}
    durations = {}
    with open(tutti.stderr_path, errors="replace") as stderr:
        for line in stderr:
            if '"access"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("request_id") in wanted:
                durations[entry["request_id"]] = entry.get("duration_ms")
    problems, warnings = [], []
    for request_id, deadline_ms, text in late:
        duration = durations.get(request_id)
        if duration is None or duration > deadline_ms + MARGIN_MS:
            problems.append(f"late: {text}, tutti's duration_ms {duration}")
        else:
            warnings.append(f"{text}, tutti's duration_ms {duration}")
    return problems, warnings


def open_connections(pid):
    """Return the TCP connections of |pid| that are not listening sockets,
    as "local->remote" in /proc/net/tcp notation."""
    return [target for target, count in describe_fds(pid).items()
            if target.startswith("tcp") and not target.endswith(" st 0A")
            for _ in range(count)]


def warm_up(port, pid):
    """Send the warm-up route on new connections, which the kernel spreads
    over the workers, then wait for every connection to close."""
    for _ in range(8 * WORKERS):
        status, body = http_get(port, "/warm")
        if status != 200:
            raise RuntimeError(f"warm-up request answered {status}: "
                               f"{body[:300]!r}")
    # Longer than idle_timeout_ms and client_timeout_ms (rounded up to a
    # whole second by libmicrohttpd).
    time.sleep(3.5)
    if not wait_until(lambda: not open_connections(pid), 10):
        raise RuntimeError(f"connections still open 13 s after the warm-up: "
                           f"{open_connections(pid)}")


def is_sanitizer_build(path):
    result = subprocess.run(["ldd", path], capture_output=True, text=True)
    return "libasan" in result.stdout or "libtsan" in result.stdout


def run(procs):
    problems = []
    pool_a, pool_port = start_faultd("faultd-a", "127.0.0.2", 0)
    procs.append(pool_a)
    pool_b, _ = start_faultd("faultd-b", "127.0.0.3", pool_port)
    procs.append(pool_b)
    by_ip, ip_port = start_faultd("faultd-ip", "127.0.0.1", 0)
    procs.append(by_ip)
    dns = Dns(pool_port)
    procs.append(dns.proc)

    port, admin_port = free_port(), free_port()
    config = build_config(port, admin_port, dns, pool_port, ip_port)
    config_path = WORKDIR / "tutti.json"
    config_path.write_text(json.dumps(config, indent=2))
    tutti_bin = binary(TUTTI_BIN)
    tutti = Process("tutti", [tutti_bin, "--config", str(config_path),
                              "--workers", str(WORKERS),
                              "--log-level", "info"])
    procs.append(tutti)

    def ready():
        try:
            return http_get(admin_port, "/readyz")[0] == 200
        except OSError:
            return False

    tutti.wait_ready(ready, timeout=20)
    sanitized = is_sanitizer_build(tutti_bin)
    warm_up(port, tutti.pid)
    counts_base = requests_by_status(scrape(admin_port))
    fd_base = fd_count(tutti.pid)
    fds_before = describe_fds(tutti.pid)
    routes = config["routes"][:-1]  # without the warm-up route
    log(f"tutti {tutti_bin} pid {tutti.pid}, {len(routes)} routes, "
        f"{CONCURRENCY} clients at {RATE} req/s for {SOAK_SECONDS} s, "
        f"baseline {fd_base} fds")

    stats = Stats()
    stop_event = threading.Event()
    reloads = [0]
    rng = random.Random(SEED + 1)
    helpers = [threading.Thread(target=dns_mover,
                                args=(dns, stop_event,
                                      random.Random(SEED + 2)),
                                daemon=True),
               threading.Thread(target=reloader,
                                args=(admin_port, stop_event, reloads),
                                daemon=True)]
    start = time.monotonic()
    stop_at = start + SOAK_SECONDS
    interval = CONCURRENCY / RATE
    clients = [threading.Thread(target=client_thread,
                                args=(port, routes, stats, stop_at, interval,
                                      random.Random(rng.getrandbits(32))),
                                daemon=True)
               for _ in range(CONCURRENCY)]
    for thread in helpers + clients:
        thread.start()

    # RSS after the first tenth of the run (at most 30 s) is the memory
    # baseline: pools, buffers and allocator arenas exist by then.
    warm_at = start + min(30, max(3, SOAK_SECONDS / 10))
    rss_warm = None
    peak_fds = fd_base
    rss_samples = []
    next_report = start + 30
    while any(t.is_alive() for t in clients):
        time.sleep(0.5)
        if not tutti.running():
            problems.append(f"tutti exited with status "
                            f"{tutti.popen.returncode} during the load")
            break
        peak_fds = max(peak_fds, fd_count(tutti.pid))
        now = time.monotonic()
        if rss_warm is None and now >= warm_at:
            rss_warm = rss_kib(tutti.pid)
        if now >= next_report:
            next_report += 30
            rss_samples.append(rss_kib(tutti.pid))
            log(f"{now - start:.0f} s: {stats.sent} sent, "
                f"{fd_count(tutti.pid)} fds, rss {rss_samples[-1]} KiB")
    stop_event.set()
    for thread in clients + helpers:
        thread.join(timeout=30)
    load_s = time.monotonic() - start
    if rss_warm is None and tutti.running():
        rss_warm = rss_kib(tutti.pid)

    result = {"sent": stats.sent, "aborted": stats.aborted,
              "statuses": dict(sorted(stats.statuses.items())),
              "kinds": dict(sorted(stats.kinds.items())),
              "dns_moves": dns.moves, "reloads": reloads[0],
              "load_s": round(load_s, 1), "peak_fds": peak_fds,
              "fd_base": fd_base, "max_over_deadline_ms":
              round(stats.max_over_ms, 1)}
    problems += stats.failures
    late, warnings = judge_late(tutti, stats.late)
    problems += late
    result["late_client_side"] = warnings
    if stats.sent == 0:
        problems.append("no request was sent")

    if tutti.running():
        problems += settle_checks(tutti, admin_port, stats, counts_base,
                                  fd_base, rss_warm, sanitized, result)
        extra = Counter(describe_fds(tutti.pid))
        extra.subtract(fds_before)
        result["fds_added"] = {k: v for k, v in extra.items() if v}
        status = tutti.stop()
        if status != 0:
            problems.append(f"tutti exited with status {status} after "
                            f"SIGTERM")
    else:
        problems.append(f"tutti died: status {tutti.popen.returncode}")
    for proc in procs:
        proc.stop()
        report = proc.sanitizer_report()
        if report is not None:
            problems.append(f"sanitizer report from {proc.name}:\n{report}")
    return result, problems


def settle_checks(tutti, admin_port, stats, counts_base, fd_base, rss_warm,
                  sanitized, result):
    """Wait for tutti to go idle, then compare descriptors, RSS and the
    request counters (less |counts_base|, the warm-up) with the load."""
    problems = []

    def load_counts(samples):
        counts = requests_by_status(samples)
        counts.subtract(counts_base)
        return counts

    def idle():
        samples = scrape(admin_port)
        done = (sum(load_counts(samples).values()) >= stats.sent
                and metric_sum(samples, "tutti_requests_in_flight") == 0
                and metric_sum(samples, "tutti_calls_in_flight") == 0
                and metric_sum(samples, "tutti_inbound_connections") == 0
                and fd_count(tutti.pid) <= fd_base
                and not open_connections(tutti.pid))
        return samples if done else None

    settle_start = time.monotonic()
    wait_until(idle, SETTLE_S)
    samples = scrape(admin_port)
    result["settle_s"] = round(time.monotonic() - settle_start, 1)
    fds = fd_count(tutti.pid)
    rss = rss_kib(tutti.pid)
    result["fds_after"] = fds
    result["rss_warm_kib"] = rss_warm
    result["rss_after_kib"] = rss
    connections = open_connections(tutti.pid)
    if connections:
        problems.append(f"{len(connections)} TCP connections still open "
                        f"{SETTLE_S} s after the load: {connections}")
    if fds > fd_base + FD_MARGIN:
        problems.append(f"{fds} descriptors open after {SETTLE_S} s idle, "
                        f"baseline {fd_base}: {describe_fds(tutti.pid)}")
    limit = rss_warm + max(RSS_MARGIN_KIB, rss_warm * RSS_MARGIN_RATIO)
    if sanitized:
        # ASan's quarantine and shadow memory grow with the load, so RSS
        # shows no leak there. LeakSanitizer checks at exit instead.
        result["rss_check"] = "skipped (sanitizer build)"
    elif rss > limit:
        problems.append(f"RSS {rss} KiB after the load, warm baseline "
                        f"{rss_warm} KiB (limit {limit:.0f} KiB)")
    for name in ("tutti_requests_in_flight", "tutti_calls_in_flight",
                 "tutti_inbound_connections"):
        value = metric_sum(samples, name)
        if value != 0:
            problems.append(f"{name} is {value} after the load")

    by_status = load_counts(samples)
    counted = sum(by_status.values())
    result["metrics_requests"] = counted
    if counted != stats.sent:
        problems.append(f"tutti_requests_total sums to {counted}, "
                        f"{stats.sent} requests were sent")
    # Every response the client read is counted under its status. The
    # rest of the count is the aborted requests, as 499 or as the status
    # tutti sent before it saw the abort.
    surplus = 0
    for status, seen in stats.statuses.items():
        if by_status.get(status, 0) < seen:
            problems.append(f"tutti_requests_total{{status={status}}} is "
                            f"{by_status.get(status, 0)}, client saw {seen}")
    for status, count in by_status.items():
        surplus += count - stats.statuses.get(status, 0)
    if surplus != stats.aborted:
        problems.append(f"{surplus} counted requests beyond the answers "
                        f"read, {stats.aborted} requests were aborted")
    if by_status.get(499, 0) > stats.aborted:
        problems.append("more 499s counted than requests aborted")
    return problems


def main():
    if WORKDIR.exists():
        shutil.rmtree(WORKDIR)
    WORKDIR.mkdir(parents=True)
    procs = []
    started = time.monotonic()
    try:
        result, problems = run(procs)
    except RuntimeError as exc:
        result, problems = {}, [f"set-up failed: {exc}"]
    except KeyboardInterrupt:
        # The helper threads are daemons: they end with the process.
        result, problems = {}, ["interrupted before the checks"]
    finally:
        for proc in procs:
            proc.stop()
    log("summary " + json.dumps(result))
    log(f"{time.monotonic() - started:.0f} s in all; logs in {WORKDIR}")
    if problems:
        log(f"FAIL: {len(problems)} problems")
        for text in problems[:60]:
            print("  " + text)
        return 1
    log("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
