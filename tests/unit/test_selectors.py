"""Cilium label and selector semantics, table-driven."""

import pytest

from kong_cilium_identity.identity.model import Identity
from kong_cilium_identity.policy.labels import Label, LabelError, parse_label
from kong_cilium_identity.policy.selectors import any_matches, parse_selector

CHECKOUT = Identity.build(
    48861,
    [
        "k8s:app=checkout",
        "k8s:io.kubernetes.pod.namespace=shop",
        "k8s:io.cilium.k8s.policy.serviceaccount=checkout",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
        "container:tier=web",
    ],
)
HOST = Identity.build(1, ["reserved:host"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k8s:app=checkout", Label("k8s", "app", "checkout")),
        ("reserved:host", Label("reserved", "host", "")),
        ("$host", Label("reserved", "host", "")),
        ("app=checkout", Label("unspec", "app", "checkout")),
        ("app=a:b", Label("unspec", "app", "a:b")),  # '=' before ':' -> no source
        ("k8s:url=http://x", Label("k8s", "url", "http://x")),
        (
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            Label("k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "shop"),
        ),
        ("gen:io.cilium.k8s.named-ports", Label("gen", "io.cilium.k8s.named-ports", "")),
    ],
)
def test_parse_label(text: str, expected: Label) -> None:
    assert parse_label(text) == expected


@pytest.mark.parametrize("text", ["", "  ", ":app=x", "k8s:=x", "=x"])
def test_parse_label_rejects(text: str) -> None:
    with pytest.raises(LabelError):
        parse_label(text)


def test_label_text_round_trip() -> None:
    assert str(parse_label("reserved:host")) == "reserved:host"
    assert str(parse_label("k8s:app=checkout")) == "k8s:app=checkout"


@pytest.mark.parametrize(
    ("selector", "identity", "matches"),
    [
        ("k8s:app=checkout", CHECKOUT, True),
        ("app=checkout", CHECKOUT, True),  # no source = any source
        ("any:app=checkout", CHECKOUT, True),
        ("container:app=checkout", CHECKOUT, False),  # source must match when given
        ("tier=web", CHECKOUT, True),
        ("k8s:tier=web", CHECKOUT, False),
        ("k8s:app=payments", CHECKOUT, False),
        ("k8s:app", CHECKOUT, False),  # no '=' means the empty value, as in Cilium
        ("k8s:app=checkout,k8s:io.kubernetes.pod.namespace=shop", CHECKOUT, True),  # AND
        ("k8s:app=checkout,k8s:io.kubernetes.pod.namespace=dev", CHECKOUT, False),
        ("k8s:app=checkout;io.kubernetes.pod.namespace=shop", CHECKOUT, True),  # tag form
        ("48861", CHECKOUT, True),  # numeric identity id
        ("48862", CHECKOUT, False),
        ("48861,k8s:app=checkout", CHECKOUT, True),
        ("48861,k8s:app=other", CHECKOUT, False),
        ("reserved:host", HOST, True),
        ("reserved:host", CHECKOUT, False),
        ("$host", HOST, True),
        ("host", HOST, True),  # any:host with empty value
        ("reserved:world", HOST, False),
        (
            "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop",
            CHECKOUT,
            True,
        ),
    ],
)
def test_selector_matches(selector: str, identity: Identity, matches: bool) -> None:
    assert parse_selector(selector).matches(identity) is matches


@pytest.mark.parametrize("text", ["", ",", "k8s:app=x,", " ; ", "k8s:app=x,,k8s:b=y"])
def test_selector_rejects(text: str) -> None:
    with pytest.raises(LabelError):
        parse_selector(text)


def test_selectors_are_ored() -> None:
    selectors = [parse_selector("k8s:app=payments"), parse_selector("k8s:app=checkout")]
    matched = any_matches(selectors, CHECKOUT)
    assert matched is not None and matched.text == "k8s:app=checkout"
    assert any_matches([parse_selector("k8s:app=payments")], CHECKOUT) is None


def test_identity_build_fills_well_known_labels() -> None:
    assert CHECKOUT.namespace == "shop"
    assert CHECKOUT.service_account == "checkout"
    assert CHECKOUT.cluster is None
