"""drivers/virtio/virtio_pci_legacy.c and virtio_pci_legacy_dev.c (Linux 6.1): the legacy
virtio-pci transport, used when the modern probe leaves the device (no common-config
capability: QEMU's disable-modern=on). Its registers are the I/O BAR0 block of virtio 1.2
§4.1.4.10; the vp_find_vqs ladder and the driver core are the shared ones in virtio_pci.py,
reached through LegacyTransport's hooks."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ..abi.virtio import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC
from ..virtio.regs import (
    LEGACY,
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_PFN_SHIFT,
    LEGACY_VRING_ALIGN,
    VIRTIO_MSI_NO_VECTOR,
)
from .errnos import EBUSY, EIO, ENODEV, ENOENT, ENOMEM
from .kernel import PIO_OFFSET, PIO_RESERVED, Kernel
from .virtio_pci_common import VpTransport, vp_notify, vring_transport_features
from .vring import VringVirtqueue

if TYPE_CHECKING:
    from .virtio_pci import VpDev

# include/uapi/linux/virtio_pci.h: the only legacy ABI revision.
VIRTIO_PCI_ABI_VERSION = 0
LEGACY_BAR = 0
# Legacy device IDs: 0x1000..0x103f (transitional); 0x1040 on are modern only.
LEGACY_DEVICE_IDS = range(0x1000, 0x1040)
E2BIG = 7


def _reg(name: str) -> int:
    return LEGACY[name].offset


# -- lib/iomap.c: ioread/iowrite of a pci_iomap cookie (port or MMIO) -----------------------------------
def _is_pio(cookie: int) -> bool:
    return PIO_OFFSET <= cookie < PIO_RESERVED


def ioread(k: Kernel, cookie: int, size: int) -> int:
    if _is_pio(cookie):
        v = k.bus.io_read(cookie - PIO_OFFSET, size)
        k.take_interrupts()
        return v
    return {1: k.readb, 2: k.readw, 4: k.readl}[size](cookie)


def iowrite(k: Kernel, value: int, cookie: int, size: int) -> None:
    if _is_pio(cookie):
        k.bus.io_write(cookie - PIO_OFFSET, size, value)
        k.take_interrupts()
        return
    {1: k.writeb, 2: k.writew, 4: k.writel}[size](value, cookie)


# -- virtio_pci_legacy_dev.c ------------------------------------------------------------------------------
def _io(vp: VpDev, name: str) -> int:
    return vp.ldev_ioaddr + _reg(name)


def vp_legacy_get_features(k: Kernel, vp: VpDev) -> int:
    return ioread(k, _io(vp, "host_features"), 4)


def vp_legacy_set_features(k: Kernel, vp: VpDev, features: int) -> None:
    iowrite(k, features, _io(vp, "guest_features"), 4)


def vp_legacy_get_status(k: Kernel, vp: VpDev) -> int:
    return ioread(k, _io(vp, "device_status"), 1)


def vp_legacy_set_status(k: Kernel, vp: VpDev, status: int) -> None:
    iowrite(k, status, _io(vp, "device_status"), 1)


def vp_legacy_queue_vector(k: Kernel, vp: VpDev, index: int, vector: int) -> int:
    iowrite(k, index, _io(vp, "queue_select"), 2)
    iowrite(k, vector, _io(vp, "queue_msix_vector"), 2)
    # The read-back flushes the write and tells whether the device took the vector.
    return ioread(k, _io(vp, "queue_msix_vector"), 2)


def vp_legacy_config_vector(k: Kernel, vp: VpDev, vector: int) -> int:
    iowrite(k, vector, _io(vp, "config_msix_vector"), 2)
    return ioread(k, _io(vp, "config_msix_vector"), 2)


def vp_legacy_set_queue_address(k: Kernel, vp: VpDev, index: int, queue_pfn: int) -> None:
    iowrite(k, index, _io(vp, "queue_select"), 2)
    iowrite(k, queue_pfn, _io(vp, "queue_address"), 4)


def vp_legacy_get_queue_enable(k: Kernel, vp: VpDev, index: int) -> bool:
    # Legacy has no queue_enable: a queue is live when its PFN is non-zero.
    iowrite(k, index, _io(vp, "queue_select"), 2)
    return bool(ioread(k, _io(vp, "queue_address"), 4))


def vp_legacy_get_queue_size(k: Kernel, vp: VpDev, index: int) -> int:
    # Read-only on legacy (§4.1.4.10): the driver takes the device's size.
    iowrite(k, index, _io(vp, "queue_select"), 2)
    return ioread(k, _io(vp, "queue_size"), 2)


def vp_legacy_probe(k: Kernel, vp: VpDev) -> int:
    dev = vp.pci_dev
    if dev.device not in LEGACY_DEVICE_IDS:
        return -ENODEV
    if dev.revision != VIRTIO_PCI_ABI_VERSION:
        return -ENODEV
    # dma_set_mask, pci_request_region: no device access.
    res = dev.resources.get(LEGACY_BAR)
    if res is None or not res.size:
        return -EIO  # pci_iomap of a BAR the device lacks: NULL
    # pci_iomap of an I/O BAR: a port cookie.
    vp.ldev_ioaddr = PIO_OFFSET + res.start if res.io else res.start
    vp.isr = _io(vp, "isr_status")
    vp.device_id = dev.subsystem_device
    return 0


# -- virtio_pci_legacy.c: the config ops and the vp_dev hooks ---------------------------------------------
class LegacyTransport(VpTransport):
    """virtio_pci_legacy.c's virtio_pci_config_ops (no generation: config reads are one pass)
    and its setup_vq / del_vq / config_vector."""

    is_legacy = True

    def get(self, k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
        # Byte by byte whatever the field's width; the config moves by 4 while MSI-X is on
        # (VIRTIO_PCI_CONFIG_OFF, §4.1.4.10).
        base = vp.ldev_ioaddr + (LEGACY_CONFIG_OFFSET_MSIX if vp.msix_enabled
                                 else LEGACY_CONFIG_OFFSET)  # fmt: skip
        return bytes(ioread(k, base + offset + i, 1) for i in range(length))

    def get_status(self, k: Kernel, vp: VpDev) -> int:
        return vp_legacy_get_status(k, vp)

    def set_status(self, k: Kernel, vp: VpDev, status: int) -> None:
        vp_legacy_set_status(k, vp, status)

    def reset(self, k: Kernel, vp: VpDev) -> None:
        vp_legacy_set_status(k, vp, 0)
        # One read flushes the write (and the device's writes); no polling for 0 as modern
        # does. vp_synchronize_vectors: no device access.
        vp_legacy_get_status(k, vp)

    def get_features(self, k: Kernel, vp: VpDev) -> int:
        return vp_legacy_get_features(k, vp)  # 32 bits: never VERSION_1 (bit 32)

    def finalize_features(self, k: Kernel, vp: VpDev) -> int:
        vring_transport_features(vp)
        assert vp.features >> 32 == 0, "legacy features are 32 bits"  # Linux's BUG_ON
        vp_legacy_set_features(k, vp, vp.features)
        return 0

    def config_vector(self, k: Kernel, vp: VpDev, vector: int) -> int:
        return vp_legacy_config_vector(k, vp, vector)

    def setup_vq(
        self, k: Kernel, vp: VpDev, index: int, callback, name: str, msix_vec: int
    ) -> VringVirtqueue | int:
        num = vp_legacy_get_queue_size(k, vp, index)
        if not num or vp_legacy_get_queue_enable(k, vp, index):
            return -ENOENT
        if num & (num - 1):
            # vring_create_virtqueue_split refuses it (NULL), which setup_vq reports as -ENOMEM.
            k.printk(f"{vp.name}: Bad virtqueue length {num}")
            return -ENOMEM
        # vring_create_virtqueue with VIRTIO_PCI_VRING_ALIGN: the device finds avail and used
        # from the PFN alone. Split ring only (RING_PACKED is beyond 32 feature bits).
        vq = VringVirtqueue(k, index, num, name, callback, partial(vp_notify, k),
                            vp.has_feature(VIRTIO_F_EVENT_IDX),
                            vring_align=LEGACY_VRING_ALIGN,
                            indirect=vp.has_feature(VIRTIO_F_INDIRECT_DESC))  # fmt: skip
        q_pfn = vq.desc >> LEGACY_PFN_SHIFT
        if q_pfn >> 32:
            k.printk(f"virtio_pci {vp.pci_dev.short}: platform bug: legacy virtio-pci must not "
                     "be used with RAM above 0x4000GB")  # fmt: skip
            return -E2BIG
        vp_legacy_set_queue_address(k, vp, index, q_pfn)
        vq.priv = _io(vp, "queue_notify")
        if msix_vec != VIRTIO_MSI_NO_VECTOR:
            if vp_legacy_queue_vector(k, vp, index, msix_vec) == VIRTIO_MSI_NO_VECTOR:
                vp_legacy_set_queue_address(k, vp, index, 0)
                return -EBUSY
        vq.msix_vector = msix_vec
        return vq

    def del_vq(self, k: Kernel, vp: VpDev, vq: VringVirtqueue) -> None:
        if vp.msix_enabled:
            vp_legacy_queue_vector(k, vp, vq.index, VIRTIO_MSI_NO_VECTOR)
            ioread(k, vp.isr, 1)  # flush the vector write out to the device
        # Deselect the ring: PFN 0 (QEMU resets the whole device on it, virtio_ioport_write).
        vp_legacy_set_queue_address(k, vp, vq.index, 0)


def virtio_pci_legacy_probe(k: Kernel, vp: VpDev) -> int:
    rc = vp_legacy_probe(k, vp)
    if rc:
        return rc
    vp.ops = LegacyTransport()
    return 0


__all__ = ["LegacyTransport", "virtio_pci_legacy_probe"]
