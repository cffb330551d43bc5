"""verify(): every documented outcome against a real JWKS served over loopback HTTP."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kong_cilium_identity.token import (
    KeyStore,
    TokenFailure,
    TokenReason,
    TokenSettings,
    Verified,
    extract_token,
    verify,
)
from tests.kit.fake_issuer import FakeIssuer
from tests.token.conftest import settings_for


@pytest.fixture(scope="module")
def shared_issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        fake.add_key("ec384", "ec384")
        fake.add_key("ed1", "ed25519")
        fake.add_key("ps1", "rsa", algorithm="PS256")
        fake.add_key("unpublished", "rsa", publish=False)
        yield fake


@pytest.fixture(scope="module")
def settings(shared_issuer: FakeIssuer) -> TokenSettings:
    return settings_for(shared_issuer)


@pytest.fixture(scope="module")
def store(settings: TokenSettings) -> Iterator[KeyStore]:
    keys = KeyStore(settings.keys)
    yield keys
    keys.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    return ".".join((header, _b64(json.dumps(claims).encode()), signature))


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[FakeIssuer], str]
    reason: TokenReason | None  # None: verifies


NOW = int(time.time())
CASES = [
    Case("valid rsa", lambda i: i.sign(i.claims(sub="alice"), key="rsa1"), None),
    Case("valid ec", lambda i: i.sign(i.claims(sub="alice"), key="ec1"), None),
    Case(
        "expired within leeway",
        lambda i: i.sign(i.claims(exp=int(time.time()) - 10)),
        None,
    ),
    Case(
        "expired",
        lambda i: i.sign(i.claims(iat=NOW - 600, nbf=NOW - 600, exp=int(time.time()) - 120)),
        TokenReason.EXPIRED,
    ),
    Case(
        "not yet valid",
        lambda i: i.sign(i.claims(nbf=int(time.time()) + 600)),
        TokenReason.NOT_YET_VALID,
    ),
    Case(
        "wrong issuer", lambda i: i.sign(i.claims(iss="https://evil.example")), TokenReason.ISSUER
    ),
    Case("wrong audience", lambda i: i.sign(i.claims(aud="other-api")), TokenReason.AUDIENCE),
    Case(
        "one of several audiences",
        lambda i: i.sign(i.claims(aud=["other-api", "kong"])),
        None,
    ),
    Case(
        "no exp",
        lambda i: i.sign({k: v for k, v in i.claims().items() if k != "exp"}),
        TokenReason.CLAIMS,
    ),
    Case(
        "no aud",
        lambda i: i.sign({k: v for k, v in i.claims().items() if k != "aud"}),
        TokenReason.CLAIMS,
    ),
    Case("alg none", lambda i: i.forge_none(i.claims()), TokenReason.ALGORITHM),
    Case(
        "HS256 keyed with the RSA public key",
        lambda i: i.forge_hmac(i.claims()),
        TokenReason.ALGORITHM,
    ),
    Case(
        "tampered payload", lambda i: _tamper(i.sign(i.claims(sub="alice"))), TokenReason.SIGNATURE
    ),
    Case(
        "signature of another key under this kid",
        lambda i: i.sign(i.claims(), key="unpublished", headers={"kid": "rsa1-kid"}),
        TokenReason.SIGNATURE,
    ),
    Case("garbage", lambda i: "not-a-token", TokenReason.MALFORMED),
    Case(
        "two segments", lambda i: ".".join(i.sign(i.claims()).split(".")[:2]), TokenReason.MALFORMED
    ),
    Case(
        "bad base64",
        lambda i: "!!!." + i.sign(i.claims()).split(".", 1)[1],
        TokenReason.MALFORMED,
    ),
    Case(
        "non-JSON header",
        lambda i: _b64(b"{not json") + "." + i.sign(i.claims()).split(".", 1)[1],
        TokenReason.MALFORMED,
    ),
    Case("signed non-JSON payload", lambda i: i.sign_bytes(b"[1,2"), TokenReason.MALFORMED),
    Case("signed JSON array payload", lambda i: i.sign_bytes(b"[1,2]"), TokenReason.MALFORMED),
    Case(
        "kid is a number",
        lambda i: i.sign_parts({"alg": "RS256", "kid": 7}, json.dumps(i.claims()).encode()),
        TokenReason.MALFORMED,
    ),
    Case(
        "critical header extension",
        lambda i: i.sign(i.claims(), headers={"crit": ["exp"], "exp": 1}),
        TokenReason.MALFORMED,
    ),
    Case("ES384 not configured", lambda i: i.sign(i.claims(), key="ec384"), TokenReason.ALGORITHM),
    Case("EdDSA not configured", lambda i: i.sign(i.claims(), key="ed1"), TokenReason.ALGORITHM),
    Case(
        "RS256 header on an EC key's kid",
        lambda i: i.sign(i.claims(), key="unpublished", headers={"kid": "ec1-kid"}),
        TokenReason.UNKNOWN_KEY,
    ),
    Case(
        "unknown kid (refetch rate-limited)",
        lambda i: i.sign(i.claims(), key="unpublished"),
        TokenReason.UNKNOWN_KEY,
    ),
    Case(
        "no kid: every fitting key is tried",
        lambda i: i.sign(i.claims(), headers={"kid": None}),
        None,
    ),
    Case(
        "iat in the future",
        lambda i: i.sign(i.claims(iat=int(time.time()) + 600)),
        TokenReason.NOT_YET_VALID,
    ),
    Case("sub is a number", lambda i: i.sign(i.claims(sub=42)), TokenReason.CLAIMS),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_verify_outcomes(
    case: Case, shared_issuer: FakeIssuer, settings: TokenSettings, store: KeyStore
) -> None:
    result = verify(case.make(shared_issuer), settings, store)
    if case.reason is None:
        assert isinstance(result, Verified), result
        assert result.claims["iss"] == shared_issuer.issuer
        return
    assert isinstance(result, TokenFailure)
    assert (result.reason, result.status) == (case.reason, 401)
    assert result.www_authenticate is not None
    assert result.www_authenticate.startswith('Bearer realm="kong", error="invalid_token"')


def test_failure_description_never_quotes_the_token(
    shared_issuer: FakeIssuer, settings: TokenSettings, store: KeyStore
) -> None:
    token = shared_issuer.sign(shared_issuer.claims(aud='x", error="none'))
    result = verify(token, settings, store)
    assert isinstance(result, TokenFailure)
    assert token not in result.description
    assert result.www_authenticate is not None
    assert result.www_authenticate.count('"') == 6


def test_wider_algorithm_list_accepts_es384_and_eddsa(
    shared_issuer: FakeIssuer, open_store: Callable[[TokenSettings], KeyStore]
) -> None:
    settings = settings_for(shared_issuer, algorithms=["ES384", "EdDSA", "PS256"])
    store = open_store(settings)
    for key in ("ec384", "ed1", "ps1"):
        token = shared_issuer.sign(shared_issuer.claims(), key=key)
        assert isinstance(verify(token, settings, store), Verified), key
    # the JWK of rsa1 says alg RS256: the same key under PS256 is not accepted
    ps_with_rs_key = shared_issuer.sign(shared_issuer.claims(), key="rsa1", algorithm="PS256")
    result = verify(ps_with_rs_key, settings, store)
    assert isinstance(result, TokenFailure) and result.reason is TokenReason.UNKNOWN_KEY
    rs256 = shared_issuer.sign(shared_issuer.claims(), key="rsa1")
    result = verify(rs256, settings, store)
    assert isinstance(result, TokenFailure) and result.reason is TokenReason.ALGORITHM


def test_required_claims_use_dotted_paths(
    shared_issuer: FakeIssuer, open_store: Callable[[TokenSettings], KeyStore]
) -> None:
    settings = settings_for(shared_issuer, required_claims=["kubernetes.io.pod.uid"])
    store = open_store(settings)
    with_pod = shared_issuer.sign(shared_issuer.service_account_claims("shop", "sa", "p", "u1"))
    without = shared_issuer.sign(shared_issuer.claims(sub="alice"))
    assert isinstance(verify(with_pod, settings, store), Verified)
    result = verify(without, settings, store)
    assert isinstance(result, TokenFailure)
    assert (result.reason, result.description) == (
        TokenReason.CLAIMS,
        "required claim kubernetes.io.pod.uid is missing",
    )


def test_static_public_keys_verify_without_a_jwks(
    shared_issuer: FakeIssuer, open_store: Callable[[TokenSettings], KeyStore]
) -> None:
    settings = settings_for(
        shared_issuer, discovery_url=None, public_keys=[shared_issuer.public_pem("ec1")]
    )
    store = open_store(settings)
    assert store.ready()
    for headers in ({"kid": None}, {"kid": "whatever"}):
        token = shared_issuer.sign(shared_issuer.claims(), key="ec1", headers=headers)
        assert isinstance(verify(token, settings, store), Verified)
    other = shared_issuer.sign(shared_issuer.claims(), key="rsa1")
    result = verify(other, settings, store)
    assert isinstance(result, TokenFailure) and result.reason is TokenReason.UNKNOWN_KEY
    assert shared_issuer.jwks_requests >= 0  # static keys never needed the issuer


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER   abc.def.ghi  ", "abc.def.ghi"),
        (["Bearer abc.def.ghi"], "abc.def.ghi"),
        (None, TokenReason.MISSING),
        ("", TokenReason.MISSING),
        ([], TokenReason.MISSING),
        ([True], TokenReason.MISSING),
        ({"bearer": "x"}, TokenReason.MISSING),
        (7, TokenReason.MISSING),
        ("Basic dXNlcjpwYXNz", TokenReason.MISSING),
        ("Bearer", TokenReason.MISSING),
        ("abc.def.ghi", TokenReason.MISSING),
        (["Bearer a.b.c", "Bearer d.e.f"], TokenReason.BAD_REQUEST),
    ],
)
def test_extract_from_authorization(
    value: object, expected: str | TokenReason, settings: TokenSettings
) -> None:
    result = extract_token(value, settings)
    if not isinstance(expected, TokenReason):
        assert result == expected
        return
    assert isinstance(result, TokenFailure)
    assert (result.reason, result.status) == (expected, expected.status)
    if expected is TokenReason.MISSING:
        assert result.www_authenticate == 'Bearer realm="kong"'
    else:
        assert result.status == 400
        assert result.www_authenticate is not None
        assert 'error="invalid_request"' in result.www_authenticate


def test_extract_from_custom_header_takes_bare_or_bearer(shared_issuer: FakeIssuer) -> None:
    settings = settings_for(shared_issuer, header="X-Workload-Token")
    assert settings.header == "x-workload-token"
    assert extract_token("abc.def.ghi", settings) == "abc.def.ghi"
    assert extract_token("Bearer abc.def.ghi", settings) == "abc.def.ghi"
    result = extract_token("abc def", settings)
    assert isinstance(result, TokenFailure) and result.reason is TokenReason.MALFORMED


def test_oversized_token_is_malformed(settings: TokenSettings, store: KeyStore) -> None:
    result = verify("a" * 20000, settings, store)
    assert isinstance(result, TokenFailure) and result.reason is TokenReason.MALFORMED


FUTURE = NOW + 3600
SHAPE_CASES = [
    ("exp as a numeric string", {"exp": str(FUTURE)}, TokenReason.CLAIMS),
    ("exp as the string 1796171846", {"exp": "1796171846"}, TokenReason.CLAIMS),
    ("exp true", {"exp": True}, TokenReason.CLAIMS),
    ("exp null", {"exp": None}, TokenReason.CLAIMS),
    ("exp a list", {"exp": [FUTURE]}, TokenReason.CLAIMS),
    ("nbf as a numeric string", {"nbf": str(NOW - 60)}, TokenReason.CLAIMS),
    ("nbf false", {"nbf": False}, TokenReason.CLAIMS),
    ("iat as a numeric string", {"iat": str(NOW)}, TokenReason.CLAIMS),
    ("iat an object", {"iat": {"at": NOW}}, TokenReason.CLAIMS),
    ("lone surrogate in sub", {"sub": "\ud800"}, TokenReason.CLAIMS),
    (
        "lone low surrogate in a nested claim",
        {"ext": {"team": ["a", "x\udfff"]}},
        TokenReason.CLAIMS,
    ),
    ("lone surrogate in a claim name", {"\ud800": "x"}, TokenReason.CLAIMS),
    ("exp a fractional number", {"exp": FUTURE + 0.5}, None),
    ("iat and nbf as numbers", {"iat": NOW, "nbf": NOW - 60.25}, None),
    ("a surrogate pair is one character", {"sub": "\ud83d\ude00"}, None),
    ("an escaped backslash before u", {"sub": "\\ud800"}, None),
]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [(c[1], c[2]) for c in SHAPE_CASES],
    ids=[c[0] for c in SHAPE_CASES],
)
def test_claim_shapes(
    overrides: dict[str, object],
    reason: TokenReason | None,
    shared_issuer: FakeIssuer,
    settings: TokenSettings,
    store: KeyStore,
) -> None:
    """RFC 7519 NumericDate is a JSON number (a bool is not); strings must be text."""
    claims = {**shared_issuer.claims(sub="alice"), **overrides}
    token = shared_issuer.sign_bytes(json.dumps(claims).encode())
    result = verify(token, settings, store)
    if reason is None:
        assert isinstance(result, Verified), result
        return
    assert isinstance(result, TokenFailure), result
    assert (result.reason, result.status) == (reason, 401)
    assert result.www_authenticate is not None
    assert 'error="invalid_token"' in result.www_authenticate


def test_non_finite_exp_is_refused(
    shared_issuer: FakeIssuer, settings: TokenSettings, store: KeyStore
) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = json.dumps({**shared_issuer.claims(), "exp": 0}).encode()
        token = shared_issuer.sign_bytes(body.replace(b'"exp": 0', b'"exp": ' + literal))
        result = verify(token, settings, store)
        assert isinstance(result, TokenFailure) and result.status == 401, literal
