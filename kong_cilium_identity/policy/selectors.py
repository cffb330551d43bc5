"""Cilium-style identity selectors.

A selector is a list of terms, all of which must hold (AND); a consumer's selectors are
alternatives (OR). A term is either a label in Cilium's selector syntax, where a key
without a source matches any source (``app=checkout`` is ``any:app=checkout``), or a
numeric identity id (``48861``). Terms are separated by ``,`` or ``;`` (Kong tags may
not contain commas).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kong_cilium_identity.identity.model import Identity
from kong_cilium_identity.policy.labels import ANY_SOURCE, Label, LabelError, parse_label

_TERM_SPLIT = re.compile(r"[,;]")


@dataclass(frozen=True, slots=True)
class Selector:
    text: str
    labels: tuple[Label, ...]
    identity_ids: tuple[int, ...]

    def matches(self, identity: Identity) -> bool:
        if any(wanted != identity.id for wanted in self.identity_ids):
            return False
        return all(_has_label(identity, term) for term in self.labels)

    def __str__(self) -> str:
        return self.text


def _has_label(identity: Identity, term: Label) -> bool:
    if term.source != ANY_SOURCE:
        return term in identity.labels
    return any(label.key == term.key and label.value == term.value for label in identity.labels)


def parse_selector(text: str) -> Selector:
    """Parse a selector; raise LabelError with a user-facing message when it is invalid."""
    labels: list[Label] = []
    ids: list[int] = []
    terms = [term.strip() for term in _TERM_SPLIT.split(text)]
    if not any(terms):
        raise LabelError(f"selector {text!r} has no terms")
    for term in terms:
        if not term:
            raise LabelError(f"selector {text!r} has an empty term")
        if term.isascii() and term.isdigit():  # str.isdigit() also takes "²" and "٣"
            ids.append(int(term))
        else:
            labels.append(parse_label(term, default_source=ANY_SOURCE))
    return Selector(text.strip(), tuple(labels), tuple(ids))


def any_matches(selectors: Iterable[Selector], identity: Identity) -> Selector | None:
    """The first selector that the identity satisfies, or None."""
    for selector in selectors:
        if selector.matches(identity):
            return selector
    return None
