"""The static source: IPv4, IPv6, IPv4-mapped IPv6, longest prefix, files."""

import json
import re
from pathlib import Path

import pytest

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.static import create, parse_settings

ENTRIES = [
    {"address": "10.0.0.0/8", "id": 70000, "labels": ["k8s:app=wide"]},
    {"address": "10.0.1.0/24", "id": 70001, "labels": ["k8s:app=subnet"]},
    {"address": "10.0.1.200", "id": 48861, "labels": ["k8s:app=wluo"], "pod": "wluo-mvz4t"},
    {"address": "fd00::/64", "id": 70002, "labels": ["k8s:app=v6net"]},
    {"address": "fd00::5", "id": 70003, "labels": ["k8s:app=v6pod"]},
]


def lookup(address: str, entries: list[dict[str, object]] = ENTRIES) -> tuple[LookupStatus, int]:
    source = create(parse_settings({"entries": entries}))
    result = source.lookup(Peer(address), 0.1)
    return result.status, result.identity.id if result.identity else -1


@pytest.mark.parametrize(
    ("address", "identity_id"),
    [
        ("10.0.1.200", 48861),
        ("10.0.1.201", 70001),
        ("10.9.9.9", 70000),
        ("::ffff:10.0.1.200", 48861),  # IPv4-mapped IPv6 is the IPv4 address
        ("fd00::5", 70003),
        ("fd00::6", 70002),
        ("FD00:0:0:0::5", 70003),
    ],
)
def test_longest_prefix_wins(address: str, identity_id: int) -> None:
    assert lookup(address) == (LookupStatus.FOUND, identity_id)


@pytest.mark.parametrize("address", ["192.168.1.1", "fd01::1", "not-an-ip", "fe80::1%eth0", ""])
def test_unknown(address: str) -> None:
    assert lookup(address)[0] is LookupStatus.UNKNOWN


def test_mapped_prefix_in_config_is_ipv4() -> None:
    entries = [{"address": "::ffff:10.1.0.0/112", "id": 70010, "labels": []}]
    assert lookup("10.1.2.3", entries) == (LookupStatus.FOUND, 70010)


def test_entry_fields_become_identity(tmp_path: Path) -> None:
    path = tmp_path / "identities.json"
    path.write_text(json.dumps({"entries": [ENTRIES[2]]}))
    result = create(parse_settings({"entries": [], "file": str(path)})).lookup(
        Peer("10.0.1.200"), 0.1
    )
    assert result.identity is not None
    assert result.identity.pod == "wluo-mvz4t"
    assert result.identity.label_strings() == ["k8s:app=wluo"]
    assert result.identity.source == "static"


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "identities.yaml"
    path.write_text("- address: 10.2.0.7\n  id: 70100\n  labels: [k8s:app=yaml]\n")
    settings = parse_settings({"entries": None, "file": str(path)})
    assert create(settings).lookup(Peer("10.2.0.7"), 0.1).status is LookupStatus.FOUND


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"entries": [{"address": "10.0.0.1/8", "id": 1}]}, "host bits"),
        ({"entries": [{"address": "nope", "id": 1}]}, "static.entries[0]"),
        ({"entries": [{"id": 1}]}, "missing field"),
        ({"entries": [{"address": "10.0.0.1", "id": 1, "labels": [":x"]}]}, "empty source"),
        (
            {"entries": [{"address": "10.0.0.1", "id": 5}, {"address": "10.0.0.1", "id": 6}]},
            "already mapped",
        ),
        ({"file": "/nonexistent/identities.yaml"}, "No such file"),
    ],
)
def test_bad_settings_are_refused(record: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_settings(record)


def test_settings_are_hashable_for_sharing() -> None:
    assert hash(parse_settings({"entries": ENTRIES})) == hash(parse_settings({"entries": ENTRIES}))
