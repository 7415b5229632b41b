"""The host environment every host needs: where caches live and which programs exist."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class PrerequisiteMissing(RuntimeError):
    """A program or package this needs is not on the machine (names the Debian package)."""


def cache_dir() -> Path:
    """``$VIRTIO_MSIX_CACHE``, else ~/.cache/virtio-msix (kernels, Debian packages)."""
    base = os.environ.get("VIRTIO_MSIX_CACHE") or os.path.expanduser("~/.cache/virtio-msix")
    return Path(base)


def require(program: str, package: str) -> str:
    """The path of ``program``, or PrerequisiteMissing naming the Debian ``package``."""
    path = shutil.which(program)
    if path is None:
        raise PrerequisiteMissing(f"{program} not found: install the Debian package {package}")
    return path
