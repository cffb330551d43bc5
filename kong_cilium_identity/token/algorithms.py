"""Which asymmetric JWS algorithms are supported, and which key each one may use.

A key is used only with the algorithm family it belongs to: RSA keys for RS*/PS*, EC
keys for the ES* algorithm of their curve, Ed25519/Ed448 keys for EdDSA. Symmetric
algorithms (HS*) and ``none`` are not in the list at all, so no path can ever treat a
public key as an HMAC secret.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | (ed448.Ed448PublicKey)
)

SUPPORTED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)

MIN_RSA_BITS = 2048

_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


def key_fits(algorithm: str, key: object) -> bool:
    """True when ``key`` is a public key that ``algorithm`` may verify with."""
    if algorithm.startswith(("RS", "PS")) and algorithm in SUPPORTED_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if algorithm in _EC_CURVES:
        return (
            isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False
