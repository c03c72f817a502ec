"""The alert rules and every PromQL expression of deploy/, through promtool.

promtool (Debian package ``prometheus``) has no "parse this expression"
command in every version, so each expression (the dashboard's, after
Grafana's variables are replaced by what Grafana would send, and the
alerts') becomes a recording rule in a temporary rules file, and
``promtool check rules`` parses them all, naming each failure by the group
it sits in.  ``promtool test rules`` runs alerts_test.yml: the alerts fire on
synthetic series, with their annotations rendered.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_CONFIG,
    Expr,
    alert_exprs,
    alert_rules,
    dashboard_exprs,
    load_dashboard,
    recording_rules_file,
    substitute,
)
from tests.support.proxy import need_program

TIMEOUT = 30


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need_program("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        check=False,
    )


def _check_exprs(exprs: list[Expr], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "exprs.yml"
    rules.write_text(recording_rules_file(exprs), encoding="utf-8")
    return _promtool("check", "rules", str(rules))


def test_every_dashboard_and_alert_expression_parses(tmp_path: Path) -> None:
    """Guards against a panel or an alert whose PromQL Prometheus would refuse."""
    dashboard = load_dashboard()
    exprs = [Expr(item.where, substitute(item.expr)) for item in dashboard_exprs(dashboard)]
    exprs += alert_exprs()
    assert len(exprs) > 20, "the dashboard lost its queries"
    result = _check_exprs(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_the_expression_check_rejects_broken_promql(tmp_path: Path) -> None:
    """Guards against the check above passing whatever it is given (a negative control)."""
    broken = [
        Expr("unclosed", "sum(rate(wsproxy_http_requests_total[5m])"),
        Expr("variable outside a matcher", substitute("rate(x_total[$window])")),
        Expr("two names", "wsproxy_http_requests_total wsproxy_http_requests_total"),
    ]
    good = Expr("good", substitute('rate(x_total{route=~"$route"}[$__rate_interval])'))
    result = _check_exprs([good, *broken], tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for item in broken:
        assert item.where in output, output
    assert "good" not in output


def test_alert_rules_pass_promtool_check() -> None:
    """Guards against a rules file Prometheus would refuse to load."""
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alerts_fire_on_synthetic_series() -> None:
    """Guards against alerts that never fire, fire on look-alikes, or render broken text."""
    result = _promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_loads_with_its_rules() -> None:
    """Guards against the compose Prometheus failing to start on its own configuration."""
    result = _promtool("check", "config", PROMETHEUS_CONFIG.name, cwd=PROMETHEUS_CONFIG.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    """Guards against an alert added without a test showing it fires."""
    tests = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [ALERTS.name]
    firing = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= firing, f"no firing test for {sorted(names - firing)}"


def test_alerts_tell_the_operator_what_to_look_at() -> None:
    """Guards against alerts without severity, summary or an actionable description."""
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    for rule in alert_rules():
        where = rule["alert"]
        assert re.fullmatch(r"Wsproxy[A-Z]\w+", where)
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, where
        assert "{{" in annotations["summary"], f"{where}: the summary names nothing"
        assert len(annotations["description"]) > 150, f"{where}: say what to look at"
    expected = {
        "WsproxyWebSocketEarlyCloses": ["closed_by", "code", "HTTP", "version", "/status.json"],
        "WsproxyUpstreamServerDown": ["Upstream errors by kind"],
        "WsproxyUpstreamAllServersDown": ["502"],
    }
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, words in expected.items():
        description = rules[name]["annotations"]["description"]
        for word in words:
            assert word in description, f"{name}: the description should mention {word!r}"


@pytest.mark.parametrize(
    ("alert", "must"),
    [
        ("WsproxyWebSocketEarlyCloses", ["wsproxy_websocket_early_closes_total", "upgrades"]),
        ("WsproxyUpstreamServerDown", ["wsproxy_upstream_server_up", "== 0"]),
        ("WsproxyUpstreamAllServersDown", ["max by (upstream)", "== 0"]),
        ("WsproxyScrapeDown", ["up{", "== 0"]),
    ],
)
def test_the_alerts_the_runbook_promises_exist(alert: str, must: list[str]) -> None:
    """Guards against an alert the README and dashboard refer to being renamed or gutted."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert alert in rules
    for text in must:
        assert text in rules[alert]["expr"], f"{alert}: {text!r}"
    assert rules[alert].get("for"), f"{alert}: fires on one evaluation"
