"""Verifying a bearer token: header value in, claims or a typed failure out. Never raises.

Order: take the token out of the header (RFC 6750 ``Bearer``), read its JOSE header
without trusting it, refuse an algorithm that is not configured (``none`` and HS* never
are), find candidate keys by ``kid`` in the key store, verify the signature with each
candidate, then the claims' shapes (``exp``/``nbf``/``iat`` are JSON numbers, RFC 7519
NumericDate; every string is valid Unicode text), issuer, audience, the times with the
configured leeway, and required claims. Keys named by the token itself (``jku``, ``x5u``,
``jwk``) are ignored.

Every failure carries the HTTP status, a reason code for logs and metrics, a short
description that never quotes the token, and the ``WWW-Authenticate`` value to send.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt

from kong_cilium_identity.policy.claims import MISSING, claim_at
from kong_cilium_identity.token.algorithms import SUPPORTED_ALGORITHMS
from kong_cilium_identity.token.keys import KeyStore
from kong_cilium_identity.token.settings import TokenSettings

REALM = "kong"
MAX_TOKEN_LENGTH = 16384
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
# A JSON escape of a UTF-16 surrogate (``\ud800``): only these decode to strings that
# cannot be encoded; valid pairs combine into one character, checked on the way.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class ClaimShapeError(jwt.DecodeError):
    """A signed payload whose claims do not have the shapes RFC 7519 gives them."""


class _StrictJWT(jwt.PyJWT):
    """pyjwt's decoder, refusing claim shapes it would coerce: ``int("1796171846")``
    and ``int(True)`` pass its time checks. Runs after the signature verified and
    before pyjwt checks the claims."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = super()._decode_payload(decoded)
        for name in NUMERIC_DATE_CLAIMS:
            if name in payload and not _is_numeric_date(payload[name]):
                raise ClaimShapeError(f"{name} claim is not a number")
        raw = decoded.get("payload")
        if isinstance(raw, bytes) and _SURROGATE_ESCAPE.search(raw) and not _encodable(payload):
            raise ClaimShapeError("a claim is not valid Unicode text")
        return payload


_DECODER = _StrictJWT()


def _is_numeric_date(value: object) -> bool:
    if type(value) is int:  # the common case, and never a bool
        return True
    return isinstance(value, float) and math.isfinite(value)


def _encodable(payload: Mapping[str, Any]) -> bool:
    """Every string (keys included) encodes as UTF-8; walked without recursion."""
    pending: list[Any] = [payload]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


class TokenReason(enum.StrEnum):
    MISSING = "token_missing"
    BAD_REQUEST = "token_bad_request"
    MALFORMED = "token_malformed"
    ALGORITHM = "token_algorithm"
    UNKNOWN_KEY = "token_unknown_key"
    SIGNATURE = "token_signature"
    EXPIRED = "token_expired"
    NOT_YET_VALID = "token_not_yet_valid"
    ISSUER = "token_issuer"
    AUDIENCE = "token_audience"
    CLAIMS = "token_claims"
    KEYS_UNAVAILABLE = "token_keys_unavailable"

    @property
    def status(self) -> int:
        if self is TokenReason.BAD_REQUEST:
            return 400
        if self is TokenReason.KEYS_UNAVAILABLE:
            return 503
        return 401


@dataclass(frozen=True)
class Verified:
    claims: Mapping[str, Any]
    key_id: str | None
    algorithm: str


@dataclass(frozen=True)
class TokenFailure:
    status: int
    reason: TokenReason
    description: str
    www_authenticate: str | None

    @classmethod
    def of(cls, reason: TokenReason, description: str) -> TokenFailure:
        return cls(reason.status, reason, description, _challenge(reason, description))

    def headers(self) -> dict[str, str]:
        """Response headers for ``kong.response.error(status, message, headers)``."""
        return {"WWW-Authenticate": self.www_authenticate} if self.www_authenticate else {}


def _challenge(reason: TokenReason, description: str) -> str | None:
    if reason is TokenReason.KEYS_UNAVAILABLE:
        return None
    if reason is TokenReason.MISSING:
        # RFC 6750 section 3.1: no error code when the request carried no token.
        return f'Bearer realm="{REALM}"'
    error = "invalid_request" if reason is TokenReason.BAD_REQUEST else "invalid_token"
    return f'Bearer realm="{REALM}", error="{error}", error_description="{_quotable(description)}"'


def _quotable(text: str) -> str:
    """RFC 6750 limits error_description to %x20-21 / %x23-5B / %x5D-7E."""
    return re.sub(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]", "?", text)[:200]


_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


def extract_token(value: object, settings: TokenSettings) -> str | TokenFailure:
    """The token in the configured header's value(s).

    ``value`` is what ``kong.request.get_header(settings.header)`` (a string or None) or
    ``kong.request.get_headers()[settings.header]`` (a list) returned. With the
    ``authorization`` header the ``Bearer`` scheme is required (case-insensitive); any
    other scheme counts as no token. A custom header may carry the bare token. Values
    of any other type (Kong sends ``[]`` for a header without value) count as no token.
    """
    if isinstance(value, list | tuple):
        if len(value) > 1:
            return TokenFailure.of(TokenReason.BAD_REQUEST, f"more than one {settings.header}")
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return TokenFailure.of(TokenReason.MISSING, "no bearer token")
    match = _BEARER.match(value)
    if match is not None:
        return match.group(1)
    if settings.header == "authorization":
        return TokenFailure.of(TokenReason.MISSING, "no bearer token")
    token = value.strip()
    if any(char.isspace() for char in token):
        return TokenFailure.of(TokenReason.MALFORMED, "token contains whitespace")
    return token


def verify(token: str, settings: TokenSettings, keys: KeyStore) -> Verified | TokenFailure:
    """Verify ``token`` against ``settings`` with keys from ``keys``; never raises."""
    try:
        return _verify(token, settings, keys)
    except Exception as error:  # a bug must not become an allow, nor kill the phase
        return TokenFailure.of(
            TokenReason.MALFORMED, f"unverifiable token ({type(error).__name__})"
        )


def _verify(token: str, settings: TokenSettings, keys: KeyStore) -> Verified | TokenFailure:
    if len(token) > MAX_TOKEN_LENGTH:
        return TokenFailure.of(TokenReason.MALFORMED, "token too long")
    header = _header(token)
    if isinstance(header, TokenFailure):
        return header
    algorithm, kid = header
    if algorithm not in settings.algorithms or algorithm not in SUPPORTED_ALGORITHMS:
        return TokenFailure.of(TokenReason.ALGORITHM, f"algorithm {algorithm} is not accepted")
    match = keys.keys_for(kid, algorithm)
    if not match.keys:
        if match.unavailable is not None:
            return TokenFailure.of(
                TokenReason.KEYS_UNAVAILABLE, f"signing keys unavailable: {match.unavailable}"
            )
        return TokenFailure.of(TokenReason.UNKNOWN_KEY, "no key matches the token's kid")
    for candidate in match.keys:
        try:
            claims = _DECODER.decode(
                token,
                key=candidate.key,
                algorithms=[algorithm],
                issuer=settings.issuer,
                audience=list(settings.audiences),
                leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            continue
        except (jwt.PyJWTError, ValueError) as error:
            return _failure_for(error)
        missing = _missing_claim(claims, settings.required_claims)
        if missing is not None:
            return TokenFailure.of(TokenReason.CLAIMS, f"required claim {missing} is missing")
        return Verified(MappingProxyType(claims), kid, algorithm)
    return TokenFailure.of(TokenReason.SIGNATURE, "signature verification failed")


def _header(token: str) -> tuple[str, str | None] | TokenFailure:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return TokenFailure.of(TokenReason.MALFORMED, "token is not a well-formed JWS")
    algorithm = header.get("alg")
    kid = header.get("kid")
    if not isinstance(algorithm, str):
        return TokenFailure.of(TokenReason.MALFORMED, "token header has no alg")
    if kid is not None and not isinstance(kid, str):
        return TokenFailure.of(TokenReason.MALFORMED, "token header kid is not a string")
    if "crit" in header:
        return TokenFailure.of(
            TokenReason.MALFORMED, "critical header extensions are not supported"
        )
    return algorithm, kid


def _failure_for(error: Exception) -> TokenFailure:
    """Map a pyjwt error raised after the signature verified (or before it, for format)."""
    for kind, reason, description in _ERRORS:
        if isinstance(error, kind):
            return TokenFailure.of(reason, description)
    return TokenFailure.of(TokenReason.MALFORMED, "token is not a well-formed JWT")


_ERRORS: tuple[tuple[type[Exception], TokenReason, str], ...] = (
    (ClaimShapeError, TokenReason.CLAIMS, "claims do not have their RFC 7519 shapes"),
    (jwt.ExpiredSignatureError, TokenReason.EXPIRED, "token expired"),
    (jwt.ImmatureSignatureError, TokenReason.NOT_YET_VALID, "token not yet valid"),
    (jwt.InvalidIssuerError, TokenReason.ISSUER, "issuer not accepted"),
    (jwt.InvalidAudienceError, TokenReason.AUDIENCE, "audience not accepted"),
    (jwt.MissingRequiredClaimError, TokenReason.CLAIMS, "a required claim is missing"),
    (jwt.InvalidIssuedAtError, TokenReason.CLAIMS, "iat claim is invalid"),
    (jwt.exceptions.InvalidSubjectError, TokenReason.CLAIMS, "sub claim is invalid"),
    (jwt.exceptions.InvalidJTIError, TokenReason.CLAIMS, "jti claim is invalid"),
    (jwt.InvalidAlgorithmError, TokenReason.ALGORITHM, "algorithm not accepted"),
)


def _missing_claim(claims: Mapping[str, Any], required: Sequence[str]) -> str | None:
    for path in required:
        value = claim_at(claims, path)
        if value is MISSING or value is None:
            return path
    return None
