"""The Grafana dashboard and the Prometheus rules: well formed, and every query names only
series the exporter really exposes (read from the live registry, not from a list)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import kong_cilium_identity.ops.metrics  # noqa: F401  (registers every family)
from tests.ops.scrape import family_names, names_in, series_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "cilium-identity-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "cilium-identity-rules.yaml"
RULES_TEST = Path(__file__).with_name("promtool") / "rules_test.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RECORDED = re.compile(r"\bcilium_identity:[a-zA-Z0-9_:]+")
RANGE = re.compile(r"\[([^\]]+)\]")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def assert_balanced(expr: str) -> None:
    """A PromQL sanity check promtool would also make: brackets pair up, ranges are
    durations (or Grafana's interval variables)."""
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack.pop() == pairs[char], expr
    assert not stack, expr
    for window in RANGE.findall(expr):
        assert DURATION.match(window) or window.startswith("$__"), (window, expr)


def test_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in data["templating"]["list"]}
    assert {"datasource", "job"} <= variables
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert_balanced(target["expr"])


def test_dashboard_has_the_panels_operators_need() -> None:
    titles = " | ".join(panel["title"].lower() for panel in panels())
    for needed in (
        "decisions by reason",
        "would deny in monitor mode",
        "deny rate",
        "lookup latency p50 / p99",
        "cache hit ratio",
        "source up / synced",
        "deadline",
        "exceptions",
        "connections",
    ):
        assert needed in titles, needed
    latency = next(p for p in panels() if "latency" in p["title"].lower())
    quantiles = {re.search(r"histogram_quantile\(([0-9.]+)", t["expr"]) for t in latency["targets"]}
    assert {match.group(1) for match in quantiles if match} == {"0.5", "0.99"}


def test_dashboard_queries_name_only_exported_series() -> None:
    exported = series_names(REGISTRY)
    used = names_in(dashboard_queries())
    assert used, "the dashboard queries no cilium_identity series"
    assert used <= exported, used - exported


def test_dashboard_shows_every_family() -> None:
    used = names_in(dashboard_queries())
    missing = {
        family
        for family in family_names(REGISTRY)
        if not any(name == family or name.startswith(family + "_") for name in used)
    }
    assert not missing, missing


def test_rules_file_structure() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        if "interval" in group:
            assert DURATION.match(group["interval"])
        assert group["rules"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert_balanced(rule["expr"])
            for key, label in rule.get("labels", {}).items():
                assert LABEL_NAME.match(key) and isinstance(label, str)
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}
                assert METRIC_NAME.match(rule["record"])
                continue
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert LABEL_NAME.match(rule["alert"])
            assert DURATION.match(rule.get("for", "0s"))
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert {"summary", "description"} <= set(rule["annotations"])
            assert all(isinstance(text, str) for text in rule["annotations"].values())


def test_rule_expressions_name_only_exported_or_recorded_series() -> None:
    exported = series_names(REGISTRY)
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        used = names_in([rule["expr"]])
        assert used <= exported, (rule, used - exported)
        assert set(RECORDED.findall(rule["expr"])) <= recorded, rule


def test_alert_templates_use_labels_the_expression_keeps() -> None:
    record_exprs = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    for rule in rules():
        if "alert" not in rule:
            continue
        text = rule["expr"] + " ".join(
            record_exprs[name] for name in RECORDED.findall(rule["expr"])
        )
        kept = {
            label for group in re.findall(r"by \(([^)]*)\)", text) for label in group.split(",")
        }
        kept = {label.strip() for label in kept}
        for annotation in rule["annotations"].values():
            for label in TEMPLATE_LABEL.findall(annotation):
                assert label in kept, (rule["alert"], label)


def test_the_alerts_issue_12_asks_for() -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in rules() if "alert" in rule}
    wanted = {
        "CiliumIdentitySourceDown": "cilium_identity_source_up",
        "CiliumIdentitySourceNotSynced": "cilium_identity_source_synced",
        "CiliumIdentityDenySpike": "cilium_identity:denials:rate5m",
        "CiliumIdentityDeadlineHits": "cilium_identity_event_deadline_hits_total",
        "CiliumIdentityPluginExceptions": "cilium_identity_plugin_exceptions_total",
    }
    for alert, series in wanted.items():
        assert series in alerts[alert]


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
