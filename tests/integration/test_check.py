"""`tutti check FILE` and configuration errors at start: exit 0 with
`FILE: ok`, or exit 2 with one line per problem, naming the JSON path."""

import copy
import json

import pytest

from conftest import free_port, port_open, run_tutti

GOOD = {
    "listen": "127.0.0.1:8080",
    "resolver": {"servers": ["127.0.0.1:5353"]},
    "services": {
        "users": {"url": "h2c://127.0.0.1:9101", "timeout_ms": 300},
        "orders": {"url": "http://127.0.0.1:9102"},
    },
    "routes": [
        {"method": "GET", "path": "/dashboard/{user}", "deadline_ms": 800,
         "calls": [
             {"name": "profile", "service": "users",
              "path": "/users/{user}"},
             {"name": "orders", "service": "orders",
              "path": "/orders?user={user}&limit={query.limit}",
              "timeout_ms": 200, "required": False},
         ]},
        {"method": "POST", "path": "/orders/{user}",
         "calls": [
             {"name": "create", "service": "orders", "method": "POST",
              "path": "/orders/{user}", "forward_body": True},
         ]},
    ],
}


def broken(change):
    config = copy.deepcopy(GOOD)
    change(config)
    return config


def set_service(config):
    config["routes"][1]["calls"][0]["service"] = "userz"


def add_unknown_key(config):
    config["routes"][0]["calls"][1]["foo"] = 1


def set_deadline_string(config):
    config["routes"][0]["deadline_ms"] = "800"


def drop_service_key(config):
    del config["routes"][0]["calls"][0]["service"]


def duplicate_call_name(config):
    config["routes"][0]["calls"][1]["name"] = "profile"


def set_bad_url(config):
    config["services"]["users"]["url"] = "ftp://x"


def set_unknown_parameter(config):
    config["routes"][0]["calls"][0]["path"] = "/users/{usr}"


def add_duplicate_route(config):
    config["routes"].append(copy.deepcopy(config["routes"][0]))


def set_admin_on_listen_port(config):
    config["listen"] = "127.0.0.1:9400"
    config["admin"] = {"listen": "localhost:9400"}


def set_admin_on_wildcard_port(config):
    config["listen"] = "0.0.0.0:9400"
    config["admin"] = {"listen": "127.0.0.2:9400"}


BAD_CASES = [
    pytest.param(set_service,
                 'gw.json: routes[1].calls[0].service: unknown service '
                 '"userz"', id="unknown-service"),
    pytest.param(add_unknown_key,
                 'gw.json: routes[0].calls[1].foo: unknown key; expected '
                 'one of name, service, path, method, timeout_ms, required, '
                 'forward_body', id="unknown-key"),
    pytest.param(set_deadline_string,
                 'gw.json: routes[0].deadline_ms: expected a positive '
                 'integer, got string', id="deadline-string"),
    pytest.param(drop_service_key,
                 'gw.json: routes[0].calls[0]: missing key "service"',
                 id="missing-service"),
    pytest.param(duplicate_call_name,
                 'gw.json: routes[0].calls[1].name: duplicate call name '
                 '"profile"', id="duplicate-call"),
    pytest.param(set_bad_url,
                 'gw.json: services.users.url: invalid URL "ftp://x": '
                 'expected SCHEME://HOST[:PORT] with SCHEME http, h2c, '
                 'https or h2, or srv+SCHEME://NAME',
                 id="invalid-url"),
    pytest.param(set_unknown_parameter,
                 'gw.json: routes[0].calls[0].path: unknown parameter '
                 '"{usr}"; the route has {user}', id="unknown-parameter"),
    pytest.param(add_duplicate_route,
                 'gw.json: routes[2]: duplicate route GET /dashboard/{user} '
                 '(same as routes[0])', id="duplicate-route"),
    pytest.param(set_admin_on_listen_port,
                 'gw.json: admin.listen: port 9400 is also the gateway\'s '
                 'listen port; give the admin listener a port of its own',
                 id="admin-same-port"),
    pytest.param(set_admin_on_wildcard_port,
                 'gw.json: admin.listen: port 9400 is also the gateway\'s '
                 'listen port; give the admin listener a port of its own',
                 id="admin-port-under-wildcard"),
]

# The '}' on line 3, column 5, is where a key was expected.
INVALID_JSON = '{\n  "listen": "127.0.0.1:1",\n    }\n'


def write(tmp_path, config):
    (tmp_path / "gw.json").write_text(json.dumps(config, indent=2))


def test_check_good_file(tmp_path):
    """A valid file prints `FILE: ok` and exits 0."""
    write(tmp_path, GOOD)

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 0, result
    assert result.stdout.strip() == "gw.json: ok", result


def test_check_names_file_as_given(tmp_path):
    """The file is named as it was passed, directory included."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gw.json").write_text(json.dumps(GOOD))

    result = run_tutti(["check", "conf/gw.json"], cwd=tmp_path)

    assert result.returncode == 0, result
    assert result.stdout.strip() == "conf/gw.json: ok", result


@pytest.mark.parametrize("change, line", BAD_CASES)
def test_check_reports_problem(tmp_path, change, line):
    """Each kind of problem gives its exact line on stderr and exit 2."""
    write(tmp_path, broken(change))

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [line], result.stderr


def test_check_admin_on_another_address(tmp_path):
    """One port on two distinct addresses is allowed: both binds work."""
    config = copy.deepcopy(GOOD)
    config["listen"] = "127.0.0.1:9400"
    config["admin"] = {"listen": "127.0.0.2:9400"}
    write(tmp_path, config)

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 0, result


def test_check_invalid_json(tmp_path):
    """A syntax error is reported with its line and column."""
    (tmp_path / "gw.json").write_text(INVALID_JSON)

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gw.json:3:5: invalid JSON: "), lines[0]
    assert len(lines[0]) > len("gw.json:3:5: invalid JSON: "), lines[0]


def test_check_reports_every_problem(tmp_path):
    """Several problems give one line each, not only the first."""
    def change(config):
        set_service(config)
        set_bad_url(config)
        set_deadline_string(config)
    write(tmp_path, broken(change))

    result = run_tutti(["check", "gw.json"], cwd=tmp_path)

    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    expected = {
        'gw.json: routes[1].calls[0].service: unknown service "userz"',
        'gw.json: services.users.url: invalid URL "ftp://x": expected SCHEME://HOST[:PORT] with SCHEME http, h2c, https or h2, or srv+SCHEME://NAME',
        'gw.json: routes[0].deadline_ms: expected a positive integer, got '
        'string',
    }
    assert set(lines) == expected, result.stderr
    assert len(lines) == 3, result.stderr


def test_check_missing_file(tmp_path):
    """A file that does not exist exits 2 with a line naming it."""
    result = run_tutti(["check", "nope.json"], cwd=tmp_path)

    assert result.returncode == 2, result
    assert "nope.json" in result.stderr, result


@pytest.mark.parametrize("change, line", BAD_CASES[:3] + BAD_CASES[5:6])
def test_bad_config_at_start(tmp_path, change, line):
    """`tutti --config` with a bad file prints the same lines and exits 2
    without listening."""
    write(tmp_path, broken(change))
    port = free_port()

    result = run_tutti(["--config", "gw.json", "--listen",
                        f"127.0.0.1:{port}"], cwd=tmp_path)

    assert result.returncode == 2, result
    assert line in result.stderr.splitlines(), result.stderr
    assert not port_open(port)


def test_invalid_json_at_start(tmp_path):
    """A syntax error stops the start with the same line:column line."""
    (tmp_path / "gw.json").write_text(INVALID_JSON)

    result = run_tutti(["--config", "gw.json", "--listen",
                        f"127.0.0.1:{free_port()}"], cwd=tmp_path)

    assert result.returncode == 2, result
    assert any(line.startswith("gw.json:3:5: invalid JSON: ")
               for line in result.stderr.splitlines()), result.stderr


def test_help_exits_zero(tmp_path):
    """--help prints usage that names --config and exits 0."""
    result = run_tutti(["--help"], cwd=tmp_path)

    assert result.returncode == 0, result
    assert "usage" in result.stdout.lower(), result
    for option in ("--config", "--listen", "--workers", "--log-level"):
        assert option in result.stdout, (option, result.stdout)


def test_version_printed(tmp_path):
    """--version prints `tutti X.Y.Z`."""
    result = run_tutti(["--version"], cwd=tmp_path)

    assert result.returncode == 0, result
    words = result.stdout.strip().split(" ")
    assert len(words) == 2, result.stdout
    assert words[0] == "tutti", result.stdout
    numbers = words[1].split(".")
    assert len(numbers) == 3, result.stdout
    assert all(n.isdigit() for n in numbers), result.stdout


def test_port_in_use_by_another_gateway(tmp_path, gateway, faultd):
    """A second gateway on a port the first already listens on fails to
    start instead of sharing the port through SO_REUSEPORT."""
    first = gateway({"svc": {"url": faultd.h1_url}},
                    [{"method": "GET", "path": "/x",
                      "calls": [{"name": "a", "service": "svc",
                                 "path": "/a"}]}])
    write(tmp_path, GOOD)

    result = run_tutti(["--config", "gw.json", "--listen",
                        f"127.0.0.1:{first.port}"], cwd=tmp_path)

    assert result.returncode != 0, result
    assert "address already in use" in result.stderr, result.stderr
    assert first.get("/x").status == 200
