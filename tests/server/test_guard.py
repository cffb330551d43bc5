"""The Kong-side guard (post-function snippet) run by LuaJIT against a stub of the PDK."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kong_cilium_identity.server import GUARD_CTX_KEY, guard_snippet
from kong_cilium_identity.testing.kong import KongRequest
from tests.server.conftest import MakeKong

LUAJIT = shutil.which("luajit")
RUNNER = Path(__file__).parent / "lua" / "run_guard.lua"
pytestmark = pytest.mark.skipif(
    LUAJIT is None, reason="luajit is not installed (apt-get install -y luajit)"
)


def run_guard(tmp_path: Path, mark: str) -> list[str]:
    snippet = tmp_path / "guard.lua"
    snippet.write_text(guard_snippet())
    assert LUAJIT is not None
    done = subprocess.run(
        [LUAJIT, str(RUNNER), str(snippet), mark], capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_a_decided_request_passes(tmp_path: Path) -> None:
    assert run_guard(tmp_path, "true") == ["passed", "log 0"]


@pytest.mark.parametrize("mark", ["nil", "false", "string"])
def test_an_undecided_request_is_refused(tmp_path: Path, mark: str) -> None:
    assert run_guard(tmp_path, mark) == ["refused 503 Service unavailable", "log 1"]


def test_guard_closes_the_hole_kong_leaves_when_the_server_dies(
    make_kong: MakeKong, tmp_path: Path
) -> None:
    kong = make_kong("ours", "gate")
    plugin = kong.add_plugin({})
    allowed = kong.request(plugin, KongRequest(headers={"x-token": "open"}))
    assert allowed.proxied
    # The mark costs the plugin exactly one PDK call (one Step round trip).
    assert allowed.pdk_calls == ["kong.request.get_headers", "kong.ctx.shared.set"]
    assert allowed.ctx_shared == {GUARD_CTX_KEY: True}
    assert run_guard(tmp_path, "true")[0] == "passed"

    kong.kill_server()
    unguarded = kong.request(plugin, KongRequest(headers={"x-token": "open"}))
    assert unguarded.failed_open and unguarded.proxied  # what Kong alone would do
    assert GUARD_CTX_KEY not in unguarded.ctx_shared
    assert run_guard(tmp_path, "nil")[0] == "refused 503 Service unavailable"
