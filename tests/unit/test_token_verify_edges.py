"""Edges of the bearer-token check that the issuer-backed tests do not pin down
(token/verify.py): exact failure texts and challenges, the custom-header path, the
fallback for an unmapped pyjwt error and the Unicode walk over claims."""

from __future__ import annotations

import dataclasses

import jwt
import pytest

from kong_cilium_identity.token.settings import TokenSettings
from kong_cilium_identity.token.verify import (
    ClaimShapeError,
    TokenFailure,
    TokenReason,
    _encodable,
    _failure_for,
    extract_token,
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
