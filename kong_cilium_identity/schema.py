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
from kong_cilium_identity.identity.resolver import CacheSettings, ResolverSettings
from kong_cilium_identity.identity.sources import SOURCE_KINDS
from kong_cilium_identity.policy.decision import Policy
from kong_cilium_identity.policy.labels import LabelError
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


def _common_fields() -> list[dict[str, Any]]:
    return [
        {
            "mode": _string(
                required=True, default=Mode.ENFORCE.value, one_of=[m.value for m in Mode]
            )
        },
        {
            "ip_source": _string(
                required=True,
                default=IpSource.CONNECTION.value,
                one_of=[s.value for s in IpSource],
            )
        },
        {
            "sources": {
                "type": "array",
                "required": True,
                "default": ["static"],
                "len_min": 1,
                "elements": _string(one_of=sorted(SOURCE_KINDS)),
            }
        },
        {
            "lookup_timeout": {
                "type": "number",
                "required": True,
                "default": 0.5,
                "between": [0.001, 30],
            }
        },
        {"require_agreement": {"type": "boolean", "required": True, "default": False}},
        {
            "cache": {
                "type": "record",
                "required": True,
                "fields": [
                    {
                        "ttl": {
                            "type": "number",
                            "required": True,
                            "default": 5,
                            "between": [0, 3600],
                        }
                    },
                    {
                        "negative_ttl": {
                            "type": "number",
                            "required": True,
                            "default": 1,
                            "between": [0, 3600],
                        }
                    },
                    {
                        "size": {
                            "type": "integer",
                            "required": True,
                            "default": 65536,
                            "between": [1, 10000000],
                        }
                    },
                ],
            }
        },
        {"bindings": {"type": "array", "required": True, "default": [], "elements": _BINDING}},
        {"consumer_tags": {"type": "boolean", "required": True, "default": True}},
        {"tag_prefix": _string(required=True, default="cilium-identity:")},
        {
            "claim_rules": {
                "type": "array",
                "required": True,
                "default": [],
                "elements": _CLAIM_RULE,
            }
        },
        {
            "allow_reserved_identities": {
                "type": "array",
                "required": True,
                "default": [],
                "elements": {"type": "integer", "between": [1, 4294967295]},
            }
        },
        {"header_prefix": _string(required=True, default="X-Cilium-")},
        {"upstream_headers": {"type": "boolean", "required": True, "default": True}},
        {"client_reason": {"type": "boolean", "required": True, "default": True}},
    ]


def config_fields() -> list[dict[str, Any]]:
    """The ``config`` record's fields: common settings plus one record per source kind."""
    fields = _common_fields()
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
        mode = Mode(raw.get("mode") or Mode.ENFORCE)
        ip_source = IpSource(raw.get("ip_source") or IpSource.CONNECTION)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    token = parse_token_settings(raw.get("token"))
    return Config(
        mode=mode,
        ip_source=ip_source,
        resolver=_resolver_settings(raw),
        policy=_policy(raw, claim_rules_for(token)),
        header_prefix=_header_prefix(raw.get("header_prefix")),
        upstream_headers=bool(_default(raw.get("upstream_headers"), True)),
        client_reason=bool(_default(raw.get("client_reason"), True)),
        token=token,
    )


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _resolver_settings(raw: Mapping[str, Any]) -> ResolverSettings:
    names = _default(raw.get("sources"), ["static"])
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
    cache = raw.get("cache") or {}
    return ResolverSettings(
        sources=tuple(chain),
        timeout=float(_default(raw.get("lookup_timeout"), 0.5)),
        require_agreement=bool(raw.get("require_agreement")),
        cache=CacheSettings(
            ttl=float(_default(cache.get("ttl"), 5)),
            negative_ttl=float(_default(cache.get("negative_ttl"), 1)),
            size=int(_default(cache.get("size"), 65536)),
        ),
    )


def _policy(raw: Mapping[str, Any], template_rules: list[tuple[str, str]]) -> Policy:
    bindings = []
    for index, binding in enumerate(raw.get("bindings") or []):
        if not isinstance(binding, Mapping):
            raise ConfigError(f"bindings[{index}]: expected a record")
        consumer = binding.get("consumer")
        selectors = binding.get("selectors")
        if not isinstance(consumer, str) or not isinstance(selectors, list) or not selectors:
            raise ConfigError(f"bindings[{index}]: needs a consumer and at least one selector")
        bindings.append((consumer, [str(text) for text in selectors]))
    rules = []
    for index, rule in enumerate(raw.get("claim_rules") or []):
        if not isinstance(rule, Mapping):
            raise ConfigError(f"claim_rules[{index}]: expected a record")
        rules.append((str(rule.get("claim") or ""), str(rule.get("equals") or "")))
    rules.extend(template_rules)
    allowed = [int(value) for value in raw.get("allow_reserved_identities") or []]
    tag_prefix = raw.get("tag_prefix") if _default(raw.get("consumer_tags"), True) else None
    try:
        return Policy.build(bindings, tag_prefix or None, rules, allowed)
    except LabelError as error:
        raise ConfigError(str(error)) from None


def _header_prefix(value: Any) -> str:
    prefix = "X-Cilium-" if value is None else value
    if not isinstance(prefix, str) or not _HEADER_TOKEN.match(prefix):
        raise ConfigError(f"header_prefix: {prefix!r} is not a valid header name prefix")
    return prefix
