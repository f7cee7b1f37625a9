"""The Helm chart in charts/tutti: lint, render with default and
non-default values, validate every manifest offline against the Kubernetes
schemas, and check that the rendered Deployment agrees with the gateway
configuration in the rendered ConfigMap.

helm and the validators come from `make tools` (tools/); the test runs it
when they are missing.
"""

import json
import subprocess

import pytest
import yaml

from conftest import REPO, binary

CHART = REPO / "charts" / "tutti"
TOOLS = REPO / "tools"
HELM = TOOLS / "bin" / "helm"
NODE_DIR = TOOLS / "node"
VALIDATE = REPO / "tests" / "chart" / "validate.mjs"

# The oldest Kubernetes that Chart.yaml's kubeVersion admits.
KUBE_VERSION = "1.25.0"

# Non-default values: HPA and ServiceMonitor on, other resources, timings
# and ports, extra configuration keys and a second route.
CUSTOM_VALUES = {
    "image": {"repository": "registry.example/tutti", "tag": "1.2.3"},
    "gateway": {
        "port": 8081,
        "adminPort": 9902,
        "drainDelayMs": 10000,
        "shutdownGraceMs": 40500,
        "workers": 4,
        "logFormat": "text",
        "services": {
            "users": {"url": "h2c://users.shop.svc.cluster.local:9201",
                      "timeout_ms": 300},
            "orders": {"url": "srv+http://_http._tcp.orders.shop.svc"
                              ".cluster.local"},
        },
        "routes": [
            {"method": "GET", "path": "/dashboard/{user}",
             "deadline_ms": 900,
             "calls": [
                 {"name": "profile", "service": "users",
                  "path": "/users/{user}"},
                 {"name": "orders", "service": "orders",
                  "path": "/orders?user={user}", "required": False},
             ]},
            {"method": "POST", "path": "/orders/{user}",
             "calls": [
                 {"name": "create", "service": "orders", "method": "POST",
                  "path": "/orders/{user}", "forward_body": True},
             ]},
        ],
        "extraConfig": {"max_in_flight": 2000,
                        "defaults": {"connect_timeout_ms": 200}},
    },
    "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                  "limits": {"cpu": "2", "memory": "512Mi"}},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                    "targetCPUUtilizationPercentage": 70,
                    "targetMemoryUtilizationPercentage": 85},
    "podDisruptionBudget": {"enabled": True, "minAvailable": "50%",
                            "maxUnavailable": None},
    "serviceMonitor": {"enabled": True, "interval": "15s",
                       "labels": {"release": "prometheus"}},
}


@pytest.fixture(scope="module")
def helm():
    """Path of helm, after running `make tools` when it is missing."""
    if not (HELM.exists() and (NODE_DIR / "node_modules").is_dir()):
        done = subprocess.run(["make", "-C", str(REPO), "tools"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            "`make tools` failed, so the chart cannot be tested:\n"
            + done.stdout + done.stderr)
    return str(HELM)


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          **kwargs)


def render(helm, tmp_path, values=None):
    """Render the chart and return (path of the output, list of docs)."""
    argv = [helm, "template", "gw", str(CHART), "--namespace", "shop",
            "--kube-version", KUBE_VERSION]
    if values is not None:
        values_file = tmp_path / "values.json"
        values_file.write_text(json.dumps(values))
        argv += ["--values", str(values_file)]
    done = run(argv)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(done.stdout)
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out, docs


def by_kind(docs):
    kinds = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} manifests"
        kinds[doc["kind"]] = doc
    return kinds


def test_chart_lint_strict(helm):
    done = run([helm, "lint", "--strict", "--kube-version", KUBE_VERSION,
                str(CHART)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_lint_custom_values(helm, tmp_path):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(CUSTOM_VALUES))
    done = run([helm, "lint", "--strict", "--kube-version", KUBE_VERSION,
                "--values", str(values_file), str(CHART)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_rejects_old_kubernetes(helm):
    done = run([helm, "template", "gw", str(CHART),
                "--kube-version", "1.24.0"])
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr or "1.25" in done.stderr


@pytest.mark.parametrize("values", [
    {"gateway": {"extraConfig": {"listen": "127.0.0.1:1"}}},
    {"gateway": {"drainDelayMs": -1}},
    {"gateway": {"routes": []}},
    {"podDisruptionBudget": {"maxUnavailable": "half"}},
    {"serviceMonitor": {"interval": "often"}},
    {"unknownKey": True},
    {"gateway": {"drainDelayMs": 2147483648}},
], ids=["extra-listen", "negative-drain", "no-routes", "pdb-not-percent",
        "bad-interval", "unknown-key", "drain-past-int32"])
def test_chart_schema_rejects(helm, tmp_path, values):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    done = run([helm, "template", "gw", str(CHART), "--values",
                str(values_file)])
    assert done.returncode != 0, done.stdout
    assert "schema" in done.stderr, done.stderr


def test_chart_rejects_admin_on_gateway_port(helm, tmp_path):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps({"gateway": {"adminPort": 8080}}))
    done = run([helm, "template", "gw", str(CHART), "--values",
                str(values_file)])
    assert done.returncode != 0, done.stdout
    assert ("gateway.port and gateway.adminPort are both 8080: give the "
            "admin listener a port of its own") in done.stderr, done.stderr


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES],
                         ids=["defaults", "custom"])
def test_chart_manifests_valid(helm, tmp_path, values):
    out, docs = render(helm, tmp_path, values)
    kinds = sorted(doc["kind"] for doc in docs)
    expected = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                "ServiceAccount"]
    if values is not None:
        expected += ["HorizontalPodAutoscaler", "ServiceMonitor"]
    assert kinds == sorted(expected)

    done = run(["node", str(VALIDATE), str(NODE_DIR), str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok   ") == len(docs), done.stdout


def test_chart_validator_catches_errors(helm, tmp_path):
    out, _ = render(helm, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.read_text().replace("containerPort: 8080",
                                           "containerPort: http", 1))
    done = run(["node", str(VALIDATE), str(NODE_DIR), str(bad)])
    assert done.returncode == 1, done.stdout
    assert "FAIL Deployment/gw-tutti" in done.stdout
    assert "containerPort" in done.stdout


@pytest.mark.parametrize("values", [None, CUSTOM_VALUES],
                         ids=["defaults", "custom"])
def test_chart_config_matches_pod(helm, tmp_path, values):
    _, docs = render(helm, tmp_path, values)
    kinds = by_kind(docs)
    text = kinds["ConfigMap"]["data"]["tutti.json"]
    config_file = tmp_path / "tutti.json"
    config_file.write_text(text)
    done = run([binary("TUTTI_BIN", "build/tutti"), "check",
                str(config_file)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"{config_file}: ok"

    config = json.loads(text)
    host, port = config["listen"].rsplit(":", 1)
    admin_host, admin_port = config["admin"]["listen"].rsplit(":", 1)
    assert host == "0.0.0.0"
    assert admin_host == "0.0.0.0"

    pod = kinds["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(port), "admin": int(admin_port)}

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        probe_port = container[probe]["httpGet"]["port"]
        assert ports.get(probe_port, probe_port) == int(admin_port)

    drain_s = (config["drain_delay_ms"] + config["shutdown_grace_ms"]) / 1000
    assert spec["terminationGracePeriodSeconds"] > drain_s
    assert "preStop" not in container.get("lifecycle", {})

    service = kinds["Service"]["spec"]
    targets = {p["name"]: p["targetPort"] for p in service["ports"]}
    assert targets == {"http": "http", "admin": "admin"}

    args = container["args"]
    assert args[:2] == ["--config", "/etc/tutti/tutti.json"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/etc/tutti"
    (volume,) = spec["volumes"]
    assert volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"][
        "name"]


def test_chart_defaults_match_gateway(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    kinds = by_kind(docs)
    config = json.loads(kinds["ConfigMap"]["data"]["tutti.json"])
    # The gateway's own defaults (README, Configuration).
    assert config["drain_delay_ms"] == 5000
    assert config["shutdown_grace_ms"] == 25000
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 35


def test_chart_custom_values(helm, tmp_path):
    _, docs = render(helm, tmp_path, CUSTOM_VALUES)
    kinds = by_kind(docs)
    config = json.loads(kinds["ConfigMap"]["data"]["tutti.json"])
    assert config["max_in_flight"] == 2000
    assert config["defaults"] == {"connect_timeout_ms": 200}
    assert config["drain_delay_ms"] == 10000
    assert config["shutdown_grace_ms"] == 40500

    deployment = kinds["Deployment"]["spec"]
    assert "replicas" not in deployment
    pod = deployment["template"]
    # 10 s + 40.5 s rounds up to 51 s, plus the default margin of 5 s.
    assert pod["spec"]["terminationGracePeriodSeconds"] == 56
    (container,) = pod["spec"]["containers"]
    assert container["resources"] == CUSTOM_VALUES["resources"]
    assert container["image"] == "registry.example/tutti:1.2.3"
    assert container["args"][-2:] == ["--workers", "4"]
    assert "prometheus.io/scrape" not in pod["metadata"]["annotations"]

    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == 3
    assert hpa["maxReplicas"] == 12
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"][
        "name"]
    targets = {m["resource"]["name"]:
               m["resource"]["target"]["averageUtilization"]
               for m in hpa["metrics"]}
    assert targets == {"cpu": 70, "memory": 85}

    monitor = kinds["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "admin"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"

    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == "50%"


def test_chart_pod_security(helm, tmp_path):
    _, docs = render(helm, tmp_path)
    pod = by_kind(docs)["Deployment"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9901"
    assert annotations["prometheus.io/path"] == "/metrics"

    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def test_chart_config_change_rolls_pods(helm, tmp_path):
    _, before = render(helm, tmp_path)
    _, after = render(helm, tmp_path, {"gateway": {"drainDelayMs": 1000}})
    _, same = render(helm, tmp_path, {"replicaCount": 5})

    def checksum(docs):
        pod = by_kind(docs)["Deployment"]["spec"]["template"]
        return pod["metadata"]["annotations"]["checksum/config"]

    assert checksum(before) != checksum(after)
    assert checksum(before) == checksum(same)
