"""What every writer of a served file shares: the model name rule, the versions it records, an atomic write."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

from statestream.contract.manifest import MANIFEST_KEY, Manifest, read_manifest

from .errors import ExportError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSIONED = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "statestream")


def versions(packages: tuple[str, ...] = _VERSIONED) -> dict[str, str]:
    """Versions of the installed packages an export may depend on."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg if pkg != "tensorflow" else "tensorflow-cpu")
        except metadata.PackageNotFoundError:
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
    return out


def write_atomically(data: bytes, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a served model file must be readable like any other
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def set_manifest(proto, manifest: Manifest) -> bytes:
    """`proto` (an onnx.ModelProto) with `manifest` in its metadata (other metadata kept), serialized; checked to
    read back as the same manifest."""
    keep = [p for p in proto.metadata_props if p.key != MANIFEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=MANIFEST_KEY, value=manifest.to_json())
    if read_manifest(proto) != manifest:
        raise ExportError("manifest did not survive a round trip through the ONNX file")
    return proto.SerializeToString()


def sha256_file(path) -> str:
    """The SHA-256 of a source file, recorded in the manifest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
