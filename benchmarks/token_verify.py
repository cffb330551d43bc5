"""How long verify() takes on the request path with the key cached (no I/O).

Prints median / p90 / p99 in microseconds per algorithm, for a valid token and for a
token with a bad signature. Run: ``.venv/bin/python benchmarks/token_verify.py``.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kong_cilium_identity.token import KeyStore, TokenSettings, Verified, parse_settings, verify  # noqa: E402
from tests.kit.fake_issuer import FakeIssuer  # noqa: E402

ROUNDS = 2000


def _settings(issuer: FakeIssuer) -> TokenSettings:
    settings = parse_settings(
        {
            "enabled": True,
            "issuer": issuer.issuer,
            "audiences": ["kong"],
            "jwks_uri": issuer.jwks_uri,
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "service_account_token": True,
        }
    )
    keys = dataclasses.replace(settings.keys, refresh_interval=3600.0)
    return dataclasses.replace(settings, keys=keys)


def _measure(token: str, settings: TokenSettings, store: KeyStore) -> list[float]:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        verify(token, settings, store)
        samples.append((time.perf_counter() - start) * 1e6)
    return sorted(samples)


def _report(name: str, samples: list[float]) -> None:
    p90 = samples[int(len(samples) * 0.90)]
    p99 = samples[int(len(samples) * 0.99)]
    median = statistics.median(samples)
    print(f"{name:<24} median {median:7.1f} us  p90 {p90:7.1f} us  p99 {p99:7.1f} us")


def main() -> None:
    with FakeIssuer() as issuer:
        issuer.add_key("ed1", "ed25519")
        settings = _settings(issuer)
        store = KeyStore(settings.keys)
        try:
            claims = issuer.service_account_claims("shop", "checkout", "checkout-a", "uid-a")
            for key in ("rsa1", "ec1", "ed1"):
                token = issuer.sign(claims, key=key)
                assert isinstance(verify(token, settings, store), Verified)
                _report(f"{issuer.keys[key].algorithm} valid", _measure(token, settings, store))
                head, payload, signature = token.split(".")
                bad = f"{head}.{payload}.{signature[:-4]}AAAA"
                _report(
                    f"{issuer.keys[key].algorithm} bad signature", _measure(bad, settings, store)
                )
        finally:
            store.close()
    print(f"({ROUNDS} rounds each, one thread, key cached)")


if __name__ == "__main__":
    main()
