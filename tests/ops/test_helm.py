"""The Helm chart: renders offline with default and sidecar values, lints clean, every manifest
is a valid Kubernetes object (strict schemas), the pod is locked down, and the gateway
configuration it renders is one the gateway accepts."""

from __future__ import annotations

import subprocess

import kubernetes_validate
import pytest
import yaml

from conftest import CHART, SIDECAR_VALUES, by_kind, gateway_binary, render

# The oldest Kubernetes the chart claims (Chart.yaml kubeVersion >=1.25) and the newest the
# validator's schemas know.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version() + ".0"]

STANDALONE_KINDS = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}


@pytest.fixture(scope="module")
def default_render():
    return render()


@pytest.fixture(scope="module")
def sidecar_render():
    return render(SIDECAR_VALUES)


def gateway_config(docs) -> dict:
    (cm,) = [d for d in by_kind(docs)["ConfigMap"] if "config.yaml" in d["data"]]
    return yaml.safe_load(cm["data"]["config.yaml"])


def sidecar_example(docs) -> dict:
    (cm,) = [d for d in by_kind(docs)["ConfigMap"] if "container.yaml" in d["data"]]
    return {k: yaml.safe_load(v) for k, v in cm["data"].items()}


def assert_locked_down(container: dict) -> None:
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "mtls-admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "mtls-admin"}
    assert {p["name"] for p in container["ports"]} == {"mtls-proxy", "mtls-admin"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # The only writable paths are volumes: the runtime dir and /tmp.
    assert mounts["runtime"]["mountPath"] == "/run/mtls-gateway"
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["config"]["readOnly"] is True
    assert mounts["vault-auth"]["readOnly"] is True


@pytest.mark.parametrize(
    "values",
    [None, SIDECAR_VALUES, {"serviceMonitor": {"enabled": True}}],
    ids=["default", "sidecar", "servicemonitor"],
)
def test_lint_has_no_errors_or_warnings(values):
    import helm_python as helm

    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"] == [], report
    # Severity 1 is info (e.g. "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("which", ["default_render", "sidecar_render"])
def test_every_manifest_validates_strictly(which, version, request):
    docs = request.getfixturevalue(which)
    count = 0
    for parsed in docs.values():
        for doc in parsed:
            kubernetes_validate.validate(doc, version, strict=True)
            count += 1
    assert count >= 1


def test_default_render_has_the_standalone_objects(default_render):
    kinds = by_kind(default_render)
    assert set(kinds) == STANDALONE_KINDS
    (pdb,) = kinds["PodDisruptionBudget"]
    (deploy,) = kinds["Deployment"]
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    (svc,) = kinds["Service"]
    assert {(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        ("proxy", 8080, "mtls-proxy"),
        ("admin", 9090, "mtls-admin"),
    }


def test_deployment_pod_is_locked_down(default_render):
    (deploy,) = by_kind(default_render)["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert_locked_down(container)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["runtime"] and "emptyDir" in volumes["tmp"]
    assert volumes["vault-auth"]["secret"]["secretName"] == "mtls-gateway-vault-token"
    assert volumes["config"]["configMap"]["name"] == "gw-mtls-gateway"
    assert "checksum/config" in deploy["spec"]["template"]["metadata"]["annotations"]


def test_default_gateway_config(default_render):
    config = gateway_config(default_render)
    assert config["auth"]["enabled"] is True
    assert config["proxy"]["listen"] == "0.0.0.0:8080"
    assert config["admin"]["listen"] == "0.0.0.0:9090"
    assert config["lifecycle"]["runtime_dir"] == "/run/mtls-gateway"
    assert config["store"] == {
        "kind": "vault",
        "address": "https://vault.vault.svc:8200",
        "mount": "secret",
        "prefix": "mtls-gateway",
        "request_timeout_seconds": 10,
        "auth": {
            "method": "token",
            "token_file": "/var/run/secrets/mtls-gateway/vault-auth/token",
        },
    }


def test_sidecar_render_has_only_config_and_example(sidecar_render):
    kinds = by_kind(sidecar_render)
    assert set(kinds) == {"ConfigMap"}
    assert len(kinds["ConfigMap"]) == 2


def test_sidecar_gateway_config(sidecar_render):
    config = gateway_config(sidecar_render)
    assert config["auth"]["enabled"] is True
    assert config["auth"]["tokens"][0]["id"] == "billing"
    # Only the application in the pod calls the proxy; the kubelet probes the admin port.
    assert config["proxy"]["listen"] == "127.0.0.1:8080"
    assert config["admin"]["listen"] == "0.0.0.0:9090"
    assert config["store"]["auth"] == {
        "method": "approle",
        "mount": "approle",
        "role_id_file": "/var/run/secrets/mtls-gateway/vault-auth/role_id",
        "secret_id_file": "/var/run/secrets/mtls-gateway/vault-auth/secret_id",
    }
    assert config["store"]["ca_file"] == "/var/run/secrets/mtls-gateway/vault-ca/ca.crt"


def test_sidecar_example_is_a_valid_container(sidecar_render):
    example = sidecar_example(sidecar_render)
    container = example["container.yaml"]
    assert_locked_down(container)
    # Validate the snippet the way Kubernetes would see it: inside a pod.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app"},
        "spec": {
            "securityContext": example["podSecurityContext.yaml"],
            "containers": [{"name": "app", "image": "app:1"}, container],
            "volumes": example["volumes.yaml"],
        },
    }
    kubernetes_validate.validate(pod, KUBE_VERSIONS[-1], strict=True)
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert mounted == {v["name"] for v in example["volumes.yaml"]}
    auth = {v["name"]: v for v in example["volumes.yaml"]}["vault-auth"]["secret"]
    assert {i["path"] for i in auth["items"]} == {"role_id", "secret_id"}


def test_service_monitor_shape():
    # kubernetes-validate has no schemas for CRDs, so the ServiceMonitor is checked by hand.
    kinds = by_kind(render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}))
    (sm,) = kinds["ServiceMonitor"]
    (svc,) = kinds["Service"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}
    # Off by default.
    assert "ServiceMonitor" not in by_kind(render())


def test_auth_off_is_refused():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="auth.enabled must stay true"):
        render({"auth": {"enabled": False}})


def test_unknown_vault_auth_method_is_refused():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="vault.auth.method must be token or approle"):
        render({"vault": {"auth": {"method": "kubernetes"}}})


def test_extra_config_is_merged_but_chart_keys_win():
    config = gateway_config(
        render({"config": {"proxy": {"listen": "1.2.3.4:1", "default_account": "acme"},
                           "refresh": {"poll_seconds": 5}}})
    )
    assert config["proxy"] == {"listen": "0.0.0.0:8080", "default_account": "acme"}
    assert config["refresh"] == {"poll_seconds": 5}


@pytest.mark.parametrize("which", ["default_render", "sidecar_render"])
def test_gateway_accepts_rendered_config(which, request, tmp_path):
    """`mtls-gateway check` on the rendered file, with the mounted paths pointed at temporary
    files (check reads the credential files). Skipped when cargo has not built the gateway."""
    binary = gateway_binary()
    if binary is None:
        pytest.skip("no target/*/mtls-gateway: `make test` builds it before these tests")
    config = gateway_config(request.getfixturevalue(which))
    auth = config["store"]["auth"]
    for key in ("token_file", "role_id_file", "secret_id_file"):
        if key in auth:
            (tmp_path / key).write_text("s.placeholder\n")
            auth[key] = str(tmp_path / key)
    if "ca_file" in config["store"]:
        del config["store"]["ca_file"]  # check parses the PEM; there is no CA to give it here
    config["lifecycle"]["runtime_dir"] = str(tmp_path / "run")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(binary), "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
