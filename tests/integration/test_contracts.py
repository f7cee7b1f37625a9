"""Provider verification of the gateway with Pact.

tests/contracts/verify.sh runs, in a private network namespace, two
`pact stub` processes playing the demo services from contracts/providers/,
tutti with demo/tutti.json in front of them and `pact verifier` with the
consumer pacts given to it. The pact binary comes from `make tools`
(tools/); the test runs it when the binary is missing.
"""

import json
import os
import subprocess

import pytest

from conftest import REPO, binary

PACT = REPO / "tools" / "bin" / "pact"
VERIFY = REPO / "tests" / "contracts" / "verify.sh"
CONSUMER_PACTS = sorted((REPO / "contracts" / "consumers").glob("*.json"))
BROKEN_PACT = REPO / "tests" / "contracts" / "broken-web-app.json"


@pytest.fixture(scope="module")
def pact():
    """Path of the pact binary, after running `make tools` when it is
    missing."""
    if not PACT.exists():
        done = subprocess.run(["make", "-C", str(REPO), "tools"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            "`make tools` failed, so the contracts cannot be verified:\n"
            + done.stdout + done.stderr)
    return str(PACT)


def verify(pact, pact_files):
    """Run the verification of |pact_files| and return the finished
    process."""
    if os.geteuid() != 0:
        pytest.fail("unshare -n needs root: run the contract tests as root")
    env = {**os.environ, "PACT_BIN": pact, "PACT_DO_NOT_TRACK": "true",
           "TUTTI_BIN": binary("TUTTI_BIN", "build/tutti")}
    return subprocess.run(["bash", str(VERIFY)] + [str(f) for f in pact_files],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def test_consumer_pacts_present():
    names = {path.name for path in CONSUMER_PACTS}
    assert "web-app-tutti.json" in names
    assert "status-page-tutti.json" in names


def test_gateway_honours_consumer_pacts(pact):
    done = verify(pact, CONSUMER_PACTS)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for path in CONSUMER_PACTS:
        consumer = json.loads(path.read_text())["consumer"]["name"]
        assert f"Verifying a pact between {consumer} and tutti" in output, \
            output
    assert "(FAILED)" not in output, output


def test_broken_response_shape_fails(pact):
    done = verify(pact, [BROKEN_PACT])
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "$.orders -> Type mismatch" in output, output
