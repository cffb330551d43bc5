"""The plugin's Kong schema (Lua-style field list) and its parsing into a frozen Config.

Kong validates user configuration against ``FIELDS`` itself (types, ``required``,
``one_of``, ``between``, ``len_min``, nested records and array elements) and fills every
default before the plugin server sees it. ``parse_config`` then checks what a Kong schema
cannot express (selector syntax, header prefix characters, files) and raises
``ConfigError``, which refuses the instance at StartInstance.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.identity.resolver import CacheSettings, ResolverSettings
from kong_cilium_identity.identity.sources import SOURCE_KINDS
from kong_cilium_identity.policy.decision import ClaimRule, Policy
from kong_cilium_identity.policy.labels import LabelError
from kong_cilium_identity.policy.selectors import parse_selector
from kong_cilium_identity.token import SCHEMA as TOKEN_SCHEMA
from kong_cilium_identity.token import TokenSettings, claim_rules_for
from kong_cilium_identity.token import parse_settings as parse_token_settings


class Mode(enum.StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class IpSource(enum.StrEnum):
    CONNECTION = "connection"  # the TCP peer: kong.client.get_ip()
    FORWARDED = "forwarded"  # Kong's trusted_ips / real_ip logic: kong.client.get_forwarded_ip()


def _string(**attributes: Any) -> dict[str, Any]:
    return {"type": "string", **attributes}


_BINDING = {
    "type": "record",
    "fields": [
        {"consumer": _string(required=True, description="consumer id, username or custom_id")},
        {
            "selectors": {
                "type": "array",
                "required": True,
                "len_min": 1,
                "elements": _string(),
                "description": "Cilium label selectors; terms within one selector are ANDed",
            }
        },
    ],
}

_CLAIM_RULE = {
    "type": "record",
    "fields": [
        {"claim": _string(required=True, description="dotted claim path, e.g. sub")},
        {"equals": _string(required=True, description="label key or identity.<attribute>")},
    ],
}

CACHE = Group(
    "cache",
    (
        Field(
            "ttl",
            "number",
            5,
            required=True,
            between=(0, 3600),
            doc="seconds a remote source's answer is reused",
        ),
        Field(
            "negative_ttl",
            "number",
            1,
            required=True,
            between=(0, 3600),
            doc='seconds an "unknown"/"ambiguous" answer is reused; failures are never cached',
        ),
        Field(
            "size",
            "integer",
            65536,
            required=True,
            between=(1, 10000000),
            doc="addresses kept per source",
        ),
    ),
)

COMMON = Group(
    "common",
    (
        Field(
            "mode",
            "string",
            Mode.ENFORCE.value,
            required=True,
            one_of=tuple(m.value for m in Mode),
            doc="`enforce` denies; `monitor` only logs what it would do",
        ),
        Field(
            "ip_source",
            "string",
            IpSource.CONNECTION.value,
            required=True,
            one_of=tuple(s.value for s in IpSource),
            doc="`connection`: TCP peer (`kong.client.get_ip`); `forwarded`: Kong's real-IP "
            "logic (`get_forwarded_ip`) — only behind a trusted proxy",
        ),
        Field(
            "sources",
            "array",
            ("static",),
            required=True,
            len_min=1,
            elements=_string(one_of=sorted(SOURCE_KINDS)),
            doc="ordered list of identity sources: `static`, `kubernetes`, `agent`, `hubble` "
            "(see Sources); the first that finds the address answers",
        ),
        Field(
            "lookup_timeout",
            "number",
            0.5,
            required=True,
            between=(0.001, 30),
            doc="seconds each source may take; past it the source counts as failed",
        ),
        Field(
            "require_agreement",
            "boolean",
            False,
            required=True,
            doc="ask every source; any disagreement → `identity_ambiguous`, any failure → "
            "`source_unavailable`",
        ),
        Field("cache", "record", required=True, record=CACHE),
        Field(
            "bindings",
            "array",
            (),
            required=True,
            elements=_BINDING,
            doc="`[{consumer, selectors: [..]}]`; consumer is an id, username or custom_id "
            "(or `id:`/`username:`/`custom_id:` prefixed)",
        ),
        Field(
            "consumer_tags",
            "boolean",
            True,
            required=True,
            doc="read bindings from consumer tags too",
        ),
        Field(
            "tag_prefix",
            "string",
            "cilium-identity:",
            required=True,
            doc="a consumer tag `cilium-identity:k8s:app=checkout;k8s:io.kubernetes.pod."
            "namespace=shop` is one selector",
        ),
        Field(
            "claim_rules",
            "array",
            (),
            required=True,
            elements=_CLAIM_RULE,
            doc="`[{claim, equals}]`, see above",
        ),
        Field(
            "allow_reserved_identities",
            "array",
            (),
            required=True,
            elements={"type": "integer", "between": [1, 4294967295]},
            doc="reserved / well-known / local-scope ids to accept anyway",
        ),
        Field(
            "header_prefix",
            "string",
            "X-Cilium-",
            required=True,
            doc="prefix of the upstream identity headers; client-sent headers with it are "
            "always removed",
        ),
        Field(
            "upstream_headers",
            "boolean",
            True,
            required=True,
            doc="set the identity headers on allowed requests",
        ),
        Field(
            "client_reason",
            "boolean",
            True,
            required=True,
            doc="put the reason code in the client's error message (details stay in the log)",
        ),
    ),
)


def config_fields() -> list[dict[str, Any]]:
    """The ``config`` record's fields: common settings plus one record per source kind."""
    fields = COMMON.kong_fields()
    fields.append({"token": {**TOKEN_SCHEMA, "required": True}})
    for name in sorted(SOURCE_KINDS):
        fields.append({name: {**SOURCE_KINDS[name].schema, "required": True}})
    return fields


@dataclass(frozen=True)
class Config:
    mode: Mode
    ip_source: IpSource
    resolver: ResolverSettings
    policy: Policy
    header_prefix: str
    upstream_headers: bool
    client_reason: bool
    token: TokenSettings


_HEADER_TOKEN = re.compile(r"^[A-Za-z0-9-]+$")


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Build a Config from Kong's config table; raise ConfigError naming the bad field."""
    try:
        mode = Mode(COMMON.value(raw, "mode"))
        ip_source = IpSource(COMMON.value(raw, "ip_source"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    token = parse_token_settings(raw.get("token"))
    return Config(
        mode=mode,
        ip_source=ip_source,
        resolver=_resolver_settings(raw),
        policy=_policy(raw, claim_rules_for(token)),
        header_prefix=_header_prefix(COMMON.value(raw, "header_prefix")),
        upstream_headers=bool(COMMON.value(raw, "upstream_headers")),
        client_reason=bool(COMMON.value(raw, "client_reason")),
        token=token,
    )


def _resolver_settings(raw: Mapping[str, Any]) -> ResolverSettings:
    names = COMMON.value(raw, "sources")
    if not isinstance(names, list) or not names:
        raise ConfigError("sources: expected a non-empty list")
    chain: list[tuple[str, Hashable]] = []
    for name in names:
        kind = SOURCE_KINDS.get(name)
        if kind is None:
            raise ConfigError(f"sources: unknown source {name!r}; known: {sorted(SOURCE_KINDS)}")
        if any(existing == name for existing, _ in chain):
            raise ConfigError(f"sources: {name!r} is listed twice")
        chain.append((name, kind.parse(raw.get(name) or {})))
    cache = raw.get("cache")
    return ResolverSettings(
        sources=tuple(chain),
        timeout=float(COMMON.value(raw, "lookup_timeout")),
        require_agreement=bool(COMMON.value(raw, "require_agreement")),
        cache=CacheSettings(
            ttl=float(CACHE.value(cache, "ttl")),
            negative_ttl=float(CACHE.value(cache, "negative_ttl")),
            size=int(CACHE.value(cache, "size")),
        ),
    )


def _policy(raw: Mapping[str, Any], template_rules: list[tuple[str, str]]) -> Policy:
    bindings = []
    for index, binding in enumerate(COMMON.value(raw, "bindings")):
        if not isinstance(binding, Mapping):
            raise ConfigError(f"bindings[{index}]: expected a record")
        consumer = binding.get("consumer")
        selectors = binding.get("selectors")
        if not isinstance(consumer, str) or not isinstance(selectors, list) or not selectors:
            raise ConfigError(f"bindings[{index}]: needs a consumer and at least one selector")
        texts = [str(text) for text in selectors]
        for position, text in enumerate(texts):
            try:
                parse_selector(text)
            except LabelError as error:
                raise ConfigError(f"bindings[{index}].selectors[{position}]: {error}") from None
        bindings.append((consumer, texts))
    rules = []
    for index, rule in enumerate(COMMON.value(raw, "claim_rules")):
        if not isinstance(rule, Mapping):
            raise ConfigError(f"claim_rules[{index}]: expected a record")
        claim, target = str(rule.get("claim") or ""), str(rule.get("equals") or "")
        try:
            ClaimRule.parse(claim, target)
        except LabelError as error:
            raise ConfigError(f"claim_rules[{index}]: {error}") from None
        rules.append((claim, target))
    rules.extend(template_rules)
    allowed = [int(value) for value in COMMON.value(raw, "allow_reserved_identities")]
    tag_prefix = COMMON.value(raw, "tag_prefix") if COMMON.value(raw, "consumer_tags") else None
    try:
        return Policy.build(bindings, tag_prefix or None, rules, allowed)
    except LabelError as error:
        raise ConfigError(str(error)) from None


def _header_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not _HEADER_TOKEN.match(prefix):
        raise ConfigError(f"header_prefix: {prefix!r} is not a valid header name prefix")
    return prefix
