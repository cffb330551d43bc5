"""An unusable configuration starts an instance that refuses every request, and is
logged once per configuration (not per worker, instance or request), naming the field."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kong_cilium_identity.plugin import Plugin


class RecordingKong:
    def __init__(self) -> None:
        self.errors: list[tuple[Any, ...]] = []

        class Response:
            @staticmethod
            def error(*args: Any) -> None:
                self.errors.append(args)

        self.response = Response()


def config(seq: int, route: str = "route-1") -> dict[str, Any]:
    return {
        "sources": ["static"],
        "bindings": [{"consumer": "checkout", "selectors": ["k8s:app=,"]}],  # bad selector
        "route_id": route,
        "__seq__": seq,
        "__key__": f"plugins:{route}:{seq}",
    }


def test_logged_once_per_configuration_and_every_request_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="kong_cilium_identity.plugin"):
        instances = [Plugin(config(seq)) for seq in (1, 2, 3)]  # workers, reloads
        other_route = Plugin(config(1, route="route-2"))
    reports = [r.getMessage() for r in caplog.records if "invalid configuration" in r.getMessage()]
    assert len(reports) == 2  # one per distinct configuration
    assert "bindings[0]" in reports[0] and "route_id=route-1" in reports[0]
    for plugin in [*instances, other_route]:
        kong = RecordingKong()
        plugin.access(kong)
        plugin.access(kong)
        assert kong.errors == [(500, "An unexpected error occurred (invalid_config)")] * 2
        plugin.close()
