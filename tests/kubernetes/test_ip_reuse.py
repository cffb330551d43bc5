"""IP reuse: once the DELETE of an endpoint is applied, its identity is never answered
again for the address, counted over every lookup of tight loops running alongside."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

from kong_cilium_identity.identity.model import LookupStatus, Peer
from kong_cilium_identity.identity.sources.kubernetes import KubernetesSource
from tests.kit.fake_kube import FakeKubeApi, cilium_endpoint
from tests.kubernetes.conftest import SourceFactory
from tests.kubernetes.helpers import synced_at, wait_until

ADDRESS = "10.2.0.1"
CYCLES = 25


@dataclass
class Tally:
    after_delete: int = 0  # lookups that started after at least one DELETE was applied
    old_identity_after_delete: list[str] = field(default_factory=list)


def hammer(
    source: KubernetesSource,
    deletes: list[tuple[int, str]],
    stop: threading.Event,
    tally: Tally,
) -> None:
    """Look the address up as fast as possible. Before each lookup, note which DELETEs the
    index has applied; any answer naming one of those pods is a violation."""
    peer = Peer(ADDRESS)
    while not stop.is_set():
        applied = int(source.index.resource_version or 0)
        forbidden = {uid for version, uid in list(deletes) if version <= applied}
        answer = source.lookup(peer, 1.0)
        if not forbidden:
            continue
        tally.after_delete += 1
        if answer.identity is not None and answer.identity.pod_uid in forbidden:
            tally.old_identity_after_delete.append(answer.identity.pod_uid)


@pytest.mark.parametrize("new_first", [False, True], ids=["delete-then-add", "add-then-delete"])
def test_reused_address_never_answers_the_deleted_pod(
    fake: FakeKubeApi, make_source: SourceFactory, new_first: bool
) -> None:
    source = make_source()
    assert source.wait_ready(10) and fake.wait_for_watchers("CiliumEndpoint")
    current = fake.put(cilium_endpoint("pod-0", ipv4=ADDRESS, identity_id=1000, pod_uid="uid-0"))
    wait_until(synced_at(source, fake.resource_version))
    deletes: list[tuple[int, str]] = []
    stop = threading.Event()
    tallies = [Tally(), Tally()]
    threads = [
        threading.Thread(target=hammer, args=(source, deletes, stop, tally)) for tally in tallies
    ]
    for thread in threads:
        thread.start()
    try:
        for cycle in range(1, CYCLES + 1):
            old_name = current["metadata"]["name"]
            new = cilium_endpoint(
                f"pod-{cycle}", ipv4=ADDRESS, identity_id=1000 + cycle, pod_uid=f"uid-{cycle}"
            )
            if new_first:  # both pods claim the address: ambiguous, never one of them
                added = fake.put(new)
                wait_until(synced_at(source, fake.resource_version))
                assert source.lookup(Peer(ADDRESS), 1.0).status is LookupStatus.AMBIGUOUS
            fake.delete("CiliumEndpoint", old_name, "default")
            deletes.append((fake.resource_version, f"uid-{cycle - 1}"))
            if not new_first:
                added = fake.put(new)
            wait_until(synced_at(source, fake.resource_version))
            answer = source.lookup(Peer(ADDRESS), 1.0)
            assert answer.identity is not None and answer.identity.pod_uid == f"uid-{cycle}"
            current = added
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after_delete = sum(t.after_delete for t in tallies)
    violations = [uid for t in tallies for uid in t.old_identity_after_delete]
    assert violations == []
    assert after_delete > 1000  # the loops really ran alongside the event sequence
