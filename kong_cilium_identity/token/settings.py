"""The ``config.token`` record: Kong schema, and parsing into frozen, hashable settings.

Everything that can be checked once is checked here, so a bad config fails when Kong
loads it instead of on the first request: the issuer and audiences are required, key
sources are validated (URLs must be https, or http to a loopback host; PEM keys must be
public keys that fit a configured algorithm), and symmetric or ``none`` algorithms are
refused outright, because an HMAC "verified" with a public key is algorithm confusion.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.token.algorithms import SUPPORTED_ALGORITHMS, PublicKey, key_fits

CONSUMER_BY = ("username", "custom_id", "id")
MAX_LEEWAY = 300
DEFAULT_ALGORITHMS = ("RS256", "ES256")

SCHEMA: dict[str, Any] = {
    "type": "record",
    "fields": [
        {"enabled": {"type": "boolean", "default": False, "required": True}},
        {
            "header": {
                "type": "string",
                "default": "authorization",
                "required": True,
                "description": "request header carrying the token",
            }
        },
        {"issuer": {"type": "string", "description": "required `iss`; exact match"}},
        {"audiences": {"type": "array", "default": [], "elements": {"type": "string"}}},
        {"jwks_uri": {"type": "string", "description": "JWKS document URL"}},
        {"discovery_url": {"type": "string", "description": "OIDC discovery document URL"}},
        {"public_keys": {"type": "array", "default": [], "elements": {"type": "string"}}},
        {
            "algorithms": {
                "type": "array",
                "default": list(DEFAULT_ALGORITHMS),
                "len_min": 1,
                "elements": {"type": "string", "one_of": list(SUPPORTED_ALGORITHMS)},
            }
        },
        {"leeway": {"type": "integer", "default": 30, "between": [0, MAX_LEEWAY]}},
        {"required_claims": {"type": "array", "default": [], "elements": {"type": "string"}}},
        {"refresh_interval": {"type": "number", "default": 300, "between": [10, 86400]}},
        {"min_refetch_interval": {"type": "number", "default": 30, "between": [1, 3600]}},
        {"fetch_timeout": {"type": "number", "default": 5, "between": [0.1, 30]}},
        {"max_keys": {"type": "integer", "default": 32, "between": [1, 256]}},
        {"ca_file": {"type": "string", "description": "CA bundle for https key fetches"}},
        {
            "fetch_token_file": {
                "type": "string",
                "description": "file with a bearer token sent when fetching keys",
            }
        },
        {"consumer_claim": {"type": "string", "description": "claim naming the consumer"}},
        {
            "consumer_by": {
                "type": "string",
                "default": "username",
                "required": True,
                "one_of": list(CONSUMER_BY),
            }
        },
        {"service_account_token": {"type": "boolean", "default": False, "required": True}},
        {"pod_binding": {"type": "boolean", "default": False, "required": True}},
    ],
}


@dataclass(frozen=True)
class KeySettings:
    """Where verification keys come from; one key store exists per distinct value.

    ``issuer`` is set only with discovery (the document's ``issuer`` must equal it), so
    plugin configs that differ in anything but key sources share one store.
    """

    jwks_uri: str | None = None
    discovery_url: str | None = None
    issuer: str | None = None
    public_keys: tuple[str, ...] = ()
    refresh_interval: float = 300.0
    min_refetch_interval: float = 30.0
    fetch_timeout: float = 5.0
    max_keys: int = 32
    ca_file: str | None = None
    fetch_token_file: str | None = None

    @property
    def remote(self) -> bool:
        return bool(self.jwks_uri or self.discovery_url)


@dataclass(frozen=True)
class TokenSettings:
    enabled: bool = False
    header: str = "authorization"
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: int = 30
    required_claims: tuple[str, ...] = ("exp",)
    consumer_claim: str | None = None
    consumer_by: str = "username"
    service_account_token: bool = False
    pod_binding: bool = False
    keys: KeySettings = field(default_factory=KeySettings)


DISABLED = TokenSettings()

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_FORBIDDEN_ALGORITHMS = re.compile(r"^(none|HS\d+)$", re.IGNORECASE)


def parse_settings(record: Mapping[str, Any] | None) -> TokenSettings:
    """Settings from the ``config.token`` record (None or ``enabled: false`` -> DISABLED)."""
    if not record or not record.get("enabled"):
        return DISABLED
    issuer = _text(record.get("issuer"), "token.issuer")
    if issuer is None:
        raise ConfigError("token.issuer is required: tokens are accepted from one issuer only")
    audiences = _texts(record.get("audiences"), "token.audiences")
    if not audiences:
        raise ConfigError(
            "token.audiences needs at least one value: without it a token minted for any "
            "other service of the same issuer would be accepted"
        )
    algorithms = _algorithms(record.get("algorithms"))
    keys = _key_settings(record, issuer, algorithms)
    service_account_token = bool(record.get("service_account_token"))
    pod_binding = bool(record.get("pod_binding"))
    if pod_binding and not service_account_token:
        raise ConfigError(
            "token.pod_binding compares Kubernetes pod claims; it needs "
            "token.service_account_token: true"
        )
    consumer_by = str(record.get("consumer_by") or "username")
    if consumer_by not in CONSUMER_BY:
        raise ConfigError(f"token.consumer_by must be one of {', '.join(CONSUMER_BY)}")
    return TokenSettings(
        enabled=True,
        header=_header(record.get("header")),
        issuer=issuer,
        audiences=audiences,
        algorithms=algorithms,
        leeway=_leeway(record.get("leeway")),
        required_claims=tuple(
            dict.fromkeys(("exp", *_texts(record.get("required_claims"), "token.required_claims")))
        ),
        consumer_claim=_text(record.get("consumer_claim"), "token.consumer_claim"),
        consumer_by=consumer_by,
        service_account_token=service_account_token,
        pod_binding=pod_binding,
        keys=keys,
    )


def _key_settings(record: Mapping[str, Any], issuer: str, algorithms: Sequence[str]) -> KeySettings:
    jwks_uri = _text(record.get("jwks_uri"), "token.jwks_uri")
    discovery_url = _text(record.get("discovery_url"), "token.discovery_url")
    pems = _texts(record.get("public_keys"), "token.public_keys")
    if jwks_uri and discovery_url:
        raise ConfigError("set token.jwks_uri or token.discovery_url, not both")
    if not (jwks_uri or discovery_url or pems):
        raise ConfigError("token needs a key source: jwks_uri, discovery_url or public_keys")
    for name, url in (("jwks_uri", jwks_uri), ("discovery_url", discovery_url)):
        if url is not None:
            check_fetch_url(url, f"token.{name}")
    for index, pem in enumerate(pems):
        key = load_public_pem(pem, f"token.public_keys[{index}]")
        if not any(key_fits(algorithm, key) for algorithm in algorithms):
            raise ConfigError(
                f"token.public_keys[{index}] fits none of the algorithms {', '.join(algorithms)}"
            )
    return KeySettings(
        jwks_uri=jwks_uri,
        discovery_url=discovery_url,
        issuer=issuer if discovery_url else None,
        public_keys=tuple(pem.strip() for pem in pems),
        refresh_interval=float(record.get("refresh_interval") or 300),
        min_refetch_interval=float(record.get("min_refetch_interval") or 30),
        fetch_timeout=float(record.get("fetch_timeout") or 5),
        max_keys=int(record.get("max_keys") or 32),
        ca_file=_text(record.get("ca_file"), "token.ca_file"),
        fetch_token_file=_text(record.get("fetch_token_file"), "token.fetch_token_file"),
    )


def check_fetch_url(url: str, where: str) -> None:
    """Keys fetched in clear text could be swapped in transit: https, or http to loopback."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise ConfigError(f"{where} {url!r} must be an https URL (http only to a loopback host)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_public_pem(pem: str, where: str) -> PublicKey:
    if "PRIVATE KEY" in pem:
        raise ConfigError(f"{where} is a private key; configure the public key only")
    try:
        key = serialization.load_pem_public_key(pem.strip().encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as error:
        raise ConfigError(f"{where} is not a PEM public key: {error}") from None
    if not any(key_fits(algorithm, key) for algorithm in SUPPORTED_ALGORITHMS):
        raise ConfigError(f"{where}: unsupported key type {type(key).__name__}")
    return key  # type: ignore[return-value]  # key_fits accepted it


def _algorithms(raw: Any) -> tuple[str, ...]:
    values = _texts(raw, "token.algorithms") if raw is not None else DEFAULT_ALGORITHMS
    if not values:
        raise ConfigError("token.algorithms needs at least one algorithm")
    for value in values:
        if _FORBIDDEN_ALGORITHMS.match(value):
            raise ConfigError(
                f"token.algorithms: {value!r} is never accepted (unsigned or symmetric; "
                "verifying an HMAC with a public key is algorithm confusion)"
            )
        if value not in SUPPORTED_ALGORITHMS:
            raise ConfigError(
                f"token.algorithms: unknown algorithm {value!r}; "
                f"use {', '.join(SUPPORTED_ALGORITHMS)}"
            )
    return tuple(dict.fromkeys(values))


def _header(raw: Any) -> str:
    name = (_text(raw, "token.header") or "authorization").lower()
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"token.header {raw!r} is not a valid header name")
    return name


def _leeway(raw: Any) -> int:
    value = 30 if raw is None else raw
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LEEWAY:
        raise ConfigError(f"token.leeway must be an integer between 0 and {MAX_LEEWAY} seconds")
    return value


def _text(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ConfigError(f"{where} must be a string, not {type(raw).__name__}")
    return raw.strip() or None


def _texts(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where} must be a list of strings")
    values = []
    for index, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}[{index}] must be a non-empty string")
        values.append(item.strip())
    return tuple(values)
