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
from kong_cilium_identity.fields import Field, Group
from kong_cilium_identity.token.algorithms import SUPPORTED_ALGORITHMS, PublicKey, key_fits

CONSUMER_BY = ("username", "custom_id", "id")
MAX_LEEWAY = 300
DEFAULT_ALGORITHMS = ("RS256", "ES256")

_STRINGS = {"type": "string"}

FIELDS = Group(
    "token",
    (
        Field(
            "enabled",
            "boolean",
            False,
            required=True,
            doc="turn the token check on. Off, every other field is ignored",
        ),
        Field(
            "header",
            "string",
            "authorization",
            required=True,
            description="request header carrying the token",
            doc="request header that carries the token. With `authorization` the `Bearer` "
            "scheme is required (matched case-insensitively). Another header may carry the "
            "bare token or `Bearer <token>`",
        ),
        Field(
            "issuer",
            "string",
            description="required `iss`; exact match",
            doc="the `iss` every token must carry, compared exactly. With `discovery_url`, "
            "the discovery document's `issuer` must equal it too",
            doc_default="— (required)",
        ),
        Field(
            "audiences",
            "array",
            (),
            elements=_STRINGS,
            doc="the token's `aud` must contain one of these. Required: without it, a token "
            "minted for any other service of the same issuer would be accepted here",
            doc_type="array of strings",
            doc_default="— (at least one)",
        ),
        Field(
            "jwks_uri",
            "string",
            description="JWKS document URL",
            doc="URL of the issuer's JWKS",
        ),
        Field(
            "discovery_url",
            "string",
            description="OIDC discovery document URL",
            doc="URL of the OIDC discovery document (usually "
            "`<issuer>/.well-known/openid-configuration`). Its `jwks_uri` is used",
        ),
        Field(
            "public_keys",
            "array",
            (),
            elements=_STRINGS,
            doc="PEM public keys (`-----BEGIN PUBLIC KEY-----`). Private keys are refused",
            doc_type="array of strings",
        ),
        Field(
            "algorithms",
            "array",
            DEFAULT_ALGORITHMS,
            len_min=1,
            elements={"type": "string", "one_of": list(SUPPORTED_ALGORITHMS)},
            doc="algorithms a token may use: "
            + " ".join(f"`{name}`" for name in SUPPORTED_ALGORITHMS)
            + ". `none` and `HS*` are always refused",
            doc_type="array of strings",
        ),
        Field(
            "leeway",
            "integer",
            30,
            between=(0, MAX_LEEWAY),
            doc="seconds of clock skew allowed for `exp`, `nbf` and `iat`",
        ),
        Field(
            "required_claims",
            "array",
            (),
            elements=_STRINGS,
            doc="claims that must be present (dotted paths such as `kubernetes.io.pod.uid`). "
            "`exp`, `iss` and `aud` are always required",
            doc_type="array of strings",
        ),
        Field(
            "refresh_interval",
            "number",
            300,
            between=(10, 86400),
            doc="seconds between background JWKS refreshes",
        ),
        Field(
            "min_refetch_interval",
            "number",
            30,
            between=(1, 3600),
            doc="seconds between refetches caused by tokens with an unknown `kid`, for the "
            "whole process; also the retry interval while fetching fails",
        ),
        Field(
            "fetch_timeout",
            "number",
            5,
            between=(0.1, 30),
            doc="timeout of one key fetch, and the longest a request with an unknown `kid` "
            "waits for a refetch",
        ),
        Field(
            "max_keys",
            "integer",
            32,
            between=(1, 256),
            doc="the most keys kept from one JWKS",
        ),
        Field(
            "ca_file",
            "string",
            description="CA bundle for https key fetches",
            doc="CA bundle for `https` key fetches (e.g. the cluster CA)",
        ),
        Field(
            "fetch_token_file",
            "string",
            description="file with a bearer token sent when fetching keys",
            doc="file holding a bearer token sent with key fetches (read at every fetch, so "
            "rotated tokens work)",
        ),
        Field(
            "consumer_claim",
            "string",
            description="claim naming the consumer",
            doc="claim that names the Kong consumer the token stands for (e.g. `sub`)",
        ),
        Field(
            "consumer_by",
            "string",
            "username",
            required=True,
            one_of=CONSUMER_BY,
            doc="what `consumer_claim` holds: `username`, `custom_id` or `id`",
        ),
        Field(
            "service_account_token",
            "boolean",
            False,
            required=True,
            doc="template for Kubernetes service-account tokens: adds claim rules "
            "`kubernetes.io.namespace` = `identity.namespace` and "
            "`kubernetes.io.serviceaccount.name` = `identity.service_account`",
        ),
        Field(
            "pod_binding",
            "boolean",
            False,
            required=True,
            doc="with `service_account_token`: also `kubernetes.io.pod.name` = `identity.pod` "
            "and `kubernetes.io.pod.uid` = `identity.pod_uid`",
        ),
    ),
)

SCHEMA: dict[str, Any] = FIELDS.record()


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
    refresh_interval: float = FIELDS.default("refresh_interval")
    min_refetch_interval: float = FIELDS.default("min_refetch_interval")
    fetch_timeout: float = FIELDS.default("fetch_timeout")
    max_keys: int = FIELDS.default("max_keys")
    ca_file: str | None = None
    fetch_token_file: str | None = None

    @property
    def remote(self) -> bool:
        return bool(self.jwks_uri or self.discovery_url)


@dataclass(frozen=True)
class TokenSettings:
    enabled: bool = FIELDS.default("enabled")
    header: str = FIELDS.default("header")
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: int = FIELDS.default("leeway")
    required_claims: tuple[str, ...] = ("exp",)  # always required, whatever is configured
    consumer_claim: str | None = None
    consumer_by: str = FIELDS.default("consumer_by")
    service_account_token: bool = FIELDS.default("service_account_token")
    pod_binding: bool = FIELDS.default("pod_binding")
    keys: KeySettings = field(default_factory=KeySettings)


DISABLED = TokenSettings()

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_FORBIDDEN_ALGORITHMS = re.compile(r"^(none|HS\d+)$", re.IGNORECASE)


def parse_settings(record: Mapping[str, Any] | None) -> TokenSettings:
    """Settings from the ``config.token`` record (None or ``enabled: false`` -> DISABLED)."""
    if not record or not FIELDS.value(record, "enabled"):
        return DISABLED
    issuer = _text(record.get("issuer"), "token.issuer")
    if issuer is None:
        raise ConfigError("token.issuer is required: tokens are accepted from one issuer only")
    audiences = _texts(FIELDS.value(record, "audiences"), "token.audiences")
    if not audiences:
        raise ConfigError(
            "token.audiences needs at least one value: without it a token minted for any "
            "other service of the same issuer would be accepted"
        )
    algorithms = _algorithms(FIELDS.value(record, "algorithms"))
    keys = _key_settings(record, issuer, algorithms)
    service_account_token = bool(FIELDS.value(record, "service_account_token"))
    pod_binding = bool(FIELDS.value(record, "pod_binding"))
    if pod_binding and not service_account_token:
        raise ConfigError(
            "token.pod_binding compares Kubernetes pod claims; it needs "
            "token.service_account_token: true"
        )
    consumer_by = str(FIELDS.value(record, "consumer_by"))
    if consumer_by not in CONSUMER_BY:
        raise ConfigError(f"token.consumer_by must be one of {', '.join(CONSUMER_BY)}")
    return TokenSettings(
        enabled=True,
        header=_header(FIELDS.value(record, "header")),
        issuer=issuer,
        audiences=audiences,
        algorithms=algorithms,
        leeway=_leeway(FIELDS.value(record, "leeway")),
        required_claims=tuple(
            dict.fromkeys(
                ("exp", *_texts(FIELDS.value(record, "required_claims"), "token.required_claims"))
            )
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
    pems = _texts(FIELDS.value(record, "public_keys"), "token.public_keys")
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
        refresh_interval=float(FIELDS.value(record, "refresh_interval")),
        min_refetch_interval=float(FIELDS.value(record, "min_refetch_interval")),
        fetch_timeout=float(FIELDS.value(record, "fetch_timeout")),
        max_keys=int(FIELDS.value(record, "max_keys")),
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
    values = _texts(raw, "token.algorithms")
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
    name = (_text(raw, "token.header") or "").lower()
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"token.header {raw!r} is not a valid header name")
    return name


def _leeway(value: Any) -> int:
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
