"""Processes, ports, /proc measurements and tool runs for bench.py."""

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
# Downstreams take ports from the first range, once per run. Gateways and
# the per-run faultd of scenario 7 take a new port from the second range
# at every start, because a port that a stopped server closed connections
# on stays in TIME_WAIT, and not every server sets SO_REUSEADDR.
DOWNSTREAM_PORTS = range(19300, 19340)
ROTATING_PORTS = range(19340, 19400)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StepFailed(Exception):
    """A step of the benchmark failed: a crash, a bad exit or bad output."""


class Unsupported(Exception):
    """The gateway cannot run this scenario (reported as n/a)."""


START = time.monotonic()


def log(message):
    """Print a progress line with the seconds since the start."""
    print(f"[{time.monotonic() - START:7.1f}s] {message}", flush=True)


class Processes:
    """Every long-running child, so that each one is stopped at the end.

    Children run in their own session, so Ctrl-C in the terminal reaches
    only this script, which then stops them in reverse start order.
    """

    def __init__(self):
        self.running = []

    def start(self, name, cmd, log_path, cwd=None, env=None):
        log_file = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                start_new_session=True)
        finally:
            log_file.close()
        proc.bench_name = name
        proc.bench_log = log_path
        self.running.append(proc)
        return proc

    def stop(self, proc, timeout=8.0):
        """Send SIGTERM, then SIGKILL after `timeout` seconds.

        Descendants that outlive the main process (workers of nginx or a
        Node cluster) get SIGKILL by PID.
        """
        if proc not in self.running:
            return
        self.running.remove(proc)
        descendants = tree_pids(proc.pid)[1:]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{proc.bench_name} (pid {proc.pid}) did not stop in "
                    f"{timeout:g} s; sending SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 2.0
        for pid in descendants:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                if pid_alive(pid) and os.getsid(pid) == proc.pid:
                    os.kill(pid, signal.SIGKILL)

    def stop_all(self):
        for proc in reversed(list(self.running)):
            self.stop(proc)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def read_stat(pid):
    """Return (ppid, utime + stime in ticks) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name: state ppid ... utime(12) stime(13).
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_pids(root):
    """Return root and all of its descendants, root first."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(entry)
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry))
    pids = [root]
    for pid in pids:
        pids.extend(children.get(pid, ()))
    return pids


def tree_cpu_seconds(root):
    """Sum utime + stime over a process tree, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        stat = read_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / CLOCK_TICKS


def tree_memory_kib(root, field):
    """Sum a /proc/PID/status field (VmRSS, VmHWM) over a tree, in KiB."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class RssSampler(threading.Thread):
    """Sample the VmRSS sum of a process tree every 20 ms, keep the max."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root = root
        self.peak_kib = 0
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            self.peak_kib = max(self.peak_kib,
                                tree_memory_kib(self.root, "VmRSS"))
            self.stop_event.wait(0.02)

    def finish(self):
        self.stop_event.set()
        self.join()
        return self.peak_kib


def port_is_free(port):
    # Without SO_REUSEADDR, bind fails on a port that a listener or a
    # TIME_WAIT connection still uses.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Ports:
    def __init__(self):
        self.downstream = iter(DOWNSTREAM_PORTS)
        self.rotating_next = 0

    def take_downstream(self):
        for port in self.downstream:
            if port_is_free(port):
                return port
        raise StepFailed(f"no free port left in {DOWNSTREAM_PORTS}")

    def take_rotating(self):
        count = len(ROTATING_PORTS)
        for _ in range(count):
            port = ROTATING_PORTS[self.rotating_next % count]
            self.rotating_next += 1
            if port_is_free(port):
                return port
        raise StepFailed(f"no free port in {ROTATING_PORTS}")


def wait_for_port(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StepFailed(
                f"{proc.bench_name} exited with status {proc.returncode} "
                f"during start-up; log: {proc.bench_log}\n"
                + tail(proc.bench_log))
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise StepFailed(f"{proc.bench_name} is not listening on {HOST}:{port} "
                     f"after {timeout:g} s; log: {proc.bench_log}")


def tail(path, lines=15):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


def run_tool(cmd, timeout, what):
    """Run a load tool to completion and return its stdout."""
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{what} timed out after {timeout:g} s: "
                         f"{shlex.join(cmd)}") from None
    if done.returncode != 0:
        raise StepFailed(f"{what} exited with status {done.returncode}: "
                         f"{shlex.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    return done.stdout


def package_missing(packages):
    missing = []
    for pkg in packages:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg],
            capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.startswith("ii"):
            missing.append(pkg)
    return missing
