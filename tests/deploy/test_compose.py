"""deploy/docker-compose.yml: valid for docker-compose, and wired together right.

``docker-compose config -q`` (Debian package ``docker-compose``) validates the
file against the Compose schema without a Docker daemon.  What it does not
check is read from the file itself: that every bind-mounted path exists, the
services reach each other on the ports their configurations name, the
Prometheus and Grafana files land where those programs look, and wsproxy runs
read-only and gets time to drain.  Nothing is started: that needs Docker.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    COMPOSE_CONFIG,
    COMPOSE_FILE,
    DASHBOARD,
    DEPLOY,
    GRAFANA_PROVISIONING,
    PROMETHEUS_CONFIG,
    REPO,
)
from tests.support.proxy import need_program
from wsproxy.config import parse_config

CONFIG_IN_IMAGE = "/etc/wsproxy/config.yaml"
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # PyYAML's safe loader resolves the file's anchors and `<<` merge keys as
    # docker-compose does.
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def _seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    assert match, duration
    return int(match[1]) * _SECONDS[match[2] or "s"]


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            binds[target] = (COMPOSE_FILE.parent / source).resolve()
    return binds


def test_docker_compose_accepts_the_file() -> None:
    """Guards against a compose file docker-compose refuses (schema, interpolation, merges)."""
    program = need_program("docker-compose")
    result = subprocess.run(
        [program, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=DEPLOY,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_are_there(compose: dict[str, Any]) -> None:
    """Guards against losing one of the example's parts."""
    assert {"wsproxy", "echo", "prometheus", "grafana"} <= set(compose["services"])


def test_every_bind_mount_exists(compose: dict[str, Any]) -> None:
    """Guards against a mount of a moved or misspelt file (Docker would create an empty
    directory in its place, and the service would start without its configuration)."""
    for name, service in compose["services"].items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_wsproxy_is_built_from_the_repository_and_runs_read_only(compose: dict[str, Any]) -> None:
    """Guards against a wsproxy service that builds the wrong thing, or writes its filesystem."""
    service = compose["services"]["wsproxy"]
    context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve()
    assert context == REPO
    assert (context / service["build"]["dockerfile"]).is_file(), "deploy/Dockerfile is missing"
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert service["cap_drop"] == ["ALL"]
    for name in ("echo", "traffic"):
        other = compose["services"][name]
        assert other["image"] == service["image"], f"{name} runs another image"
        assert other["build"] == service["build"], f"{name} would pull {other['image']}"


def test_wsproxy_gets_the_compose_configuration(compose: dict[str, Any]) -> None:
    """Guards against the image's own config.yaml being used, or a configuration that
    wsproxy refuses or whose listeners cannot be reached from other containers."""
    binds = _binds(compose["services"]["wsproxy"])
    assert binds.get(CONFIG_IN_IMAGE) == COMPOSE_CONFIG
    config = parse_config(COMPOSE_CONFIG.read_text(encoding="utf-8"), str(COMPOSE_CONFIG))
    assert [listen.host for listen in config.listen] == ["0.0.0.0"]
    assert config.admin.host == "0.0.0.0", "Prometheus scrapes from another container"
    ports = compose["services"]["wsproxy"]["ports"]
    assert f"{config.listen[0].port}:{config.listen[0].port}" in ports


def test_upstream_is_the_echo_service(compose: dict[str, Any]) -> None:
    """Guards against wsproxy pointing at a host or port the backend does not serve."""
    config = parse_config(COMPOSE_CONFIG.read_text(encoding="utf-8"), str(COMPOSE_CONFIG))
    echo = compose["services"]["echo"]
    port = echo["command"][echo["command"].index("--port") + 1]
    servers = {str(server) for upstream in config.upstreams.values() for server in upstream.servers}
    assert servers == {f"echo:{port}"}, servers
    script = echo["entrypoint"][-1]
    directory, _, filename = script.rpartition("/")
    assert (_binds(echo)[directory] / filename).is_file(), f"{script} is not mounted"


def test_drain_fits_in_the_stop_period(compose: dict[str, Any]) -> None:
    """Guards against docker-compose stop killing wsproxy (default 10 s) mid-drain."""
    config = parse_config(COMPOSE_CONFIG.read_text(encoding="utf-8"), str(COMPOSE_CONFIG))
    stop = _seconds(compose["services"]["wsproxy"]["stop_grace_period"])
    assert stop > config.shutdown.grace_period + 1


def test_prometheus_scrapes_the_admin_listener_and_loads_the_alerts(
    compose: dict[str, Any],
) -> None:
    """Guards against Prometheus scraping a wrong address, or starting without the alerts."""
    service = compose["services"]["prometheus"]
    binds = _binds(service)
    config_path = next(arg.split("=", 1)[1] for arg in service["command"] if "config.file" in arg)
    assert binds[config_path] == PROMETHEUS_CONFIG
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    for rule_file in prometheus["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert binds.get(in_container) == PROMETHEUS_CONFIG.parent / rule_file, in_container
    [job] = [job for job in prometheus["scrape_configs"] if job["job_name"].startswith("wsproxy")]
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    admin = parse_config(COMPOSE_CONFIG.read_text(encoding="utf-8")).admin
    assert targets == [f"wsproxy:{admin.port}"]


def test_grafana_gets_its_data_source_and_dashboard(compose: dict[str, Any]) -> None:
    """Guards against Grafana starting empty: provisioning and dashboards mounted where
    the provisioning files say, the data source pointing at the prometheus service."""
    binds = _binds(compose["services"]["grafana"])
    for kind in ("datasources", "dashboards"):
        assert binds[f"/etc/grafana/provisioning/{kind}"] == GRAFANA_PROVISIONING / kind
    [provider_file] = sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
    [provider] = yaml.safe_load(provider_file.read_text(encoding="utf-8"))["providers"]
    assert binds[provider["options"]["path"]] == DASHBOARD.parent
    [source_file] = sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml"))
    [source] = yaml.safe_load(source_file.read_text(encoding="utf-8"))["datasources"]
    assert source["url"] == "http://prometheus:9090"
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_published_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    """Guards against two services publishing the same host port (the second fails to start)."""
    published = []
    for service in compose["services"].values():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            published.append(parts[-2])
    assert len(published) == len(set(published)), published
