"""``--device-module FILE``: a Python file that defines ``make_device()`` returning a
VirtioDevice (the public API; examples/rng.py is one)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from ..virtio.device import VirtioDevice

FACTORY = "make_device"


def load_device_factory(path: str | Path) -> Callable[[], VirtioDevice]:
    """The module's ``make_device``, checked to return a VirtioDevice; ValueError says why not."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{str(path)!r}: no such file")
    name = f"virtio_msix_device_{p.stem}"
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ValueError(f"{str(path)!r}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: say what failed, in one line
        raise ValueError(f"{str(path)!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, FACTORY, None)
    if not callable(factory):
        raise ValueError(f"{str(path)!r} defines no {FACTORY}() returning a VirtioDevice")
    sample = factory()
    if not isinstance(sample, VirtioDevice):
        raise ValueError(f"{str(path)!r}: {FACTORY}() returned {type(sample).__name__}, "
                         "not a VirtioDevice")  # fmt: skip
    return factory


def device_module(spec: str) -> Callable[[], VirtioDevice]:
    """argparse type for ``--device-module``: one error line and exit 2 on a bad module."""
    try:
        return load_device_factory(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
