"""docs/metrics.md and docs/rollout.md against the live exporter, the log entry and the
rules file: nothing undocumented, no query on a series that does not exist."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from kong_cilium_identity.identity.model import Identity, Lookup
from kong_cilium_identity.kong.access import log_entry
from kong_cilium_identity.policy.decision import Consumer, Decision, Reason
from kong_cilium_identity.schema import parse_config
from tests.ops.scrape import names_in, series_names
from tests.ops.test_deploy_files import RECORDED, RULES, assert_balanced

DOCS = Path(__file__).resolve().parents[2] / "docs"
METRICS_DOC = (DOCS / "metrics.md").read_text()
ROLLOUT_DOC = (DOCS / "rollout.md").read_text()


def documented_series(family_type: str, name: str) -> str:
    return name + "_total" if family_type == "counter" else name


def test_every_family_is_documented_with_its_labels() -> None:
    for family in REGISTRY.collect():
        if not family.name.startswith("cilium_identity_"):
            continue
        series = documented_series(family.type, family.name)
        rows = [line for line in METRICS_DOC.splitlines() if line.startswith(f"| `{series}` |")]
        assert len(rows) == 1, series
        labels = {label for sample in family.samples for label in sample.labels}
        labels.discard("le")
        for label in labels:
            assert f"`{label}`" in rows[0], (series, label)


def test_every_log_field_is_documented() -> None:
    identity = Identity.build(
        48861,
        [
            "k8s:io.kubernetes.pod.namespace=shop",
            "k8s:io.cilium.k8s.policy.serviceaccount=sa",
            "k8s:io.cilium.k8s.policy.cluster=east",
        ],
        source="agent",
        observed_at=time.time(),
    )
    decision = Decision(
        True,
        Reason.ALLOWED,
        identity=identity,
        consumer=Consumer("c1", "alice"),
        lookup=Lookup.found(identity),
    )
    entry = log_entry(parse_config({"sources": ["static"]}), decision)
    table = METRICS_DOC.split("## Log entry", 1)[1].split("## Traces", 1)[0]
    for field in entry:
        assert f"`{field}`" in table, field


def test_every_alert_is_documented() -> None:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            assert f"`{name}`" in METRICS_DOC, name


def test_rollout_queries_name_real_series() -> None:
    blocks = re.findall(r"```promql\n(.*?)```", ROLLOUT_DOC, flags=re.S)
    assert len(blocks) >= 5
    queries = [
        line
        for block in blocks
        for line in re.sub(r"\n\s+", " ", block).splitlines()
        if line.strip() and not line.startswith("#")
    ]
    exported = series_names(REGISTRY)
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for query in queries:
        assert_balanced(query)
        assert names_in([query]) <= exported, query
        assert set(RECORDED.findall(query)) <= recorded, query
    used = names_in(queries)
    for needed in ("cilium_identity_decisions_total", "cilium_identity_source_up"):
        assert needed in used
