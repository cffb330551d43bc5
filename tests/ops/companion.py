"""An in-process Kong with the cilium-identity-guard companion: ``facts`` answers from a
scripted request, ``apply`` records the decision table the plugin sends to Kong."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


@dataclass
class CompanionKong:
    """What ``kong.cilium_identity.facts`` reports, and what ``apply`` received."""

    consumer: dict[str, Any] | None
    ip: str
    tokens: list[str] = field(default_factory=list)
    traceparent: str | None = None
    applied: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[Any, ...]] = field(default_factory=list)
    settling_calls: bool = True

    def __post_init__(self) -> None:
        self.cilium_identity = SimpleNamespace(facts=self._facts, apply=self.applied.append)
        self.response = SimpleNamespace(error=lambda *args: self.errors.append(args))

    def _facts(self, spec: dict[str, Any]) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "v": 1,
            "consumer": self.consumer or False,
            "credential": self.consumer is not None,
            "ip": self.ip,
            "forged": 0,
            "tokens": list(self.tokens) if spec.get("token_header") else [],
            "jwt": False,
        }
        if spec.get("traceparent") and self.traceparent is not None:
            facts["traceparent"] = self.traceparent
        return facts

    @property
    def entry(self) -> dict[str, Any]:
        """The ``cilium_identity`` value Kong's log serializer got for the last request."""
        assert len(self.applied) == 1, self.applied
        log = self.applied[0]["log"]
        assert isinstance(log, dict)
        return log


@dataclass
class PdkOnlyKong:
    """A Kong without the companion: plain PDK calls, the credential row included (key-auth
    hands plugins the whole row, secret key and all)."""

    consumer: dict[str, Any] | None
    credential: dict[str, Any] | None
    ip: str
    headers: dict[str, Any] = field(default_factory=dict)
    upstream: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cilium_identity = SimpleNamespace(facts=lambda _spec: None)
        self.client = SimpleNamespace(
            get_consumer=lambda: self.consumer,
            get_credential=lambda: self.credential,
            get_ip=lambda: self.ip,
        )
        self.request = SimpleNamespace(get_headers=lambda _max: dict(self.headers))
        self.service = SimpleNamespace(request=SimpleNamespace(set_headers=self.upstream.append))
        self.response = SimpleNamespace(error=lambda *args: self.errors.append(args))
