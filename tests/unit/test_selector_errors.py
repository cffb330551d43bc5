"""Selector and label errors name what is wrong (selectors.py, labels.py): config
validation shows these messages to the operator."""

from __future__ import annotations

import pytest

from kong_cilium_identity.policy.labels import LabelError, parse_label
from kong_cilium_identity.policy.selectors import parse_selector


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "selector '' has no terms"),
        (" , ;", "selector ' , ;' has no terms"),
        ("k8s:app=a,,1", "selector 'k8s:app=a,,1' has an empty term"),
        ("k8s:app=a; ", "selector 'k8s:app=a; ' has an empty term"),
        ("k8s:app=a,:x", "label ':x' has an empty source"),
        ("=x", "label '=x' has an empty key"),
    ],
)
def test_a_bad_selector_says_why(text: str, message: str) -> None:
    with pytest.raises(LabelError) as raised:
        parse_selector(text)
    assert str(raised.value) == message


def test_an_empty_label_is_refused() -> None:
    with pytest.raises(LabelError) as raised:
        parse_label("   ")
    assert str(raised.value) == "empty label"


def test_a_selector_keeps_its_trimmed_text_and_splits_ids_from_labels() -> None:
    selector = parse_selector("  48861; k8s:app=a  ")
    assert selector.text == "48861; k8s:app=a"
    assert selector.identity_ids == (48861,)
    assert [str(label) for label in selector.labels] == ["k8s:app=a"]
