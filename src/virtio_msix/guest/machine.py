"""The public API: put any virtio device on a simulated PCI bus and let the Linux 6.1 driver
model probe it.

A device is a :class:`~virtio_msix.virtio.device.VirtioDevice` (virtio 1.2 §2: features, device
config, virtqueues, reset). :class:`Machine` puts it behind the virtio-pci transport with MSI-X
(QEMU 7.2's layout), on slot 3 of a PCI bus with firmware-assigned BARs, and runs Linux 6.1's
generic virtio-pci probe — PCI enable, capability walk, reset, feature negotiation,
``vp_find_vqs`` with its MSI-X → shared MSI-X → INTx ladder, the MSI-X table fill, unmask,
DRIVER_OK — access for access, through a modelled local APIC (x86) or UML's MSI flavour (um)::

    from virtio_msix import Machine
    machine = Machine(MyDevice())
    views = machine.probe()          # capabilities, features, MSI-X table, vectors, interrupts
    data = machine.transfer(0, in_len=64)   # one buffer through queue 0: what the device wrote

``probe(device)`` is the one-call form. The same device object runs under the real kernel with
``virtio-msix boot --device-module FILE`` (a module with ``make_device()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..host.phases import PhaseTagger
from ..host.views import default_vectors, queue_names
from ..pci.bus import PciBus
from ..pci.function import PciFunction
from ..trace import Recorder
from ..virtio.describe import describe
from ..virtio.device import VirtioDevice
from ..virtio.memory import GuestMemory
from ..virtio.pci import VirtioPciDevice
from ..virtio.regs import TRANSITIONAL_DEVICE_IDS
from .errnos import errname
from .kernel import Kernel
from .pci import Firmware, PciDev, pci_bus_add_device
from .views import interrupts_view, table_view
from .virtio_generic import GenericInfo, generic_driver, generic_transfer
from .virtio_pci import (
    VirtioBus,
    VirtioDriver,
    VpDev,
    pci_device_probe,
    virtio_dev_remove,
    virtio_pci_remove,
)

SLOT = 3  # the slot the QEMU captures use (-device ...,addr=0x3)
# Where the function sits per arch: x86 as in the QEMU captures; UML's virt-pci puts the device
# of a vhost-user socket at 0000:00:00.0 (seen in the real boot's console), which also makes its
# MSI hwirq (pci_msi_domain_calc_hwirq: devfn << 11 | index) the bare MSI-X index.
SLOTS = {"x86": SLOT, "um": 0}
# virtio devices before ours on the virtio bus: under UML virt-pci itself is the vhost-user
# device virtio0, so the PCI function's virtio device is virtio1 (as the real boot shows).
VIRTIO_INDEX = {"x86": 0, "um": 1}
INTX_IRQ = {"x86": 23}  # q35 routes slot 3 INTA to GSI 23 (captured)


@dataclass
class ProbeResult:
    """What the probe left behind, as a user looks at it."""

    rc: int  # 0, or the negative errno the probe failed with
    capabilities: list[dict[str, Any]]  # as the driver's capability walks find them
    device_features: int  # what the device offered
    features: int  # what the driver accepted (written with FEATURES_OK)
    ladder: list[str]  # which vp_find_vqs steps ran, and how each ended
    msix_table: list[dict[str, Any]]  # entry, address, data, decoded, masked, pending, sent
    event_vectors: list[tuple[str, int]]  # config and each queue → MSI-X vector (0xFFFF: none)
    interrupts: list[dict[str, Any]]  # /proc/interrupts-like rows
    per_vq_vectors: bool = False
    msix_enabled: bool = False
    status: int = 0  # the device status the driver left (DRIVER_OK on success)

    @property
    def error(self) -> str | None:
        return None if self.rc == 0 else errname(self.rc)


@dataclass
class Machine:
    """One simulated machine with one virtio device on its PCI bus.

    ``device``: a VirtioDevice (it is put behind virtio-pci here) or an assembled
    VirtioPciDevice. ``vectors``: MSI-X table size (default: config + one per queue; 0: no
    MSI-X, the driver falls back to INTx). ``driver``: the guest driver (default: a generic one
    that asks for every queue with a callback and accepts ``features``, the device-specific
    feature bits, besides the transport's). ``arch``: "x86" (q35, local APIC) or "um" (UML's
    virt-pci MSI: address 0xa0000, data = Linux IRQ).
    """

    device: VirtioDevice | VirtioPciDevice
    vectors: int | None = None
    cpus: int = 1
    arch: str = "x86"
    memory_mb: int = 64
    disable_legacy: bool = False
    features: Sequence[int] = ()
    driver: VirtioDriver | None = None
    recorder: Recorder | None = None
    backtraces: bool = False
    # What the bus sees, when it is not the device itself (fault injection wraps it).
    bus_function: PciFunction | None = None
    # The Linux version the driver model behaves as: "6.1" or "6.12" (guest/ says where they
    # differ).
    version: str = "6.1"
    kernel: Kernel = field(init=False)
    function: VirtioPciDevice = field(init=False)
    pci_dev: PciDev = field(init=False)
    vp: VpDev | None = field(init=False, default=None)
    probe_rc: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.recorder = self.recorder if self.recorder is not None else Recorder()
        self.phases = PhaseTagger(self.recorder)
        self.memory = GuestMemory(self.memory_mb << 20)
        if isinstance(self.device, VirtioPciDevice):
            fn = self.device
            fn.memory = self.memory
        else:
            vectors = default_vectors(self.device) if self.vectors is None else self.vectors
            if not 0 <= vectors <= 2048:
                raise ValueError("vectors must be 0..2048 (the MSI-X table size limit)")
            # A device id without a transitional PCI id can only be modern.
            legacy = not self.disable_legacy and self.device.device_id in TRANSITIONAL_DEVICE_IDS
            fn = VirtioPciDevice(self.device, vectors=vectors, disable_legacy=not legacy,
                                 memory=self.memory, recorder=self.recorder)  # fmt: skip
        self.function = fn
        bus = PciBus()
        self.slot = SLOTS[self.arch]
        bus.attach(self.slot, self.bus_function if self.bus_function is not None else fn)
        k = Kernel(bus, self.memory, cpus=self.cpus, arch=self.arch, backtraces=self.backtraces,
                   version=self.version)  # fmt: skip
        fn.sink = k
        if self.arch == "um":
            # virt-pci allocates the bus's one INTx descriptor at its own probe, before the
            # scan finds our function (um_pci_virtio_probe: irq_alloc_desc; every pin maps to it).
            k.intx_irq = k.irq_alloc_desc("dummy", 0, "simple").irq
        else:
            k.intx_irq = INTX_IRQ[self.arch]
        self.kernel = k
        devs = Firmware(arch=self.arch).scan(k, intx_irq=k.intx_irq)
        self.pci_dev = next(d for d in devs if d.slot == self.slot)
        pci_bus_add_device(k, self.pci_dev)  # before any driver (6.12 saves config space here)
        self.queue_names = queue_names(fn.device)
        if self.driver is None:
            self.driver = generic_driver(fn.device.device_id, self.queue_names, self.features)

    # -- the probe ---------------------------------------------------------------------------
    def run_probe(self) -> int:
        """Run pci_device_probe → virtio_pci_probe → the driver's probe; the probe's errno."""
        vbus = VirtioBus()
        vbus.next_index = VIRTIO_INDEX[self.arch]
        assert self.driver is not None
        vbus.drivers.append(self.driver)
        self.phases.phase = "probe"
        self.probe_rc = pci_device_probe(self.kernel, vbus, self.pci_dev)
        self.phases.phase = "run"
        self.vp = vbus.devices[-1] if vbus.devices else VpDev(self.pci_dev, 0)
        return self.probe_rc

    def probe(self) -> ProbeResult:
        """Probe the device (once) and return the views."""
        if self.probe_rc is None:
            self.run_probe()
        return self.views()

    def views(self) -> ProbeResult:
        """The views now: capability layout, features, the MSI-X table as the driver filled it,
        event → vector, and the interrupt counts."""
        fn, vp = self.function, self.vp
        return ProbeResult(
            rc=self.probe_rc or 0,
            capabilities=describe(fn)["capabilities"],
            device_features=vp.device_features if vp else 0,
            features=vp.features if vp else 0,
            ladder=list(vp.ladder) if vp else [],
            msix_table=table_view(self.kernel, fn),
            event_vectors=fn.event_vectors(self.queue_names),
            interrupts=interrupts_view(self.kernel),
            per_vq_vectors=bool(vp and vp.per_vq_vectors),
            msix_enabled=bool(fn.msix and fn.msix.enabled),
            status=fn.device.status,
        )

    # -- after the probe ---------------------------------------------------------------------
    def transfer(self, queue: int, out: bytes = b"", in_len: int = 0) -> bytes:
        """Send one buffer chain through ``queue`` as the generic driver: ``out`` for the
        device to read, ``in_len`` bytes for it to write; returns what it wrote. The device's
        interrupt runs the queue's handler, as in the real kernel."""
        info = self.vp.priv if self.vp is not None else None
        if self.probe_rc != 0 or not isinstance(info, GenericInfo):
            raise RuntimeError("transfer needs a successful probe with the generic driver")
        return generic_transfer(self.kernel, info, queue, out, in_len)

    def remove(self, transport: bool = True) -> None:
        """Remove the driver as ``rmmod`` does: the virtio driver (virtio_dev_remove: its
        remove — reset, queues and vectors freed, MSI-X off — then ACKNOWLEDGE again) and, with
        ``transport``, virtio_pci too (virtio_pci_remove: presence check, Bus Master off).
        Recorded in the ``teardown`` phase."""
        if self.vp is None:
            return
        self.phases.phase = "teardown"
        virtio_dev_remove(self.kernel, self.vp)
        if transport and self.vp in getattr(self.kernel, "vp_devices", []):
            virtio_pci_remove(self.kernel, self.vp)


def probe(device: VirtioDevice | VirtioPciDevice, **options: Any) -> ProbeResult:
    """Put ``device`` on a fresh simulated machine (``Machine`` options) and probe it."""
    return Machine(device, **options).probe()
