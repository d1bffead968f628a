"""Pack the imagegen that is running now as a wheel, to travel inside a registered model.

imagegen is not on a package index, so a serving environment built by MLflow (``mlflow models
serve`` with the default virtualenv/uv env manager, ``build-docker``) cannot ``pip install
imagegen==X`` from one. Instead the wheel is logged with the model (``code_paths``: it lands in the
model's ``code/``) and the model's requirements name it by relative path, which MLflow resolves
against the model folder.

The wheel is built from the imported package and its installed metadata, without a build backend, a
source tree or the network, so it works from an editable checkout and from an installed package
alike. Timestamps are fixed: the same code gives the same bytes."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import imagegen

_EPOCH = (2020, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def imagegen_version() -> str:
    try:
        return importlib.metadata.version("imagegen")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree on PYTHONPATH
        return imagegen.__version__


def _metadata(version: str) -> tuple[str, str | None]:
    """METADATA (with the dependencies) and entry_points.txt of the installed distribution."""
    try:
        dist = importlib.metadata.distribution("imagegen")
        meta, entry_points = dist.read_text("METADATA"), dist.read_text("entry_points.txt")
    except importlib.metadata.PackageNotFoundError:
        meta, entry_points = None, None
    if not meta:
        meta = f"Metadata-Version: 2.1\nName: imagegen\nVersion: {version}\n"
    return meta, entry_points


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(dest_dir: Path) -> Path:
    """Write ``imagegen-<version>-py3-none-any.whl`` into ``dest_dir`` and return its path."""
    version = imagegen_version()
    package = Path(imagegen.__file__).resolve().parent
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_dir() or path.suffix in _SKIP_SUFFIXES or _SKIP_DIRS & set(path.parts):
            continue
        files[f"imagegen/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    info = f"imagegen-{version}.dist-info"
    meta, entry_points = _metadata(version)
    files[f"{info}/METADATA"] = meta.encode()
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: imagegen.registry.wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/top_level.txt"] = b"imagegen\n"
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()

    dest = Path(dest_dir) / f"imagegen-{version}-py3-none-any.whl"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return dest
