"""Real Kong 3.9 with the plugin, built from docker/Dockerfile (needs a Docker engine).

Skipped, with the reason, where no engine answers; runs for real where one does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _engine_problem() -> str | None:
    try:
        import docker

        docker.from_env().ping()
    except Exception as error:
        return f"no Docker engine: {error}"
    return None


ENGINE_PROBLEM = _engine_problem()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=str(ENGINE_PROBLEM)),
]

EVERYWHERE = ["0.0.0.0/0", "::/0"]  # the test client's address as Kong sees it varies


def declarative_config() -> dict[str, Any]:
    """kong.yaml's demo, with the static source mapping every address to 'checkout'."""
    document = yaml.safe_load((ROOT / "kong.yaml").read_text())
    plugin = document["services"][0]["routes"][0]["plugins"][1]
    checkout = plugin["config"]["static"]["entries"][0]
    plugin["config"]["static"]["entries"] = [
        {**checkout, "address": cidr, "id": 48861 + index} for index, cidr in enumerate(EVERYWHERE)
    ]
    document["services"][0]["url"] = "http://127.0.0.1:8001/status"  # Kong's own status API
    return document


@pytest.fixture(scope="module")
def kong_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.image import DockerImage
    from testcontainers.core.waiting_utils import wait_for_logs

    config_dir = tmp_path_factory.mktemp("kong")
    (config_dir / "kong.yaml").write_text(json.dumps(declarative_config()))
    with DockerImage(
        path=str(ROOT), dockerfile_path="docker/Dockerfile", tag="kong-cilium-identity:test"
    ) as image:
        container = (
            DockerContainer(str(image))
            .with_env("KONG_DATABASE", "off")
            .with_env("KONG_DECLARATIVE_CONFIG", "/kong/kong.yaml")
            .with_env("KONG_PROXY_LISTEN", "0.0.0.0:8000")
            .with_env("KONG_ADMIN_LISTEN", "127.0.0.1:8001")
            .with_volume_mapping(str(config_dir), "/kong", "ro")
            .with_exposed_ports(8000)
        )
        with container:
            wait_for_logs(container, "start worker process", timeout=120)
            host = container.get_container_host_ip()
            yield f"http://{host}:{container.get_exposed_port(8000)}"


def get(url: str, key: str | None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"apikey": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_bound_consumer_passes_through_real_kong(kong_url: str) -> None:
    status, _ = get(f"{kong_url}/orders", "checkout-demo-key")
    assert status == 200


def test_unbound_consumer_is_refused_by_real_kong(kong_url: str) -> None:
    status, body = get(f"{kong_url}/orders", "reports-demo-key")
    assert status == 403 and "identity_mismatch" in body["message"]
    assert "request_id" in body


def test_key_auth_runs_first(kong_url: str) -> None:
    status, _ = get(f"{kong_url}/orders", None)
    assert status == 401  # key-auth (priority 1250) answers before the plugin runs
