"""virtio-msix: the virtio-over-PCI transport with MSI-X, device side and driver side.

The public API (README "Write your own virtio device"): subclass :class:`VirtioDevice`, then
``Machine(device).probe()`` (or ``probe(device)``) runs the Linux 6.1 virtio-pci probe on it in
simulation; ``virtio-msix boot --device-module FILE`` puts it under the real kernel.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Resolved on first use (PEP 562), so that `import virtio_msix` (the CLI's --version) stays cheap.
_EXPORTS = {
    "Machine": "guest.machine",
    "ProbeResult": "guest.machine",
    "probe": "guest.machine",
    "VirtioDevice": "virtio.device",
    "VIRTIO_F_VERSION_1": "virtio.device",
    "VirtQueue": "virtio.queue",
    "Element": "virtio.queue",
    "VirtqueueError": "virtio.queue",
    "make_device": "virtio",
    "parse_device": "virtio",
    "DeviceSpec": "virtio",
    "SpecError": "virtio",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'virtio_msix' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
