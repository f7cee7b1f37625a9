"""`tutti contracts --config FILE --out DIR`: one Pact file per service of
the demo configuration, and `pact verifier` against the demo's own
services (nginx, and nghttpd behind nghttpx) and against faultd, which
passes with any JSON body and a 2xx status and fails on invalid JSON, an
empty body or a 500.

The Pact CLI comes from `make tools`; the verifier tests run it first
when tools/bin/pact is missing."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Process, free_port, port_open, run_tutti

DEMO = REPO / "demo" / "tutti.json"


PACT = REPO / "tools" / "bin" / "pact"


@pytest.fixture(scope="module")
def pact_cli():
    """Make sure the Pact CLI is installed, running `make tools` if not."""
    if not PACT.exists():
        done = subprocess.run(["make", "-C", str(REPO), "tools"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            "`make tools` failed, so the pacts cannot be verified:\n"
            + done.stdout + done.stderr)
    return PACT


def emit(config, out, cwd):
    result = run_tutti(["contracts", "--config", str(config), "--out",
                        str(out)], cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return {p.name: json.loads(p.read_text()) for p in out.iterdir()}


def requests_by_description(pact):
    return {i["description"]: i["request"] for i in pact["interactions"]}


def test_contracts_demo_files(tmp_path):
    out = tmp_path / "new" / "pacts"
    pacts = emit(DEMO, out, tmp_path)
    assert sorted(pacts) == ["tutti-shop.json", "tutti-users.json"]
    for name, pact in pacts.items():
        assert pact["consumer"] == {"name": "tutti"}
        assert name == f"tutti-{pact['provider']['name']}.json"
        assert pact["metadata"]["pactSpecification"]["version"] == "4.0"
        for interaction in pact["interactions"]:
            assert interaction["type"] == "Synchronous/HTTP"
            response = interaction["response"]
            assert response["status"] == 200
            assert response["body"]["content"] == "any JSON value"
            assert response["body"]["contentType"] == "application/json"
            rules = response["matchingRules"]
            assert rules["status"]["$"]["matchers"] == [
                {"match": "statusCode", "status": "success"}]
            assert rules["body"]["$"]["matchers"] == [
                {"match": "regex", "regex": r"^[\s\S]*$"}]
            assert interaction["providerStates"] == [
                {"name": "the example route parameters exist",
                 "params": {"user": "example-user"}}]


def test_contracts_demo_requests(tmp_path):
    pacts = emit(DEMO, tmp_path / "pacts", tmp_path)
    users = requests_by_description(pacts["tutti-users.json"])
    assert sorted(users) == ["GET /dashboard/{user} call profile",
                             "GET /overview/{user} call profile"]
    profile = users["GET /dashboard/{user} call profile"]
    assert profile["method"] == "GET"
    assert profile["path"] == "/users/example-user.json"
    assert "query" not in profile
    assert profile["headers"] == {"Accept": ["application/json"]}

    shop = requests_by_description(pacts["tutti-shop.json"])
    assert len(shop) == 4
    orders = shop["GET /dashboard/{user} call orders"]
    assert orders["path"] == "/orders"
    assert orders["query"] == {"user": ["example-user"],
                               "limit": ["example"]}
    promotions = shop["GET /overview/{user} call promotions"]
    assert promotions["path"] == "/promotions"
    assert promotions["query"] == {"user": ["example-user"]}


def test_contracts_header_policy_and_body(tmp_path):
    config = {
        "services": {
            "orders": {"url": "http://127.0.0.1:9102",
                       "forward_headers": ["X-Tenant"],
                       "set_headers": {"X-User": "id {user}"}},
        },
        "routes": [
            {"method": "POST", "path": "/orders/{user}", "calls": [
                {"name": "create", "service": "orders", "method": "POST",
                 "path": "/orders/{user}/new", "forward_body": True}]},
        ],
    }
    path = tmp_path / "tutti.json"
    path.write_text(json.dumps(config))
    pacts = emit(path, tmp_path / "pacts", tmp_path)
    create = requests_by_description(pacts["tutti-orders.json"])[
        "POST /orders/{user} call create"]
    assert create["method"] == "POST"
    assert create["path"] == "/orders/example-user/new"
    assert create["headers"]["x-tenant"] == ["example"]
    assert create["headers"]["x-user"] == ["id example-user"]
    assert create["headers"]["Content-Type"] == ["application/json"]
    assert isinstance(create["body"]["content"], dict)


def test_contracts_bad_config_like_check(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"services": {}, "routes": [
        {"method": "GET", "path": "/x", "calls": [
            {"name": "a", "service": "nope", "path": "/a"}]}]}))
    check = run_tutti(["check", str(path)], tmp_path)
    result = run_tutti(["contracts", "--config", str(path), "--out",
                        str(tmp_path / "pacts")], tmp_path)
    assert result.returncode == 2
    assert check.returncode == 2
    assert result.stderr == check.stderr
    assert not (tmp_path / "pacts").exists()


@pytest.mark.parametrize("args,problem", [
    ([], "--config FILE is required"),
    (["--config", "x.json"], "--out DIR is required"),
    (["--out", "x", "--bogus", "y"], "--bogus: unknown argument"),
    (["--config"], "--config: missing value"),
    (["--config", "a", "--config", "b", "--out", "x"],
     "--config: given twice"),
    (["--config", "a", "--out", ""], "--out: empty value"),
])
def test_contracts_usage_errors(tmp_path, args, problem):
    result = run_tutti(["contracts"] + args, tmp_path)
    assert result.returncode == 2, args
    assert result.stderr.splitlines() == [
        f"tutti contracts: {problem}",
        "Usage: tutti contracts --config FILE --out DIR"], result.stderr


def test_contracts_and_check_help(tmp_path):
    for args in (["contracts", "--help"], ["check", "--help"]):
        result = run_tutti(args, tmp_path)
        assert result.returncode == 0, result
        assert result.stdout.startswith("Usage: tutti "), result
        assert result.stderr == ""


def verify(pact_file, port):
    env = dict(os.environ, PACT_DO_NOT_TRACK="true")
    return subprocess.run(
        [str(PACT), "verifier", "--no-colour", "--file", str(pact_file),
         "--hostname", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
        timeout=60)


def fault_config(query):
    """A configuration whose one call asks faultd for |query|."""
    return {
        "services": {"faulty": {"url": "http://127.0.0.1:9"}},
        "routes": [{"method": "GET", "path": "/item/{id}", "calls": [
            {"name": "item", "service": "faulty",
             "path": "/items/{id}?" + query}]}],
    }


@pytest.fixture(scope="module")
def demo_services(tmp_path_factory):
    """The demo's services as `make run` starts them: nginx with
    demo/nginx.conf (shop, HTTP/1.1) and nghttpd with demo/h2root (users,
    h2c only). The Pact verifier sends HTTP/1.1 only, so it reaches users
    through nghttpx (HTTP/1.1 in front, h2c to nghttpd), as a service team
    with an HTTP/2-only service would verify it. Returns the ports by
    service name."""
    workdir = tmp_path_factory.mktemp("demo-services")
    (workdir / "tmp").mkdir()
    shop, users_h2, users = free_port(), free_port(), free_port()
    conf = workdir / "nginx.conf"
    conf.write_text((REPO / "demo" / "nginx.conf").read_text().replace(
        "@PORT@", str(shop)))
    procs = [
        Process("nginx", ["nginx", "-p", str(workdir), "-c", str(conf),
                          "-e", "stderr"], workdir),
        Process("nghttpd", [
            "nghttpd", "--no-tls", "--address=127.0.0.1",
            f"--htdocs={REPO / 'demo' / 'h2root'}",
            f"--mime-types-file={REPO / 'demo' / 'mime.types'}",
            str(users_h2)], workdir),
        Process("nghttpx", [
            "nghttpx", f"--frontend=127.0.0.1,{users};no-tls",
            f"--backend=127.0.0.1,{users_h2};;proto=h2", "--workers=1",
            "--single-process", "--conf=/dev/null",
            "--accesslog-file=/dev/null",
            f"--errorlog-file={workdir / 'nghttpx.log'}"], workdir),
    ]
    try:
        for proc, port in zip(procs, (shop, users_h2, users)):
            proc.wait_ready(lambda p=port: port_open(p))
        yield {"shop": shop, "users": users}
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_contracts_verify_demo_services(tmp_path, demo_services, pact_cli):
    """users passes. shop passes except for promotions: the demo's nginx
    has no /promotions on purpose, so /overview/{user} shows a partial
    response, and the verifier reports that one interaction."""
    pacts = tmp_path / "pacts"
    emit(DEMO, pacts, tmp_path)
    users = verify(pacts / "tutti-users.json", demo_services["users"])
    assert users.returncode == 0, users.stdout + users.stderr
    assert "FAILED" not in users.stdout

    shop = verify(pacts / "tutti-shop.json", demo_services["shop"])
    assert shop.returncode != 0, shop.stdout + shop.stderr
    assert "There were 1 pact failures" in shop.stdout, shop.stdout
    failures = shop.stdout.split("Failures:", 1)[1]
    assert "GET /overview/{user} call promotions" in failures, shop.stdout
    assert "Expected status code 404 to be a Successful response" \
        in failures, shop.stdout
    for desc in ("GET /dashboard/{user} call orders",
                 "GET /dashboard/{user} call recommendations",
                 "GET /overview/{user} call orders"):
        assert desc not in failures, shop.stdout


@pytest.mark.parametrize("service,path", [
    ("shop", "/basket?user={user}"),       # nginx: 404
    ("users", "/users/{user}.txt"),        # nghttpd: 404
])
def test_contracts_verify_demo_services_fail(tmp_path, demo_services,
                                             pact_cli, service, path):
    config = json.loads(DEMO.read_text())
    config["routes"] = [{"method": "GET", "path": "/x/{user}", "calls": [
        {"name": "broken", "service": service, "path": path}]}]
    conf = tmp_path / "tutti.json"
    conf.write_text(json.dumps(config))
    pacts = tmp_path / "pacts"
    emit(conf, pacts, tmp_path)
    result = verify(pacts / f"tutti-{service}.json", demo_services[service])
    assert result.returncode != 0, result.stdout + result.stderr
    assert "There were 1 pact failures" in result.stdout, result.stdout
    assert "Expected status code 404 to be a Successful response" \
        in result.stdout, result.stdout


def test_contracts_verify_demo_against_faultd(tmp_path, faultd, pact_cli):
    pacts = tmp_path / "pacts"
    emit(DEMO, pacts, tmp_path)
    for pact_file in sorted(pacts.iterdir()):
        result = verify(pact_file, faultd.port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "FAILED" not in result.stdout


@pytest.mark.parametrize("query", [
    "status=201", "status=202&body=raw&text=%7B%22a%22%3A%5B1%5D%7D",
    "body=raw&text=%5B1%2C2%5D", "body=raw&text=%22s%22",
    "body=raw&text=null", "body=raw&text=-1.5e300"])
def test_contracts_verify_accepts_other_2xx(tmp_path, faultd, pact_cli,
                                            query):
    path = tmp_path / "tutti.json"
    path.write_text(json.dumps(fault_config(query)))
    pacts = tmp_path / "pacts"
    emit(path, pacts, tmp_path)
    result = verify(pacts / "tutti-faulty.json", faultd.port)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contracts_head_call_needs_no_body(tmp_path, faultd, pact_cli):
    """A HEAD response has no body, so the pact asks for none."""
    config = fault_config("status=200")
    config["routes"][0]["calls"][0]["method"] = "HEAD"
    path = tmp_path / "tutti.json"
    path.write_text(json.dumps(config))
    pacts = emit(path, tmp_path / "pacts", tmp_path)
    [interaction] = pacts["tutti-faulty.json"]["interactions"]
    assert "body" not in interaction["response"]
    assert list(interaction["response"]["matchingRules"]) == ["status"]
    result = verify(tmp_path / "pacts" / "tutti-faulty.json", faultd.port)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("query", ["body=invalid", "status=500",
                                   "body=empty"])
def test_contracts_verify_fails_on_bad_answer(tmp_path, faultd, pact_cli,
                                              query):
    path = tmp_path / "tutti.json"
    path.write_text(json.dumps(fault_config(query)))
    pacts = tmp_path / "pacts"
    emit(path, pacts, tmp_path)
    result = verify(pacts / "tutti-faulty.json", faultd.port)
    assert result.returncode != 0, result.stdout + result.stderr
    # A mismatch, not a usage error of the verifier.
    assert "There were 1 pact failures" in result.stdout, result.stdout
