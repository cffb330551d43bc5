"""The wheel holds only what runs in Kong: no test kit, no fake, no token forger."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.packaging.imports import PACKAGE, ROOT, every_import, modules

GUARD = f"{PACKAGE}/lua/kong/plugins/cilium-identity-guard"
SHIPPED = (
    f"{PACKAGE}/py.typed",
    f"{GUARD}/handler.lua",
    f"{GUARD}/schema.lua",
    f"{GUARD}/extension.lua",
    f"{PACKAGE}/plugin.py",
    f"{PACKAGE}/kong/kong_schema.py",
)


def _test_only(path: str) -> bool:
    parts = path.split("/")
    return (
        parts[0] == "tests"
        or "testing" in parts
        or "kit" in parts
        or any(part.startswith(("fake_", "forge")) for part in parts)
    )


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Build the wheel from a copy of what setuptools reads, so no build/ or egg-info
    directory of the working tree takes part."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / PACKAGE, source / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("kong_cilium_identity-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_ships_no_test_kit_fake_or_forger(wheel_files: list[str]) -> None:
    assert [path for path in wheel_files if _test_only(path)] == []
    assert not any(path.startswith("tests/") for path in wheel_files)


def test_the_wheel_ships_the_guard_and_the_type_marker(wheel_files: list[str]) -> None:
    missing = [path for path in SHIPPED if path not in wheel_files]
    assert missing == []


def test_the_wheel_ships_every_runtime_module(wheel_files: list[str]) -> None:
    expected = {
        module.path.relative_to(ROOT).as_posix()
        for module in modules().values()
        if not module.path.name.endswith(".pyi")
    }
    assert expected - set(wheel_files) == set()


def test_the_test_only_rule_catches_the_kit() -> None:
    assert _test_only("tests/kit/fake_issuer.py")
    assert _test_only(f"{PACKAGE}/testing/kong.py")
    assert _test_only(f"{PACKAGE}/kit/pdk.py")
    assert _test_only(f"{PACKAGE}/fake_relay.py")
    assert not _test_only(f"{PACKAGE}/kong/kong_schema.py")


def test_no_runtime_module_imports_tests_or_a_fake() -> None:
    offenders = {
        name: sorted(
            imported
            for imported in every_import(module)
            if imported.split(".")[0] == "tests"
            or any(
                part.startswith("fake_") or part in ("testing", "kit")
                for part in imported.split(".")
            )
        )
        for name, module in modules().items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_test_kit_lives_outside_the_package() -> None:
    assert not (ROOT / PACKAGE / "testing").exists()
    assert (ROOT / "tests" / "kit" / "fake_issuer.py").is_file()
    assert Path(ROOT / PACKAGE / "kong" / "kong_schema.py").is_file()
