"""The README's docker-compose demo, for real (needs a Docker engine and `docker compose`).

Builds the image, starts the demo with its healthchecks, and runs each quick-start curl
line inside its container; the status printed by `-w '%{http_code}'` must be the one the
README's comment promises. Skipped, with the reason, where no engine answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.helpers import COMPOSE
from tests.deploy.test_image_and_demo import curl_lines
from tests.docker.test_real_kong import ENGINE_PROBLEM

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=str(ENGINE_PROBLEM)),
]


@pytest.fixture(scope="module")
def demo() -> Iterator[Any]:
    from testcontainers.compose import DockerCompose

    compose = DockerCompose(
        context=str(COMPOSE.parent), compose_file_name=COMPOSE.name, build=True, wait=True
    )
    with compose:
        yield compose


def test_quick_start_curl_lines_print_the_promised_status(demo: Any) -> None:
    lines = curl_lines()
    assert lines
    for container, key, path, status in lines:
        command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
        command += ["-H", f"apikey: {key}", f"http://kong:8000{path}"]
        stdout, stderr, code = demo.exec_in_container(command, service_name=container)
        assert code == 0, stderr
        assert stdout.strip() == str(status), (container, key, stdout)
