"""The plugin's decision under random PDK answers (hypothesis), through the real server.

Kong's answers are loose: consumer rows with odd types or missing keys, text that is not
UTF-8, empty tables sent as arrays, client addresses in any spelling. In enforce mode a
request is proxied only when the consumer row really names a bound consumer (by a binding
or a tag), it has a credential, and the client address really is a bound address whose
identity that consumer's selector matches; the expectation is computed here from the
static entries, apart from the plugin. No outcome is ever Kong's fail-open.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import running_server
from tests.kit.kong import ConfiguredPlugin, KongHarness, KongRequest

TAG_PREFIX = "cilium-identity:"
# address -> (identity id, labels)
ENTRIES: dict[str, tuple[int, frozenset[str]]] = {
    "10.0.1.200": (48861, frozenset({"k8s:app=checkout"})),
    "10.0.1.201": (51022, frozenset({"k8s:app=payments"})),
    "fd00:10:244::17": (48862, frozenset({"k8s:app=checkout"})),
    "172.18.0.3": (1, frozenset({"reserved:host"})),  # host: never a pod identity
    "10.0.2.0/24": (48863, frozenset({"k8s:app=payments"})),
}
CONFIG: dict[str, Any] = {
    "sources": ["static"],
    "static": {
        "entries": [
            {"address": address, "id": id_, "labels": sorted(labels)}
            for address, (id_, labels) in ENTRIES.items()
        ]
    },
    "bindings": [
        {"consumer": "checkout", "selectors": ["k8s:app=checkout"]},
        {"consumer": "username:admin", "selectors": ["reserved:host"]},
        {"consumer": "custom_id:pay", "selectors": ["k8s:app=payments"]},
    ],
}
# consumer ref -> the selector term it grants (each selector here is one label term)
BINDINGS = {"checkout": "k8s:app=checkout", "username:admin": "reserved:host"}
BINDINGS["custom_id:pay"] = "k8s:app=payments"
TAG_GRANTS = {
    f"{TAG_PREFIX}k8s:app=checkout": "k8s:app=checkout",
    f"{TAG_PREFIX}app=payments": "k8s:app=payments",  # no source: any source matches
}
UUID = "0c1f0b0e-1c1a-4e44-9a39-4a0d4b5a0001"

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def served(style_flags: list[str]) -> Iterator[tuple[KongHarness, ConfiguredPlugin]]:
    """Under both of kong-pdk's return conventions (conftest's style_flags)."""
    with running_server(*style_flags) as kong:
        yield kong, kong.add_plugin(CONFIG)


# --------------------------------------------------------------------------- client addresses


@dataclass(frozen=True)
class Address:
    """What Kong reports as the client address, and the entry it really denotes (if any)."""

    text: str | bytes
    denotes: str | None
    clean: bool  # Kong's own spelling: the plugin must accept it


def _entry_for(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
    best: tuple[int, str] | None = None
    for key in ENTRIES:
        network = ipaddress.ip_network(key)
        inside = address.version == network.version and address in network
        if inside and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, key)
    return best[1] if best else None


def _spellings(draw: st.DrawFn) -> Address:
    kinds = ["bound", "bound", "bound", "v4", "v6", "mapped", "odd", "odd", "garbage"]
    kind = draw(st.sampled_from(kinds))
    if kind == "bound":
        key = draw(st.sampled_from([k for k in ENTRIES if "/" not in k] + ["10.0.2.9"]))
        address = ipaddress.ip_address(key)
        return Address(str(address), _entry_for(address), True)
    if kind in ("v4", "v6"):
        address = draw(st.ip_addresses(v=4 if kind == "v4" else 6))
        return Address(str(address), _entry_for(address), True)
    if kind == "mapped":  # ::ffff:a.b.c.d is the IPv4 peer a.b.c.d
        v4 = draw(st.sampled_from(["10.0.1.200", "10.0.1.201", "10.0.2.77", "10.9.9.9"]))
        spelled = draw(st.sampled_from([f"::ffff:{v4}", f"::FFFF:{v4}", f"0:0:0:0:0:ffff:{v4}"]))
        return Address(spelled, _entry_for(ipaddress.ip_address(v4)), True)
    if kind == "odd":
        base = draw(st.sampled_from(["10.0.1.200", "fd00:10:244::17", "FD00:10:244:0::17"]))
        address = ipaddress.ip_address(base)
        text = draw(
            st.sampled_from(
                [
                    f"{base}%eth0",  # zone id: link-local scope, never cluster-wide
                    f"{base}%0",
                    f" {base}",
                    f"{base}\n",
                    f"{base}\x00",
                    f"[{base}]",
                    f"{base}:8000",
                    f"{base}/32",
                    base.upper(),
                    base.replace(".", ". "),
                    "0" + base,
                ]
            )
        )
        try:  # the plugin may accept a spelling only if it names the same address
            same = ipaddress.ip_address(text.strip())
        except ValueError:
            same = None
        denotes = _entry_for(address) if same == address and "%" not in text else None
        return Address(text, denotes, False)
    garbage = draw(
        st.one_of(
            st.text(max_size=20),
            st.binary(max_size=20),
            st.just(b"10.0.1.200\xff"),
            st.just(""),
        )
    )
    return Address(garbage, None, False)


addresses = st.composite(_spellings)()

# --------------------------------------------------------------------------- consumers

not_utf8 = st.binary(min_size=1, max_size=6).map(lambda b: b"\xff" + b)
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    not_utf8,
    st.just([]),
    st.just({}),
)
names = st.one_of(
    st.sampled_from(["checkout", "admin", "pay", "username:admin", "custom_id:pay", UUID]),
    st.sampled_from(["checkout ", "Checkout", "checkout\x00", "id:checkout", ""]),
    st.just(b"checkout\xff"),
    st.just(["checkout"]),
    odd,
)
tag_values = st.one_of(
    st.sampled_from([*TAG_GRANTS, TAG_PREFIX, f"{TAG_PREFIX},", "team-x"]),
    st.just(f"{TAG_PREFIX}k8s:app=checkout".encode() + b"\xff"),
    odd,
)
tags = st.one_of(st.lists(tag_values, max_size=3), odd)
consumer_rows = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries(
        {},
        optional={"id": names, "username": names, "custom_id": names, "tags": tags},
    ),
    st.dictionaries(st.text(max_size=8), odd, max_size=2),  # created_at, type, ...
)
good_names = st.sampled_from(["checkout", "admin", "pay", "username:admin", "custom_id:pay"])
plausible_rows = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries(
        {"id": st.one_of(st.just(UUID), good_names)},
        optional={
            "username": good_names,
            "custom_id": good_names,
            "tags": st.lists(st.sampled_from([*TAG_GRANTS, "team-x"]), max_size=2),
        },
    ),
    st.dictionaries(st.sampled_from(["created_at", "type", "updated_at"]), odd, max_size=2),
)
# Mostly rows Kong could really send, so that allowed requests are explored too.
consumers = st.one_of(plausible_rows, plausible_rows, plausible_rows, consumer_rows, odd)
credentials = st.one_of(
    st.fixed_dictionaries({"id": st.just(UUID)}),
    st.fixed_dictionaries({"id": st.just(UUID)}),
    st.none(),
    st.just({}),
    st.fixed_dictionaries({"id": names}),
    st.text(max_size=4),
)

# --------------------------------------------------------------------------- headers

header_names = st.one_of(
    st.sampled_from(["X-Cilium-Identity", "x-cilium-pod", "X-CILIUM-NAMESPACE", "x-cilium-"]),
    st.sampled_from(["authorization", "x-consumer-id", "x-forwarded-for"]),
    st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=10),
    st.binary(min_size=1, max_size=6).map(lambda b: "x-" + b.decode("utf-8", "surrogateescape")),
)
header_values = st.one_of(
    st.text(max_size=12),
    not_utf8,
    st.lists(st.one_of(st.text(max_size=6), not_utf8), min_size=1, max_size=3),
    st.just("48861"),
)
headers = st.dictionaries(header_names, header_values, max_size=4)


# --------------------------------------------------------------------------- the oracle


def names_consumer(ref: str, row: dict[str, Any]) -> bool:
    """``field:value`` names that field only; a bare ref any of id/username/custom_id."""
    field, sep, value = ref.partition(":")
    if sep and field in ("id", "username", "custom_id"):
        return row.get(field) == value
    return any(row.get(f) == ref for f in ("id", "username", "custom_id"))


def granted_terms(consumer: Any) -> set[str]:
    """The selector terms Kong's answer really grants: only from a consumer row with a
    non-empty text id."""
    if not isinstance(consumer, dict):
        return set()
    if not isinstance(consumer.get("id"), str) or not consumer["id"]:
        return set()
    row = {k: v for k, v in consumer.items() if isinstance(v, str)}
    terms = {term for ref, term in BINDINGS.items() if names_consumer(ref, row)}
    if isinstance(consumer.get("tags"), list):
        terms |= {TAG_GRANTS[t] for t in consumer["tags"] if isinstance(t, str) and t in TAG_GRANTS}
    return terms


def expected_pass(consumer: Any, credential: Any, address: Address) -> bool:
    if address.denotes is None or credential is None:
        return False
    identity_id, labels = ENTRIES[address.denotes]
    if not 256 <= identity_id < 2**24:
        return False
    return any(term in labels for term in granted_terms(consumer))


# --------------------------------------------------------------------------- the property


@settings(FUZZ, max_examples=400)
@example(  # always run: the allowed path, with a forged identity header to clear
    consumer={"id": UUID, "username": "checkout", "tags": []},
    credential={"id": UUID},
    address=Address("10.0.1.200", "10.0.1.200", True),
    client_headers={"X-Cilium-Identity": "1", "X-Cilium-Pod": b"\xff"},
)
@given(
    consumer=consumers,
    credential=credentials,
    address=addresses,
    client_headers=headers,
)
def test_enforce_mode_proxies_only_a_bound_consumer_from_a_bound_address(
    served: tuple[KongHarness, ConfiguredPlugin],
    consumer: Any,
    credential: Any,
    address: Address,
    client_headers: dict[str, Any],
) -> None:
    kong, plugin = served
    out = kong.request(
        plugin,
        KongRequest(
            client_ip=address.text,  # type: ignore[arg-type]  # Kong may send any Lua string
            consumer=consumer,
            credential=credential,
            headers=client_headers,
        ),
    )
    assert not out.failed_open, out.kong_log
    if out.status == 400 and not out.rpc_calls:
        # nginx refused the header block itself (a second Authorization line): no plugin ran,
        # nothing went upstream
        assert not out.proxied and not out.upstream_headers
        return
    expected = expected_pass(consumer, credential, address)
    if out.proxied:
        assert expected, (consumer, credential, address)
        identity_id = ENTRIES[address.denotes or ""][0]
        assert out.upstream_headers["x-cilium-identity"] == [str(identity_id)]
        # Every client-sent header with our prefix is gone; ours carry only what is known.
        ours = {n.lower() for n in out.upstream_headers if n.lower().startswith("x-cilium-")}
        assert ours == {"x-cilium-identity"}, out.upstream_headers
    else:
        assert out.status in (401, 403, 500, 503), out.status
        assert isinstance(out.body, dict) and out.body.get("message"), out.body
    if expected and address.clean and isinstance(consumer, dict):
        assert out.proxied, (out.status, out.body)
