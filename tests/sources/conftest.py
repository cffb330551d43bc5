"""Fixtures for the Hubble and agent source tests: fakes and TLS material."""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.kit.fake_agent import FakeAgent
from tests.kit.fake_relay import FakeRelay
from tests.shared_captures import SHARED, real_capture, real_captures

# The shared real captures live beside the repository, not in it (tests/shared_captures.py).
FIXTURES = SHARED / "fixtures" / "real"
HUBBLE_FIXTURES = real_captures("hubble", "*.json")


def need_fixture(path: Path) -> Path:
    """``path`` when it exists, else skip the test with a reason naming it."""
    if not path.exists():
        pytest.skip(f"needs {path}, which is not beside this repository (../shared)")
    return path


def need_hubble_fixtures() -> list[Path]:
    if not HUBBLE_FIXTURES:
        real_capture("hubble")  # skips, naming ../shared/fixtures/real/hubble
    return HUBBLE_FIXTURES


@pytest.fixture
def relay() -> Iterator[FakeRelay]:
    fake = FakeRelay().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    # AF_UNIX paths are limited to ~108 bytes: keep the socket in a short temp dir.
    with tempfile.TemporaryDirectory(prefix="kci-") as scratch:
        fake = FakeAgent(Path(scratch) / "cilium.sock").start()
        try:
            yield fake
        finally:
            fake.stop()


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class TLSMaterial:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # a CA that signed none of the above
    directory: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    usage: x509.ObjectIdentifier,
) -> Pem:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A throwaway CA with a Relay server cert (``*.hubble-relay.cilium.io``, as Cilium's
    Helm chart issues) and a client cert, plus an unrelated CA."""
    ca, ca_key, ca_cert = _ca("cilium-ca")
    other_ca, _, _ = _ca("some-other-ca")
    server = _leaf(ca_key, ca_cert, "*.hubble-relay.cilium.io", ExtendedKeyUsageOID.SERVER_AUTH)
    client = _leaf(ca_key, ca_cert, "kong.hubble-relay.cilium.io", ExtendedKeyUsageOID.CLIENT_AUTH)
    return TLSMaterial(ca, server, client, other_ca, tmp_path_factory.mktemp("tls"))
