"""deploy/kubernetes: renders, validates against Kubernetes' schemas, and means what it says.

``kubectl kustomize`` renders the overlay offline; every object is then
validated with the schemas bundled in kubernetes-validate (strict: an unknown
or misspelt field fails) for the oldest Kubernetes the manifests claim (1.30,
for the preStop sleep action) and the newest the package knows.  No cluster
runs here, so what a cluster would do is checked as arithmetic and
cross-references: the probes reach /readyz and /healthz on the admin port the
configuration listens on, the pod outlives its drain, nothing runs as root or
writes its filesystem, the Service exposes the front listener only, and the
generated ConfigMap holds a configuration that ``wsproxy check`` accepts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.promql import KUSTOMIZE_DIR, REPO
from tests.support.proxy import need_program
from wsproxy.config import Config, parse_config

#: The preStop sleep action is beta (on by default) from 1.30.
OLDEST_KUBERNETES = "1.30"
CONFIG_KEY = "config.yaml"
CONFIG_MOUNT = "/etc/wsproxy"
#: Seconds wsproxy may take to exit after its drain (README: "within a second more").
EXIT_MARGIN = 1
Objects = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def rendered() -> Objects:
    """The rendered objects by kind (one of each)."""
    kubectl = need_program("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    objects: Objects = {}
    for document in yaml.safe_load_all(result.stdout):
        assert document["kind"] not in objects, f"two {document['kind']} objects"
        objects[document["kind"]] = document
    return objects


@pytest.fixture(scope="module")
def config_text(rendered: Objects) -> str:
    text: str = rendered["ConfigMap"]["data"][CONFIG_KEY]
    return text


@pytest.fixture(scope="module")
def config(config_text: str) -> Config:
    return parse_config(config_text, CONFIG_KEY)


def _pod(rendered: Objects) -> dict[str, Any]:
    spec: dict[str, Any] = rendered["Deployment"]["spec"]["template"]["spec"]
    return spec


def _container(rendered: Objects) -> dict[str, Any]:
    [container] = _pod(rendered)["containers"]
    assert isinstance(container, dict)
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number, or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def test_renders_the_objects_a_deployment_needs(rendered: Objects) -> None:
    """Guards against a kustomization that drops or misnames a resource."""
    assert set(rendered) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert rendered["PodDisruptionBudget"]["apiVersion"] == "policy/v1"
    assert rendered["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()])
def test_objects_validate_against_the_kubernetes_schemas(rendered: Objects, version: str) -> None:
    """Guards against fields Kubernetes would reject (typos, wrong types, wrong nesting)."""
    for kind, document in rendered.items():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.utils.ValidationError as error:
            pytest.fail(f"{kind} is invalid for Kubernetes {version}: {error.message}")


def test_the_schema_validation_rejects_an_unknown_field(rendered: Objects) -> None:
    """Guards against the validation above accepting anything (a negative control)."""
    broken = yaml.safe_load(yaml.safe_dump(rendered["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {}}
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_configmap_is_generated_and_referenced_by_its_hashed_name(rendered: Objects) -> None:
    """Guards against a hand-written ConfigMap: a config change would not roll the pods."""
    name = rendered["ConfigMap"]["metadata"]["name"]
    assert name.startswith("wsproxy-config-"), "configMapGenerator adds a content hash"
    volumes = {v["name"]: v for v in _pod(rendered)["volumes"]}
    config_volumes = [v for v in volumes.values() if "configMap" in v]
    assert [v["configMap"]["name"] for v in config_volumes] == [name]
    mounts = {m["name"]: m for m in _container(rendered)["volumeMounts"]}
    mount = mounts[config_volumes[0]["name"]]
    assert (mount["mountPath"], mount.get("readOnly")) == (CONFIG_MOUNT, True)


def test_the_configuration_passes_wsproxy_check(config_text: str, tmp_path: Path) -> None:
    """Guards against shipping a configuration that wsproxy refuses (the pods would exit 2)."""
    path = tmp_path / CONFIG_KEY
    path.write_text(config_text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "wsproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_listeners_are_the_container_ports(rendered: Objects, config: Config) -> None:
    """Guards against ports that nothing listens on, or an admin listener on loopback
    (the kubelet's probes and Prometheus come from outside the container)."""
    container = _container(rendered)
    assert [listen.host for listen in config.listen] == ["0.0.0.0"]
    assert config.admin.host == "0.0.0.0"
    assert _port_number(container, "http") == config.listen[0].port
    assert _port_number(container, "admin") == config.admin.port
    annotations = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.admin.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_ask_the_admin_listener(rendered: Objects, config: Config) -> None:
    """Guards against probes on the wrong path or port: a pod never ready, or restarted
    while healthy (every one of its WebSockets dropped)."""
    container = _container(rendered)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(container, get["port"]) == config.admin.port, probe
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30, "too eager a restart"


def test_the_pod_outlives_its_drain(rendered: Objects, config: Config) -> None:
    """Guards against SIGKILL cutting the drain short: the grace period must cover the
    preStop pause, shutdown.grace_period and the exit."""
    pod = _pod(rendered)
    pre_stop = _container(rendered)["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = pre_stop["sleep"]["seconds"]
    else:  # exec: ["sleep", "N"] on clusters before 1.30
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        pause = int(command[1])
    assert pause >= 5, "endpoint removal needs a few seconds to reach every proxy"
    needed = pause + config.shutdown.grace_period + EXIT_MARGIN
    assert pod["terminationGracePeriodSeconds"] > needed


def test_runs_as_non_root_with_a_read_only_filesystem(rendered: Objects) -> None:
    """Guards against a pod that runs as root, can gain privileges or write its image."""
    pod_context = _pod(rendered)["securityContext"]
    context = _container(rendered)["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
    assert context.get("runAsUser", pod_context.get("runAsUser")) == 10001
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert _pod(rendered)["automountServiceAccountToken"] is False


def test_tmp_is_a_memory_volume(rendered: Objects) -> None:
    """Guards against a read-only pod without a writable /tmp (multiprocess metrics)."""
    volumes = {v["name"]: v for v in _pod(rendered)["volumes"]}
    [tmp] = [m for m in _container(rendered)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert volumes[tmp["name"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[tmp["name"]]["emptyDir"]["sizeLimit"]


def test_resources_are_bounded(rendered: Objects) -> None:
    """Guards against pods without requests (HPA cannot compute utilization) or limits."""
    resources = _container(rendered)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_service_exposes_the_front_listener_only(rendered: Objects, config: Config) -> None:
    """Guards against the admin listener (/metrics, /status.json with client addresses)
    being reachable through the Service, or the Service missing the pods."""
    service = rendered["Service"]["spec"]
    container = _container(rendered)
    [port] = service["ports"]
    assert port["port"] == 80
    assert _port_number(container, port["targetPort"]) == config.listen[0].port
    assert all(
        _port_number(container, p["targetPort"]) != config.admin.port for p in service["ports"]
    )
    pod_labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_disruption_budget_and_autoscaler_target_the_deployment(rendered: Objects) -> None:
    """Guards against a budget or autoscaler that selects nothing, or one that would let
    every pod go at once."""
    deployment = rendered["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    budget = rendered["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    assert budget["maxUnavailable"] < replicas
    autoscaler = rendered["HorizontalPodAutoscaler"]["spec"]
    target = autoscaler["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert autoscaler["minReplicas"] <= replicas <= autoscaler["maxReplicas"]
    [metric] = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in _container(rendered)["resources"]["requests"]
