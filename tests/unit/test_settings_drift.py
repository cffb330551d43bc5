"""Every setting is declared once; these tests fail when any copy of it drifts.

For each settings group, four readings of every default must agree:

- the Kong schema the plugin reports (``--dump``): what Kong fills before the plugin runs;
- the parser's fallback for an unset field (a record with the field missing);
- the settings dataclass defaults (what code building settings by hand gets);
- the docs/configuration.md reference table.

``drift`` returns every disagreement as text, so the last tests can break one copy and
show that the check names it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kong_cilium_identity import schema
from kong_cilium_identity.fields import UNSET, Group, render_default
from kong_cilium_identity.identity.cep_watch import WatchSettings
from kong_cilium_identity.identity.model import Peer
from kong_cilium_identity.identity.resolver import CacheSettings, ResolverSettings
from kong_cilium_identity.identity.sources import SOURCE_KINDS, agent, hubble, kubernetes, static
from kong_cilium_identity.plugin import plugin_info
from kong_cilium_identity.policy.decision import Consumer, Facts, Policy, Reason, decide
from kong_cilium_identity.schema import parse_config
from kong_cilium_identity.token import settings as token
from tests import settings_docs
from tests.settings_docs import DOC, GROUPS, TABLES, WITH_TYPE


@cache
def public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def token_required() -> dict[str, Any]:
    """What an enabled token record must carry besides defaults."""
    return {
        "enabled": True,
        "issuer": "https://issuer.test",
        "audiences": ["kong"],
        "public_keys": [public_pem()],
    }


def common_declared() -> Any:
    """The defaults of the common settings as the code outside the parser states them:
    the resolver's settings, the policy's tag prefix (field and builder argument), and the
    token check off."""
    return (
        ResolverSettings(sources=(("static", static.StaticSettings(())),)),
        Policy.__dataclass_fields__["tag_prefix"].default,
        inspect.signature(Policy.build).parameters["tag_prefix"].default,
        token.DISABLED,
    )


@dataclass(frozen=True)
class Spec:
    """How one group's record is parsed, and what its dataclass defaults say it means.

    ``required`` is merged into every record (settings a group cannot do without, or that
    switch on the part whose defaults are checked)."""

    parse: Callable[[Mapping[str, Any]], Any]
    declared: Callable[[], Any]
    required: Mapping[str, Any] = dataclasses.field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "common": Spec(
        parse=lambda record: _common_view(parse_config(record)),
        declared=common_declared,
    ),
    "cache": Spec(
        parse=lambda record: parse_config({"cache": record}).resolver.cache,
        declared=CacheSettings,
    ),
    "token": Spec(
        parse=token.parse_settings,
        declared=lambda: token.TokenSettings(
            enabled=True,
            issuer="https://issuer.test",
            audiences=("kong",),
            keys=token.KeySettings(public_keys=(public_pem().strip(),)),
        ),
        required=token_required(),
    ),
    "static": Spec(parse=static.parse_settings, declared=lambda: static.StaticSettings(())),
    "agent": Spec(parse=agent.parse_settings, declared=agent.AgentSettings),
    "hubble": Spec(
        parse=hubble.parse_settings,
        declared=lambda: hubble.HubbleSettings(
            channel=hubble.ChannelSettings(address=hubble.FIELDS.default("address")),
            follow=hubble.FollowSettings(destination_ips=("10.0.0.9",)),
        ),
        required={"follow": True, "follow_destination_ips": ["10.0.0.9"]},
    ),
    "kubernetes": Spec(
        parse=kubernetes.parse_settings,
        declared=lambda: kubernetes.KubernetesSettings(watch=WatchSettings()),
    ),
}


def _common_view(config: schema.Config) -> Any:
    """The parts of a Config the common settings decide, shaped like common_declared."""
    return (config.resolver, config.policy.tag_prefix, config.policy.tag_prefix, config.token)


def dumped_records() -> dict[str, dict[str, Any]]:
    """Each group's record as the plugin reports it to Kong (``--dump``)."""
    (config,) = plugin_info()["Schema"]["fields"]
    fields = dict(next(iter(entry.items())) for entry in config["config"]["fields"])
    own_records = set(GROUPS) - {"common", "cache"}
    records = {name: fields[name] for name in own_records}
    common = [{name: d} for name, d in fields.items() if name not in own_records]
    return records | {"common": {"type": "record", "fields": common}, "cache": fields["cache"]}


def kong_fill(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record Kong hands over when nothing is set: every default, nested records
    filled, other fields null."""
    filled: dict[str, Any] = {}
    for entry in record["fields"]:
        ((name, definition),) = entry.items()
        filled[name] = (
            kong_fill(definition) if definition["type"] == "record" else definition.get("default")
        )
    return filled


def doc_defaults(text: str) -> dict[str, str]:
    """``field -> default cell`` of every docs reference table."""
    cells: dict[str, str] = {}
    for name, table in settings_docs.read_tables(text).items():
        column = 2 if name in WITH_TYPE else 1
        for row in table.splitlines()[2:]:
            parts = [part.strip() for part in row.strip("|").split(" | ")]
            cells[parts[0].strip("`")] = parts[column]
    return cells


def _attempt(parse: Callable[[Mapping[str, Any]], Any], record: Mapping[str, Any]) -> Any:
    try:
        return parse(record)
    except Exception as error:  # the report names it
        return f"<{type(error).__name__}: {error}>"


def drift(name: str, group: Group, record: Mapping[str, Any], doc_text: str) -> list[str]:
    """Every disagreement between the group's schema ``record``, parser, dataclass
    defaults and docs table; empty when all agree."""
    found: list[str] = []
    spec = SPECS[name]
    filled = {**kong_fill(record), **spec.required}
    from_schema = _attempt(spec.parse, filled)
    from_fallbacks = _attempt(spec.parse, dict(spec.required))
    if from_schema != from_fallbacks:
        found.append(f"{name}: parse fallbacks {from_fallbacks!r} != schema {from_schema!r}")
    declared = spec.declared()
    if from_schema != declared:
        found.append(f"{name}: dataclass defaults {declared!r} != schema {from_schema!r}")
    prefixes = [prefix for parts in TABLES.values() for prefix, g in parts if g == name]
    (prefix,) = prefixes
    cells = doc_defaults(doc_text)
    schema_fields = {next(iter(entry)): next(iter(entry.values())) for entry in record["fields"]}
    for entry in group:
        if entry.record is not None:
            continue
        documented = cells.get(prefix + entry.name)
        dumped = schema_fields.get(entry.name, {})
        expected = entry.doc_default or render_default(dumped.get("default", UNSET))
        if documented != expected:
            found.append(f"{name}: docs say {prefix}{entry.name} = {documented}, not {expected}")
    return found


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_every_group_agrees_with_its_kong_schema(name: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert drift(name, GROUPS[name], dumped_records()[name], text) == []


def test_every_group_has_a_drift_spec_and_a_docs_table() -> None:
    assert set(SPECS) == set(GROUPS)
    shown = {group for parts in TABLES.values() for _, group in parts}
    assert shown == set(GROUPS)
    assert set(SOURCE_KINDS) <= set(GROUPS)


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_the_dumped_schema_is_the_field_table(name: str) -> None:
    ours = GROUPS[name].record()
    if name != "common":  # every nested record is required, so Kong fills its defaults
        ours["required"] = True
    assert dumped_records()[name] == ours


def test_the_docs_tables_are_written_from_the_field_tables() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert settings_docs.read_tables(text) == settings_docs.tables(), (
        "run: python -m tests.settings_docs"
    )


def test_every_field_of_a_record_has_a_default_or_is_optional() -> None:
    """Kong fills defaults; a ``required`` field without one would refuse empty configs."""
    for name, group in GROUPS.items():
        for entry in group:
            if entry.required and entry.record is None:
                assert entry.default is not UNSET, f"{name}.{entry.name}"


# A config without tag_prefix (as the plugin server may see it from `validate`, a test
# harness or an entity stored before the field existed) must read consumer tags with the
# default prefix; the parser once fell back to None and silently turned tags off.
def test_a_config_without_tag_prefix_still_reads_consumer_tags_end_to_end() -> None:
    raw = {
        "sources": ["static"],
        "static": {"entries": [{"address": "10.0.0.5", "id": 50000, "labels": ["k8s:app=a"]}]},
    }
    config = parse_config(raw)
    ((kind, settings),) = config.resolver.sources
    source = SOURCE_KINDS[kind].create(settings)
    try:
        lookup = source.lookup(Peer("10.0.0.5"), 1.0)
    finally:
        source.close()
    tagged = Consumer("c-1", "alice", None, ("cilium-identity:k8s:app=a",))
    assert decide(Facts(tagged, True, "10.0.0.5"), lookup, config.policy).reason is Reason.ALLOWED
    untagged = Consumer("c-2", "bob", None, ("team-x",))
    denied = decide(Facts(untagged, True, "10.0.0.5"), lookup, config.policy)
    assert denied.reason is Reason.NO_BINDING
    off = parse_config({**raw, "consumer_tags": False})
    assert decide(Facts(tagged, True, "10.0.0.5"), lookup, off.policy).reason is Reason.NO_BINDING


# The checks bite: break one copy of one default and the drift report names it.


def _without_default(group: Group, field_name: str) -> Group:
    fields = tuple(
        dataclasses.replace(entry, default=UNSET) if entry.name == field_name else entry
        for entry in group
    )
    return Group(group.name, fields)


def test_removing_a_default_from_the_field_table_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = _without_default(hubble.FIELDS, "max_flow_age")
    monkeypatch.setattr(hubble, "FIELDS", broken)
    text = DOC.read_text(encoding="utf-8")
    report = drift("hubble", broken, broken.record(), text)
    assert any("dataclass defaults" in line for line in report), report
    assert any("max_flow_age = `600`, not —" in line for line in report), report
    assert settings_docs.read_tables(text) != settings_docs.tables(GROUPS | {"hubble": broken})


def test_a_parser_fallback_that_differs_from_the_schema_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tag_prefix bug: the schema says ``cilium-identity:``, the fallback said nothing."""
    record = dumped_records()["common"]
    monkeypatch.setattr(schema, "COMMON", _without_default(schema.COMMON, "tag_prefix"))
    report = drift("common", GROUPS["common"], record, DOC.read_text(encoding="utf-8"))
    assert len(report) == 1 and "parse fallbacks" in report[0], report
    assert "'cilium-identity:'" in report[0]


def test_removing_a_default_from_the_docs_is_reported() -> None:
    text = DOC.read_text(encoding="utf-8")
    broken = re.sub(r"(\| `cache\.ttl` \| )`5`", r"\1—", text)
    assert broken != text
    report = drift("cache", GROUPS["cache"], dumped_records()["cache"], broken)
    assert report == ["cache: docs say cache.ttl = —, not `5`"]


def test_a_dataclass_default_that_differs_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    drifted = dataclasses.replace(agent.AgentSettings(), identity_cache_ttl=30.0)
    monkeypatch.setitem(
        SPECS, "agent", dataclasses.replace(SPECS["agent"], declared=lambda: drifted)
    )
    text = DOC.read_text(encoding="utf-8")
    report = drift("agent", GROUPS["agent"], dumped_records()["agent"], text)
    assert len(report) == 1 and "dataclass defaults" in report[0], report
