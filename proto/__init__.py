"""`incident_manager.proto` and the Python code generated from it.

The generated modules (`incident_manager_pb2.py`, `incident_manager_pb2_grpc.py`) are build output:
git ignores them and `load()` (re)generates them with grpcio-tools whenever they are missing or older
than the .proto, so a fresh clone works after `pip install -e .` with no extra step. Generation is
serialised with a file lock and written atomically, so concurrent processes never import half a file.
Where the package directory is read-only (an installed wheel) the code is generated into
DATA_DIR/proto-gen instead.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import os
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PROTO_FILE = HERE / "incident_manager.proto"
GENERATED = ("incident_manager_pb2.py", "incident_manager_pb2_grpc.py")


def _stale(directory: Path) -> bool:
    proto_mtime = PROTO_FILE.stat().st_mtime
    for name in GENERATED:
        path = directory / name
        if not path.exists() or path.stat().st_mtime < proto_mtime:
            return True
    return False


def generate(out_dir: Path = HERE) -> None:
    """Run protoc (grpcio-tools) on incident_manager.proto into `out_dir`/proto/*.py."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(PROTO_FILE, "rb") as lock:  # the .proto itself is the lock: no stray lock files
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stale(out_dir):
            return
        include = str(Path(protoc.__file__).resolve().parent / "_proto")
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            # -I at the parent makes the generated grpc module import `proto.incident_manager_pb2`.
            status = protoc.main([
                "grpc_tools.protoc", f"-I{HERE.parent}", f"-I{include}", f"--python_out={tmp}",
                f"--grpc_python_out={tmp}", str(PROTO_FILE),
            ])
            if status != 0:
                raise RuntimeError(f"protoc failed on {PROTO_FILE} (exit {status})")
            for name in GENERATED:
                os.replace(Path(tmp) / "proto" / name, out_dir / name)
        log.info("generated gRPC code", extra={"proto": str(PROTO_FILE), "out": str(out_dir)})


def _ensure_generated() -> None:
    if not _stale(HERE):
        return
    if os.access(HERE, os.W_OK):
        generate(HERE)
        return
    # Read-only install: generate beside the data and let this package find the modules there.
    fallback = Path(os.environ.get("DATA_DIR", "var")).resolve() / "proto-gen"
    generate(fallback)
    if str(fallback) not in __path__:  # type: ignore[name-defined]
        __path__.append(str(fallback))  # type: ignore[name-defined]


def load() -> tuple[ModuleType, ModuleType]:
    """(incident_manager_pb2, incident_manager_pb2_grpc), generating them first when needed."""
    _ensure_generated()
    pb2 = importlib.import_module(f"{__name__}.incident_manager_pb2")
    pb2_grpc = importlib.import_module(f"{__name__}.incident_manager_pb2_grpc")
    return pb2, pb2_grpc


__all__ = ["generate", "load", "PROTO_FILE"]
