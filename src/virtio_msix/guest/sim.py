"""One simulated machine: our device on a PCI bus, probed by the Linux 6.1 driver model.

``run_sim`` boots (firmware BAR assignment, PCI scan), probes virtio-net through virtio_pci,
brings the interface up, passes traffic through the loopback backend and tears down, and
returns everything a user wants to look at.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..host.backends import LoopbackBackend, MultiQueueLoopback
from ..trace import Recorder
from ..virtio import VirtioPciDevice, make_virtio_net_pci
from ..virtio.describe import describe
from ..virtio.devspec import DeviceSpec
from ..virtio.regs import COMMON, VIRTIO_MSI_NO_VECTOR
from . import views as guest_views
from .irqcore import mask_irq, unmask_irq
from .kernel import IrqDesc, Kernel
from .machine import Machine
from .pci import PCI_COMMAND, PciDev
from .views import interrupts_view, table_view
from .virtio_net import (
    VIRTIO_NET_DRIVER,
    VirtnetInfo,
    dev_queue_xmit,
    netdev_pick_tx,
    start_xmit,
    virtnet_config_changed,
    virtnet_open,
)
from .virtio_pci import VpDev, irq_desc_of, virtio_dev_remove, virtio_pci_remove


class VectorRefusal:
    """Fault injection on the host side of the bus: the device behaves as one that cannot map
    some vectors — a write of msix_config or queue_msix_vector with a refused vector stores
    NO_VECTOR instead, so it reads back NO_VECTOR (§4.1.5.1.2.1) and the driver's ladder must
    fall back."""

    def __init__(self, device: VirtioPciDevice, from_vector: int | None, config: bool) -> None:
        self._device = device
        self.from_vector = from_vector
        self.config = config
        self.refused = 0
        modern = next(
            b
            for b in device.bars
            if b is not None and b.regions.find(0) and b.regions.find(0).name == "common"
        )
        self._modern = modern.index
        self._offsets = {
            COMMON["msix_config"].offset: "config",
            COMMON["queue_msix_vector"].offset: "queue",
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        which = self._offsets.get(offset) if bar == self._modern and size == 2 else None
        if which and value != VIRTIO_MSI_NO_VECTOR:
            refuse = (which == "config" and self.config) or (
                self.from_vector is not None and value >= self.from_vector
            )
            if refuse:
                self.refused += 1
                value = VIRTIO_MSI_NO_VECTOR
        self._device.bar_write(bar, offset, size, value)


@dataclass
class SimOptions:
    vectors: int | None = None
    queue_pairs: int = 1
    cpus: int = 1
    arch: str = "x86"
    packets: int = 8
    disable_legacy: bool = False
    # The device a --device/--netdev describes (virtio/devspec.py); None: the shorthands above.
    spec: DeviceSpec | None = None
    backtraces: bool = False
    refuse_vectors_from: int | None = None
    refuse_config_vector: bool = False
    mask_during_traffic: bool = False
    teardown: bool = True
    memory_mb: int = 64
    kernel: str = "6.1"  # the Linux version the driver model follows: "6.1" or "6.12"
    packed: bool = False  # QEMU's packed=on: the device offers VIRTIO_F_RING_PACKED


@dataclass
class SimResult:
    options: SimOptions
    kernel: Kernel
    device: VirtioPciDevice
    recorder: Recorder
    pci_dev: PciDev
    vp: VpDev
    net: VirtnetInfo | None
    probe_rc: int
    table_after_probe: list[dict[str, Any]] = field(default_factory=list)
    event_vectors: list[tuple[str, int]] = field(default_factory=list)
    interrupts_after_probe: list[dict[str, Any]] = field(default_factory=list)
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    masked_demo: dict[str, Any] | None = None
    table_after_teardown: list[dict[str, Any]] = field(default_factory=list)
    msix_enabled_after_teardown: bool | None = None
    # The removal path (phase ``teardown``): each module's removal and its register accesses,
    # and what the device is left with.
    teardown_steps: list[dict[str, Any]] = field(default_factory=list)
    status_after_teardown: int | None = None
    command_after_teardown: int | None = None
    capabilities: list[dict[str, Any]] = field(default_factory=list)
    # x86: per CPU, the vectors in use and which interrupt holds each; and XPS
    vector_placement: dict[str, Any] = field(default_factory=dict)
    vector_placement_after_probe: dict[str, Any] = field(default_factory=dict)

    def probe_records(self) -> list[dict[str, Any]]:
        """Accesses from the driver's first access to its DRIVER_OK write (inclusive)."""
        return [r for r in self.recorder.records if r.get("phase") == "probe" and "op" in r]


def run_sim(
    opts: SimOptions,
    recorder: Recorder | None = None,
    capture: Callable[[bytes, bool], None] | None = None,
    irq_hook: Callable[[IrqDesc, int, int], None] | None = None,
) -> SimResult:
    """Run one machine. ``recorder``: one the caller made (e.g. not keeping records, with
    listeners that stream them to files); ``capture`` sees every frame the driver sends
    (True) or receives (False); ``irq_hook`` every handler run (desc, start, end in
    monotonic ns)."""
    recorder = recorder if recorder is not None else Recorder()
    device = make_virtio_net_pci(
        spec=opts.spec,
        vectors=opts.vectors,
        queue_pairs=opts.queue_pairs,
        disable_legacy=opts.disable_legacy,
        recorder=recorder,
        backend=LoopbackBackend(swap_macs=False),
        packed=opts.packed,
    )
    refusal = None
    if opts.refuse_vectors_from is not None or opts.refuse_config_vector:
        refusal = VectorRefusal(device, opts.refuse_vectors_from, opts.refuse_config_vector)
    if opts.queue_pairs > 1 and isinstance(device.device.backend, LoopbackBackend):
        # More than one pair: a peer with a queue per pair, as the multi-queue TAP a user
        # gives QEMU for mq=on, so that every pair carries traffic (same features offered).
        device.device.backend = MultiQueueLoopback(opts.queue_pairs)
    machine = Machine(device, cpus=opts.cpus, arch=opts.arch, memory_mb=opts.memory_mb,
                      driver=VIRTIO_NET_DRIVER, recorder=recorder, backtraces=opts.backtraces,
                      version=opts.kernel,
                      bus_function=refusal)  # fmt: skip
    k, dev = machine.kernel, machine.pci_dev
    k.irq_hook = irq_hook
    probe_rc = machine.run_probe()
    assert machine.vp is not None
    vp = machine.vp
    vi: VirtnetInfo | None = vp.priv if probe_rc == 0 else None
    names = []
    if vi is not None:
        names = [n for i in range(vi.max_queue_pairs) for n in (f"input.{i}", f"output.{i}")] + (
            ["control"] if vi.cvq is not None else []
        )
    res = SimResult(opts, k, device, recorder, dev, vp, vi, probe_rc)
    res.capabilities = describe(device)["capabilities"]
    res.table_after_probe = table_view(k, device)
    res.event_vectors = device.event_vectors(names)
    res.interrupts_after_probe = interrupts_view(k)
    res.vector_placement_after_probe = res.vector_placement = guest_views.vector_placement_view(k)
    if vi is None:
        if opts.teardown:
            teardown(res, machine)
        return res

    # The config work after probe reads the link status; `ip link set up` posts RX buffers and
    # sends the RX-mode commands.
    virtnet_config_changed(k, vp)
    vi.capture = capture
    virtnet_open(k, vi)

    if opts.mask_during_traffic and vp.per_vq_vectors:
        res.masked_demo = mask_demo(k, vi, device)

    # Each CPU sends in turn, on the TX queue XPS gives it (one queue for every CPU with a
    # single pair). XPS is set at probe (virtnet_set_affinity) and stays: each CPU's queue is
    # looked up once.
    txq = [netdev_pick_tx(k, vi, cpu) for cpu in range(k.cpus)]
    for n in range(opts.packets):
        cpu = n % k.cpus
        k.this_cpu = cpu
        dev_queue_xmit(k, vi, make_frame(vi.mac, n), txq[cpu])
        k.take_interrupts()
        if any(k.poll_list):
            k.ksoftirqd()  # NAPI work a burst left over (never with one frame at a time)
    k.this_cpu = 0
    res.interrupts = interrupts_view(k)
    res.vector_placement = guest_views.vector_placement_view(k)

    if opts.teardown:
        teardown(res, machine)
    return res


class _AccessCounter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, rec: dict[str, Any]) -> None:
        if "op" in rec:
            self.n += 1


def teardown(res: SimResult, machine: Machine) -> None:
    """What ``rmmod virtio_net; rmmod virtio_pci`` does, as the QEMU teardown captures show
    (tests/data/qemu-*-teardown*): virtio_dev_remove (virtnet_remove: reset, queues and
    vectors freed, MSI-X off; then ACKNOWLEDGE again), then virtio_pci_remove (presence check,
    Bus Master off). Recorded in the ``teardown`` phase. The simulator always ends with it, as
    a real guest's life does (and as ``boot`` ends: the real kernel unbinds our device)."""
    k, vp, device = res.kernel, res.vp, res.device
    machine.phases.phase = "teardown"
    counter = _AccessCounter()
    res.recorder.subscribe(counter)
    if vp.driver is not None:
        name = vp.driver.name
        virtio_dev_remove(k, vp)
        res.teardown_steps.append({"step": f"rmmod {name}",
                                   "calls": "virtio_dev_remove → virtnet_remove",
                                   "accesses": counter.n})  # fmt: skip
    if vp in getattr(k, "vp_devices", []):
        before = counter.n
        virtio_pci_remove(k, vp)
        # 6.12 builds virtio_pci in: its removal is the sysfs unbind (the same calls).
        step = "unbind virtio-pci" if k.version == "6.12" else "rmmod virtio_pci"
        res.teardown_steps.append({"step": step,
                                   "calls": "virtio_pci_remove → pci_disable_device",
                                   "accesses": counter.n - before})  # fmt: skip
    res.table_after_teardown = table_view(k, device)
    res.msix_enabled_after_teardown = device.msix.enabled if device.msix else None
    res.status_after_teardown = device.device.status
    res.command_after_teardown = device.config_word(PCI_COMMAND)  # not a bus access


_ETHERTYPE = b"\x88\xb5"  # IEEE 802 local experimental
_PAYLOAD_TAIL = bytes(range(56))


def make_frame(mac: bytes, n: int) -> bytes:
    """An Ethernet frame to our own MAC (so the loopback delivers it back to us)."""
    return mac + mac + _ETHERTYPE + struct.pack(">I", n) + _PAYLOAD_TAIL


def mask_demo(k: Kernel, vi: VirtnetInfo, device: VirtioPciDevice) -> dict[str, Any]:
    """Mask input.0's entry, let a packet arrive, show the pending bit, unmask: delivered."""
    desc = irq_desc_of(k, vi.vp, vi.rq[0].msix_vector)
    assert desc is not None and device.msix is not None
    entry = vi.rq[0].msix_vector
    before = sum(desc.counts)
    mask_irq(k, desc)
    start_xmit(k, vi, make_frame(vi.mac, 0xFFFF))
    pending = device.msix.pending(entry)
    during = sum(desc.counts)
    unmask_irq(k, desc)
    k.take_interrupts()
    after = sum(desc.counts)
    return {
        "entry": entry,
        "irq": desc.irq,
        "pending_while_masked": pending,
        "interrupts_while_masked": during - before,
        "interrupts_after_unmask": after - during,
        "pending_after_unmask": device.msix.pending(entry),
    }
