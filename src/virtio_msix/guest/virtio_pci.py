"""drivers/virtio (virtio_pci_common.c, virtio_pci_modern*.c, virtio.c) and the slice of the
driver core the probe runs through (drivers/base, drivers/pci/pci-driver.c) — Linux 6.1, access
for access. The common-config offsets come from the device's register table, as Linux's come
from struct virtio_pci_common_cfg."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..abi.virtio import (
    ACKNOWLEDGE,
    DRIVER,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VIRTIO_TRANSPORT_F_END,
    VIRTIO_TRANSPORT_F_START,
)
from ..pci.regs import PCI_CAP_ID_VNDR
from ..virtio.regs import (
    CAP,
    COMMON,
    COMMON_CFG_LEN,
    MODERN_COMMON_CFG_LEN,
    NOTIFY_OFF_MULTIPLIER,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
)
from .errnos import errname
from .irqcore import (
    EBUSY,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOMEM,
    IRQF_SHARED,
    free_irq,
    irq_set_affinity_hint,
    request_irq,
)
from .kernel import PIO_OFFSET, IrqDesc, Kernel
from .pci import (
    PCI_IRQ_MSIX,
    PciDev,
    pci_alloc_irq_vectors_affinity,
    pci_device_is_present,
    pci_disable_device,
    pci_enable_device,
    pci_find_capability,
    pci_find_next_capability,
    pci_free_irq_vectors,
    pci_irq_vector,
    pci_read_config_byte,
    pci_read_config_dword,
    pci_set_master,
)
from .virtio_pci_common import VpTransport, vp_notify, vring_transport_features
from .virtio_pci_legacy import virtio_pci_legacy_probe
from .vring import PackedVringVirtqueue, VringVirtqueue, vring_interrupt

PAGE_SIZE = 4096
VP_MSIX_VQ_VECTOR = 1
ISR_QUEUE, ISR_CONFIG = 0x1, 0x2


def _cc(name: str) -> int:
    return COMMON[name].offset


@dataclass
class ModernDevice:
    """struct virtio_pci_modern_device: the mapped structures."""

    common: int = 0
    isr: int = 0
    device: int = 0
    device_len: int = 0
    notify_base: int = 0
    notify_len: int = 0
    notify_offset_multiplier: int = 0
    # The notify capability's offset, kept for mapping each queue's notify address on its
    # own when the whole structure is larger than a page (page-per-vq).
    notify_map_cap: int = 0
    modern_bars: int = 0


@dataclass
class VirtioDriver:
    """struct virtio_driver."""

    name: str
    device_id: int
    feature_table: tuple[int, ...]
    probe: Callable[[Kernel, VpDev], int]
    remove: Callable[[Kernel, VpDev], None]
    validate: Callable[[Kernel, VpDev], int] | None = None
    config_changed: Callable[[Kernel, VpDev], None] | None = None
    # feature_table_legacy: what the driver takes from a device without VERSION_1 (None: the
    # same table).
    feature_table_legacy: tuple[int, ...] | None = None


class ModernTransport(VpTransport):
    """virtio_pci_modern.c's virtio_pci_config_ops and vp_dev hooks."""

    def get(self, k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
        return vp_modern_get(k, vp, offset, length)

    def generation(self, k: Kernel, vp: VpDev) -> int | None:
        return vp_generation(k, vp)

    def get_status(self, k: Kernel, vp: VpDev) -> int:
        return vp_modern_get_status(k, vp)

    def set_status(self, k: Kernel, vp: VpDev, status: int) -> None:
        vp_modern_set_status(k, vp, status)

    def reset(self, k: Kernel, vp: VpDev) -> None:
        vp_modern_reset(k, vp)

    def get_features(self, k: Kernel, vp: VpDev) -> int:
        return vp_modern_get_features(k, vp)

    def finalize_features(self, k: Kernel, vp: VpDev) -> int:
        return vp_finalize_features(k, vp)

    def find_vqs(
        self, k: Kernel, vp: VpDev, names: list[str], callbacks: list
    ) -> list[VringVirtqueue] | int:
        return vp_modern_find_vqs(k, vp, names, callbacks)

    def config_vector(self, k: Kernel, vp: VpDev, vector: int) -> int:
        return vp_modern_config_vector(k, vp, vector)

    def setup_vq(
        self, k: Kernel, vp: VpDev, index: int, callback, name: str, msix_vec: int
    ) -> VringVirtqueue | int:
        return setup_vq(k, vp, index, callback, name, msix_vec)

    def del_vq(self, k: Kernel, vp: VpDev, vq: VringVirtqueue) -> None:
        del_vq(k, vp, vq)


@dataclass
class VpVqInfo:
    vq: VringVirtqueue
    msix_vector: int


@dataclass
class VpDev:
    """The driver's side: struct virtio_pci_device (Linux's vp_dev) + its struct virtio_device.
    The device model it drives is virtio/pci.py's VirtioPciDevice."""

    pci_dev: PciDev
    index: int
    mdev: ModernDevice = field(default_factory=ModernDevice)
    ops: VpTransport = field(default_factory=ModernTransport)
    isr: int = 0  # vp_dev->isr: the ISR byte's address (either transport)
    ldev_ioaddr: int = 0  # struct virtio_pci_legacy_device's ioaddr (BAR0), legacy only
    device_id: int = 0
    features: int = 0
    device_features: int = 0
    vqs: list[VringVirtqueue] = field(default_factory=list)
    vq_info: dict[int, VpVqInfo] = field(default_factory=dict)
    msix_enabled: bool = False
    msix_vectors: int = 0
    msix_used_vectors: int = 0
    msix_names: list[str] = field(default_factory=list)
    per_vq_vectors: bool = False
    intx_enabled: bool = False
    driver: VirtioDriver | None = None
    priv: Any = None
    config_changes: int = 0
    ladder: list[str] = field(default_factory=list)  # which find_vqs steps ran and how
    broken: bool = False  # virtio_break_device: the device went away under the driver

    @property
    def name(self) -> str:
        return f"virtio{self.index}"

    @property
    def short(self) -> str:
        return self.name

    def has_feature(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)


# -- register access helpers (virtio_pci_modern_dev.c) -----------------------------------------------
def vp_modern_get_status(k: Kernel, vp: VpDev) -> int:
    return k.readb(vp.mdev.common + _cc("device_status"))


def vp_modern_set_status(k: Kernel, vp: VpDev, status: int) -> None:
    k.writeb(status, vp.mdev.common + _cc("device_status"))


def vp_get_status(k: Kernel, vp: VpDev) -> int:
    """config->get_status."""
    return vp.ops.get_status(k, vp)


def vp_set_status(k: Kernel, vp: VpDev, status: int) -> None:
    """config->set_status."""
    assert status != 0  # reset goes through vp_reset
    vp.ops.set_status(k, vp, status)


def vp_reset(k: Kernel, vp: VpDev) -> None:
    """config->reset."""
    vp.ops.reset(k, vp)


def vp_modern_reset(k: Kernel, vp: VpDev) -> None:
    vp_modern_set_status(k, vp, 0)
    # §2.4.2: wait for the device to read back 0 before re-initialising.
    for _ in range(1000):
        if not vp_modern_get_status(k, vp):
            break


def virtio_add_status(k: Kernel, vp: VpDev, status: int) -> None:
    vp_set_status(k, vp, vp_get_status(k, vp) | status)


def vp_modern_get_features(k: Kernel, vp: VpDev) -> int:
    c = vp.mdev.common
    k.writel(0, c + _cc("device_feature_select"))
    features = k.readl(c + _cc("device_feature"))
    k.writel(1, c + _cc("device_feature_select"))
    return features | k.readl(c + _cc("device_feature")) << 32


def vp_modern_set_features(k: Kernel, vp: VpDev, features: int) -> None:
    c = vp.mdev.common
    k.writel(0, c + _cc("driver_feature_select"))
    k.writel(features & 0xFFFFFFFF, c + _cc("driver_feature"))
    k.writel(1, c + _cc("driver_feature_select"))
    k.writel(features >> 32, c + _cc("driver_feature"))


def vp_modern_config_vector(k: Kernel, vp: VpDev, vector: int) -> int:
    c = vp.mdev.common
    k.writew(vector, c + _cc("msix_config"))
    # The device answers NO_VECTOR when it could not map it (§4.1.5.1.2.1).
    return k.readw(c + _cc("msix_config"))


def vp_modern_queue_vector(k: Kernel, vp: VpDev, index: int, vector: int) -> int:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    k.writew(vector, c + _cc("queue_msix_vector"))
    return k.readw(c + _cc("queue_msix_vector"))


def vp_modern_get_num_queues(k: Kernel, vp: VpDev) -> int:
    return k.readw(vp.mdev.common + _cc("num_queues"))


def vp_modern_get_queue_size(k: Kernel, vp: VpDev, index: int) -> int:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    return k.readw(c + _cc("queue_size"))


def vp_modern_get_queue_enable(k: Kernel, vp: VpDev, index: int) -> bool:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    return bool(k.readw(c + _cc("queue_enable")))


def vp_modern_set_queue_enable(k: Kernel, vp: VpDev, index: int, enable: bool) -> None:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    k.writew(int(enable), c + _cc("queue_enable"))


def vp_modern_set_queue_size(k: Kernel, vp: VpDev, index: int, size: int) -> None:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    k.writew(size, c + _cc("queue_size"))


def vp_modern_queue_address(
    k: Kernel, vp: VpDev, index: int, desc: int, avail: int, used: int
) -> None:
    c = vp.mdev.common
    k.writew(index, c + _cc("queue_select"))
    for name, addr in (("queue_desc", desc), ("queue_driver", avail), ("queue_device", used)):
        # §4.1.3.2: a 64-bit field is written as two 32-bit halves, low first.
        k.writel(addr & 0xFFFFFFFF, c + _cc(f"{name}_lo"))
        k.writel(addr >> 32, c + _cc(f"{name}_hi"))


def vp_modern_map_vq_notify(k: Kernel, vp: VpDev, index: int) -> int:
    """The queue's notify address, or 0 (Linux's NULL) when it cannot be mapped."""
    c, m = vp.mdev.common, vp.mdev
    k.writew(index, c + _cc("queue_select"))
    off = k.readw(c + _cc("queue_notify_off"))
    if m.notify_base:
        # The structure was mapped whole at probe: the offset must stay inside it.
        if off * m.notify_offset_multiplier + 2 > m.notify_len:
            k.printk(f"virtio_pci {vp.pci_dev.short}: bad notification offset {off} for queue "
                     f"{index}")  # fmt: skip
            return 0
        return m.notify_base + off * m.notify_offset_multiplier
    # Larger than a page (page-per-vq: 4 KiB per queue): map this queue's two bytes alone,
    # re-reading the notify capability's bar, offset and length.
    mapped = vp_modern_map_capability(
        k, vp.pci_dev, m.notify_map_cap, 2, 2, off * m.notify_offset_multiplier, 2
    )
    return mapped[0] if mapped is not None else 0


def vp_generation(k: Kernel, vp: VpDev) -> int:
    return k.readb(vp.mdev.common + _cc("config_generation"))


def vp_get(k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
    """config->get: device config bytes as the transport reads them."""
    return vp.ops.get(k, vp, offset, length)


def vp_modern_get(k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
    """Device config bytes with the access sizes Linux uses (1, 2, 4; 8 as two 4)."""
    base = vp.mdev.device + offset
    if length == 1:
        return bytes([k.readb(base)])
    if length == 2:
        return k.readw(base).to_bytes(2, "little")
    if length == 4:
        return k.readl(base).to_bytes(4, "little")
    if length == 8:
        return k.readl(base).to_bytes(4, "little") + k.readl(base + 4).to_bytes(4, "little")
    return bytes(k.readb(base + i) for i in range(length))


def virtio_cread_bytes(k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
    """__virtio_cread_many: byte reads bracketed by config_generation until it is stable (one
    pass on a transport without a generation: legacy)."""
    while True:
        old = vp.ops.generation(k, vp)
        data = b"".join(vp_get(k, vp, offset + i, 1) for i in range(length))
        if vp.ops.generation(k, vp) == old:
            return data


def virtio_cread16(k: Kernel, vp: VpDev, offset: int) -> int:
    return int.from_bytes(vp_get(k, vp, offset, 2), "little")


# -- capability discovery (virtio_pci_modern_dev.c) ---------------------------------------------------
def virtio_pci_find_capability(k: Kernel, dev: PciDev, cfg_type: int, vp: VpDev) -> int:
    pos = pci_find_capability(k, dev, PCI_CAP_ID_VNDR)
    while pos > 0:
        typ = pci_read_config_byte(k, dev, pos + CAP["cfg_type"].offset)
        bar = pci_read_config_byte(k, dev, pos + CAP["bar"].offset)
        # A structure in a reserved BAR or a BAR the device lacks does not count.
        if bar < 6 and typ == cfg_type and bar in dev.resources and dev.resources[bar].size:
            vp.mdev.modern_bars |= 1 << bar
            return pos
        pos = pci_find_next_capability(k, dev, pos, PCI_CAP_ID_VNDR)
    return 0


def vp_modern_map_capability(
    k: Kernel, dev: PciDev, off: int, minlen: int, align: int, start: int, size: int
) -> tuple[int, int] | None:
    bar = pci_read_config_byte(k, dev, off + CAP["bar"].offset)
    offset = pci_read_config_dword(k, dev, off + CAP["offset"].offset)
    length = pci_read_config_dword(k, dev, off + CAP["length"].offset)
    if bar >= 6 or bar not in dev.resources:
        return None
    if length <= start or length - start < minlen or (offset + start) % align:
        return None
    length = min(length - start, size)
    res = dev.resources[bar]
    if offset + start + length > res.size:
        return None
    if res.io:  # pci_iomap_range of an I/O BAR: a port cookie (modern-pio-notify's BAR2)
        return PIO_OFFSET + res.start + offset + start, length
    return res.start + offset + start, length


def vp_modern_probe(k: Kernel, vp: VpDev) -> int:
    dev = vp.pci_dev
    if not 0x1000 <= dev.device <= 0x107F:
        return -ENODEV
    vp.device_id = dev.subsystem_device if dev.device < 0x1040 else dev.device - 0x1040
    common = virtio_pci_find_capability(k, dev, VIRTIO_PCI_CAP_COMMON_CFG, vp)
    if not common:
        k.printk(f"virtio_pci {dev.short}: leaving for legacy driver")
        return -ENODEV
    isr = virtio_pci_find_capability(k, dev, VIRTIO_PCI_CAP_ISR_CFG, vp)
    notify = virtio_pci_find_capability(k, dev, VIRTIO_PCI_CAP_NOTIFY_CFG, vp)
    if not isr or not notify:
        k.printk(f"virtio_pci {dev.short}: missing capabilities {common}/{isr}/{notify}")
        return -EINVAL
    device = virtio_pci_find_capability(k, dev, VIRTIO_PCI_CAP_DEVICE_CFG, vp)
    m = vp.mdev
    mapped = vp_modern_map_capability(k, dev, common, COMMON_CFG_LEN, 4, 0, MODERN_COMMON_CFG_LEN)
    if mapped is None:
        return -EINVAL
    m.common = mapped[0]
    mapped = vp_modern_map_capability(k, dev, isr, 1, 1, 0, 1)
    if mapped is None:
        return -EINVAL
    m.isr = mapped[0]
    m.notify_offset_multiplier = pci_read_config_dword(
        k, dev, notify + NOTIFY_OFF_MULTIPLIER.offset
    )
    notify_length = pci_read_config_dword(k, dev, notify + CAP["length"].offset)
    notify_offset = pci_read_config_dword(k, dev, notify + CAP["offset"].offset)
    m.notify_map_cap = notify
    if notify_length + notify_offset % PAGE_SIZE <= PAGE_SIZE:
        mapped = vp_modern_map_capability(k, dev, notify, 2, 2, 0, notify_length)
        if mapped is None:
            return -EINVAL
        m.notify_base, m.notify_len = mapped
    if device:
        mapped = vp_modern_map_capability(k, dev, device, 0, 4, 0, PAGE_SIZE)
        if mapped is None:
            return -EINVAL
        m.device, m.device_len = mapped
    vp.isr = m.isr
    return 0


# -- probe and the driver core ---------------------------------------------------------------------------
class VirtioBus:
    """The virtio bus: registered drivers and devices."""

    def __init__(self) -> None:
        self.drivers: list[VirtioDriver] = []
        self.devices: list[VpDev] = []
        self.next_index = 0


def pci_device_probe(k: Kernel, bus: VirtioBus, dev: PciDev) -> int:
    return __pci_device_probe(k, bus, dev)


def __pci_device_probe(k: Kernel, bus: VirtioBus, dev: PciDev) -> int:
    return pci_call_probe(k, bus, dev)


def pci_call_probe(k: Kernel, bus: VirtioBus, dev: PciDev) -> int:
    return local_pci_probe(k, bus, dev)


def local_pci_probe(k: Kernel, bus: VirtioBus, dev: PciDev) -> int:
    return virtio_pci_probe(k, bus, dev)


def virtio_pci_probe(k: Kernel, bus: VirtioBus, dev: PciDev) -> int:
    vp = VpDev(dev, bus.next_index)
    bus.next_index += 1
    rc = pci_enable_device(k, dev)
    if rc:
        return rc
    rc = vp_modern_probe(k, vp)
    if rc == -ENODEV:
        # Linux prefers modern; a device it leaves (no common-config capability: device IDs
        # below 0x1040 with disable-modern=on) goes to the legacy driver.
        rc = virtio_pci_legacy_probe(k, vp)
    if rc:
        return rc
    pci_set_master(k, dev)
    k.vp_devices = getattr(k, "vp_devices", []) + [vp]
    return register_virtio_device(k, bus, vp)


def register_virtio_device(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    # Always start by resetting the device, in case a previous driver messed it up.
    vp_reset(k, vp)
    virtio_add_status(k, vp, ACKNOWLEDGE)
    bus.devices.append(vp)
    return device_add(k, bus, vp)


def device_add(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    return bus_probe_device(k, bus, vp)


def bus_probe_device(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    return device_initial_probe(k, bus, vp)


def device_initial_probe(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    return __device_attach(k, bus, vp)


def __device_attach(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    return bus_for_each_drv(k, bus, vp)


def bus_for_each_drv(k: Kernel, bus: VirtioBus, vp: VpDev) -> int:
    for drv in bus.drivers:
        rc = __device_attach_driver(k, drv, vp)
        if rc:
            return 0 if rc == 1 else rc
    return 0


def __device_attach_driver(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    if drv.device_id != vp.device_id:
        return 0
    rc = driver_probe_device(k, drv, vp)
    return 1 if rc == 0 else rc


def driver_probe_device(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    return __driver_probe_device(k, drv, vp)


def __driver_probe_device(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    return really_probe(k, drv, vp)


def really_probe(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    vp.driver = drv
    rc = call_driver_probe(k, drv, vp)
    if rc:
        vp.driver = None
        k.printk(f"{vp.name}: probe with driver {drv.name} failed with error {errname(rc)}")
    return rc


def call_driver_probe(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    return virtio_dev_probe(k, drv, vp)


def virtio_dev_probe(k: Kernel, drv: VirtioDriver, vp: VpDev) -> int:
    virtio_add_status(k, vp, DRIVER)
    device_features = vp.ops.get_features(k, vp)
    vp.device_features = device_features
    driver_features = 0
    for bit in drv.feature_table:
        driver_features |= 1 << bit
    driver_features_legacy = driver_features
    if drv.feature_table_legacy is not None:
        driver_features_legacy = 0
        for bit in drv.feature_table_legacy:
            driver_features_legacy |= 1 << bit
    if device_features >> VIRTIO_F_VERSION_1 & 1:
        vp.features = driver_features & device_features
    else:
        vp.features = driver_features_legacy & device_features
    for bit in range(VIRTIO_TRANSPORT_F_START, VIRTIO_TRANSPORT_F_END):
        if device_features >> bit & 1:
            vp.features |= 1 << bit
    err = vp.ops.finalize_features(k, vp)
    if not err and drv.validate is not None:
        before = vp.features
        err = drv.validate(k, vp)
        if not err and before != vp.features:
            err = vp.ops.finalize_features(k, vp)
    if not err:
        err = virtio_features_ok(k, vp)
    if not err:
        err = drv.probe(k, vp)
    if err:
        virtio_add_status(k, vp, FAILED)
        return err
    if not vp_get_status(k, vp) & DRIVER_OK:
        virtio_device_ready(k, vp)
    return 0


def vp_finalize_features(k: Kernel, vp: VpDev) -> int:
    features = vp.features
    vring_transport_features(vp)
    if features >> VIRTIO_F_RING_RESET & 1:
        vp.features |= 1 << VIRTIO_F_RING_RESET
    if not vp.has_feature(VIRTIO_F_VERSION_1):
        k.printk(f"{vp.name}: device uses modern interface but does not have VIRTIO_F_VERSION_1")
        return -EINVAL
    vp_modern_set_features(k, vp, vp.features)
    return 0


def virtio_features_ok(k: Kernel, vp: VpDev) -> int:
    if not vp.has_feature(VIRTIO_F_VERSION_1):
        return 0  # a legacy device has no FEATURES_OK handshake (§3.1.1 note on legacy)
    virtio_add_status(k, vp, FEATURES_OK)
    if not vp_get_status(k, vp) & FEATURES_OK:
        k.printk(f"{vp.name}: device refuses features: {vp.features:#x}")
        return -ENODEV
    return 0


def virtio_device_ready(k: Kernel, vp: VpDev) -> None:
    status = vp_get_status(k, vp)
    vp_set_status(k, vp, status | DRIVER_OK)


# -- virtqueues and their interrupts (virtio_pci_common.c) --------------------------------------------------
def virtio_find_vqs_ctx(
    k: Kernel, vp: VpDev, names: list[str], callbacks: list
) -> list[VringVirtqueue] | int:
    find_vqs = vp.ops.find_vqs  # config->find_vqs
    if find_vqs is None:
        return vp_find_vqs(k, vp, names, callbacks)
    return find_vqs(k, vp, names, callbacks)


def vp_modern_find_vqs(
    k: Kernel, vp: VpDev, names: list[str], callbacks: list
) -> list[VringVirtqueue] | int:
    vqs = vp_find_vqs(k, vp, names, callbacks)
    if isinstance(vqs, int):
        return vqs
    # Enable every queue last: once enabled there is no way back but a reset.
    for vq in vp.vqs:
        vp_modern_set_queue_enable(k, vp, vq.index, True)
    return vqs


def vp_find_vqs(
    k: Kernel, vp: VpDev, names: list[str], callbacks: list
) -> list[VringVirtqueue] | int:
    if k.version == "6.1":
        per_vq = [("per_vq_vectors=true", True)]
        shared = "per_vq_vectors=false"
    else:
        # 6.12 (virtio_pci_common.c, enum vp_vq_vector_policy): EACH, then SHARED_SLOW — one
        # vector shared by config and the slow-path queues, one per other queue — then SHARED.
        # Only the admin queue is slow path, and virtio-net over QEMU 7.2 has none, so
        # SHARED_SLOW asks for what EACH asked for: a second try of the same per-queue rung
        # (one more MSI-X Message Control read when the table is too small, as captured).
        per_vq = [("VP_VQ_VECTOR_POLICY_EACH", True), ("VP_VQ_VECTOR_POLICY_SHARED_SLOW", True)]
        shared = "VP_VQ_VECTOR_POLICY_SHARED"
    for label, per_vq_vectors in per_vq:
        err = vp_find_vqs_msix(k, vp, names, callbacks, per_vq_vectors=per_vq_vectors)
        vp.ladder.append(f"vp_find_vqs_msix({label}): {_rc(err)}")
        if not isinstance(err, int):
            return err
    err = vp_find_vqs_msix(k, vp, names, callbacks, per_vq_vectors=False)
    vp.ladder.append(f"vp_find_vqs_msix({shared}): {_rc(err)}")
    if not isinstance(err, int):
        return err
    if not vp.pci_dev.irq:
        return err
    err = vp_find_vqs_intx(k, vp, names, callbacks)
    vp.ladder.append(f"vp_find_vqs_intx: {_rc(err)}")
    return err


def _rc(result: object) -> str:
    return f"error {errname(result)}" if isinstance(result, int) else "ok"


def vp_find_vqs_msix(
    k: Kernel, vp: VpDev, names: list[str], callbacks: list, per_vq_vectors: bool
) -> list[VringVirtqueue] | int:
    if per_vq_vectors:
        nvectors = 1 + sum(1 for n, cb in zip(names, callbacks, strict=True) if n and cb)
    else:
        nvectors = 2
    err = vp_request_msix_vectors(k, vp, nvectors, per_vq_vectors)
    if err:
        vp_del_vqs(k, vp)
        return err
    vp.per_vq_vectors = per_vq_vectors
    allocated = vp.msix_used_vectors
    vqs: list[VringVirtqueue] = []
    for i, (name, cb) in enumerate(zip(names, callbacks, strict=True)):
        if cb is None:
            msix_vec = VIRTIO_MSI_NO_VECTOR
        elif per_vq_vectors:
            msix_vec = allocated
            allocated += 1
        else:
            msix_vec = VP_MSIX_VQ_VECTOR
        vq = vp_setup_vq(k, vp, i, cb, name, msix_vec)
        if isinstance(vq, int):
            vp_del_vqs(k, vp)
            return vq
        vqs.append(vq)
        if not per_vq_vectors or msix_vec == VIRTIO_MSI_NO_VECTOR:
            continue
        vp.msix_names[msix_vec] = f"{vp.name}-{name}"
        # A partial, not a lambda: no frame of its own between handle_edge_irq and vring_interrupt.
        err = request_irq(
            k, pci_irq_vector(k, vp.pci_dev, msix_vec), partial(vring_interrupt, vq=vq), 0,
            vp.msix_names[msix_vec], vq,
        )  # fmt: skip
        if err:
            vp_del_vqs(k, vp)
            return err
    return vqs


def vp_request_msix_vectors(
    k: Kernel, vp: VpDev, nvectors: int, per_vq_vectors: bool
) -> int:
    vp.msix_vectors = nvectors
    vp.msix_names = [""] * nvectors
    # No PCI_IRQ_AFFINITY: virtio-net passes no irq_affinity descriptor.
    err = pci_alloc_irq_vectors_affinity(k, vp.pci_dev, nvectors, nvectors, PCI_IRQ_MSIX)
    if err < 0:
        return err
    vp.msix_enabled = True
    v = vp.msix_used_vectors
    vp.msix_names[v] = f"{vp.name}-config"
    err = request_irq(
        k,
        pci_irq_vector(k, vp.pci_dev, v),
        lambda d: vp_config_changed(k, vp),
        0,
        vp.msix_names[v],
        vp,
    )
    if err:
        return err
    vp.msix_used_vectors += 1
    v = vp.ops.config_vector(k, vp, v)
    if v == VIRTIO_MSI_NO_VECTOR:
        return -EBUSY
    if not per_vq_vectors:
        v = vp.msix_used_vectors
        vp.msix_names[v] = f"{vp.name}-virtqueues"
        err = request_irq(
            k, pci_irq_vector(k, vp.pci_dev, v), lambda d: vp_vring_interrupt(k, vp), 0,
            vp.msix_names[v], vp,
        )  # fmt: skip
        if err:
            return err
        vp.msix_used_vectors += 1
    return 0


def vp_find_vqs_intx(
    k: Kernel, vp: VpDev, names: list[str], callbacks: list
) -> list[VringVirtqueue] | int:
    k.legacy_irq(vp.pci_dev.irq)
    err = request_irq(k, vp.pci_dev.irq, lambda d: vp_interrupt(k, vp), IRQF_SHARED, vp.name, vp)
    if err:
        vp_del_vqs(k, vp)
        return err
    vp.intx_enabled = True
    vp.per_vq_vectors = False
    vqs = []
    for i, (name, cb) in enumerate(zip(names, callbacks, strict=True)):
        vq = vp_setup_vq(k, vp, i, cb, name, VIRTIO_MSI_NO_VECTOR)
        if isinstance(vq, int):
            vp_del_vqs(k, vp)
            return vq
        vqs.append(vq)
    return vqs


def vp_setup_vq(
    k: Kernel, vp: VpDev, index: int, callback, name: str, msix_vec: int
) -> VringVirtqueue | int:
    vq = vp.ops.setup_vq(k, vp, index, callback, name, msix_vec)
    if isinstance(vq, int):
        return vq
    vp.vq_info[index] = VpVqInfo(vq, msix_vec)
    vp.vqs.append(vq)
    return vq


def setup_vq(
    k: Kernel, vp: VpDev, index: int, callback, name: str, msix_vec: int
) -> VringVirtqueue | int:
    if index >= vp_modern_get_num_queues(k, vp):
        return -EINVAL
    num = vp_modern_get_queue_size(k, vp, index)
    if not num or vp_modern_get_queue_enable(k, vp, index):
        return -ENOENT
    if num & (num - 1):
        return -EINVAL
    # vring_create_virtqueue: the packed layout when the device and driver took RING_PACKED.
    vq: VringVirtqueue | PackedVringVirtqueue
    if vp.has_feature(VIRTIO_F_RING_PACKED):
        vq = PackedVringVirtqueue(k, index, num, name, callback, partial(vp_notify, k),
                                  vp.has_feature(VIRTIO_F_EVENT_IDX),
                                  indirect=vp.has_feature(VIRTIO_F_INDIRECT_DESC))  # fmt: skip
    else:
        vq = VringVirtqueue(k, index, num, name, callback, partial(vp_notify, k),
                            vp.has_feature(VIRTIO_F_EVENT_IDX),
                            indirect=vp.has_feature(VIRTIO_F_INDIRECT_DESC))  # fmt: skip
    vp_modern_set_queue_size(k, vp, index, num)
    vp_modern_queue_address(k, vp, index, vq.desc, vq.avail, vq.used)
    if msix_vec != VIRTIO_MSI_NO_VECTOR:
        got = vp_modern_queue_vector(k, vp, index, msix_vec)
        if got == VIRTIO_MSI_NO_VECTOR:
            return -EBUSY
    vq.msix_vector = msix_vec
    vq.priv = vp_modern_map_vq_notify(k, vp, index)
    if not vq.priv:
        return -ENOMEM
    return vq


def del_vq(k: Kernel, vp: VpDev, vq: VringVirtqueue) -> None:
    if vp.msix_enabled:
        vp_modern_queue_vector(k, vp, vq.index, VIRTIO_MSI_NO_VECTOR)


def vp_del_vqs(k: Kernel, vp: VpDev) -> None:
    for vq in list(vp.vqs):
        info = vp.vq_info.get(vq.index)
        if vp.per_vq_vectors and info and info.msix_vector != VIRTIO_MSI_NO_VECTOR:
            irq = pci_irq_vector(k, vp.pci_dev, info.msix_vector)
            desc = k.irqs.get(irq)
            if desc is not None:
                irq_set_affinity_hint(k, desc, None)
            free_irq(k, irq, vq)
        vp.ops.del_vq(k, vp, vq)
    vp.vqs.clear()
    vp.vq_info.clear()
    vp.per_vq_vectors = False
    if vp.intx_enabled:
        free_irq(k, vp.pci_dev.irq, vp)
        vp.intx_enabled = False
    for i in range(vp.msix_used_vectors):
        free_irq(k, pci_irq_vector(k, vp.pci_dev, i), vp)
    if vp.msix_enabled:
        vp.ops.config_vector(k, vp, VIRTIO_MSI_NO_VECTOR)
        pci_free_irq_vectors(k, vp.pci_dev)
        vp.msix_enabled = False
    vp.msix_vectors = 0
    vp.msix_used_vectors = 0
    vp.msix_names = []


# -- interrupt handlers -----------------------------------------------------------------------------------
def vp_config_changed(k: Kernel, vp: VpDev) -> bool:
    vp.config_changes += 1
    if vp.driver is not None and vp.driver.config_changed is not None:
        vp.driver.config_changed(k, vp)
    return True


def vp_vring_interrupt(k: Kernel, vp: VpDev) -> bool:
    """Every queue with a callback, in the order of vp_dev->virtqueues: vp_setup_vq puts each
    at the list's head (list_add), so the last created comes first — output.0 before
    input.0, which puts the TX poll ahead of the RX poll on the poll list."""
    handled = False
    for vq in reversed(vp.vqs):
        if vq.callback is not None and vring_interrupt(None, vq):
            handled = True
    return handled


def vp_interrupt(k: Kernel, vp: VpDev) -> bool:
    """INTx: reading ISR tells which kind of event it was and de-asserts the line."""
    isr = k.ioread8(vp.isr)
    if not isr:
        return False  # shared line: not ours
    if isr & ISR_CONFIG:
        vp_config_changed(k, vp)
    vp_vring_interrupt(k, vp)
    return True


# -- removal ----------------------------------------------------------------------------------------
def virtio_dev_remove(k: Kernel, vp: VpDev) -> None:
    """The virtio bus's remove (drivers/virtio/virtio.c), run when the driver goes (``rmmod
    virtio_net``, an unbind) or the device does: the driver's remove, which must have reset the
    device (the core checks the status, a WARN otherwise), then ACKNOWLEDGE set again — a
    read-modify-write of device_status — so the device stays known without a driver."""
    drv = vp.driver
    if drv is None:
        return
    drv.remove(k, vp)
    if vp_get_status(k, vp):
        k.printk(f"{vp.name}: WARNING: status not 0 after {drv.name}'s remove")
    virtio_add_status(k, vp, ACKNOWLEDGE)
    vp.driver = None


def unregister_virtio_device(k: Kernel, vp: VpDev) -> None:
    """device_unregister: the bound driver (if any) is removed through virtio_dev_remove."""
    virtio_dev_remove(k, vp)
    if vp in getattr(k, "vp_devices", []):
        k.vp_devices.remove(vp)


def virtio_pci_remove(k: Kernel, vp: VpDev) -> None:
    """virtio_pci's pci_driver remove (``rmmod virtio_pci``, an unbind of virtio-pci): a
    presence check (one Vendor/Device ID dword read; a device gone would be marked broken), the
    virtio device unregistered (its driver removed first if still bound), the modern or legacy
    mappings released (no device access), then pci_disable_device clears Bus Master."""
    dev = vp.pci_dev
    if not pci_device_is_present(k, dev):
        vp.broken = True  # virtio_break_device: the upper layers stop touching the device
    # pci_disable_sriov: nothing without an SR-IOV capability.
    unregister_virtio_device(k, vp)
    pci_disable_device(k, dev)


def irq_desc_of(k: Kernel, vp: VpDev, vector: int) -> IrqDesc | None:
    irq = pci_irq_vector(k, vp.pci_dev, vector)
    return k.irqs.get(irq)
