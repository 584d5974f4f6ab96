"""Compile the test-only protos under tests/protos with the pinned grpcio-tools, at test time."""

from __future__ import annotations

import importlib
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).parent / "protos"
PACKAGE = "agentspace_grpc_testpb"


def compile_test_proto(name: str, out: Path) -> ModuleType:
    """Compile ``tests/protos/<name>.proto`` into ``out`` and import its ``_pb2`` module."""
    import google.api
    from grpc_tools import protoc

    common = Path(next(iter(google.api.__path__))).parent.parent
    wkt = Path(str(resources.files("grpc_tools") / "_proto"))
    status = protoc.main(
        [
            "protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"-I{common}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"{PACKAGE}/{name}.proto",
        ]
    )
    assert status == 0, f"protoc failed on {name}.proto"
    (out / PACKAGE / "__init__.py").touch()
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(f"{PACKAGE}.{name}_pb2")
