"""virtio-pci register layouts, described once as data (virtio 1.2 §4.1.4).

Each row is (name, offset, size, access). The transport dispatches on these tables by name, so
offsets appear here and nowhere else.
"""

from __future__ import annotations

from ..pci.regs import Reg

# struct virtio_pci_common_cfg (§4.1.4.3). "driver_feature*" is the spec's name for what
# the seed's 2016-era header calls guest_feature*; queue_driver/queue_device are avail/used.
COMMON_CFG: tuple[Reg, ...] = (
    Reg("device_feature_select", 0x00, 4, "rw"),
    Reg("device_feature", 0x04, 4, "ro"),
    Reg("driver_feature_select", 0x08, 4, "rw"),
    Reg("driver_feature", 0x0C, 4, "rw"),
    Reg("msix_config", 0x10, 2, "rw"),
    Reg("num_queues", 0x12, 2, "ro"),
    Reg("device_status", 0x14, 1, "rw"),
    Reg("config_generation", 0x15, 1, "ro"),
    Reg("queue_select", 0x16, 2, "rw"),
    Reg("queue_size", 0x18, 2, "rw"),
    Reg("queue_msix_vector", 0x1A, 2, "rw"),
    Reg("queue_enable", 0x1C, 2, "rw"),
    Reg("queue_notify_off", 0x1E, 2, "ro"),
    Reg("queue_desc_lo", 0x20, 4, "rw"),
    Reg("queue_desc_hi", 0x24, 4, "rw"),
    Reg("queue_driver_lo", 0x28, 4, "rw"),
    Reg("queue_driver_hi", 0x2C, 4, "rw"),
    Reg("queue_device_lo", 0x30, 4, "rw"),
    Reg("queue_device_hi", 0x34, 4, "rw"),
    Reg("queue_notify_data", 0x38, 2, "ro"),
    Reg("queue_reset", 0x3A, 2, "rw"),
)
COMMON = {r.name: r for r in COMMON_CFG}
# sizeof(struct virtio_pci_common_cfg): up to queue_device_hi (virtio 1.0); and of Linux 6.1's
# struct virtio_pci_modern_common_cfg, with queue_notify_data and queue_reset (the driver's
# minimum and maximum mapping of the common structure, vp_modern_probe).
COMMON_CFG_LEN = COMMON["queue_device_hi"].offset + COMMON["queue_device_hi"].size
MODERN_COMMON_CFG_LEN = COMMON["queue_reset"].offset + COMMON["queue_reset"].size
COMMON_BY_OFFSET = {r.offset: r for r in COMMON_CFG}

# Legacy register block in BAR0 of a transitional device (§4.1.4.10). The two MSI-X vector
# registers exist only while MSI-X is enabled; device config follows them (or ISR).
LEGACY_CFG: tuple[Reg, ...] = (
    Reg("host_features", 0x00, 4, "ro"),
    Reg("guest_features", 0x04, 4, "rw"),
    Reg("queue_address", 0x08, 4, "rw"),
    Reg("queue_size", 0x0C, 2, "ro"),
    Reg("queue_select", 0x0E, 2, "rw"),
    Reg("queue_notify", 0x10, 2, "rw"),
    Reg("device_status", 0x12, 1, "rw"),
    Reg("isr_status", 0x13, 1, "ro"),
    Reg("config_msix_vector", 0x14, 2, "rw"),
    Reg("queue_msix_vector", 0x16, 2, "rw"),
)
LEGACY = {r.name: r for r in LEGACY_CFG}
LEGACY_BY_OFFSET = {r.offset: r for r in LEGACY_CFG}
# QEMU's VIRTIO_F_BAD_FEATURE: set in every legacy host_features word (virtio_pci's
# device_plugged); a legacy driver that acks it is broken (virtio 0.9.5 appendix). Never in
# the modern window.
VIRTIO_F_BAD_FEATURE = 30
LEGACY_CONFIG_OFFSET_MSIX = 0x18
LEGACY_CONFIG_OFFSET = 0x14
LEGACY_VRING_ALIGN = 4096
LEGACY_PFN_SHIFT = 12

# struct virtio_pci_cap (§4.1.4) and its notify / pci_cfg extensions.
VIRTIO_PCI_CAP: tuple[Reg, ...] = (
    Reg("cap_vndr", 0x0, 1, "ro"),
    Reg("cap_next", 0x1, 1, "ro"),
    Reg("cap_len", 0x2, 1, "ro"),
    Reg("cfg_type", 0x3, 1, "ro"),
    Reg("bar", 0x4, 1, "ro"),
    Reg("id", 0x5, 1, "ro"),
    Reg("padding", 0x6, 2, "ro"),
    Reg("offset", 0x8, 4, "ro"),
    Reg("length", 0xC, 4, "ro"),
)
CAP = {r.name: r for r in VIRTIO_PCI_CAP}
VIRTIO_PCI_CAP_LEN = 16
NOTIFY_OFF_MULTIPLIER = Reg("notify_off_multiplier", 0x10, 4, "ro")
VIRTIO_PCI_NOTIFY_CAP_LEN = 20
# virtio_pci_cfg_cap: bar, offset, length and pci_cfg_data are driver-writable (§4.1.4.9).
PCI_CFG_DATA = Reg("pci_cfg_data", 0x10, 4, "rw")
VIRTIO_PCI_CFG_CAP_LEN = 20

VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
CFG_TYPE_NAMES = {
    VIRTIO_PCI_CAP_COMMON_CFG: "common",
    VIRTIO_PCI_CAP_NOTIFY_CFG: "notify",
    VIRTIO_PCI_CAP_ISR_CFG: "isr",
    VIRTIO_PCI_CAP_DEVICE_CFG: "device",
    VIRTIO_PCI_CAP_PCI_CFG: "pci_cfg",
}

# ISR status bits (§4.1.4.5).
VIRTIO_PCI_ISR_QUEUE = 0x1
VIRTIO_PCI_ISR_CONFIG = 0x2

from ..abi.virtio import VIRTIO_MSI_NO_VECTOR  # noqa: E402,F401  (re-exported)

VIRTIO_QUEUE_MAX = 1024  # queue_select values a QEMU device accepts

# Modern BAR layout of QEMU's virtio_pci_modern_regions_init: each structure gets a page.
MODERN_REGION_SIZE = 0x1000
MODERN_LAYOUT = (
    ("common", VIRTIO_PCI_CAP_COMMON_CFG, 0x0000),
    ("isr", VIRTIO_PCI_CAP_ISR_CFG, 0x1000),
    ("device", VIRTIO_PCI_CAP_DEVICE_CFG, 0x2000),
    ("notify", VIRTIO_PCI_CAP_NOTIFY_CFG, 0x3000),
)
QUEUE_NOTIFY_MULTIPLIER = 4

VIRTIO_PCI_VENDOR_ID = 0x1AF4
# Transitional PCI device ids by virtio device id (§4.1.2.1 table).
TRANSITIONAL_DEVICE_IDS = {
    1: 0x1000,
    2: 0x1001,
    5: 0x1002,
    3: 0x1003,
    8: 0x1004,
    4: 0x1005,
    9: 0x1009,
}
VIRTIO_PCI_DEVICE_ID_MODERN_BASE = 0x1040
PCI_SUBDEVICE_ID_QEMU = 0x1100
