"""The Grafana dashboard and its provisioning, read as files (Grafana does not run here).

What Grafana would reject or show broken: panels without a title, type or
query; ids that collide; panels off the 24-column grid or on top of each
other; a data source reference nothing provides; a variable used but never
defined.  And what an operator needs from it: the panels named in the
dashboard's brief, filtered by the route variable.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    DASHBOARD,
    GRAFANA_BUILTINS,
    GRAFANA_PROVISIONING,
    dashboard_exprs,
    grafana_variables_used,
    grouping_labels,
    iter_panels,
    load_dashboard,
    matchers,
    metric_names,
    query_panels,
    rate_arguments,
    variable_query,
    variables,
)

#: Panel types of Grafana's core (a plugin panel would need installing).
CORE_PANEL_TYPES = frozenset(
    {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "heatmap", "text"}
)
#: Variables Grafana itself defines, beyond the interval ones.
OTHER_BUILTINS = frozenset({"__all", "__name", "__org", "__user", "__dashboard", "__from", "__to"})
GRID_COLUMNS = 24
#: Metrics with a ``route`` label: every selector of them must honour $route.
ROUTE_LABELLED = re.compile(r"^wsproxy_(websocket|http)_")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _datasource_uids() -> set[str]:
    """The uids the provisioned data sources get."""
    uids = set()
    for path in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            assert source["type"] == "prometheus", f"{path}: {source}"
            uids.add(source["uid"])
    return uids


def test_dashboard_is_provisionable(dashboard: dict[str, Any]) -> None:
    """Guards against a dashboard file provisioning cannot load (or only the import UI can)."""
    assert dashboard["uid"] == "wsproxy"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36, "older schemas lack the datasource-variable model"
    # __inputs (${DS_...} placeholders) only work through the import UI, not
    # file provisioning: the data source is a variable instead.
    assert "__inputs" not in dashboard
    assert "DS_PROMETHEUS" not in DASHBOARD.read_text(encoding="utf-8")
    assert dashboard["panels"], "no panels"


def test_every_panel_has_a_title_a_type_and_queries(dashboard: dict[str, Any]) -> None:
    """Guards against empty, untitled or query-less panels, and targets without PromQL."""
    for panel in iter_panels(dashboard):
        where = f"panel {panel.get('id')}"
        assert isinstance(panel.get("title"), str), where
        assert panel["title"].strip(), where
        if panel.get("type") == "row":
            assert not panel.get("targets"), f"{where}: a row has no queries"
            continue
        assert panel.get("type") in CORE_PANEL_TYPES, f"{where}: type {panel.get('type')!r}"
        assert panel.get("description"), f"{where} {panel['title']!r}: no description"
        targets = panel.get("targets")
        assert targets, f"{where} {panel['title']!r}: no targets"
        ref_ids = [target.get("refId") for target in targets]
        assert all(ref_ids), f"{where}: a target without refId"
        assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refId in {ref_ids}"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{where} {target['refId']}: no expr"


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Guards against two panels sharing an id (Grafana then edits or links the wrong one)."""
    raw = [panel.get("id") for panel in iter_panels(dashboard)]
    ids = [panel_id for panel_id in raw if isinstance(panel_id, int)]
    assert ids == raw, f"panels without an integer id: {raw}"
    duplicates = sorted({panel_id for panel_id in ids if ids.count(panel_id) > 1})
    assert not duplicates, f"duplicate panel ids: {duplicates}"


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    """Guards against panels off the 24-column grid or drawn on top of each other."""
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard):
        where = f"panel {panel['id']} {panel['title']!r}"
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert all(isinstance(value, int) for value in (x, y, w, h)), f"{where}: {grid}"
        assert min(x, y) >= 0, f"{where}: {grid}"
        assert min(w, h) >= 1, f"{where}: {grid}"
        assert x + w <= GRID_COLUMNS, f"{where}: {grid} is wider than the grid"
        if panel.get("type") == "row":
            assert (x, w, h) == (0, GRID_COLUMNS, 1), f"{where}: a row spans the grid"
        for cell in ((column, row) for column in range(x, x + w) for row in range(y, y + h)):
            assert cell not in taken, f"{where} overlaps {taken[cell]} at {cell}"
            taken[cell] = where


def test_datasource_references_resolve(dashboard: dict[str, Any]) -> None:
    """Guards against panels pointing at a data source that nothing defines or provisions."""
    [source_variable] = [v for v in variables(dashboard) if v.get("type") == "datasource"]
    assert source_variable["query"] == "prometheus"
    valid_uids = {f"${source_variable['name']}", f"${{{source_variable['name']}}}"}
    valid_uids |= _datasource_uids()
    assert _datasource_uids(), "no provisioned data source"
    referrers: list[tuple[str, Any]] = []
    for panel in query_panels(dashboard):
        referrers.append((f"panel {panel['id']}", panel.get("datasource")))
        referrers += [
            (f"panel {panel['id']} {t['refId']}", t.get("datasource")) for t in panel["targets"]
        ]
    referrers += [
        (f"variable {v['name']}", v.get("datasource"))
        for v in variables(dashboard)
        if v.get("type") == "query"
    ]
    for where, reference in referrers:
        assert isinstance(reference, dict), f"{where}: datasource {reference!r}"
        assert reference.get("type") == "prometheus", f"{where}: {reference}"
        assert reference.get("uid") in valid_uids, f"{where}: uid {reference.get('uid')!r}"


def test_every_variable_used_is_defined_before_use(dashboard: dict[str, Any]) -> None:
    """Guards against a $variable Grafana would leave unreplaced in a query or a title."""
    builtins = set(GRAFANA_BUILTINS) | OTHER_BUILTINS
    defined: set[str] = set()
    for variable in variables(dashboard):
        used = grafana_variables_used(variable_query(variable))
        used |= grafana_variables_used(str(variable.get("datasource", {}).get("uid", "")))
        assert used <= defined | builtins, (
            f"variable {variable['name']!r} uses {sorted(used - defined - builtins)}, "
            "not defined before it"
        )
        defined.add(variable["name"])
    for panel in query_panels(dashboard):
        texts = [panel["title"], str(panel["datasource"].get("uid", ""))]
        for target in panel["targets"]:
            texts += [target["expr"], target.get("legendFormat", "")]
        used = set().union(*(grafana_variables_used(text) for text in texts))
        undefined = sorted(used - defined - builtins)
        assert not undefined, f"panel {panel['id']} {panel['title']!r} uses undefined {undefined}"


def test_route_variable_filters_every_route_labelled_query(dashboard: dict[str, Any]) -> None:
    """Guards against panels that ignore the route the operator picked."""
    names = {v["name"] for v in variables(dashboard)}
    assert {"route", "job", "upstream"} <= names
    for item in dashboard_exprs(dashboard):
        if item.where.startswith("variable"):
            continue
        route_metrics = {name for name in metric_names(item.expr) if ROUTE_LABELLED.match(name)}
        filtered = {
            m.metric for m in matchers(item.expr) if m.label == "route" and m.value == "$route"
        }
        assert route_metrics <= filtered, f"{item.where}: {sorted(route_metrics - filtered)}"
        # Exactly as many selectors of them as filters: none left unfiltered.
        selectors = sum(
            len(re.findall(rf"(?<![\w:]){name}(?![\w:])", item.expr)) for name in route_metrics
        )
        route_filters = sum(
            1 for m in matchers(item.expr) if m.label == "route" and m.metric in route_metrics
        )
        assert selectors == route_filters, f'{item.where}: a selector without route=~"$route"'


#: (metric, labels the panel must group by) for each view the brief asks for.
REQUIRED_VIEWS = [
    ("wsproxy_websocket_active_connections", {"route"}),
    ("wsproxy_websocket_upgrades_total", {"result"}),
    ("wsproxy_websocket_early_closes_total", {"route", "closed_by", "code"}),
    ("wsproxy_websocket_closes_total", {"code"}),
    ("wsproxy_websocket_messages_total", {"direction"}),
    ("wsproxy_websocket_bytes_total", {"direction"}),
    ("wsproxy_http_requests_total", {"route"}),
    ("wsproxy_http_request_duration_seconds_bucket", {"route", "le"}),
    ("wsproxy_upstream_server_up", {"upstream", "server"}),
    ("wsproxy_upstream_errors_total", {"kind"}),
    ("wsproxy_config_reloads_total", {"result"}),
]


@pytest.mark.parametrize(("metric", "by"), REQUIRED_VIEWS, ids=[m for m, _ in REQUIRED_VIEWS])
def test_dashboard_shows_what_operators_need(
    dashboard: dict[str, Any], metric: str, by: set[str]
) -> None:
    """Guards against losing a panel the operator relies on (or its breakdown)."""
    panels = [
        item
        for item in dashboard_exprs(dashboard)
        if not item.where.startswith("variable")
        and metric in metric_names(item.expr)
        and by <= grouping_labels(item.expr)
    ]
    assert panels, f"no panel shows {metric} by {sorted(by)}"


def test_http_status_is_shown_by_class(dashboard: dict[str, Any]) -> None:
    """Guards against the status panel listing every code instead of 2xx/4xx/5xx classes."""
    exprs = [item.expr for item in dashboard_exprs(dashboard)]
    assert any(
        "label_replace(" in expr and '"${1}xx"' in expr and '"code"' in expr for expr in exprs
    )


def test_quantiles_group_by_le_and_rates_read_counters(dashboard: dict[str, Any]) -> None:
    """Guards against histogram_quantile without le, and rate() over a gauge."""
    for item in dashboard_exprs(dashboard):
        if "histogram_quantile" in item.expr:
            assert "le" in grouping_labels(item.expr), item.where
            assert all(name.endswith("_bucket") for name in metric_names(item.expr)), item.where
        for name in rate_arguments(item.expr):
            assert name.endswith(("_total", "_bucket")), f"{item.where}: rate over {name}"


def test_dashboards_provider_loads_the_dashboard_directory() -> None:
    """Guards against a provider that points nowhere (compose mounts the dashboards there)."""
    [path] = sorted((GRAFANA_PROVISIONING / "dashboards").glob("*.y*ml"))
    [provider] = yaml.safe_load(path.read_text(encoding="utf-8"))["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert DASHBOARD.parent.is_dir()
