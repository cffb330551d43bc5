"""Through the plugin server: tokens whose claims have the wrong shapes are a 401
``invalid_token``, never a 500 (a lone surrogate in ``sub``) nor an allow (``exp`` as a
numeric string)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import running_server
from tests.e2e.test_token import POD_A_UID, config, send
from tests.kit.fake_issuer import FakeIssuer
from tests.kit.kong import KongHarness


@pytest.fixture(scope="module")
def kong() -> Iterator[KongHarness]:
    with running_server() as harness:
        yield harness


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(audience="kong") as fake:
        yield fake


def _pod_a_claims(issuer: FakeIssuer) -> dict[str, Any]:
    return dict(issuer.service_account_claims("shop", "checkout", "checkout-a", POD_A_UID))


@pytest.mark.parametrize(
    "change",
    [
        {"sub": "\ud800"},
        {"exp": "1796171846"},
        {"exp": True},
        {"nbf": "0"},
        {"iat": False},
    ],
    ids=["lone surrogate sub", "exp numeric string", "exp true", "nbf string", "iat false"],
)
def test_wrong_claim_shapes_are_401(
    kong: KongHarness, issuer: FakeIssuer, change: dict[str, Any]
) -> None:
    claims = {**_pod_a_claims(issuer), **change}
    token = issuer.sign_bytes(json.dumps(claims).encode())
    out = send(kong, config(issuer), token)
    assert not out.proxied and out.status == 401, (out.status, out.body)
    assert isinstance(out.body, dict) and "invalid_token" in out.body["message"]
    assert 'error="invalid_token"' in out.response_headers["www-authenticate"][0]


def test_the_same_token_with_number_claims_is_allowed(
    kong: KongHarness, issuer: FakeIssuer
) -> None:
    token = issuer.sign_bytes(json.dumps(_pod_a_claims(issuer)).encode())
    assert send(kong, config(issuer), token).proxied
