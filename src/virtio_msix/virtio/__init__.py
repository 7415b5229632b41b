"""virtio layer (DESIGN.md layer 3): the virtio-pci transport, virtqueues and devices."""

from __future__ import annotations

from ..pci.sink import InterruptSink
from ..trace import Recorder
from .memory import Memory
from .pci import DEFAULT_ROM_SIZE, VirtioPciDevice


def default_vectors(queue_pairs: int) -> int:
    """QEMU's virtio-net-pci default: one vector per queue plus config and control queue."""
    return 2 * queue_pairs + 2


def make_virtio_net_pci(
    vectors: int | None = None,
    queue_pairs: int = 1,
    disable_legacy: bool = False,
    memory: Memory | None = None,
    sink: InterruptSink | None = None,
    recorder: Recorder | None = None,
    backend: object | None = None,
    mac: bytes | None = None,
    rom_size: int = DEFAULT_ROM_SIZE,
    **net_options: object,
) -> VirtioPciDevice:
    """QEMU 7.2's ``-device virtio-net-pci`` with the same defaults."""
    from .net import VirtioNet

    if queue_pairs < 1:
        raise ValueError("queue_pairs must be at least 1")
    if vectors is None:
        vectors = default_vectors(queue_pairs)
    if not 0 <= vectors <= 2048:
        raise ValueError("vectors must be 0..2048")
    kwargs: dict[str, object] = dict(net_options)
    if mac is not None:
        kwargs["mac"] = mac
    net = VirtioNet(queue_pairs=queue_pairs, backend=backend, **kwargs)  # type: ignore[arg-type]
    return VirtioPciDevice(
        net,
        vectors=vectors,
        disable_legacy=disable_legacy,
        rom_size=rom_size,
        memory=memory,
        sink=sink,
        recorder=recorder,
    )


__all__ = ["VirtioPciDevice", "default_vectors", "make_virtio_net_pci"]
