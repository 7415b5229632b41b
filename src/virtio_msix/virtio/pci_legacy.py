"""The virtio-pci legacy interface (virtio 1.2 §4.1.4.10): the I/O BAR's register block of a
transitional device, mixed into the transport (virtio/pci.py)."""

from __future__ import annotations

from ..abi.ring import DESC_SIZE, used_event
from .regs import (
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    LEGACY_PFN_SHIFT,
    LEGACY_VRING_ALIGN,
    VIRTIO_F_BAD_FEATURE,
)


class LegacyInterface:
    """The legacy registers of VirtioPciDevice (a mixin: the state is the transport's)."""

    # -- legacy interface (§4.1.4.10) ------------------------------------------------------------------------
    def _legacy_config_offset(self) -> int:
        msix_on = self.msix is not None and self.msix.enabled
        return LEGACY_CONFIG_OFFSET_MSIX if msix_on else LEGACY_CONFIG_OFFSET

    def _legacy_read(self, offset: int, size: int) -> int:
        cfg = self._legacy_config_offset()
        if offset >= cfg:
            return self._device_read(offset - cfg, size)
        read, _ = self._legacy_handlers.get(offset, (None, None))
        # QEMU's virtio_ioport_read answers by the access's start address: a register's start
        # gives the register, any other address (inside a register, the write-only
        # queue_notify) all ones (measured through qtest, tests/test_qemu_devspec.py).
        return read() if read else (1 << 8 * size) - 1

    def _legacy_write(self, offset: int, size: int, value: int) -> None:
        cfg = self._legacy_config_offset()
        if offset >= cfg:
            self._device_write(offset - cfg, size, value)
            return
        _, write = self._legacy_handlers.get(offset, (None, None))
        if write:
            write(value)

    def _legacy_r_host_features(self) -> int:
        features = self.device.host_features | self.device.legacy_only_features
        return (features | 1 << VIRTIO_F_BAD_FEATURE) & 0xFFFFFFFF

    def _legacy_r_guest_features(self) -> int:
        return self.device.driver_features & 0xFFFFFFFF

    def _legacy_w_guest_features(self, v: int) -> None:
        self._set_driver_features(v)

    def _legacy_r_queue_address(self) -> int:
        q = self._queue()
        return q.desc_addr >> LEGACY_PFN_SHIFT if q else 0

    def _legacy_w_queue_address(self, v: int) -> None:
        if v == 0:
            self.reset()  # a zero PFN resets the device (legacy convention)
            return
        q = self._queue()
        if q is None:
            return
        # Legacy rings are contiguous: avail after the descriptors, used on the next 4 KiB.
        # QEMU (virtio_queue_update_rings) aligns the end of avail->ring[num], not of the
        # used_event after it as Linux's vring_init does; the two differ only for a size whose
        # avail ring ends 2 bytes before a page boundary, and QEMU is the device we follow.
        q.desc_addr = v << LEGACY_PFN_SHIFT
        q.avail_addr = q.desc_addr + DESC_SIZE * q.size
        end = q.avail_addr + used_event(q.size)
        q.used_addr = (end + LEGACY_VRING_ALIGN - 1) & ~(LEGACY_VRING_ALIGN - 1)
        q.enabled = True

    def _legacy_r_queue_size(self) -> int:
        return self._common_r_queue_size()

    def _legacy_r_queue_select(self) -> int:
        return self.queue_select

    def _legacy_w_queue_select(self, v: int) -> None:
        self._common_w_queue_select(v)

    def _legacy_w_queue_notify(self, v: int) -> None:
        self._kick(v)

    def _legacy_r_device_status(self) -> int:
        return self.device.status

    def _legacy_w_device_status(self, v: int) -> None:
        self._set_status(v)

    def _legacy_r_isr_status(self) -> int:
        return self._isr_read(0, 1)

    def _legacy_r_config_msix_vector(self) -> int:
        return self.config_vector

    def _legacy_w_config_msix_vector(self, v: int) -> None:
        self._common_w_msix_config(v)

    def _legacy_r_queue_msix_vector(self) -> int:
        return self._common_r_queue_msix_vector()

    def _legacy_w_queue_msix_vector(self, v: int) -> None:
        self._common_w_queue_msix_vector(v)
