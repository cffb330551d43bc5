"""deploy/systemd/kong-cilium-identity.service: valid for systemd, flags our CLI accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kong_cilium_identity.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "kong-cilium-identity.service"
SHIPPED_BINARY = "/opt/cilium-identity/bin/kong-cilium-identity"


def exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_exec_start_runs_serve_without_a_stdin_watch() -> None:
    command = exec_start()
    assert command[0] == SHIPPED_BINARY
    args = build_parser().parse_args(command[1:])
    assert args.command == "serve" and args.stdin_watch == "off"
    assert args.kong_prefix == "/usr/local/kong" and args.socket_name == "cilium-identity.socket"
    assert f"ReadWritePaths={args.kong_prefix}" in UNIT.read_text().splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    binary = Path(sys.executable).parent / "kong-cilium-identity"
    assert binary.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(SHIPPED_BINARY, str(binary)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
