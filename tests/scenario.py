"""The shop the tests talk about: which pod calls from which address with which identity,
and the Kong consumer and credential it holds. One copy, used by every test module that
needs the usual cast; a test that needs something else says so where it builds it.

The dicts are plain data in Kong's shapes; build new ones (``{**CHECKOUT, ...}``) rather
than changing them in place.
"""

from __future__ import annotations

from typing import Any

CHECKOUT_IP = "10.0.1.200"
PAYMENTS_IP = "10.0.1.201"
CHECKOUT_V6_IP = "fd00:10:244::17"
HOST_IP = "172.18.0.3"
"""A node address: Cilium's ``reserved:host`` identity (1)."""

CHECKOUT_ID = 48861
CHECKOUT_V6_ID = 48862
PAYMENTS_ID = 51022
CHECKOUT_POD = "checkout-7d9f8-x2x5q"
CHECKOUT_LABELS = [
    "k8s:app=checkout",
    "k8s:io.kubernetes.pod.namespace=shop",
    "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
]


def static_entry(address: str, identity: int, *labels: str, **fields: Any) -> dict[str, Any]:
    """One ``static.entries`` row of the plugin's config."""
    return {"address": address, "id": identity, "labels": list(labels), **fields}


CHECKOUT_ENTRY = static_entry(CHECKOUT_IP, CHECKOUT_ID, *CHECKOUT_LABELS, pod=CHECKOUT_POD)
"""The checkout pod with its pod name, namespace and service account."""
CHECKOUT_APP_ENTRY = static_entry(CHECKOUT_IP, CHECKOUT_ID, "k8s:app=checkout")
"""The checkout pod known by its app label only."""
PAYMENTS_ENTRY = static_entry(PAYMENTS_IP, PAYMENTS_ID, "k8s:app=payments")

CHECKOUT_BINDING = {"consumer": "checkout", "selectors": ["k8s:app=checkout"]}

CHECKOUT = {
    "id": "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001",
    "username": "checkout",
    "custom_id": None,
    "created_at": 1700000000,
    "tags": [],
}
"""The checkout consumer row as Kong hands it to a plugin."""
CREDENTIAL = {"id": "7a0e1e4c-5d3b-4b1d-8f6e-000000000001", "consumer": {"id": CHECKOUT["id"]}}
"""checkout's key-auth credential."""
