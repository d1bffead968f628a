"""What the bad-input suites share: tiny params and a hash snapshot proving previous outputs stayed untouched.
The ``digits`` and ``model`` fixtures built with these params live in ``conftest.py``."""

from __future__ import annotations

import hashlib
from pathlib import Path

TINY = ["tracking.enabled=false", "vae.base_filters=8", "vae.latent_dim=8", "data.image_size=8"]


def snapshot(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (a missing path is recorded as missing)."""
    out = {}
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "missing"
    return out
