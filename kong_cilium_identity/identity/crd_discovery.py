"""Which Cilium resources the API server serves, from its discovery documents.

``GET /apis/cilium.io/v2`` and ``GET /apis/cilium.io/v2alpha1`` list the resources of each
version. A version that serves nothing (no Cilium CRD of that version installed) is a 404,
which is an answer, not an error: a cluster running only CiliumEndpointSlices has no
``ciliumendpoints`` in its ``v2`` list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

GROUP = "cilium.io"
ENDPOINTS = "ciliumendpoints"
SLICES = "ciliumendpointslices"
IDENTITIES = "ciliumidentities"
# Versions asked, newest first: a resource served in several is used in the first one.
VERSIONS = ("v2", "v2alpha1")
HTTP_NOT_FOUND = 404


class DiscoveryError(Exception):
    """Discovery could not be read (anything but a served list or a 404)."""


@dataclass(frozen=True)
class Served:
    """The version each resource is served in, or None when it is not served."""

    endpoints: str | None = None
    slices: str | None = None
    identities: str | None = None

    def version_of(self, plural: str) -> str | None:
        return {ENDPOINTS: self.endpoints, SLICES: self.slices, IDENTITIES: self.identities}[plural]


def _resource_names(api: Any, version: str, timeout: float) -> set[str]:
    try:
        response = api.get_api_resources(
            GROUP, version, _preload_content=False, _request_timeout=timeout
        )
    except ApiException as error:
        if error.status == HTTP_NOT_FOUND:
            return set()
        message = f"GET /apis/{GROUP}/{version}: HTTP {error.status} {error.reason}"
        raise DiscoveryError(message) from None
    try:
        body = json.loads(response.data)
    except ValueError as error:
        raise DiscoveryError(f"GET /apis/{GROUP}/{version}: not JSON ({error})") from None
    finally:
        response.release_conn()
    resources = body.get("resources") if isinstance(body, dict) else None
    if not isinstance(resources, list):
        raise DiscoveryError(f"GET /apis/{GROUP}/{version}: no resources list")
    return {
        entry["name"]
        for entry in resources
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    }


def discover(api: Any, timeout: float) -> Served:
    """Ask the API server which of the three resources it serves, and in which version.

    ``api`` is a kubernetes ``CustomObjectsApi``. Raises ``DiscoveryError`` (or a
    connection error) when the answer is unknown.
    """
    found: dict[str, str] = {}
    for version in VERSIONS:
        for name in _resource_names(api, version, timeout) & {ENDPOINTS, SLICES, IDENTITIES}:
            found.setdefault(name, version)
    return Served(found.get(ENDPOINTS), found.get(SLICES), found.get(IDENTITIES))
