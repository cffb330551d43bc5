"""The operator tools: validate a kong.yaml, explain a decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kong_cilium_identity.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_accepts_the_shipped_kong_yaml() -> None:
    done = cli("validate", str(ROOT / "kong.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "OK routes[orders-api].plugins[1]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode: audit\n", "Kong would reject it"),
        ("bindings:\n  - consumer: x\n    selectors: ['k8s:app=,']\n", "empty term"),
        ("_format_version: '3.0'\nservices: []\n", "no cilium-identity plugin config"),
        (
            "sources: [agent, hubble]\nlookup_timeout: 6\n",
            "lookup_timeout",  # 2 remote sources x 6 s cannot fit the 10 s event deadline
        ),
    ],
)
def test_validate_reports_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    done = cli("validate", str(path))
    assert done.returncode == 1 and message in done.stdout


def test_explain_prints_the_decision_and_exits_by_it() -> None:
    allowed = cli(
        "explain",
        "--config",
        str(ROOT / "kong.yaml"),
        "--ip",
        "::ffff:172.28.0.10",
        "--consumer",
        "checkout",
    )
    assert allowed.returncode == 0, allowed.stderr
    report = json.loads(allowed.stdout)
    assert report["decision"]["reason"] == "allowed"
    assert report["identity"]["pod"] == "checkout-7d9f8-x2x5q"

    denied = cli(
        "explain",
        "--config",
        str(ROOT / "kong.yaml"),
        "--ip",
        "172.28.0.11",
        "--consumer",
        "checkout",
    )
    assert denied.returncode == 1
    assert json.loads(denied.stdout)["decision"]["reason"] == "identity_mismatch"

    anonymous = cli(
        "explain",
        "--config",
        str(ROOT / "kong.yaml"),
        "--ip",
        "172.28.0.10",
        "--consumer",
        "checkout",
        "--anonymous",
    )
    assert json.loads(anonymous.stdout)["decision"]["status"] == 401
