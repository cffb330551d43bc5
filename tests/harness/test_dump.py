"""query_cmd output validated like Kong 3.9 (process.lua + dao/plugins.lua + metaschema)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kit.kong import DumpRejected, KongHarness

GOOD: dict[str, Any] = {
    "Name": "cilium-identity",
    "Phases": ["access", "log"],
    "Priority": 1000,
    "Version": "0.1.0",
    "Schema": {
        "name": "cilium-identity",
        "fields": [
            {
                "config": {
                    "type": "record",
                    "fields": [
                        {
                            "mode": {
                                "type": "string",
                                "default": "enforce",
                                "one_of": ["enforce", "monitor"],
                            }
                        },
                    ],
                }
            }
        ],
    },
}


def _harness_printing(text: str, tmp_path: Path) -> KongHarness:
    cmd = [sys.executable, "-c", f"import sys; sys.stdout.write({text!r})"]
    return KongHarness(cmd, None, prefix=tmp_path)


def _with(**changes: Any) -> str:
    info = copy.deepcopy(GOOD)
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    return json.dumps([info])


def test_good_dump_is_accepted(tmp_path: Path) -> None:
    info = _harness_printing(json.dumps([GOOD, {"Name": "ignored"}]), tmp_path).query()
    assert (info.name, info.version, info.priority) == ("cilium-identity", "0.1.0", 1000)
    assert info.phases == ("access", "log") and info.protocol == "MsgPack:1"


def test_plugins_envelope_is_accepted(tmp_path: Path) -> None:
    text = json.dumps({"Protocol": "MsgPack:1", "Plugins": [GOOD]})
    assert _harness_printing(text, tmp_path).query().name == "cilium-identity"


BROKEN_FIELD = {"type": "record", "fields": [{"x": {"type": "string", "match": "^a"}}]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(_with(Version="1.0"), "VERSION", id="version-two-parts"),
        pytest.param(_with(Version=None), "VERSION", id="version-missing"),
        pytest.param(_with(Priority=10.5), "PRIORITY", id="priority-float"),
        pytest.param(_with(Priority="10"), "PRIORITY", id="priority-string"),
        pytest.param(_with(Phases=["access", "header_filter"]), "unknown phase", id="phase"),
        pytest.param(_with(Schema=None), "no Schema", id="schema-missing"),
        pytest.param(_with(Name=7), "Name", id="name-not-string"),
        pytest.param(
            _with(Schema={"name": "x", "fields": [{"config": BROKEN_FIELD}]}),
            "match: unknown field",
            id="schema-unknown-attribute",
        ),
        pytest.param(
            _with(Schema={"name": "x", "fields": []}), "config", id="schema-without-config"
        ),
        pytest.param("not json at all", "Not a plugin info table", id="non-json"),
        pytest.param("DEBUG starting\n" + _with(), "Not a plugin info table", id="stdout-noise"),
        pytest.param("42", "Not a plugin info table", id="json-not-a-table"),
        pytest.param("[]", "no plugin info", id="empty-list"),
    ],
)
def test_broken_dump_is_rejected(text: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(DumpRejected) as caught:
        _harness_printing(text, tmp_path).query()
    assert reason in caught.value.reason
