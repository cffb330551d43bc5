"""A fake OIDC issuer: real HTTP on 127.0.0.1 serving discovery and a JWKS, signing tokens.

    with FakeIssuer() as issuer:
        token = issuer.sign(issuer.claims(sub="alice", aud="kong"), key="rsa1")
        settings = {"enabled": True, "issuer": issuer.issuer, "audiences": ["kong"],
                    "discovery_url": issuer.discovery_url}

Keys ``rsa1`` (RSA 2048, RS256) and ``ec1`` (P-256, ES256) exist and are published from
the start. ``add_key`` makes more (``rsa``, ``ec256``, ``ec384``, ``ec521``, ``ed25519``),
``publish`` chooses which keys the JWKS lists (rotation), ``down``/``up`` stop and
restart the listener on the same port (connection refused in between), and the
``jwks_requests``/``discovery_requests`` counters show how often keys were fetched;
``delay`` holds every answer back (a slow issuer).
``forge_*`` build tokens no honest issuer makes (``alg: none``, HMAC keyed with the
public key) for attack tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_KINDS: dict[str, str] = {
    "rsa": "RS256",
    "ec256": "ES256",
    "ec384": "ES384",
    "ec521": "ES512",
    "ed25519": "EdDSA",
}


@dataclass(frozen=True)
class IssuerKey:
    name: str
    kid: str
    private: PrivateKey
    algorithm: str

    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def _generate(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    curves = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1(), "ec521": ec.SECP521R1()}
    return ec.generate_private_key(curves[kind])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class FakeIssuer:
    def __init__(self, audience: str = "kong") -> None:
        self.audience = audience
        self.keys: dict[str, IssuerKey] = {}
        self.published: list[str] = []
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.discovery_issuer: str | None = None
        """Overrides the ``issuer`` the discovery document announces (mismatch tests)."""
        self.delay = 0.0
        """Seconds every answer is held back (a slow or hanging issuer)."""
        self._lock = threading.Lock()
        self._server = self._listen(0)
        self.port = self._server.server_address[1]
        self._thread = self._serve(self._server)
        self.add_key("rsa1", "rsa")
        self.add_key("ec1", "ec256")

    # --- addresses -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/jwks"

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    # --- keys ----------------------------------------------------------------------

    def add_key(
        self,
        name: str,
        kind: str = "rsa",
        kid: str | None = None,
        publish: bool = True,
        algorithm: str | None = None,
    ) -> IssuerKey:
        """A new key; ``algorithm`` overrides the kind's default (e.g. PS256 for rsa)."""
        key = IssuerKey(name, kid or f"{name}-kid", _generate(kind), algorithm or _KINDS[kind])
        with self._lock:
            self.keys[name] = key
            if publish:
                self.published.append(name)
        return key

    def publish(self, *names: str) -> None:
        """Make the JWKS list exactly these keys (rotation)."""
        with self._lock:
            self.published = list(names)

    def public_pem(self, name: str) -> str:
        return self.keys[name].public_pem()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [self.keys[name].jwk() for name in self.published]}

    # --- tokens --------------------------------------------------------------------

    def claims(self, ttl: float = 300, **extra: Any) -> dict[str, Any]:
        """Standard claims (iss, aud, iat, nbf, exp) plus ``extra``, which wins."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
        }
        return {**base, **extra}

    def service_account_claims(
        self,
        namespace: str,
        service_account: str,
        pod: str,
        pod_uid: str,
        service_account_uid: str = "6c1f0b54-2d5a-4c3e-9d61-1c2a8f0e7b11",
        ttl: float = 3600,
    ) -> dict[str, Any]:
        """Claims shaped like a kubelet-projected service-account token."""
        return self.claims(
            ttl=ttl,
            sub=f"system:serviceaccount:{namespace}:{service_account}",
            **{
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": service_account, "uid": service_account_uid},
                    "pod": {"name": pod, "uid": pod_uid},
                }
            },
        )

    def sign(
        self,
        claims: Mapping[str, Any],
        key: str = "rsa1",
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A token signed with ``key``; ``headers`` may override ``kid`` (None drops it)."""
        issuer_key = self.keys[key]
        header = {"kid": issuer_key.kid, **(headers or {})}
        if header.get("kid") is None:
            header.pop("kid")
        return jwt.encode(
            dict(claims),
            issuer_key.private,
            algorithm=algorithm or issuer_key.algorithm,
            headers=header,
        )

    def sign_bytes(self, payload: bytes, key: str = "rsa1") -> str:
        """A correctly signed JWS whose payload is ``payload`` as is (e.g. not JSON)."""
        issuer_key = self.keys[key]
        return self.sign_parts({"alg": issuer_key.algorithm, "kid": issuer_key.kid}, payload, key)

    def sign_parts(self, header: Mapping[str, Any], payload: bytes, key: str = "rsa1") -> str:
        """Sign any JOSE header and payload bytes with ``key`` under ``header["alg"]``,
        without the checks ``jwt.encode`` makes (e.g. a non-string ``kid``)."""
        signing_input = f"{_b64(json.dumps(dict(header)).encode())}.{_b64(payload)}"
        algorithm = jwt.get_algorithm_by_name(str(header["alg"]))
        signature = algorithm.sign(signing_input.encode("ascii"), self.keys[key].private)
        return f"{signing_input}.{_b64(signature)}"

    def forge_none(self, claims: Mapping[str, Any]) -> str:
        """An unsigned token (``alg: none``)."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return f"{header}.{_b64(json.dumps(dict(claims)).encode())}."

    def forge_hmac(self, claims: Mapping[str, Any], key: str = "rsa1") -> str:
        """HS256 keyed with the public key's PEM bytes: the algorithm-confusion attack."""
        issuer_key = self.keys[key]
        header = {"alg": "HS256", "typ": "JWT", "kid": issuer_key.kid}
        signing_input = (
            f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(dict(claims)).encode())}"
        )
        secret = issuer_key.public_pem().encode("ascii")
        signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"

    # --- availability --------------------------------------------------------------

    def down(self) -> None:
        """Stop listening: key fetches get connection refused until ``up``."""
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def up(self) -> None:
        self._server = self._listen(self.port)
        self._thread = self._serve(self._server)

    def close(self) -> None:
        self.down()

    def __enter__(self) -> FakeIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP ----------------------------------------------------------------------

    def _listen(self, port: int) -> ThreadingHTTPServer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(issuer.delay)
                document = issuer._document(self.path)
                if document is None:
                    self.send_error(404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        return server

    def _serve(self, server: ThreadingHTTPServer) -> threading.Thread:
        thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-issuer", daemon=True
        )
        thread.start()
        return thread

    def _document(self, path: str) -> dict[str, Any] | None:
        if path == "/jwks":
            with self._lock:
                self.jwks_requests += 1
            return self.jwks()
        if path == "/.well-known/openid-configuration":
            with self._lock:
                self.discovery_requests += 1
            return {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.jwks_uri,
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        return None
