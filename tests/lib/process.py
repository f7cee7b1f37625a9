"""Child processes and loopback ports for the test tooling.

The integration suite (tests/integration/conftest.py) and the soak test
(tests/soak/soak.py) start their servers with Process. The module uses
only the standard library, so scripts that run without pytest can import
it.
"""

import os
import socket
import subprocess
import time
from pathlib import Path

# A sanitizer report in a process's stderr counts as a failure, because
# the process itself usually keeps running.
SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "runtime error:",
)


def free_port(host="127.0.0.1"):
    """Return a TCP port on |host| that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    """Return whether something accepts TCP connections on |host|:|port|."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process that runs in |workdir|, with its stdout and stderr
    captured in files there."""

    # Default timeouts of wait_ready and stop, in seconds.
    ready_timeout = 10.0
    stop_timeout = 10.0

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

    def stop(self, timeout=None):
        """Send SIGTERM, wait up to |timeout| seconds (stop_timeout when
        None), then send SIGKILL. Return the exit status."""
        if timeout is None:
            timeout = self.stop_timeout
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def sanitizer_report(self):
        """Return the first sanitizer report in stderr, or None."""
        text = self.stderr()
        for marker in SANITIZER_MARKERS:
            index = text.find(marker)
            if index >= 0:
                return text[max(0, index - 200):index + 3000]
        return None

    def wait_ready(self, ready, timeout=None):
        """Poll |ready()| until it returns a true value, and return that
        value. Call fail() when the process exits first or |timeout|
        seconds (ready_timeout when None) pass."""
        if timeout is None:
            timeout = self.ready_timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = ready()
            if value:
                return value
            if not self.running():
                self.fail(f"{self.name} exited with status "
                          f"{self.popen.returncode} before it was ready:"
                          f"\n{self.stderr()[-3000:]}")
            time.sleep(0.02)
        self.fail(f"{self.name} not ready after {timeout} s:\n"
                  f"{self.stderr()[-3000:]}")

    def fail(self, message):
        """Raise RuntimeError with |message|. A subclass may report the
        failure another way, but must raise."""
        raise RuntimeError(message)
