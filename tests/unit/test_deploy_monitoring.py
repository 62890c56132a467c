"""Prometheus config, rules and rule unit tests (promtool), and the metric names in the Grafana
dashboard and the alerts against the metrics the code registers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fused.coordinator.metrics import CoordinatorMetrics
from fused.coordinator.metrics_http import PARTICIPANTS_PATH
from fused.participant.agent import ParticipantMetrics
from tests.unit.deploy_checks import (
    DEPLOY,
    GRAFANA,
    PROMETHEUS,
    PROMETHEUS_SYNTHETIC,
    compose_config,
    read_yaml,
    require_tool,
    run_tool,
)

# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    """deploy/prometheus/alerts_test.yml: every alert fires on a synthetic series."""
    promtool = require_tool("promtool")
    result = run_tool([promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in read_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for rule in _alert_rules()}
    tested = {
        case["alertname"]
        for test in read_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]  # a case where it fires, not only one where it stays silent
    }
    assert alerts == tested
    required = {
        "FusedParticipantMarkedOffline",
        "FusedRoundStalled",
        "FusedRejectedUploads",
        "FusedRoundBytesAboveExpected",
    }
    assert required <= alerts
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_prometheus_scrapes_the_compose_services() -> None:
    config = read_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    services = read_yaml(DEPLOY / "compose.yaml")["services"]
    participants = sorted(name for name in services if name.startswith("participant-"))
    coordinator = compose_config("coordinator")
    assert jobs["fused-coordinator"] == [f"coordinator:{coordinator.metrics_port}"]
    # each participant's bytes: the coordinator's own path, on with three participants
    assert jobs["fused-coordinator-participants"] == jobs["fused-coordinator"]
    paths = {job["job_name"]: job["metrics_path"] for job in config["scrape_configs"]}
    assert paths["fused-coordinator-participants"] == PARTICIPANTS_PATH
    assert coordinator.per_participant_metrics
    assert sorted(jobs["fused-participant"]) == [
        f"{name}:{compose_config(name).metrics_port}" for name in participants
    ]


# --- metric names in PromQL ------------------------------------------------------------------

_KEYWORDS = {
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
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed)."""
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][\w:]*)\s*,.*\)\s*", expr)
    if match:
        return {match.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers (after strings and ${var})
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        following = text[m.end() :].lstrip()
        if following.startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function call or an operator
        names.add(m.group(0))
    return names


def test_promql_metric_names_helper() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, phase) (rate(fused_x_bucket{instance=~"$c",'
        ' a="b(c)"}[$__rate_interval]))) / on (job) group_left fused_y > 2 * fused_z offset 5m'
        " unless up == bool 1e3"
    )
    assert promql_metric_names(expr) == {"fused_x_bucket", "fused_y", "fused_z", "up"}
    assert promql_metric_names("label_values(fused_a, instance)") == {"fused_a"}


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


def exported_metric_names() -> set[str]:
    """Every series name the coordinator and the participant agent can export.

    Labelled metrics have no samples until a label set is used, so names come from each
    family's name and type (a counter `x` is exported as x_total, a histogram as x_bucket...).
    """
    names: set[str] = set()
    coordinator, per_participant, participant = (CollectorRegistry() for _ in range(3))
    CoordinatorMetrics(coordinator, per_participant)  # per_participant_metrics on
    ParticipantMetrics(participant)
    for registry in (coordinator, per_participant, participant):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return names


def _dashboard() -> dict[str, Any]:
    with (GRAFANA / "dashboards" / "fused.json").open(encoding="utf-8") as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _dashboard_exprs() -> list[str]:
    dashboard = _dashboard()
    exprs = [
        target["expr"]
        for panel in _all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def _alert_exprs() -> list[str]:
    return [str(rule["expr"]) for rule in _alert_rules()]


def _alert_test_series() -> list[str]:
    """The metric names the rule unit tests feed in: they must be real ones too."""
    return [
        series["series"].split("{", 1)[0]
        for test in read_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
        for series in test["input_series"]
    ]


@pytest.mark.parametrize(
    "source", ["grafana dashboard", "alert rules", "alert unit tests"], ids=lambda s: s
)
def test_promql_uses_only_exported_metrics(source: str) -> None:
    if source == "grafana dashboard":
        exprs = _dashboard_exprs()
    elif source == "alert rules":
        exprs = _alert_exprs()
    else:
        exprs = _alert_test_series()
    assert exprs
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used, f"no metric names found in the {source}"
    unknown = sorted(used - exported_metric_names() - PROMETHEUS_SYNTHETIC)
    assert not unknown, f"{source} use metrics that no FUSED process exports: {unknown}"


def test_grafana_dashboard_covers_the_brief() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in _all_panels(dashboard["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in _all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    used = set().union(*(promql_metric_names(e) for e in _dashboard_exprs()))
    assert {
        "fused_wire_bytes_total",
        "fused_participant_wire_bytes_total",
        "fused_round_duration_seconds_bucket",
        "fused_participants_online",
        "fused_job_accuracy",
        "fused_job_forget_accuracy",
        "fused_last_round_bytes",
        "fused_expected_round_bytes",
    } <= used
    grouped = " ".join(_dashboard_exprs())
    assert "by (phase" in grouped and "by (participant" in grouped


def test_grafana_provisioning_matches_compose() -> None:
    (source,) = read_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = read_yaml(GRAFANA / "provisioning" / "dashboards" / "fused.yml")["providers"]
    grafana = read_yaml(DEPLOY / "compose.yaml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert "prometheus" in read_yaml(DEPLOY / "compose.yaml")["services"]
