"""The plugin's own token check under hostile token headers (hypothesis), end to end.

With ``config.token`` the consumer comes from a verified token in the ``Authorization``
header. Whatever that header holds (other schemes, tampered or foreign-key tokens,
``alg: none``, expired tokens, invalid UTF-8, repeated headers, whitespace), a request is
proxied only when the header is one ``Bearer`` value carrying a token signed by the
configured key, for the bound consumer, from the bound address. Never a fail-open.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import running_server
from tests.kit.kong import ConfiguredPlugin, KongHarness, KongRequest
from tests.scenario import (
    CHECKOUT,
    CHECKOUT_APP_ENTRY,
    CHECKOUT_BINDING,
    CHECKOUT_IP,
    PAYMENTS_ENTRY,
    PAYMENTS_IP,
)

ISSUER = "https://issuer.test"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = (
    KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
CONSUMERS = [
    CHECKOUT,
    {"id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0002", "username": "payments", "tags": []},
]
CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {
        "entries": [CHECKOUT_APP_ENTRY, PAYMENTS_ENTRY],
    },
    "bindings": [CHECKOUT_BINDING],
    "token": {
        "enabled": True,
        "issuer": ISSUER,
        "audiences": ["kong"],
        "public_keys": [PUBLIC_PEM],
        "consumer_claim": "sub",
    },
}

FUZZ = settings(
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def sign(sub: str = "checkout", key: Any = KEY, **claims: Any) -> str:
    payload = {"iss": ISSUER, "aud": "kong", "sub": sub, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, key, algorithm="ES256")


GOOD = sign()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    payload = {"iss": ISSUER, "aud": "kong", "sub": "checkout", "exp": int(time.time()) + 7200}
    return f"{header}.{_b64(payload)}.{signature}"


BAD_TOKENS = [
    sign(key=OTHER_KEY),  # not our key
    sign(exp=int(time.time()) - 3600),  # expired
    sign(iss="https://elsewhere.test"),
    sign(aud="another-service"),
    sign(sub="nobody"),
    sign(sub="payments"),  # a real consumer, but not bound to checkout's address
    _tampered(GOOD),
    f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{GOOD.split('.')[1]}.",
    GOOD[:-4],
    GOOD + "x",
    "",
    "a.b.c",
]


@st.composite
def authorizations(draw: st.DrawFn) -> tuple[Any, bool]:
    """A header value, and whether it is exactly one Bearer value with the good token."""
    token = draw(st.one_of(st.just(GOOD), st.sampled_from(BAD_TOKENS)))
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", ""]))
    gap = draw(st.sampled_from([" ", "  ", "\t", ""]))
    value: Any = f"{scheme}{gap}{token}"
    carries_good = token == GOOD and scheme.lower() == "bearer" and gap != ""
    decoration = draw(st.sampled_from(["none", "none", "not-utf8", "repeated", "padded"]))
    if decoration == "not-utf8":
        value = value.encode() + b"\xff"
        carries_good = False
    elif decoration == "repeated":  # two Authorization headers: refused, whatever they say
        value = [value, draw(st.sampled_from([value, f"Bearer {BAD_TOKENS[0]}"]))]
        carries_good = False
    elif decoration == "padded":
        value = f" {value} "
    return value, carries_good


@pytest.fixture(scope="module")
def served(style_flags: list[str]) -> Iterator[tuple[KongHarness, ConfiguredPlugin]]:
    with running_server(*style_flags) as kong:
        yield kong, kong.add_plugin(CONFIG)


@FUZZ
@example(authorization=(f"Bearer {GOOD}", True), client_ip=CHECKOUT_IP)
@given(
    authorization=st.one_of(
        authorizations(), st.tuples(st.one_of(st.binary(max_size=30), st.text()), st.just(False))
    ),
    client_ip=st.sampled_from([CHECKOUT_IP, PAYMENTS_IP, "10.9.9.9"]),
)
def test_only_one_bearer_token_signed_by_our_key_for_the_bound_consumer_passes(
    served: tuple[KongHarness, ConfiguredPlugin],
    authorization: tuple[Any, bool],
    client_ip: str,
) -> None:
    kong, plugin = served
    value, carries_good = authorization
    out = kong.request(
        plugin,
        KongRequest(
            client_ip=client_ip, headers={"Authorization": value}, consumers=list(CONSUMERS)
        ),
    )
    assert not out.failed_open, out.kong_log
    expected = carries_good and client_ip == CHECKOUT_IP
    if out.proxied:
        assert expected, (value, client_ip)
        assert out.upstream_headers["x-cilium-identity"] == ["48861"]
    else:
        assert out.status in (400, 401, 403, 500, 503), out.status
    if expected and isinstance(value, str) and value.lower() == f"bearer {GOOD}".lower():
        assert out.proxied, (out.status, out.body)
