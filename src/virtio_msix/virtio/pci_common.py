"""The virtio-pci common configuration structure (virtio 1.2 §4.1.4.3): one handler pair per
register of virtio/regs.py's COMMON table, mixed into the transport (virtio/pci.py)."""

from __future__ import annotations

from .device import (
    FEATURES_OK,
)
from .regs import (
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_QUEUE_MAX,
)


class QueueStaging:
    """Per-queue values the driver wrote that take effect on queue_enable (QEMU's proxy->vqs)."""

    __slots__ = ("desc", "driver", "device")

    def __init__(self) -> None:
        self.desc = [0, 0]
        self.driver = [0, 0]
        self.device = [0, 0]


class CommonCfg:
    """The common configuration registers of VirtioPciDevice (a mixin: the state is the
    transport's)."""

    # -- common configuration (§4.1.4.3) --------------------------------------------------------------
    # QEMU dispatches on the exact offset a field starts at, whatever the access size; an offset
    # inside a field or between fields reads 0 and ignores writes. The same here, driven by
    # COMMON_CFG.
    def _common_read(self, offset: int, size: int) -> int:
        read, _ = self._common_handlers.get(offset, (None, None))
        return read() if read else 0

    def _common_write(self, offset: int, size: int, value: int) -> None:
        _, write = self._common_handlers.get(offset, (None, None))
        if write:
            write(value)

    def _common_r_device_feature_select(self) -> int:
        return self.device_feature_select

    def _common_w_device_feature_select(self, v: int) -> None:
        self.device_feature_select = v

    def _common_r_device_feature(self) -> int:
        sel = self.device_feature_select
        if sel > 1:
            return 0  # §4.1.4.3.1: no features beyond the windows the device has
        features = self.device.host_features & ~self.device.legacy_only_features
        return features >> (32 * sel) & 0xFFFFFFFF

    def _common_r_driver_feature_select(self) -> int:
        return self.driver_feature_select

    def _common_w_driver_feature_select(self, v: int) -> None:
        self.driver_feature_select = v

    def _common_r_driver_feature(self) -> int:
        sel = self.driver_feature_select
        return self.driver_feature_words[sel] if sel < 2 else 0

    def _common_w_driver_feature(self, v: int) -> None:
        sel = self.driver_feature_select
        if sel >= 2 or self.device.status & FEATURES_OK:
            return
        self.driver_feature_words[sel] = v
        lo, hi = self.driver_feature_words
        self._set_driver_features(hi << 32 | lo)

    def _common_r_msix_config(self) -> int:
        return self.config_vector

    def _common_w_msix_config(self, v: int) -> None:
        self.config_vector = self._map_vector(self.config_vector, v)

    def _common_r_num_queues(self) -> int:
        n = 0
        for i, q in enumerate(self.device.queues):
            if q.max_size:
                n = i + 1
        return n

    def _common_r_device_status(self) -> int:
        return self.device.status

    def _common_w_device_status(self, v: int) -> None:
        self._set_status(v)

    def _common_r_config_generation(self) -> int:
        return self.config_generation

    def _common_r_queue_select(self) -> int:
        return self.queue_select

    def _common_w_queue_select(self, v: int) -> None:
        if v < VIRTIO_QUEUE_MAX:
            self.queue_select = v

    def _common_r_queue_size(self) -> int:
        q = self._queue()
        return q.size if q else 0

    def _common_w_queue_size(self, v: int) -> None:
        q = self._queue()
        if q is None or q.enabled:
            return
        # §2.7: a split queue's size is a power of two; the reset value is the maximum. §2.8:
        # a packed queue may have any size up to it (the driver negotiated RING_PACKED before).
        if v and (q.packed or not v & (v - 1)) and v <= q.max_size:
            q.size = v

    def _common_r_queue_msix_vector(self) -> int:
        q = self._queue()
        return q.vector if q else VIRTIO_MSI_NO_VECTOR

    def _common_w_queue_msix_vector(self, v: int) -> None:
        q = self._queue()
        if q is not None:
            q.vector = self._map_vector(q.vector, v)

    def _common_r_queue_enable(self) -> int:
        q = self._queue()
        return int(q.enabled) if q else 0

    def _common_w_queue_enable(self, v: int) -> None:
        q = self._queue()
        if q is None:
            return
        if v != 1:
            # §4.1.4.3.2: the driver must not write 0 (QEMU: a device error).
            self.device_error(f"queue_enable written with {v:#x} for queue {q.index}")
            return
        st = self.staging[q.index]
        q.desc_addr = st.desc[1] << 32 | st.desc[0]
        q.avail_addr = st.driver[1] << 32 | st.driver[0]
        q.used_addr = st.device[1] << 32 | st.device[0]
        q.enabled = True

    def _common_r_queue_notify_off(self) -> int:
        # QEMU gives each queue its own notify slot: queue_notify_off = queue index.
        return self.queue_select

    def _staged(self, field: str, half: int) -> int:
        q = self._queue()
        return getattr(self.staging[q.index], field)[half] if q else 0

    def _stage(self, field: str, half: int, v: int) -> None:
        # The registers hold what was written even after queue_enable, as QEMU's do; the live
        # ring keeps the addresses it was enabled with (§4.1.4.3.2 forbids the driver such
        # writes and leaves the device's reaction open: reading back what was written is
        # the least surprising one).
        q = self._queue()
        if q is not None:
            getattr(self.staging[q.index], field)[half] = v

    def _common_r_queue_desc_lo(self) -> int:
        return self._staged("desc", 0)

    def _common_w_queue_desc_lo(self, v: int) -> None:
        self._stage("desc", 0, v)

    def _common_r_queue_desc_hi(self) -> int:
        return self._staged("desc", 1)

    def _common_w_queue_desc_hi(self, v: int) -> None:
        self._stage("desc", 1, v)

    def _common_r_queue_driver_lo(self) -> int:
        return self._staged("driver", 0)

    def _common_w_queue_driver_lo(self, v: int) -> None:
        self._stage("driver", 0, v)

    def _common_r_queue_driver_hi(self) -> int:
        return self._staged("driver", 1)

    def _common_w_queue_driver_hi(self, v: int) -> None:
        self._stage("driver", 1, v)

    def _common_r_queue_device_lo(self) -> int:
        return self._staged("device", 0)

    def _common_w_queue_device_lo(self, v: int) -> None:
        self._stage("device", 0, v)

    def _common_r_queue_device_hi(self) -> int:
        return self._staged("device", 1)

    def _common_w_queue_device_hi(self, v: int) -> None:
        self._stage("device", 1, v)

    def _common_r_queue_notify_data(self) -> int:
        return 0

    def _common_r_queue_reset(self) -> int:
        return 0  # the reset completes before the write returns (§4.1.4.3.2)

    def _common_w_queue_reset(self, v: int) -> None:
        q = self._queue()
        if q is None or v != 1:
            return
        vector = q.vector
        q.reset()
        q.vector = vector  # the vector mapping survives a queue reset; the ring does not
        self.staging[q.index] = QueueStaging()
