"""virtio layer (DESIGN.md layer 3): the virtio-pci transport, virtqueues and devices."""

from __future__ import annotations

from ..pci.sink import InterruptSink
from ..trace import Recorder
from .devspec import DRIVER, DeviceSpec, NetdevSpec, SpecError, parse_device, parse_netdev
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
    spec: DeviceSpec | None = None,
    **net_options: object,
) -> VirtioPciDevice:
    """QEMU 7.2's ``-device virtio-net-pci`` with the same defaults; with ``spec`` (a parsed
    ``-device``/``-netdev``, virtio/devspec.py) the device those properties describe, and
    ``vectors``/``queue_pairs``/``disable_legacy`` are ignored."""
    from .net import VirtioNet

    if spec is not None:
        net = VirtioNet(
            queue_pairs=spec.queue_pairs,
            mac=spec.mac,
            backend=backend,  # type: ignore[arg-type]
            mtu=spec.get("host_mtu") or None,
            host_features=spec.host_features(),
            legacy_features=spec.legacy_features(),
            ctrl_queue=True,  # QEMU adds the control queue whatever ctrl_vq says (measured)
            rx_queue_size=spec.rx_queue_size,
            tx_queue_size=spec.tx_queue_size,
            tx_burst=spec.tx_burst,
            speed=spec.speed,
            duplex=spec.duplex,
            packed=spec.packed,
        )
        return VirtioPciDevice(
            net,
            vectors=spec.vectors,
            disable_legacy=spec.disable_legacy,
            rom_size=spec.rom_size,
            disable_modern=spec.disable_modern,
            page_per_vq=spec.page_per_vq,
            modern_pio_notify=spec.modern_pio_notify,
            memory=memory,
            sink=sink,
            recorder=recorder,
        )
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


def make_device(
    device: str | DeviceSpec = DRIVER,
    netdev: str | NetdevSpec | None = None,
    **kwargs: object,
) -> VirtioPciDevice:
    """The device QEMU 7.2 builds from ``-device DEVICE -netdev NETDEV`` (QEMU's syntax:
    ``make_device("virtio-net-pci,mq=on,vectors=6", netdev="tap,queues=2")``). A description
    QEMU refuses is a :class:`SpecError` with QEMU's message; ``kwargs``: memory, sink,
    recorder, backend."""
    spec = device if isinstance(device, DeviceSpec) else parse_device(device, netdev)
    return make_virtio_net_pci(spec=spec, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "DeviceSpec",
    "NetdevSpec",
    "SpecError",
    "VirtioPciDevice",
    "default_vectors",
    "make_device",
    "make_virtio_net_pci",
    "parse_device",
    "parse_netdev",
]
