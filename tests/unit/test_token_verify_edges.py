"""Edges of the bearer-token check that the issuer-backed tests do not pin down
(token/verify.py): exact failure texts and challenges, the custom-header path, the
fallback for an unmapped pyjwt error and the Unicode walk over claims."""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kong_cilium_identity.token.keys import KeyMatch, VerificationKey
from kong_cilium_identity.token.settings import TokenSettings
from kong_cilium_identity.token.verify import (
    ClaimShapeError,
    TokenFailure,
    TokenReason,
    Verified,
    _encodable,
    _failure_for,
    extract_token,
    verify,
)

AUTHORIZATION = TokenSettings()
CUSTOM = dataclasses.replace(TokenSettings(), header="x-workload-token")


def _failure(result: str | TokenFailure) -> TokenFailure:
    assert isinstance(result, TokenFailure), result
    return result


@pytest.mark.parametrize("settings", [AUTHORIZATION, CUSTOM])
@pytest.mark.parametrize("value", [None, "", "   ", [], 7])
def test_no_token_is_missing_with_a_bare_challenge(settings: TokenSettings, value: object) -> None:
    failure = _failure(extract_token(value, settings))
    assert (failure.status, failure.reason, failure.description) == (
        401,
        TokenReason.MISSING,
        "no bearer token",
    )
    assert failure.headers() == {"WWW-Authenticate": 'Bearer realm="kong"'}


def test_another_scheme_on_authorization_is_no_token() -> None:
    failure = _failure(extract_token("Basic dXNlcjpwYXNz", AUTHORIZATION))
    assert (failure.reason, failure.description) == (TokenReason.MISSING, "no bearer token")


def test_a_custom_header_takes_a_bare_token_but_not_one_with_spaces() -> None:
    assert extract_token("  abc.def.ghi  ", CUSTOM) == "abc.def.ghi"
    assert extract_token(["abc.def.ghi"], CUSTOM) == "abc.def.ghi"
    failure = _failure(extract_token("abc def", CUSTOM))
    assert (failure.status, failure.reason, failure.description) == (
        401,
        TokenReason.MALFORMED,
        "token contains whitespace",
    )
    assert failure.headers() == {
        "WWW-Authenticate": 'Bearer realm="kong", error="invalid_token", '
        'error_description="token contains whitespace"'
    }


def test_two_header_lines_are_a_bad_request() -> None:
    failure = _failure(extract_token(("a", "b"), CUSTOM))
    assert (failure.status, failure.description) == (400, "more than one x-workload-token")
    assert 'error="invalid_request"' in failure.headers()["WWW-Authenticate"]


def test_unavailable_keys_send_no_challenge() -> None:
    failure = TokenFailure.of(TokenReason.KEYS_UNAVAILABLE, "down")
    assert (failure.status, failure.www_authenticate, failure.headers()) == (503, None, {})


def test_the_challenge_keeps_only_rfc6750_characters() -> None:
    failure = TokenFailure.of(TokenReason.SIGNATURE, 'bad "sig"\\ é' + "x" * 300)
    header = failure.headers()["WWW-Authenticate"]
    description = header.split('error_description="', 1)[1][:-1]
    assert description.startswith("bad ?sig?? ?")
    assert len(description) == 200


def test_an_unmapped_pyjwt_error_is_a_malformed_token() -> None:
    failure = _failure_for(jwt.DecodeError("not json"))
    assert (failure.status, failure.reason, failure.description) == (
        401,
        TokenReason.MALFORMED,
        "token is not a well-formed JWT",
    )
    assert _failure_for(ValueError("x")).reason is TokenReason.MALFORMED


@pytest.mark.parametrize(
    ("error", "reason", "description"),
    [
        (ClaimShapeError("x"), TokenReason.CLAIMS, "claims do not have their RFC 7519 shapes"),
        (jwt.ExpiredSignatureError(), TokenReason.EXPIRED, "token expired"),
        (jwt.ImmatureSignatureError(), TokenReason.NOT_YET_VALID, "token not yet valid"),
        (jwt.InvalidIssuerError(), TokenReason.ISSUER, "issuer not accepted"),
        (jwt.InvalidAudienceError(), TokenReason.AUDIENCE, "audience not accepted"),
        (jwt.MissingRequiredClaimError("sub"), TokenReason.CLAIMS, "a required claim is missing"),
        (jwt.InvalidIssuedAtError(), TokenReason.CLAIMS, "iat claim is invalid"),
        (jwt.InvalidAlgorithmError(), TokenReason.ALGORITHM, "algorithm not accepted"),
    ],
)
def test_pyjwt_errors_map_to_reasons(
    error: Exception, reason: TokenReason, description: str
) -> None:
    failure = _failure_for(error)
    assert (failure.reason, failure.description) == (reason, description)


def test_the_unicode_walk_reaches_every_string() -> None:
    assert _encodable({"a": ["b", {"c": 1, "d": None}], "e": 2.5})
    assert not _encodable({"a": ["ok", {"c": "\ud800"}]})
    assert not _encodable({"\udfff": 1})
    assert not _encodable({"a": "\ud83d"})


def _unsigned(header: object) -> str:
    """A compact JWS with the given header, a small payload and a junk signature."""

    def part(value: object) -> str:
        raw = json.dumps(value).encode() if not isinstance(value, bytes) else value
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part({'sub': 'x'})}.{part(b'sig')}"


class NoKeys:
    """A key store that must not be asked: these tokens fail before key lookup."""

    def keys_for(self, kid: str | None, algorithm: str) -> object:
        raise AssertionError(f"keys asked for {kid!r}/{algorithm}")


@pytest.mark.parametrize(
    ("token", "description"),
    [
        ("not-a-jws", "token is not a well-formed JWS"),
        (_unsigned({"typ": "JWT"}), "token header has no alg"),
        (_unsigned({"alg": 256}), "token header has no alg"),
        (_unsigned({"alg": "HS256"}), "algorithm HS256 is not accepted"),
        (_unsigned({"alg": "none"}), "algorithm none is not accepted"),
        ("a" * 16385, "token too long"),
    ],
)
def test_header_failures_say_why_without_asking_for_keys(token: str, description: str) -> None:
    failure = verify(token, AUTHORIZATION, NoKeys())  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert failure.description == description
    assert failure.reason in (TokenReason.MALFORMED, TokenReason.ALGORITHM)
    assert failure.status == 401


def test_a_token_at_the_length_limit_is_not_too_long() -> None:
    failure = verify("a" * 16384, AUTHORIZATION, NoKeys())  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert failure.description == "token is not a well-formed JWS"


def test_an_unexpected_exception_is_an_unverifiable_token() -> None:
    class Exploding:
        def keys_for(self, kid: str | None, algorithm: str) -> object:
            raise KeyError("boom")

    failure = verify(_unsigned({"alg": "RS256"}), AUTHORIZATION, Exploding())  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert (failure.reason, failure.description) == (
        TokenReason.MALFORMED,
        "unverifiable token (KeyError)",
    )


@pytest.mark.parametrize(
    ("header", "description"),
    [
        ({"alg": "RS256", "kid": 7}, "token header kid is not a string"),
        ({"alg": "RS256", "crit": ["b64"]}, "critical header extensions are not supported"),
    ],
)
def test_header_checks_hold_even_if_pyjwt_lets_the_header_through(
    monkeypatch: pytest.MonkeyPatch, header: dict[str, object], description: str
) -> None:
    """pyjwt 2.10 refuses these headers itself; our own check must not depend on it."""
    assert isinstance(verify(_unsigned(header), AUTHORIZATION, NoKeys()), TokenFailure)  # type: ignore[arg-type]
    monkeypatch.setattr(jwt, "get_unverified_header", lambda token: header)
    failure = verify(_unsigned(header), AUTHORIZATION, NoKeys())  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert (failure.reason, failure.description) == (TokenReason.MALFORMED, description)


# --------------------------------------------------------------------------- signed tokens

_KEY_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_KEY_B = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_NOW = int(time.time())
_SETTINGS = dataclasses.replace(
    TokenSettings(), issuer="https://issuer.test", audiences=("kong",), required_claims=()
)


class StaticKeys:
    """A key store holding fixed candidate keys for every kid."""

    def __init__(self, *keys: rsa.RSAPrivateKey, unavailable: str | None = None) -> None:
        self._match = KeyMatch(
            tuple(VerificationKey(key.public_key()) for key in keys), unavailable
        )

    def keys_for(self, kid: str | None, algorithm: str) -> KeyMatch:
        return self._match


def _signed(key: rsa.RSAPrivateKey = _KEY_A, kid: str | None = "k1", **claims: object) -> str:
    payload = {"iss": "https://issuer.test", "aud": "kong", "exp": _NOW + 300, **claims}
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def test_a_verified_token_reports_its_kid_and_algorithm() -> None:
    result = verify(_signed(sub="a"), _SETTINGS, StaticKeys(_KEY_A))  # type: ignore[arg-type]
    assert isinstance(result, Verified)
    assert (result.key_id, result.algorithm, result.claims["sub"]) == ("k1", "RS256", "a")


def test_every_candidate_key_is_tried_before_the_signature_fails() -> None:
    keys = StaticKeys(_KEY_B, _KEY_A)
    assert isinstance(verify(_signed(), _SETTINGS, keys), Verified)  # type: ignore[arg-type]
    failure = verify(_signed(), _SETTINGS, StaticKeys(_KEY_B))  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert (failure.reason, failure.description) == (
        TokenReason.SIGNATURE,
        "signature verification failed",
    )


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_exp_iss_and_aud_are_required_even_when_no_claim_is_configured(claim: str) -> None:
    """A token that never expires must not pass, whatever required_claims says."""
    token = _signed(**{claim: None})
    failure = verify(token, _SETTINGS, StaticKeys(_KEY_A))  # type: ignore[arg-type]
    assert isinstance(failure, TokenFailure)
    assert failure.reason is TokenReason.CLAIMS


def test_no_key_for_the_kid_is_an_unknown_key_or_unavailable_keys() -> None:
    unknown = verify(_signed(), _SETTINGS, StaticKeys())  # type: ignore[arg-type]
    assert isinstance(unknown, TokenFailure)
    assert (unknown.reason, unknown.description) == (
        TokenReason.UNKNOWN_KEY,
        "no key matches the token's kid",
    )
    down = verify(_signed(), _SETTINGS, StaticKeys(unavailable="jwks timeout"))  # type: ignore[arg-type]
    assert isinstance(down, TokenFailure)
    assert (down.status, down.description) == (503, "signing keys unavailable: jwks timeout")
