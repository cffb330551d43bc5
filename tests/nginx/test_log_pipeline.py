"""Kong's log pipeline: the `cilium_identity` field that log plugins (http-log, file-log, …)
receive, written natively by the guard's `apply`, for allowed, denied and monitor requests.
The rig records every value set with kong.log.set_serialize_value per request."""

from __future__ import annotations

import copy
from typing import Any

from tests.nginx.conftest import RigFactory
from tests.nginx.shipped import (
    CHECKOUT_KEY,
    CHECKOUT_POD,
    PLUGIN,
    REPORTS_POD,
    kong_yaml,
    plugin_holders,
)

PATH = "/orders/1"


def monitored() -> dict[str, Any]:
    doc = copy.deepcopy(kong_yaml())
    for _, holder in plugin_holders(doc):
        for plugin in holder.get("plugins") or []:
            if plugin["name"] == PLUGIN:
                plugin["config"]["mode"] = "monitor"
    return doc


def entry(rig: Any, source: str) -> tuple[int, dict[str, Any], str]:
    reply = rig.nginx.request(PATH, [CHECKOUT_KEY], source=source)
    request_id = reply.header("X-Kong-Request-Id")
    assert request_id is not None
    logged = rig.nginx.serialized(request_id)
    assert set(logged) == {"cilium_identity"}, logged
    return reply.status, logged["cilium_identity"], str(reply)


def test_allowed_and_denied_requests_reach_the_log_entry(make_rig: RigFactory) -> None:
    rig = make_rig(kong_yaml())
    status, allowed, _ = entry(rig, CHECKOUT_POD)
    assert status == 200
    assert allowed["decision"] == "allow" and allowed["reason"] == "allowed"
    assert allowed["mode"] == "enforce" and allowed["consumer"] == "checkout"
    assert allowed["identity"] == 48861 and allowed["namespace"] == "shop"
    assert allowed["service_account"] == "checkout" and allowed["source"] == "static"

    status, denied, body = entry(rig, REPORTS_POD)  # checkout's key from the reports pod
    assert status == 403 and "identity_mismatch" in body
    assert denied["decision"] == "deny" and denied["reason"] == "identity_mismatch"
    assert denied["identity"] == 51022 and denied["consumer"] == "checkout"
    for logged in (allowed, denied):
        text = repr(logged)
        assert "checkout-demo-key" not in text  # never the credential
        assert "k8s:app" not in text  # never a label dump


def test_monitor_mode_logs_the_would_deny_and_lets_it_through(make_rig: RigFactory) -> None:
    rig = make_rig(monitored())
    status, logged, _ = entry(rig, REPORTS_POD)
    assert status == 200
    assert logged["decision"] == "would_deny" and logged["reason"] == "identity_mismatch"
    assert logged["mode"] == "monitor" and logged["enforced"] is False
    upstream = rig.nginx.upstream_requests()
    assert len(upstream) == 1
    assert not [n for n, _ in upstream[0]["headers"] if n.lower() == "x-cilium-identity"]
