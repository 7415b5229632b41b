"""virtio device status and transport feature bits (virtio 1.2 §2.1, §6; uapi
linux/virtio_config.h), and the "no vector" value (§4.1.4.3; linux/virtio_pci.h)."""

from __future__ import annotations

# Device status bits (§2.1).
ACKNOWLEDGE = 0x01
DRIVER = 0x02
DRIVER_OK = 0x04
FEATURES_OK = 0x08
DEVICE_NEEDS_RESET = 0x40
FAILED = 0x80

_STATUS_BITS = (("ACKNOWLEDGE", ACKNOWLEDGE), ("DRIVER", DRIVER), ("FEATURES_OK", FEATURES_OK),
                ("DRIVER_OK", DRIVER_OK), ("DEVICE_NEEDS_RESET", DEVICE_NEEDS_RESET),
                ("FAILED", FAILED))  # fmt: skip


def status_names(status: int) -> str:
    """``0x83`` → ``ACKNOWLEDGE|DRIVER|FAILED`` (``0`` → ``reset``)."""
    names = [n for n, bit in _STATUS_BITS if status & bit]
    rest = status & ~sum(bit for _, bit in _STATUS_BITS)
    return "|".join(names + ([f"{rest:#x}"] if rest else [])) or "reset"


# Transport feature bits (§6).
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38
VIRTIO_F_RING_RESET = 40
# The transport bits a driver core passes through (linux/virtio_config.h).
VIRTIO_TRANSPORT_F_START = 28
VIRTIO_TRANSPORT_F_END = 41

# msix_config / queue_msix_vector value meaning "no vector" (§4.1.4.3, VIRTIO_MSI_NO_VECTOR).
VIRTIO_MSI_NO_VECTOR = 0xFFFF
