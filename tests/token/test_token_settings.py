"""config.token parsing: defaults, and every refusal with the message the operator sees."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kong_cilium_identity.errors import ConfigError
from kong_cilium_identity.kong.kong_schema import check_field, validate_config
from kong_cilium_identity.token import DISABLED, SCHEMA, parse_settings
from tests.kit.fake_issuer import FakeIssuer
from tests.token.conftest import record


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer() as fake:
        yield fake


def _schema_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for entry in SCHEMA["fields"]:
        ((name, spec),) = entry.items()
        defaults[name] = spec.get("default")
    return defaults


def test_schema_defaults_are_off_and_conservative() -> None:
    defaults = _schema_defaults()
    assert defaults["enabled"] is False
    assert defaults["header"] == "authorization"
    assert defaults["algorithms"] == ["RS256", "ES256"]
    assert defaults["leeway"] == 30
    assert defaults["service_account_token"] is False
    assert defaults["pod_binding"] is False
    assert parse_settings(defaults) is DISABLED
    assert parse_settings(None) is DISABLED


def test_schema_lists_no_symmetric_algorithm() -> None:
    (algorithms,) = [e["algorithms"] for e in SCHEMA["fields"] if "algorithms" in e]
    allowed = algorithms["elements"]["one_of"]
    assert "none" not in allowed
    assert not [name for name in allowed if name.startswith("HS")]


def test_a_full_record_parses_into_hashable_settings(issuer: FakeIssuer) -> None:
    raw = record(
        issuer,
        header="X-Token",
        algorithms=["ES256", "RS256", "ES256"],
        required_claims=["sub"],
        service_account_token=True,
        pod_binding=True,
    )
    settings = parse_settings(raw)
    assert settings == parse_settings(dict(raw))
    assert hash(settings) == hash(parse_settings(dict(raw)))
    assert settings.header == "x-token"
    assert settings.algorithms == ("ES256", "RS256")
    assert settings.required_claims == ("exp", "sub")
    assert settings.keys.discovery_url == issuer.discovery_url
    assert settings.keys.issuer == issuer.issuer
    jwks_only = parse_settings(record(issuer, discovery_url=None, jwks_uri=issuer.jwks_uri))
    assert jwks_only.keys.issuer is None  # shared with other issuers' configs of that JWKS


def _ec_pem(private: bool = False) -> str:
    key = ec.generate_private_key(ec.SECP384R1())
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("no issuer", {"issuer": None}, "token.issuer is required"),
    ("no audiences", {"audiences": []}, "token.audiences needs at least one value"),
    (
        "no key source",
        {"discovery_url": None},
        "token needs a key source: jwks_uri, discovery_url or public_keys",
    ),
    (
        "two remote sources",
        {"jwks_uri": "https://idp.example/jwks"},
        "set token.jwks_uri or token.discovery_url, not both",
    ),
    (
        "plain http to a remote host",
        {"discovery_url": "http://idp.example/.well-known/openid-configuration"},
        "must be an https URL (http only to a loopback host)",
    ),
    ("not a URL", {"discovery_url": "idp.example"}, "must be an https URL"),
    ("alg none", {"algorithms": ["RS256", "none"]}, "'none' is never accepted"),
    ("HS256", {"algorithms": ["HS256"]}, "algorithm confusion"),
    ("hs512 lower case", {"algorithms": ["hs512"]}, "'hs512' is never accepted"),
    ("unknown algorithm", {"algorithms": ["RS1"]}, "unknown algorithm 'RS1'"),
    ("empty algorithms", {"algorithms": []}, "needs at least one algorithm"),
    ("leeway too large", {"leeway": 301}, "between 0 and 300"),
    ("leeway negative", {"leeway": -1}, "between 0 and 300"),
    ("bad header", {"header": "x token"}, "not a valid header name"),
    ("pod binding alone", {"pod_binding": True}, "needs token.service_account_token: true"),
    ("bad consumer_by", {"consumer_by": "email"}, "consumer_by must be one of"),
    ("empty required claim", {"required_claims": [" "]}, "required_claims[0] must be"),
    ("issuer not a string", {"issuer": 5}, "token.issuer must be a string"),
    (
        "private key",
        {"discovery_url": None, "public_keys": [_ec_pem(private=True)]},
        "public_keys[0] is a private key",
    ),
    (
        "garbage key",
        {"discovery_url": None, "public_keys": ["-----BEGIN PUBLIC KEY-----\nxx"]},
        "public_keys[0] is not a PEM public key",
    ),
    (
        "key fits no configured algorithm",
        {"discovery_url": None, "public_keys": [_ec_pem()]},
        "public_keys[0] fits none of the algorithms RS256, ES256",
    ),
]


@pytest.mark.parametrize(
    ("name", "change", "message"), REFUSED, ids=[name for name, _, _ in REFUSED]
)
def test_refused_configs(
    name: str, change: dict[str, Any], message: str, issuer: FakeIssuer
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(record(issuer, **change))
    assert message in str(raised.value)


def test_static_key_with_its_algorithm_is_accepted(issuer: FakeIssuer) -> None:
    settings = parse_settings(
        record(issuer, discovery_url=None, public_keys=[_ec_pem()], algorithms=["ES384"])
    )
    assert not settings.keys.remote
    assert len(settings.keys.public_keys) == 1


def test_schema_passes_kongs_metaschema_rules() -> None:
    check_field(SCHEMA, "config.token")


def test_kong_fills_the_same_defaults_the_tests_assume(issuer: FakeIssuer) -> None:
    unset = {"enabled": False, "issuer": None, "audiences": [], "discovery_url": None}
    assert validate_config(SCHEMA, {}) == record(issuer) | unset


def _doc_token_records() -> list[dict[str, Any]]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "token.md").read_text()
    records = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL):
        document = yaml.safe_load(block)
        if "token" in document:
            records.append(document["token"])
        for service in document.get("services", []):
            for route in service.get("routes", []):
                for plugin in route.get("plugins", []):
                    if plugin["name"] == "cilium-identity":
                        records.append(plugin["config"]["token"])
    return records


def test_the_documented_examples_are_valid_configs() -> None:
    records = _doc_token_records()
    assert len(records) == 2
    for raw in records:
        settings = parse_settings(validate_config(SCHEMA, raw))
        assert settings.enabled
    kubernetes = parse_settings(validate_config(SCHEMA, records[1]))
    assert (kubernetes.service_account_token, kubernetes.pod_binding) == (True, True)
    assert kubernetes.keys.jwks_uri == "https://kubernetes.default.svc/openid/v1/jwks"
