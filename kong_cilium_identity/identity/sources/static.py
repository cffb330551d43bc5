"""The ``static`` source: addresses and CIDRs mapped to identities in config or a file.

Lets the plugin run with no cluster at all (docker-compose, tests, fixed VMs). The most
specific prefix wins, as in Cilium's ipcache.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.identity.address import IPNetwork, parse_network
from kong_cilium_identity.identity.model import Identity, Lookup, Peer
from kong_cilium_identity.identity.sources.base import SourceKind
from kong_cilium_identity.policy.labels import LabelError

NAME = "static"

_ENTRY_FIELDS: list[dict[str, Any]] = [
    {"address": {"type": "string", "required": True, "description": "IP address or CIDR"}},
    {"id": {"type": "integer", "required": True, "between": [0, 4294967295]}},
    {"labels": {"type": "array", "default": [], "elements": {"type": "string"}}},
    {"namespace": {"type": "string"}},
    {"pod": {"type": "string"}},
    {"pod_uid": {"type": "string"}},
    {"service_account": {"type": "string"}},
    {"cluster": {"type": "string"}},
]

FIELDS = Group(
    NAME,
    (
        Field(
            "entries",
            "array",
            (),
            elements={"type": "record", "fields": _ENTRY_FIELDS},
            doc="`[{address, id, labels, namespace, pod, pod_uid, service_account, cluster}]`; "
            "`address` is an IP or CIDR, the most specific entry wins; namespace / service "
            "account / cluster default to the Cilium labels",
        ),
        Field(
            "file",
            "string",
            description="YAML or JSON list of entries",
            doc="YAML or JSON file with a list of the same entries (or `{entries: [...]}`), "
            "read when the instance starts",
        ),
    ),
)

SCHEMA: dict[str, Any] = FIELDS.record()


@dataclass(frozen=True)
class StaticSettings:
    entries: tuple[tuple[IPNetwork, Identity], ...]


def _identity_from_entry(entry: Mapping[str, Any], where: str) -> tuple[IPNetwork, Identity]:
    try:
        network = parse_network(str(entry["address"]))
        identity_id = int(entry["id"])
        labels = [str(text) for text in entry.get("labels") or []]
        identity = Identity.build(
            identity_id,
            labels,
            namespace=entry.get("namespace"),
            pod=entry.get("pod"),
            pod_uid=entry.get("pod_uid"),
            service_account=entry.get("service_account"),
            cluster=entry.get("cluster"),
            source=NAME,
            observed_at=0.0,
        )
    except KeyError as missing:
        raise ConfigError(f"{where}: missing field {missing}") from None
    except (ValueError, TypeError, LabelError) as error:
        raise ConfigError(f"{where}: {error}") from None
    return network, identity


def _load_file(path: str) -> list[Mapping[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"static.file {path}: {error}") from None
    if isinstance(data, Mapping):
        data = data.get("entries")
    if not isinstance(data, list) or not all(isinstance(item, Mapping) for item in data):
        raise ConfigError(f"static.file {path}: expected a list of entries (or {{entries: [...]}})")
    return data


def parse_settings(record: Mapping[str, Any]) -> StaticSettings:
    inline = FIELDS.value(record, "entries")
    raw: list[tuple[str, Mapping[str, Any]]] = [
        (f"static.entries[{index}]", entry) for index, entry in enumerate(inline)
    ]
    path = record.get("file")
    if path:
        raw += [(f"{path}[{index}]", entry) for index, entry in enumerate(_load_file(path))]
    seen: dict[IPNetwork, str] = {}
    entries = []
    for where, entry in raw:
        network, identity = _identity_from_entry(entry, where)
        if network in seen:
            raise ConfigError(f"{where}: {network} is already mapped by {seen[network]}")
        seen[network] = where
        entries.append((network, identity))
    return StaticSettings(tuple(entries))


class StaticSource:
    """Longest-prefix match over a fixed table."""

    name = NAME
    cacheable = False

    def __init__(self, entries: Iterable[tuple[IPNetwork, Identity]]) -> None:
        self._tables: dict[tuple[int, int], dict[int, Identity]] = {}
        for network, identity in entries:
            table = self._tables.setdefault((network.version, network.prefixlen), {})
            table[int(network.network_address)] = identity
        self._lengths: dict[int, Sequence[tuple[int, int]]] = {
            version: sorted(
                ((length, _mask(version, length)) for v, length in self._tables if v == version),
                reverse=True,
            )
            for version in (4, 6)
        }

    def lookup(self, peer: Peer, timeout: float) -> Lookup:
        try:
            address = peer.parsed()
        except ValueError as error:
            return Lookup.unknown(NAME, str(error))
        value = int(address)
        for length, mask in self._lengths[address.version]:
            identity = self._tables[(address.version, length)].get(value & mask)
            if identity is not None:
                return Lookup.found(identity, NAME)
        return Lookup.unknown(NAME, f"no static entry covers {address}")

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._tables.clear()


def _mask(version: int, length: int) -> int:
    bits = 32 if version == 4 else 128
    return ((1 << length) - 1) << (bits - length) if length else 0


def create(settings: StaticSettings) -> StaticSource:
    return StaticSource(settings.entries)


KIND = SourceKind(name=NAME, schema=SCHEMA, parse=parse_settings, create=create)
