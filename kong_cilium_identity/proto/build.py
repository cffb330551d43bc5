"""Regenerate the Python modules for the Hubble protos (needs the ``test`` extra).

    python -m kong_cilium_identity.proto.build

protoc names imports after the ``.proto`` paths (``from flow import flow_pb2``); the
modules live inside this package, so those imports are rewritten to absolute ones. The
output is deterministic: a test regenerates into a temporary directory and compares.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "kong_cilium_identity.proto"
PROTO_FILES = ("flow/flow.proto", "relay/relay.proto", "observer/observer.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
_LOCAL_IMPORT = re.compile(r"^(\s*)(from|import) (flow|relay|observer)\b", re.MULTILINE)
_MODULE_NAME = re.compile(r"'((flow|relay|observer)\.\2_pb2)'")


def generate(out_dir: Path) -> list[Path]:
    """Compile the protos into ``out_dir`` (same layout as this package); return the files."""
    from grpc_tools import protoc  # imported here: grpcio-tools is a build/test dependency

    well_known = resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    produced = []
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        for suffix in GENERATED_SUFFIXES:
            path = out_dir / f"{stem}{suffix}"
            if path.exists():
                text = _LOCAL_IMPORT.sub(rf"\1\2 {PACKAGE}.\3", path.read_text())
                path.write_text(_MODULE_NAME.sub(rf"'{PACKAGE}.\1'", text))
                produced.append(path)
    return produced


def generated_files() -> list[Path]:
    """The committed generated modules, relative to this package."""
    return [
        Path(proto.removesuffix(".proto") + suffix)
        for proto in PROTO_FILES
        for suffix in GENERATED_SUFFIXES
        if (PROTO_ROOT / (proto.removesuffix(".proto") + suffix)).exists()
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        for path in generate(Path(scratch)):
            target = PROTO_ROOT / path.relative_to(scratch)
            target.write_bytes(path.read_bytes())
            print(f"wrote {target.relative_to(PROTO_ROOT.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
