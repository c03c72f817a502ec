"""The PromQL in deploy/: where it is, and what it names.

The dashboard (deploy/grafana/dashboards/wsproxy.json) and the alert rules
(deploy/prometheus/alerts.yml) are checked three ways by the tests beside
this module: their expressions parse (promtool, after Grafana's variables are
replaced by valid PromQL), and the metric and label names they use exist in a
live wsproxy's ``/metrics``.  This module holds the pure part: collecting the
expressions, substituting variables, and reading metric names, label
matchers and grouping labels out of an expression without a PromQL parser.

The name reader works on a copy of the expression with string literals
blanked first (so a matcher value or a ``label_replace`` argument never reads
as a name), then drops what is not a selector: the insides of ``{...}`` and
``[...]``, the label lists of ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``, function calls (an identifier followed by
``(``), keywords, and numbers and durations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "wsproxy.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "wsproxy.yaml"
ECHO_BACKEND = DEPLOY / "compose" / "echo.py"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"

#: Labels Prometheus adds to every scraped series (the target's).
TARGET_LABELS = frozenset({"job", "instance"})
#: Series Prometheus itself produces for each target.
PROMETHEUS_SERIES = frozenset({"up"})

#: Grafana's built-in variables, and valid PromQL to stand in for them.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "30000",
}
#: ``$name``, ``${name}``, ``${name:format}`` and ``[[name]]``.
GRAFANA_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
#: A whole identifier (never the "rat" of "rate(") that is not a call.
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    }
)
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)")


@dataclass(frozen=True)
class Expr:
    """One PromQL expression and where it came from (for failure messages)."""

    where: str
    expr: str


@dataclass(frozen=True)
class Matcher:
    metric: str
    label: str
    op: str
    value: str


# --- where the expressions are -------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (every panel but rows)."""
    return [panel for panel in iter_panels(dashboard) if panel.get("type") != "row"]


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return found


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's query text (Grafana stores it as a string or an object)."""
    query = variable.get("query")
    if isinstance(query, dict):
        return str(query.get("query", ""))
    return str(query or "")


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)


def dashboard_exprs(dashboard: dict[str, Any]) -> list[Expr]:
    """Every target's expression, and each query variable's as PromQL.

    ``label_values(SELECTOR, label)`` becomes ``SELECTOR``, which is what
    Grafana asks Prometheus for.
    """
    exprs = []
    for panel in query_panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}"
            exprs.append(Expr(where, str(target.get("expr", ""))))
    for variable in variables(dashboard):
        if variable.get("type") != "query":
            continue
        query = variable_query(variable)
        match = _LABEL_VALUES.match(query)
        exprs.append(Expr(f"variable {variable.get('name')!r}", match[1] if match else query))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_exprs() -> list[Expr]:
    return [Expr(f"alert {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]


# --- Grafana variables -------------------------------------------------------------


def grafana_variables_used(text: str) -> set[str]:
    """Variable names in ``text``; ``${1}`` (a regex group in label_replace) is not one."""
    names = set()
    for match in GRAFANA_VARIABLE.finditer(text):
        name = next(group for group in match.groups() if group is not None)
        if not name.isdigit():
            names.add(name)
    return names


def substitute(expr: str) -> str:
    """``expr`` as Prometheus receives it from Grafana: built-ins become durations,
    dashboard variables a regex matching everything (they are only valid inside
    ``=~`` matchers, and promtool says so if one is used anywhere else)."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name.isdigit():
            return match[0]
        return GRAFANA_BUILTINS.get(name, ".*")

    return GRAFANA_VARIABLE.sub(replace, expr)


# --- what an expression names -------------------------------------------------------


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (``rate(x_total[5m])`` names ``x_total``)."""
    text = _blank_strings(expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def matchers(expr: str) -> list[Matcher]:
    """Every ``metric{label OP "value"}`` matcher, values as written."""
    found = []
    for selector in _SELECTOR.finditer(expr):
        metric, body = selector[1], selector[2]
        if metric.lower() in _KEYWORDS:
            continue
        position = 0
        while position < len(body.rstrip()):
            matcher = _MATCHER.match(body, position)
            if matcher is None:
                raise ValueError(f"cannot read the matchers {body!r} of {metric} in {expr!r}")
            found.append(Matcher(metric, matcher[1], matcher[2], matcher[3]))
            position = matcher.end()
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named by ``by``, ``without``, ``on``, ``ignoring``, ``group_*``."""
    labels: set[str] = set()
    for group in _LABEL_LISTS.finditer(_blank_strings(expr)):
        labels.update(name.strip() for name in group[1].split(",") if name.strip())
    return labels


def string_literals(expr: str) -> set[str]:
    """The contents of an expression's string literals (``label_replace`` creates labels)."""
    return {literal[1:-1] for literal in _STRING.findall(expr)}


def rate_arguments(expr: str) -> set[str]:
    """Metric names passed straight to ``rate``, ``irate`` or ``increase``."""
    return set(_RATE_ARGUMENT.findall(expr))


def recording_rules_file(exprs: list[Expr]) -> str:
    """A rules file with each expression as a recording rule, one group each,
    named by where the expression came from: ``promtool check rules`` parses
    every expression and names the failing ones."""
    groups = [
        {
            "name": f"{index}: {item.where}",
            "rules": [{"record": f"check:expr_{index}", "expr": item.expr}],
        }
        for index, item in enumerate(exprs)
    ]
    return yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000)
