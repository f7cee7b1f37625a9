#!/usr/bin/env python3
"""Benchmark tutti against its peer gateways (Go, Node, nginx with Lua).

Starts every downstream on 127.0.0.1 (three nginx, one nghttpd for h2c,
faultd for delays, hangs and failures), then runs each scenario against
every gateway in turn, round after round, and reports the medians over the
rounds. Each gateway runs with one worker pinned to CPU 1; wrk, loadgen
and the downstreams run on CPU 0.

A full run writes BENCHMARKS.md at the repository root and PNG plots under
docs/bench/. `--smoke` runs one short round into a temporary directory, so
that the test suite can check that every step still works; it exits 1
when a gateway gave a wrong response or a step failed.

Every gateway reads the same bench config (JSON):

    {"port": P, "workers": 1, "deadline_ms": D, "concurrency": N,
     "calls": [{"name": "c0", "url": "http://127.0.0.1:P0/item.json"}, ...]}

`concurrency` is the number of requests the scenario keeps in flight at
most, so that a gateway can size its limits (nginx's worker_connections).
"""

import argparse
import bisect
import contextlib
import http.client
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from procs import (HOST, Ports, Processes, RssSampler, StepFailed,
                   Unsupported, log, package_missing, run_tool, tail,
                   tree_cpu_seconds, tree_memory_kib, wait_for_port)
from report import Report, fmt, make_plots, percentile

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "tests" / "bench"
PEERS_DIR = BENCH_DIR / "peers"
BUILD_BENCH = ROOT / "build" / "bench"
TUTTI_BIN = ROOT / "build" / "tutti"
FAULTD_BIN = ROOT / "build" / "faultd"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
LOADGEN_BIN = BUILD_BENCH / "loadgen"


GATEWAYS = ("tutti", "go", "node", "nginx-lua")
SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8)

# The downstream body: small JSON, the same bytes from nginx and nghttpd.
ITEM_BODY = ('{"id": 42, "name": "green tea", "price_cents": 450, '
             '"tags": ["hot", "loose leaf"]}')

# Debian packages each peer needs, checked with dpkg-query.
PEER_PACKAGES = {
    "go": ("golang-go", "golang-golang-x-sync-dev",
           "golang-golang-x-net-dev"),
    "node": (),
    "nginx-lua": ("nginx", "libnginx-mod-http-lua", "lua-cjson"),
}

# Explanations of missed goals, written by the lead from profiles and
# printed under each missed goal in BENCHMARKS.md. The keys are the goal
# ids of evaluate_goals().
CPU_NOTE = (
    'perf record -g on tutti at this load (one worker, 17,600 '
    'requests/s): 69% of its CPU is in the kernel, and tcp_sendmsg '
    "alone is 47%. On loopback the sender also runs the receiver's TCP "
    'input in softirq, so each of the three request writes and the '
    'response sendmsg costs tutti close to what a whole exchange costs '
    'nginx. epoll_ctl is 5%: libmicrohttpd takes a connection out of '
    'its epoll set when tutti suspends it for the fan-out and puts it '
    'back on resume, two calls per request inside the library. User '
    "space is 31%: libc 15% (memset of libmicrohttpd's connection "
    'buffer after every request 4%, measured with the former 32 KiB '
    'default, malloc and free 5%), tutti 7%, libmicrohttpd 3%, '
    'http_parser 3%, libuv 2%. Already cut: system calls per request '
    'from 21 to 11 (one client-abort watch per connection instead of '
    'per request, uv_try_write for downstream requests) and user-space '
    'instructions (callgrind) from 282k to 89k.')

GOAL_NOTES = {
    "s1-cpu": CPU_NOTE,
    "s1-rps": "tutti is CPU-bound on its core in this scenario, so its "
              "requests per second follow its CPU per request: see the "
              "S1 CPU goal.",
    "s2-cpu": "",
    "s2-rps": "",
    "s3-p99": "",
    "s3-p999": "",
    "s4-flat": "",
    "s5-complete": "",
    "s5-vs-go": (
        'Where the memory goes (massif and RSS sampling at 1,000 to '
        '10,000 held requests): libmicrohttpd 0.9.75 zeroes its whole '
        'per-connection buffer (max_header_bytes, 16 KiB by default) '
        'after each response, so every answered connection that stays '
        'open, as loadgen --hold keeps them, holds 16 KiB resident. '
        "tutti's own structures are about 4 KiB per request and are "
        'freed when it ends, but lie between those buffers where glibc '
        'does not return them. Already cut: 36.4 KiB with the former 32'
        " KiB default, and the dispatcher's per-call record from about "
        '560 to 88 bytes. A smaller max_header_bytes gives less (8 KiB:'
        ' 12.5 KiB per request) at the cost of the header limit, and a '
        'periodic malloc_trim gave 17.3 KiB but stalled the worker for '
        'up to 1 ms, so neither is the default.'),
    "s5-32k": "",
    "s6-p99": "",
    "s6-early": "",
    "s7-p99": "",
    "s8-limit": CPU_NOTE,
}

# wrk prints this Lua report as one JSON line after its own output.
WRK_REPORT_LUA = r"""
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, ' ..
        '"read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
        '"p50_us": %.1f, "p99_us": %.1f, "p999_us": %.1f, ' ..
        '"max_us": %.1f}\n',
        summary.requests, summary.duration, e.connect, e.read, e.write,
        e.status, e.timeout, latency:percentile(50),
        latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


# ---------------------------------------------------------------------------
# Gateways


class Gateway:
    """How to check, build and start one gateway from a bench config."""

    name = ""

    def __init__(self, bench):
        self.bench = bench

    def missing(self):
        """Return why the gateway cannot run here, or None."""
        return None

    def prepare(self):
        """Build whatever the gateway needs, once per benchmark run."""

    def command(self, config, config_path, run_dir):
        raise NotImplementedError


class TuttiGateway(Gateway):
    name = "tutti"

    def missing(self):
        if not os.access(TUTTI_BIN, os.X_OK):
            return f"{TUTTI_BIN} not found (run make)"
        return None

    def command(self, config, config_path, run_dir):
        tutti_path = run_dir / "tutti.json"
        tutti_path.write_text(
            json.dumps(tutti_config(config), indent=2) + "\n")
        return [str(TUTTI_BIN), "--config", str(tutti_path),
                "--workers", str(config["workers"]), "--log-level", "warn"]


def tutti_config(config):
    """Translate a bench config into a tutti configuration.

    Calls to the same scheme, host and port share one service, as the
    peers share one client per origin. The limits are raised to the
    scenario's concurrency, so that no request is shed and no call waits
    for a connection slot.
    """
    services = {}
    origins = {}
    calls = []
    for call in config["calls"]:
        url = urllib.parse.urlsplit(call["url"])
        origin = f"{url.scheme}://{url.netloc}"
        if origin not in origins:
            origins[origin] = f"s{len(origins)}"
            services[origins[origin]] = {"url": origin}
        path = url.path + ("?" + url.query if url.query else "")
        calls.append({"name": call["name"], "service": origins[origin],
                      "path": path})
    concurrency = config["concurrency"]
    limit = max(10000, 2 * concurrency)
    return {
        "listen": f"{HOST}:{config['port']}",
        "drain_delay_ms": 0,
        "shutdown_grace_ms": 1000,
        "max_in_flight": limit,
        "max_connections_inbound": limit,
        "defaults": {"max_connections": max(256, concurrency + 64)},
        "services": services,
        "routes": [{"method": "GET", "path": "/fan",
                    "deadline_ms": config["deadline_ms"], "calls": calls}],
    }


class GoGateway(Gateway):
    name = "go"
    build_script = PEERS_DIR / "go" / "build.sh"
    binary = BUILD_BENCH / "go-gateway"

    def missing(self):
        for path in (self.build_script, PEERS_DIR / "go" / "main.go"):
            if not path.exists():
                return f"{path.relative_to(ROOT)} not found"
        if shutil.which("go") is None:
            return "go not found"
        lacking = package_missing(PEER_PACKAGES["go"])
        if lacking:
            return "missing packages: " + " ".join(lacking)
        return None

    def prepare(self):
        log("building the Go peer (tests/bench/peers/go/build.sh)")
        run_tool(["bash", str(self.build_script)], 600, "go build.sh")
        if not os.access(self.binary, os.X_OK):
            raise StepFailed(f"go build.sh did not write {self.binary}")

    def command(self, config, config_path, run_dir):
        return [str(self.binary), "--config", str(config_path)]


class NodeGateway(Gateway):
    name = "node"
    script = PEERS_DIR / "node" / "gateway.js"

    def missing(self):
        if not self.script.exists():
            return f"{self.script.relative_to(ROOT)} not found"
        if shutil.which("node") is None:
            return "node not found"
        return None

    def command(self, config, config_path, run_dir):
        return ["node", str(self.script), "--config", str(config_path)]


class NginxLuaGateway(Gateway):
    name = "nginx-lua"
    render = PEERS_DIR / "nginx-lua" / "render.py"

    def missing(self):
        if not self.render.exists():
            return f"{self.render.relative_to(ROOT)} not found"
        if shutil.which("nginx") is None:
            return "nginx not found"
        lacking = package_missing(PEER_PACKAGES["nginx-lua"])
        if lacking:
            return "missing packages: " + " ".join(lacking)
        return None

    def command(self, config, config_path, run_dir):
        prefix = run_dir / "nginx-lua"
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, str(self.render), str(config_path), str(prefix)],
            capture_output=True, text=True, timeout=60)
        if done.returncode == 3:
            raise Unsupported(done.stderr.strip() or "render.py exit 3")
        if done.returncode != 0:
            raise StepFailed(f"render.py exited with status "
                             f"{done.returncode}: {done.stderr.strip()}")
        # -e stderr: nginx opens its compiled-in error log before it reads
        # the configuration, which would write under /var/log.
        return ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                "-e", "stderr"]


GATEWAY_CLASSES = {cls.name: cls for cls in
                   (TuttiGateway, GoGateway, NodeGateway, NginxLuaGateway)}


# ---------------------------------------------------------------------------
# Response checks


def fetch(url, timeout):
    """Send GET url and return (status, content type, body bytes)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                      timeout=timeout)
    try:
        conn.request("GET", parts.path + ("?" + parts.query
                                          if parts.query else ""))
        response = conn.getresponse()
        return (response.status, response.getheader("Content-Type", ""),
                response.read())
    finally:
        conn.close()


def check_fan(url, expect, names, timeout=10.0):
    """Send one GET /fan and check the body's shape.

    expect is "ok" (200 with one JSON object per call), "deadline" (504
    kind deadline) or "status" (502 naming call c0 with kind status).
    Returns None when the response is right, else what was wrong.
    """
    try:
        status, ctype, body = fetch(url, timeout)
    except (OSError, http.client.HTTPException) as err:
        return f"GET {url} failed: {err}"
    shown = body[:300].decode(errors="replace")
    try:
        doc = json.loads(body)
    except ValueError:
        return f"status {status}, body is not JSON: {shown!r}"
    if "application/json" not in ctype:
        return f"Content-Type {ctype!r}, expected application/json"
    if expect == "ok":
        if status != 200:
            return f"status {status}, expected 200: {shown}"
        if not isinstance(doc, dict) or sorted(doc) != sorted(names):
            return f"members {sorted(doc) if isinstance(doc, dict) else doc}"\
                f", expected {sorted(names)}"
        wrong = [name for name in names if not isinstance(doc[name], dict)]
        if wrong:
            return f"calls {wrong} are not JSON objects: {shown}"
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return f"status {status}, no error object: {shown}"
    if expect == "deadline":
        if status != 504 or error.get("kind") != "deadline":
            return f"status {status}, expected 504 kind deadline: {shown}"
        return None
    if status != 502 or error.get("kind") != "status" \
            or error.get("call") != "c0":
        return f"status {status}, expected 502 call c0 kind status: {shown}"
    return None


# ---------------------------------------------------------------------------
# The benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.rounds = args.rounds
        self.duration = args.duration
        self.procs = Processes()
        self.ports = Ports()
        self.failures = []
        self.notes = []
        self.skipped = {}
        self.commands = {}
        # results[(scenario key, gateway)] = one dict per round.
        self.results = {}
        self.pin = self.choose_pinning()
        self.setup_parameters()

    # -- settings --------------------------------------------------------

    def setup_parameters(self):
        smoke = self.smoke
        self.wrk_connections = 50
        # Sweep points and fan-out widths: whole seconds, as wrk takes.
        self.short_duration = max(1, self.duration // 2)
        self.warmup_s = 0 if smoke else 1
        self.s3_rate = 100 if smoke else 500
        self.s3_sweep = [100, 200] if smoke else [250, 500, 1000, 2000]
        self.s3_delays = (20, 40, 60)
        self.s4_widths = [1, 4, 32] if smoke else [1, 2, 4, 8, 16, 32]
        self.s5_hold = 200 if smoke else 10000
        # The smoke run only checks that the steps work, so faultd delays
        # its responses by 1 s instead of 2 s.
        self.s5_delay_ms = 1000 if smoke else 2000
        self.s6_rate = 100 if smoke else 200
        self.s6_deadline_ms = 100
        self.s7_max_requests = 20 if smoke else 200
        self.callgrind_counts = (50, 150) if smoke else (500, 1500)
        self.raise_descriptor_limit()

    def raise_descriptor_limit(self):
        """Raise RLIMIT_NOFILE for the children and pick scenario 5's scheme.

        A gateway keeping N requests in flight over HTTP/1.1 needs N inbound
        and N outbound sockets. When the hard limit cannot cover both (it
        can be raised only with CAP_SYS_RESOURCE), the calls go over one
        h2c connection to faultd instead.
        """
        needed = 2 * self.s5_hold + 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < needed:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
                soft, hard = needed, needed
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.nofile = hard
        self.s5_scheme = "http" if hard >= needed else "h2c"
        if self.s5_scheme == "h2c":
            self.notes.append(
                f"Scenario 5 calls faultd over h2c, because the hard "
                f"RLIMIT_NOFILE ({hard}) is below the {needed} descriptors "
                f"that {self.s5_hold} requests with one HTTP/1.1 call each "
                f"need in the gateway (one inbound and one outbound socket "
                f"per request, plus 1024 to spare), and this process could "
                f"not raise it.")

    def choose_pinning(self):
        cpus = os.sched_getaffinity(0)
        if {0, 1} <= cpus and shutil.which("taskset"):
            return {"gateway": ["taskset", "-c", "1"],
                    "load": ["taskset", "-c", "0"]}
        return {"gateway": [], "load": []}

    def pinned(self, role, cmd):
        return self.pin[role] + cmd

    def record_command(self, kind, cmd):
        # Paths are shown relative to the repository and the work directory.
        text = shlex.join(cmd).replace(str(self.work), "$WORK")
        self.commands.setdefault(kind, text.replace(str(ROOT) + "/", ""))

    # -- set-up ----------------------------------------------------------

    def check_tools(self):
        """Check the binaries and gateways, and fail on or skip the missing."""
        for path, hint in ((TUTTI_BIN, "make"), (FAULTD_BIN, "make fixture")):
            if not os.access(path, os.X_OK):
                raise StepFailed(f"{path} not found; run '{hint}'")
        needed = ["nginx", "nghttpd", "cc"]
        if not self.smoke:
            needed += ["wrk", "gnuplot", "valgrind", "callgrind_control"]
        elif shutil.which("wrk") is None:
            # `make test` installs the base packages only; `make bench`
            # installs wrk, gnuplot and valgrind too.
            log("skipping scenarios 1, 2, 4, 8: wrk not found")
            for scenario in (1, 2, 4, 8):
                self.skipped[f"S{scenario}"] = "wrk not found"
        missing = [tool for tool in needed if shutil.which(tool) is None]
        if missing:
            raise StepFailed("missing tools: " + " ".join(missing)
                             + " (run make bench, which installs them)")
        self.gateways = []
        for name in self.args.gateways:
            gateway = GATEWAY_CLASSES[name](self)
            reason = gateway.missing()
            if reason is None:
                self.gateways.append(gateway)
            elif self.smoke:
                log(f"skipping {name}: {reason}")
                self.skipped[name] = reason
            else:
                raise StepFailed(f"gateway {name} cannot run: {reason}")
        self.loadgen = self.build_loadgen()

    def build_loadgen(self):
        if not LOADGEN_SRC.exists():
            if self.smoke:
                log(f"skipping scenarios 3, 5, 6: {LOADGEN_SRC} not found")
                for scenario in (3, 5, 6):
                    self.skipped[f"S{scenario}"] = f"{LOADGEN_SRC} not found"
                return None
            raise StepFailed(f"{LOADGEN_SRC} not found")
        if LOADGEN_BIN.exists() and \
                LOADGEN_BIN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
            return LOADGEN_BIN
        BUILD_BENCH.mkdir(parents=True, exist_ok=True)
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libuv"],
                               capture_output=True, text=True)
        if flags.returncode != 0:
            raise StepFailed("pkg-config libuv failed: " + flags.stderr)
        cmd = (["cc", "-O2", "-g", "-Wall", "-Wextra", "-o", str(LOADGEN_BIN),
                str(LOADGEN_SRC)] + flags.stdout.split()
               + ["-lhttp_parser", "-lm"])
        log("building " + shlex.join(cmd))
        run_tool(cmd, 120, "cc loadgen.c")
        return LOADGEN_BIN

    def start_downstreams(self):
        work = self.work
        self.nginx_ports = []
        self.nginx_procs = []
        for index in range(3):
            port = self.ports.take_downstream()
            prefix = work / f"nginx{index}"
            (prefix / "tmp").mkdir(parents=True)
            (prefix / "nginx.conf").write_text(
                downstream_nginx_conf(port, min(self.nofile, 65536)))
            cmd = self.pinned("load", [
                "nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                "-e", "stderr"])
            self.record_command("nginx downstream", cmd)
            proc = self.procs.start(f"nginx{index}", cmd,
                                    work / f"nginx{index}.log")
            wait_for_port(port, proc, 10)
            self.nginx_ports.append(port)
            self.nginx_procs.append(proc)

        htdocs = work / "h2root"
        htdocs.mkdir()
        (htdocs / "item.json").write_text(ITEM_BODY)
        (work / "mime.types").write_text("application/json json\n")
        self.h2_port = self.ports.take_downstream()
        cmd = self.pinned("load", [
            "nghttpd", "--no-tls", f"--address={HOST}",
            f"--htdocs={htdocs}", f"--mime-types-file={work / 'mime.types'}",
            str(self.h2_port)])
        self.record_command("nghttpd downstream", cmd)
        proc = self.procs.start("nghttpd", cmd, work / "nghttpd.log")
        wait_for_port(self.h2_port, proc, 10)

        self.faultd_port = self.ports.take_downstream()
        cmd = self.pinned("load", [str(FAULTD_BIN), "--port",
                                   str(self.faultd_port)])
        self.record_command("faultd downstream", cmd)
        proc = self.procs.start("faultd", cmd, work / "faultd.log")
        wait_for_port(self.faultd_port, proc, 10)

        for port in self.nginx_ports:
            status, _, body = fetch(f"http://{HOST}:{port}/item.json", 5)
            if status != 200 or json.loads(body) != json.loads(ITEM_BODY):
                raise StepFailed(f"nginx on {port} returned {status} {body}")
        log(f"downstreams: nginx {self.nginx_ports}, nghttpd {self.h2_port}"
            f" (h2c), faultd {self.faultd_port}")

    # -- gateways --------------------------------------------------------

    @contextlib.contextmanager
    def gateway(self, gateway, calls, deadline_ms, concurrency, label):
        """Start a gateway with a bench config and stop it after the block."""
        port = self.ports.take_rotating()
        config = {"port": port, "workers": 1, "deadline_ms": deadline_ms,
                  "concurrency": concurrency, "calls": calls}
        run_dir = self.work / "runs" / f"{label}-{gateway.name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "bench.json"
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        cmd = self.pinned("gateway",
                          gateway.command(config, config_path, run_dir))
        self.record_command(f"gateway {gateway.name}", cmd)
        proc = self.procs.start(gateway.name, cmd, run_dir / "gateway.log")
        try:
            wait_for_port(port, proc, 20)
            yield proc, f"http://{HOST}:{port}/fan"
            if proc.poll() is not None:
                raise StepFailed(
                    f"{gateway.name} exited with status {proc.returncode} "
                    f"during the load; log: {proc.bench_log}\n"
                    + tail(proc.bench_log))
        finally:
            self.procs.stop(proc)

    def nginx_calls(self, width):
        return [{"name": f"c{i}", "url": f"http://{HOST}:"
                 f"{self.nginx_ports[i % 3]}/item.json"}
                for i in range(width)]

    def faultd_url(self, query, scheme="http", port=None):
        return f"{scheme}://{HOST}:{port or self.faultd_port}/item?{query}"

    def check_shape(self, gateway, scenario, url, expect, names):
        problem = check_fan(url, expect, names)
        if problem is not None:
            label = f"S{scenario}" if isinstance(scenario, int) else scenario
            message = (f"{label} {gateway.name}: wrong response to "
                       f"GET /fan: {problem}")
            log(message)
            self.failures.append(message)
            return False
        return True

    # -- load tools ------------------------------------------------------

    def wrk(self, url, duration, connections=None, kind="wrk"):
        script = self.work / "wrk-report.lua"
        if not script.exists():
            script.write_text(WRK_REPORT_LUA)
        cmd = self.pinned("load", [
            "wrk", "-t1", f"-c{connections or self.wrk_connections}",
            f"-d{duration}s", "--timeout", "2s", "-s", str(script), url])
        self.record_command(kind, cmd)
        out = run_tool(cmd, duration + 30, "wrk")
        match = re.search(r"^WRK_JSON (.*)$", out, re.M)
        if match is None:
            raise StepFailed("wrk printed no report:\n" + out[-2000:])
        raw = json.loads(match.group(1))
        errors = sum(raw[key] for key in
                     ("connect", "read", "write", "status", "timeout"))
        return {
            "requests": raw["requests"],
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50": raw["p50_us"] / 1000, "p99": raw["p99_us"] / 1000,
            "p99.9": raw["p999_us"] / 1000, "errors": errors,
        }

    def run_loadgen(self, args, timeout, kind):
        cmd = self.pinned("load", [str(self.loadgen)] + args)
        self.record_command(kind, cmd)
        out = run_tool(cmd, timeout, "loadgen")
        try:
            return json.loads(out)
        except ValueError:
            raise StepFailed("loadgen printed no JSON: " + out[-2000:]) \
                from None

    def loadgen_rate(self, url, rate, duration, kind, samples=None,
                     expect_status="200", timeout_ms=2000):
        # Enough connections for the requests in flight at 150 ms each.
        connections = max(32, math.ceil(rate * 0.15))
        args = ["--url", url, "--rate", str(rate), "--duration",
                f"{duration:g}", "--connections", str(connections),
                "--timeout-ms", str(timeout_ms)]
        if samples is not None:
            args += ["--samples", str(samples)]
        report = self.run_loadgen(args, duration + timeout_ms / 1000 + 30,
                                  kind)
        latency = report.get("latency_ms", {})
        good = report.get("status", {}).get(expect_status, 0)
        return {
            "sent": report.get("sent", 0),
            "completed": report.get("completed", 0),
            "p50": latency.get("p50"), "p99": latency.get("p99"),
            "p99.9": latency.get("p99.9"),
            "errors": report.get("sent", 0) - good,
        }

    # -- scenarios -------------------------------------------------------

    def store(self, key, gateway_name, row):
        self.results.setdefault((key, gateway_name), []).append(row)

    def throughput(self, gateway, scenario, calls, label, duration):
        """Shared by scenarios 1, 2 and 4: wrk with 50 connections."""
        names = [call["name"] for call in calls]
        with self.gateway(gateway, calls, 1000, self.wrk_connections,
                          label) as (proc, url):
            ok = self.check_shape(gateway, scenario, url, "ok", names)
            if self.warmup_s:
                self.wrk(url, self.warmup_s, kind="wrk warm-up")
            cpu_before = tree_cpu_seconds(proc.pid)
            row = self.wrk(url, duration, kind=f"wrk S{scenario}")
            cpu = tree_cpu_seconds(proc.pid) - cpu_before
            row["cpu_ms_per_req"] = cpu * 1000 / max(1, row["requests"])
            row["peak_rss_mib"] = tree_memory_kib(proc.pid, "VmHWM") / 1024
            row["shape_ok"] = ok
        return row

    def scenario_1(self, gateway, round_index):
        row = self.throughput(gateway, 1, self.nginx_calls(3),
                              f"r{round_index}-s1", self.duration)
        self.store("s1", gateway.name, row)
        return row

    def scenario_2(self, gateway, round_index):
        calls = [{"name": f"c{i}",
                  "url": f"h2c://{HOST}:{self.h2_port}/item.json"}
                 for i in range(3)]
        row = self.throughput(gateway, 2, calls, f"r{round_index}-s2",
                              self.duration)
        self.store("s2", gateway.name, row)
        return row

    def scenario_3_direct(self, round_index):
        url = self.faultd_url(f"delay_ms={self.s3_delays[-1]}")
        row = self.loadgen_rate(url, self.s3_rate, self.duration,
                                "loadgen S3 direct")
        self.store("s3", "direct", row)
        log(f"round {round_index} S3 direct to the "
            f"{self.s3_delays[-1]} ms downstream: {summary_line(row)}")

    def scenario_3(self, gateway, round_index):
        calls = [{"name": f"c{i}", "url": self.faultd_url(f"delay_ms={d}")}
                 for i, d in enumerate(self.s3_delays)]
        names = [call["name"] for call in calls]
        top_rate = max(self.s3_sweep + [self.s3_rate])
        with self.gateway(gateway, calls, 1000, top_rate // 5,
                          f"r{round_index}-s3") as (proc, url):
            ok = self.check_shape(gateway, 3, url, "ok", names)
            if self.warmup_s:
                self.loadgen_rate(url, self.s3_rate, self.warmup_s,
                                  "loadgen warm-up")
            cpu_before = tree_cpu_seconds(proc.pid)
            row = self.loadgen_rate(url, self.s3_rate, self.duration,
                                    "loadgen S3")
            cpu = tree_cpu_seconds(proc.pid) - cpu_before
            row["cpu_ms_per_req"] = cpu * 1000 / max(1, row["completed"])
            row["peak_rss_mib"] = tree_memory_kib(proc.pid, "VmHWM") / 1024
            row["shape_ok"] = ok
            for rate in self.s3_sweep:
                point = self.loadgen_rate(url, rate, self.short_duration,
                                          "loadgen S3 sweep")
                self.store(f"s3-sweep-{rate}", gateway.name, point)
        self.store("s3", gateway.name, row)
        return row

    def scenario_4(self, gateway, round_index):
        rows = []
        for width in self.s4_widths:
            row = self.throughput(gateway, 4, self.nginx_calls(width),
                                  f"r{round_index}-s4-w{width}",
                                  self.short_duration)
            row["cpu_us_per_call"] = row["cpu_ms_per_req"] * 1000 / width
            self.store(f"s4-{width}", gateway.name, row)
            rows.append(f"w{width} {row['cpu_us_per_call']:.1f}")
        return {"summary": "CPU us per call: " + ", ".join(rows)}

    def scenario_5(self, gateway, round_index):
        url = self.faultd_url(f"delay_ms={self.s5_delay_ms}",
                              scheme=self.s5_scheme)
        calls = [{"name": "c0", "url": url}]
        # Opening 10,000 connections at once takes the gateways a few
        # seconds, so each request gets 10 s beyond the delay.
        deadline_ms = self.s5_delay_ms + 10000
        with self.gateway(gateway, calls, deadline_ms, self.s5_hold,
                          f"r{round_index}-s5") as (proc, fan_url):
            # The check also warms the gateway up before the idle sample.
            ok = self.check_shape(gateway, 5, fan_url, "ok", ["c0"])
            idle_kib = tree_memory_kib(proc.pid, "VmRSS")
            sampler = RssSampler(proc.pid)
            sampler.start()
            try:
                report = self.run_loadgen(
                    ["--url", fan_url, "--hold", str(self.s5_hold),
                     "--timeout-ms", str(deadline_ms)],
                    deadline_ms / 1000 + 60, "loadgen S5")
            finally:
                peak_kib = sampler.finish()
        good = report.get("status", {}).get("200", 0)
        row = {
            "held": self.s5_hold,
            "completed": report.get("completed", 0),
            "ok": good,
            "errors": self.s5_hold - good,
            "idle_rss_mib": idle_kib / 1024,
            "peak_rss_mib": peak_kib / 1024,
            "kib_per_request": (peak_kib - idle_kib) / self.s5_hold,
            "p50": report.get("latency_ms", {}).get("p50"),
            "max": report.get("latency_ms", {}).get("max"),
            "shape_ok": ok,
        }
        self.store("s5", gateway.name, row)
        return row

    def scenario_6(self, gateway, round_index):
        calls = [{"name": f"c{i}", "url": self.faultd_url(
            f"action=hang&n={i}")} for i in range(3)]
        deadline = self.s6_deadline_ms
        label = f"r{round_index}-s6"
        with self.gateway(gateway, calls, deadline,
                          self.s6_rate, label) as (proc, url):
            ok = self.check_shape(gateway, 6, url, "deadline",
                                  [c["name"] for c in calls])
            samples = self.work / "runs" / f"{label}-{gateway.name}" \
                / "samples.txt"
            row = self.loadgen_rate(url, self.s6_rate, self.duration,
                                    "loadgen S6", samples=samples,
                                    expect_status="504")
        late = []
        for line in samples.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "504":
                elapsed_ms = (float(fields[1]) - float(fields[0])) * 1000
                late.append(elapsed_ms - deadline)
        if not late:
            raise StepFailed(f"S6 {gateway.name}: no 504 in {samples}")
        row.update({
            "late_p50": percentile(late, 50), "late_p99": percentile(late, 99),
            "late_p99.9": percentile(late, 99.9), "late_min": min(late),
            "late_max": max(late), "samples": len(late), "shape_ok": ok})
        self.store("s6", gateway.name, row)
        return row

    def scenario_7(self, gateway, round_index):
        label = f"r{round_index}-s7"
        run_dir = self.work / "runs" / f"{label}-{gateway.name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        events_path = run_dir / "events.jsonl"
        port = self.ports.take_rotating()
        cmd = self.pinned("load", [str(FAULTD_BIN), "--port", str(port),
                                   "--events", str(events_path)])
        self.record_command("faultd S7", cmd)
        faultd = self.procs.start("faultd-s7", cmd, run_dir / "faultd.log")
        try:
            wait_for_port(port, faultd, 10)
            calls = [
                {"name": "c0", "url": f"http://{HOST}:{port}/fail?status=500"},
                {"name": "c1", "url": f"http://{HOST}:{port}/slow1?delay_ms=2000"},
                {"name": "c2", "url": f"http://{HOST}:{port}/slow2?delay_ms=2000"},
            ]
            with self.gateway(gateway, calls, 5000, 1, label) as (proc, url):
                ok = self.check_shape(gateway, 7, url, "status",
                                      ["c0", "c1", "c2"])
                windows = self.send_one_at_a_time(url)
                # Read the events before the gateway stops, because stopping
                # it closes its connections, which faultd logs as cancels.
                row = cancel_latencies(events_path, windows)
        finally:
            self.procs.stop(faultd)
        row["shape_ok"] = ok
        self.store("s7", gateway.name, row)
        return row

    def send_one_at_a_time(self, url):
        """Send GET /fan requests one after another and return their send
        times."""
        parts = urllib.parse.urlsplit(url)
        windows = []
        stop_at = time.monotonic() + self.duration
        conn = None
        while len(windows) < self.s7_max_requests and \
                (time.monotonic() < stop_at or len(windows) < 3):
            if conn is None:
                conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                                  timeout=10)
            sent = time.monotonic()
            try:
                conn.request("GET", parts.path)
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
            windows.append(sent)
        if conn is not None:
            conn.close()
        return windows

    def scenario_8(self, round_index):
        proc = self.nginx_procs[0]
        url = f"http://{HOST}:{self.nginx_ports[0]}/item.json"
        cpu_before = tree_cpu_seconds(proc.pid)
        row = self.wrk(url, self.duration, kind="wrk S8")
        cpu = tree_cpu_seconds(proc.pid) - cpu_before
        row["cpu_ms_per_req"] = cpu * 1000 / max(1, row["requests"])
        self.store("s8", "nginx", row)
        log(f"round {round_index} S8 nginx direct: {row['rps']:,.0f} rps, "
            f"{row['cpu_ms_per_req'] * 1000:.2f} us CPU per exchange")

    # -- callgrind -------------------------------------------------------

    def callgrind(self):
        """Count tutti's instructions per request under callgrind.

        tutti runs the scenario 1 fan-out. After `first` sequential
        requests (start-up and warm-up), callgrind_control dumps and zeroes
        the counters. After `second` more requests it dumps again, so the
        second dump's total divided by `second` is the count per request.
        """
        first, second = self.callgrind_counts
        run_dir = self.work / "runs" / "callgrind"
        run_dir.mkdir(parents=True, exist_ok=True)
        port = self.ports.take_rotating()
        config = {"port": port, "workers": 1, "deadline_ms": 5000,
                  "concurrency": 1, "calls": self.nginx_calls(3)}
        gateway = TuttiGateway(self)
        out_pattern = run_dir / "callgrind.out.%p"
        cmd = self.pinned("gateway", [
            "valgrind", "--tool=callgrind",
            f"--callgrind-out-file={out_pattern}"]
            + gateway.command(config, run_dir / "bench.json", run_dir))
        self.record_command("callgrind", cmd)
        proc = self.procs.start("tutti-callgrind", cmd,
                                run_dir / "valgrind.log")
        try:
            wait_for_port(port, proc, 90)
            url = f"http://{HOST}:{port}/fan"
            self.check_shape(gateway, "callgrind", url, "ok",
                             ["c0", "c1", "c2"], )
            sequential_requests(url, first)
            self.callgrind_dump(proc.pid, run_dir, 1)
            sequential_requests(url, second)
            total = self.callgrind_dump(proc.pid, run_dir, 2)
        finally:
            self.procs.stop(proc, timeout=30)
        ir = total / second
        self.results[("ir", "tutti")] = [{"ir_per_req": ir,
                                          "requests": second}]
        log(f"callgrind: {ir:,.0f} instructions per request "
            f"({total:,} over {second} requests)")

    def callgrind_dump(self, pid, run_dir, number):
        run_tool(["callgrind_control", "-d", str(pid)], 60,
                 "callgrind_control -d")
        path = run_dir / f"callgrind.out.{pid}.{number}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if path.exists():
                match = re.search(r"^totals: (\d+)", path.read_text(), re.M)
                if match:
                    return int(match.group(1))
            time.sleep(0.2)
        raise StepFailed(f"callgrind wrote no totals to {path}")

    # -- the run ---------------------------------------------------------

    def run(self):
        self.check_tools()
        for gateway in list(self.gateways):
            try:
                gateway.prepare()
            except StepFailed as err:
                raise StepFailed(f"{gateway.name}: {err}") from None
        self.start_downstreams()
        scenarios = self.args.only
        for round_index in range(1, self.rounds + 1):
            for scenario in scenarios:
                if f"S{scenario}" in self.skipped:
                    continue
                self.run_step(f"round {round_index} S{scenario} direct",
                              self.direct_step(scenario, round_index))
                if scenario == 8:
                    # Scenario 8 measures nginx alone, and its report divides
                    # each gateway's scenario 1 CPU by that cost.
                    continue
                for gateway in self.gateways:
                    self.run_step(
                        f"round {round_index} S{scenario} {gateway.name}",
                        lambda g=gateway, s=scenario, r=round_index:
                            getattr(self, f"scenario_{s}")(g, r),
                        gateway=gateway.name, scenario=scenario)
        if any(g.name == "tutti" for g in self.gateways) and \
                not self.args.skip_callgrind:
            if shutil.which("valgrind") and shutil.which("callgrind_control"):
                self.run_step("callgrind tutti", self.callgrind)
            else:
                self.skipped["callgrind"] = "valgrind not found"

    def direct_step(self, scenario, round_index):
        if scenario == 3:
            return lambda: self.scenario_3_direct(round_index)
        if scenario == 8:
            return lambda: self.scenario_8(round_index)
        return None

    def run_step(self, name, step, gateway=None, scenario=None):
        if step is None:
            return
        started = time.monotonic()
        try:
            row = step()
        except Unsupported as err:
            self.results.setdefault((f"s{scenario}", gateway), [])
            self.results[(f"na-s{scenario}", gateway)] = [{"reason": str(err)}]
            log(f"{name}: n/a ({err})")
            return
        except StepFailed as err:
            message = f"{name} failed: {err}"
            log(message)
            self.failures.append(message)
            return
        if isinstance(row, dict):
            log(f"{name}: {summary_line(row)} "
                f"({time.monotonic() - started:.1f} s)")


def summary_line(row):
    if "summary" in row:
        return row["summary"]
    parts = []
    for key, label in (("rps", "rps"), ("p50", "p50 ms"), ("p99", "p99 ms"),
                       ("p99.9", "p99.9 ms"),
                       ("cpu_ms_per_req", "CPU ms/req"),
                       ("kib_per_request", "KiB/req"),
                       ("late_p99", "late p99 ms"),
                       ("cancel_p99", "cancel p99 ms"),
                       ("errors", "errors")):
        if row.get(key) is not None:
            parts.append(f"{label} {fmt(row[key], 3)}")
    if "cancelled" in row:
        parts.append(f"{row['requests']} requests, slow calls: "
                     f"{row['cancelled']} cancelled ({row['before_sent']} "
                     f"before the request was sent), {row['completed']} run "
                     f"to the end, {row['unsent']} not seen by faultd")
    if row.get("never_cancels"):
        parts.append("never cancels")
    return ", ".join(parts)


def sequential_requests(url, count):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        for _ in range(count):
            conn.request("GET", parts.path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise StepFailed(f"GET {url} returned {response.status}")
            if response.will_close:
                conn.close()
    finally:
        conn.close()


def read_events(path):
    events = []
    with open(path) as file:
        for line in file:
            if line.endswith("\n"):
                events.append(json.loads(line))
    return events


def settled_events(events_path, since, settle_s):
    """Read faultd's events once every request since `since` has ended.

    Returns (requests, finals, early_closes, pending): request events and
    their final events by (conn, stream), the (accept t, close t) of
    connections closed before any request byte arrived, and the keys of
    requests still open after settle_s seconds.
    """
    deadline = time.monotonic() + settle_s
    while True:
        requests = {}
        finals = {}
        accepted = {}
        early_closes = []
        for event in read_events(events_path):
            kind = event["event"]
            key = (event["conn"], event.get("stream"))
            if kind == "request":
                requests[key] = event
            elif kind in ("response", "cancel", "aborted"):
                finals[key] = event
            elif kind == "conn_open" and event["proto"] is None:
                accepted[event["conn"]] = event["t"]
            elif kind == "conn_close" and event["conn"] in accepted:
                early_closes.append((accepted[event["conn"]], event["t"]))
        pending = [key for key, event in requests.items()
                   if event["t"] >= since and key not in finals]
        if not pending or time.monotonic() >= deadline:
            return requests, finals, early_closes, pending
        time.sleep(0.1)


def cancel_latencies(events_path, windows, settle_s=3.0):
    """Measure cancel latency from faultd's events.

    Requests were sent one at a time, so each downstream request belongs
    to the last inbound request sent before it. For each inbound request,
    every slow call's `cancel` time minus the failing call's `response`
    time is one sample. A gateway that drops a slow call while its
    connection is still being set up closes that connection before the
    request arrives, and the `conn_close` time gives the sample instead.
    Slow calls that got a `response` (2 s later) were not cancelled.
    """
    requests, finals, early_closes, pending = settled_events(
        events_path, windows[0], settle_s)

    def window_of(t):
        return bisect.bisect_right(windows, t) - 1

    per_window = {}
    for key, event in requests.items():
        per_window.setdefault(window_of(event["t"]), []).append(key)
    closes_per_window = {}
    for accepted, closed in early_closes:
        closes_per_window.setdefault(window_of(accepted), []).append(closed)

    samples = []
    before_sent = 0
    completed = 0
    unsent = 0
    for index in range(len(windows)):
        keys = per_window.get(index, [])
        failing = [k for k in keys if requests[k]["path"].startswith("/fail")]
        slow = [k for k in keys if requests[k]["path"].startswith("/slow")]
        if len(failing) != 1 or failing[0] not in finals \
                or finals[failing[0]]["event"] != "response":
            unsent += max(0, 2 - len(slow))
            continue
        failed_at = finals[failing[0]]["t"]
        for key in slow:
            final = finals.get(key)
            if final is None:
                continue
            if final["event"] == "cancel":
                samples.append((final["t"] - failed_at) * 1000)
            elif final["event"] == "response":
                completed += 1
        closes = sorted(t for t in closes_per_window.get(index, [])
                        if t >= failed_at)[:max(0, 2 - len(slow))]
        samples += [(t - failed_at) * 1000 for t in closes]
        before_sent += len(closes)
        unsent += max(0, 2 - len(slow) - len(closes))
    row = {"requests": len(windows), "cancelled": len(samples),
           "before_sent": before_sent, "completed": completed,
           "unsent": unsent, "unresolved": len(pending),
           "never_cancels": not samples and completed > 0}
    if samples:
        row.update({"cancel_p50": percentile(samples, 50),
                    "cancel_p99": percentile(samples, 99),
                    "cancel_max": max(samples)})
    return row


def downstream_nginx_conf(port, nofile):
    return f"""daemon off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid nginx.pid;
error_log stderr error;

events {{
    worker_connections {min(nofile - 64, 16384)};
}}

http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    server {{
        listen {HOST}:{port} backlog=4096;
        default_type application/json;
        location = /item.json {{
            return 200 '{ITEM_BODY}';
        }}
    }}
}}
"""


# ---------------------------------------------------------------------------
# Entry point


def parse_list(text, allowed, what):
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise argparse.ArgumentTypeError(
            f"empty {what} in {text!r}; give a comma-separated list such as "
            f"{','.join(map(str, allowed[:2]))}")
    for item in items:
        if item not in allowed:
            raise argparse.ArgumentTypeError(
                f"invalid {what} {item!r}; expected some of "
                f"{', '.join(map(str, allowed))}")
    return items


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark tutti against its Go, Node and nginx+Lua "
        "peers on 127.0.0.1 and write BENCHMARKS.md with gnuplot plots.")
    parser.add_argument("--smoke", action="store_true",
                        help="one short round into a temporary directory; "
                        "skips peers that cannot run here; exits 1 on a "
                        "wrong response or a failed step")
    parser.add_argument("--rounds", type=int,
                        help="rounds of every scenario (default 3, smoke 1)")
    parser.add_argument("--duration", type=int,
                        help="seconds of each load run (default 4, smoke 1)")
    parser.add_argument(
        "--only", type=lambda text: [int(s) for s in parse_list(
            text, [str(s) for s in SCENARIOS], "scenario")],
        default=list(SCENARIOS),
        help="comma-separated scenario numbers, 1 to 8 (default all)")
    parser.add_argument(
        "--gateways", type=lambda text: parse_list(text, GATEWAYS,
                                                   "gateway"),
        default=list(GATEWAYS),
        help="comma-separated gateways (default tutti,go,node,nginx-lua)")

    parser.add_argument("--out", type=Path,
                        help="directory for BENCHMARKS.md and the PNG files "
                        "(default: the repository root and docs/bench; "
                        "smoke: a new temporary directory)")
    parser.add_argument("--skip-callgrind", action="store_true",
                        help="do not count instructions under callgrind")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the work directory (configs, logs, "
                        "events, samples) after a successful run")

    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 3
    if args.duration is None:
        args.duration = 1 if args.smoke else 4
    for name in ("rounds", "duration"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be at "
                         "least 1")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a directory")
    return args


def main(argv):
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally block stops the children.
    # SIGINT is set too, because a shell starts background jobs with it
    # ignored, and Python then keeps it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    bench.command_line = shlex.join(["python3", "tests/bench/bench.py"]
                                    + argv)
    bench.plots = []
    if args.smoke:
        base = Path(tempfile.mkdtemp(prefix="tutti-bench-smoke-"))
        out_dir = args.out or base
        bench.work = base / "work"
    else:
        out_dir = args.out or ROOT
        bench.work = Path(tempfile.mkdtemp(prefix="tutti-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.work.mkdir(parents=True, exist_ok=True)
    if args.out is None and not args.smoke:
        plot_dir = ROOT / "docs" / "bench"
        plot_prefix = "docs/bench/"
    else:
        plot_dir = out_dir
        plot_prefix = ""
    plot_dir.mkdir(parents=True, exist_ok=True)

    log(f"work directory {bench.work}")
    interrupted = False
    try:
        bench.run()
    except StepFailed as err:
        log(f"error: {err}")
        bench.failures.append(str(err))
    except KeyboardInterrupt:
        log("interrupted; stopping every process started")
        interrupted = True
    finally:
        bench.procs.stop_all()
    if interrupted:
        return 130

    report = Report(bench, GOAL_NOTES, ROOT, TUTTI_BIN)
    try:
        bench.plots = make_plots(bench, report, plot_dir, bench.work)
    except StepFailed as err:
        log(f"plots failed: {err}")
        bench.failures.append(f"plots: {err}")
    path, goals = report.write(out_dir, plot_prefix)
    log(f"wrote {path}")
    for _, name in bench.plots:
        log(f"wrote {plot_dir / name}")
    print(path.read_text().rstrip().splitlines()[-1])
    if bench.failures:
        log(f"{len(bench.failures)} step(s) failed; logs in {bench.work}")
        for failure in bench.failures:
            print("  " + failure.splitlines()[0])
        return 1
    if args.smoke and args.out is None and not args.keep_work:
        # Nothing in a passing smoke run is read afterwards.
        shutil.rmtree(base, ignore_errors=True)
        return 0
    if args.keep_work:
        log(f"kept the work directory {bench.work}")
    else:
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
