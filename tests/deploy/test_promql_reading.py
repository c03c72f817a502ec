"""The PromQL reader of tests/deploy/promql.py, on expressions with known answers.

The deploy tests trust it to find every metric name, matcher and grouping
label of the dashboard and the alerts; a name it missed would go unchecked.
"""

from __future__ import annotations

import pytest

from tests.deploy.promql import (
    Matcher,
    grafana_variables_used,
    grouping_labels,
    matchers,
    metric_names,
    rate_arguments,
    substitute,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param("rate(foo_total[5m])", {"foo_total"}, id="call-and-range"),
        pytest.param(
            'sum by (route, code) (rate(a_total{route=~"$route", x="rate(b_total)"}[1m]))'
            " / on (route) group_left (code) c_info",
            {"a_total", "c_info"},
            id="label-lists-and-strings",
        ),
        pytest.param(
            "histogram_quantile(0.95, sum by (le) (rate(h_seconds_bucket[5m])))",
            {"h_seconds_bucket"},
            id="numbers",
        ),
        pytest.param(
            "x offset 5m and y unless z or 1e3 * Inf > bool 2", {"x", "y", "z"}, id="keywords"
        ),
        pytest.param(
            'label_replace(rate(r_total[1m]), "class", "${1}xx", "code", "(.)..")',
            {"r_total"},
            id="label-replace",
        ),
        pytest.param("count(m == 0) or vector(0)", {"m"}, id="vector"),
        pytest.param("sum(rate(s_total[5m])) without (instance)", {"s_total"}, id="trailing-by"),
        pytest.param("max_over_time(g[10m:1m])", {"g"}, id="subquery"),
        pytest.param("ns:recorded:rate5m", {"ns:recorded:rate5m"}, id="colons"),
    ],
)
def test_metric_names_are_the_selected_series(expr: str, names: set[str]) -> None:
    """Guards against a metric name going unchecked, or a function or label read as one."""
    assert metric_names(expr) == names


def test_matchers_keep_metric_label_operator_and_value() -> None:
    """Guards against matchers being missed or misread (escaped quotes, every operator)."""
    expr = 'a{x="1", y!="2",z=~"p|q", w!~"r\\"s"} + b{route=~"$route"} + on (x) c'
    assert matchers(expr) == [
        Matcher("a", "x", "=", "1"),
        Matcher("a", "y", "!=", "2"),
        Matcher("a", "z", "=~", "p|q"),
        Matcher("a", "w", "!~", 'r\\"s'),
        Matcher("b", "route", "=~", "$route"),
    ]


def test_an_unreadable_matcher_is_an_error_not_a_silent_skip() -> None:
    """Guards against a selector whose labels the reader cannot read passing unchecked."""
    with pytest.raises(ValueError, match="cannot read the matchers"):
        matchers("a{route}")


def test_grouping_labels_of_every_clause() -> None:
    """Guards against a grouping label going unchecked."""
    expr = "sum by (a, b) (x) / ignoring (c) group_left (d) sum without (e) (y) * on (f) z"
    assert grouping_labels(expr) == {"a", "b", "c", "d", "e", "f"}


def test_rate_arguments() -> None:
    """Guards against rate() over a gauge going unnoticed."""
    assert rate_arguments("rate(a_total[5m]) + increase(b[1m]) + irate( c [1m]) + d") == {
        "a_total",
        "b",
        "c",
    }


def test_grafana_variables_are_found_and_regex_groups_are_not() -> None:
    """Guards against an undefined dashboard variable, or label_replace's ${1} taken for one."""
    text = 'x{a=~"$route", b=~"${job}", c=~"[[upstream]]", d=~"${zone:regex}"} "${1}xx" [$__range]'
    assert grafana_variables_used(text) == {"route", "job", "upstream", "zone", "__range"}


def test_substitution_gives_prometheus_what_grafana_sends() -> None:
    """Guards against substituted expressions that are not what Prometheus would receive."""
    expr = 'label_replace(rate(x{route=~"$route"}[$__rate_interval]), "c", "${1}xx", "code", "(.)")'
    assert substitute(expr) == (
        'label_replace(rate(x{route=~".*"}[1m]), "c", "${1}xx", "code", "(.)")'
    )
