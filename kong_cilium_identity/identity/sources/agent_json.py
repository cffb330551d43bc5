"""The agent's JSON answers, read strictly (``IPListEntry[]`` and ``Identity``).

Every field the ``agent`` source reads is type-checked: ``cidr`` a string, ``identity``
and ``id`` JSON integers (not bools, not strings) in the identity range, ``metadata`` an
object whose ``namespace``/``name`` are strings, ``labels`` a list of strings that parse
(present: every identity has labels, reserved ones too).
An answer with a wrongly typed field the lookup needs is refused as a whole
(``AnswerError``, logged by the source, an UNAVAILABLE lookup): an ignored entry could be
the one that makes an address ambiguous, so it must never leave a match behind. Fields
the source does not read (``hostIP``, ``encryptKey``, ``metadata.source``,
``labelsSHA256``) are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kong_cilium_identity.identity.address import IPNetwork, parse_network
from kong_cilium_identity.policy.labels import LabelError, parse_label

MAX_IDENTITY = (1 << 32) - 1


class AnswerError(ValueError):
    """An answer the agent should never send: a field has the wrong type or value."""


class NoEntry(LookupError):
    """The answer holds no entry for the address itself (only other prefixes)."""


class SeveralIdentities(ValueError):
    """The answer holds entries with different identities for the address."""


@dataclass(frozen=True, slots=True)
class IPEntry:
    identity: int
    namespace: str | None
    name: str | None


def identity_id(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_IDENTITY:
        raise AnswerError(f"{where} is {type(value).__name__} {value!r:.40}, not an identity id")
    return value


def _optional_string(parent: Mapping[str, Any], key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is None and key not in parent:
        return None
    if not isinstance(value, str):
        raise AnswerError(f"{where}.{key} is {type(value).__name__}, not a string")
    return value or None


def _entry(item: Any, index: int) -> tuple[IPNetwork, IPEntry]:
    where = f"entry {index}"
    if not isinstance(item, Mapping):
        raise AnswerError(f"{where} is {type(item).__name__}, not an object")
    cidr = item.get("cidr")
    if not isinstance(cidr, str):
        raise AnswerError(f"{where}.cidr is {type(cidr).__name__}, not a string")
    try:
        network = parse_network(cidr)
    except ValueError:
        raise AnswerError(f"{where}.cidr {cidr!r:.60} is not a prefix") from None
    number = identity_id(item.get("identity"), f"{where}.identity")
    namespace = name = None
    if "metadata" in item:
        metadata = item["metadata"]
        if not isinstance(metadata, Mapping):
            raise AnswerError(f"{where}.metadata is {type(metadata).__name__}, not an object")
        namespace = _optional_string(metadata, "namespace", f"{where}.metadata")
        name = _optional_string(metadata, "name", f"{where}.metadata")
    return network, IPEntry(number, namespace, name)


def read_ip_answer(body: Any, cidr: str) -> IPEntry:
    """The entry for exactly ``cidr`` in a ``GET /v1/ip`` answer.

    Raises AnswerError (unreadable answer), NoEntry, SeveralIdentities.
    """
    if not isinstance(body, list):
        raise AnswerError(f"the answer is {type(body).__name__}, not a list")
    wanted = parse_network(cidr)
    exact = [entry for network, entry in map(_entry, body, range(len(body))) if network == wanted]
    if not exact:
        raise NoEntry(cidr)
    ids = sorted({entry.identity for entry in exact})
    if len(ids) > 1:
        raise SeveralIdentities(f"ipcache holds {len(ids)} identities for {cidr}: {ids}")
    return exact[0]


def read_identity_answer(body: Any, wanted: int) -> tuple[str, ...]:
    """The labels of identity ``wanted`` from a ``GET /v1/identity/{id}`` answer.

    Raises AnswerError.
    """
    if not isinstance(body, Mapping):
        raise AnswerError(f"the answer is {type(body).__name__}, not an object")
    if identity_id(body.get("id"), "id") != wanted:
        raise AnswerError(f"the answer is identity {body.get('id')}, not {wanted}")
    labels = body.get("labels")
    if not isinstance(labels, list):  # every identity has labels (reserved ones too)
        raise AnswerError(f"labels is {type(labels).__name__}, not a list")
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise AnswerError(f"labels[{index}] is {type(label).__name__}, not a string")
        try:
            parse_label(label)
        except LabelError as error:
            raise AnswerError(f"labels[{index}]: {error}") from None
    return tuple(labels)
