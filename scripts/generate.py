"""Generate the Python modules, gRPC stubs and typed stubs for the protos.

Used by `make generate` and `make check-generated`. The proto root is mapped to a virtual
directory named after the import package, so a file `protos/google/x.proto` registers in the
descriptor pool as `<package>/google/x.proto` and imports as `<package>.google.x_pb2`. That
keeps both the module names and the descriptor file names unique in any interpreter.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proto-root", required=True, type=Path)
    parser.add_argument("--package", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("protos", nargs="+", help="proto files, relative to --proto-root")
    args = parser.parse_args(argv)

    # google/api/*.proto come from googleapis-common-protos; google/protobuf/*.proto from
    # grpcio-tools itself.
    import google.api
    from grpc_tools import protoc

    common_root = Path(next(iter(google.api.__path__))).parent.parent
    wkt_root = Path(str(resources.files("grpc_tools") / "_proto"))
    bin_dir = Path(sys.executable).parent
    args.out.mkdir(parents=True, exist_ok=True)
    command = [
        "grpc_tools.protoc",
        f"-I{args.package}={args.proto_root}",
        f"-I{common_root}",
        f"-I{wkt_root}",
        f"--python_out={args.out}",
        f"--grpc_python_out={args.out}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out=quiet:{args.out}",
        f"--mypy_grpc_out=quiet:{args.out}",
        *(f"{args.package}/{proto}" for proto in args.protos),
    ]
    if protoc.main(command) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    package_dir = args.out / args.package
    for directory in [package_dir, *(p for p in package_dir.rglob("*") if p.is_dir())]:
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
    (package_dir / "py.typed").write_text("")
    shutil.rmtree(package_dir / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
