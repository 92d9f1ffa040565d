"""Regenerate the committed gRPC code from ``protos/``.

Usage: ``python protos/generate.py [--out DIR]``. Paths under ``protos/`` mirror the Python packages they generate
into (``protos/server/pb/scout.proto`` becomes ``server/pb/scout_pb2.py``), so generated imports need no rewriting.
The same ``scout.proto`` is also generated into the client package as ``clients/python/scout_client/scout_pb2.py``
(compiled as ``scout_client/scout.proto``, so the client imports nothing from the server).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
CLIENT_ROOT = Path("clients") / "python"
CLIENT_PACKAGE = "scout_client"


def generate(out: Path) -> list[Path]:
    """Generate ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every ``.proto`` into ``out``."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {', '.join(map(str, protos))}")
    with tempfile.TemporaryDirectory() as staging:
        source = Path(staging) / CLIENT_PACKAGE / "scout.proto"
        source.parent.mkdir()
        shutil.copyfile(PROTO_ROOT / "server" / "pb" / "scout.proto", source)
        client_out = out / CLIENT_ROOT
        client_out.mkdir(parents=True, exist_ok=True)
        client = [
            "protoc",
            f"-I{staging}",
            f"--python_out={client_out}",
            f"--pyi_out={client_out}",
            f"--grpc_python_out={client_out}",
            f"{CLIENT_PACKAGE}/scout.proto",
        ]
        if protoc.main(client) != 0:
            raise SystemExit("protoc failed on the client copy of scout.proto")
    return sorted(p for p in out.rglob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: the repository)")
    for path in generate(parser.parse_args().out):
        print(path, file=sys.stderr)


if __name__ == "__main__":
    main()
