"""A virtio device as the transport sees it (virtio 1.2 §2): features, config, queues, reset.

The device knows nothing of PCI. The transport attaches itself through ``attach(hooks)`` and
the device raises used-buffer and configuration notifications only through those hooks, so the
same device could sit behind another transport.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

# Status and transport feature bits (virtio 1.2 §2.1, §6): described in abi/virtio.py, named
# here too because a device author reads them from the device contract.
from ..abi.virtio import (  # noqa: E402,F401  (re-exported)
    ACKNOWLEDGE,
    DEVICE_NEEDS_RESET,
    DRIVER,
    DRIVER_OK,
    FAILED,
    FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_NOTIFICATION_DATA,
    VIRTIO_F_NOTIFY_ON_EMPTY,
    VIRTIO_F_ORDER_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_SR_IOV,
    VIRTIO_F_VERSION_1,
)
from .memory import Memory
from .queue import VirtQueue


class TransportHooks(Protocol):
    """What a device may ask of its transport."""

    memory: Memory

    def notify_queue(self, index: int) -> None:
        """Send a used-buffer notification for queue ``index`` (§2.7.13 decides if it is due)."""

    def notify_config(self) -> None:
        """Send a configuration change notification (§2.5)."""

    def device_error(self, reason: str) -> None:
        """Set DEVICE_NEEDS_RESET and notify the driver (§2.1.2)."""

    def dma_allowed(self) -> bool:
        """Whether the device may access guest memory now (on PCI: COMMAND.Bus Master set).
        The device checks it at each entry point and does no DMA while it is False."""


class VirtioDevice:
    """Base of every device: subclasses set the identity and implement config and queues."""

    device_id: int = 0
    name: str = "virtio"
    # Features offered only through the legacy interface (QEMU's legacy_features, e.g.
    # VIRTIO_NET_F_GSO): the modern device_feature window hides them (§4.1.4.3).
    legacy_only_features: int = 0
    # The names the Linux driver gives the virtqueues, in order (virtio_rng: "input"); the
    # views label each queue's vector with them, and the simulated generic driver uses them.
    queue_names: tuple[str, ...] = ()

    def __init__(self, queue_max_sizes: list[int], host_features: int, config_len: int) -> None:
        self.queues = [VirtQueue(i, size) for i, size in enumerate(queue_max_sizes)]
        self.host_features = host_features
        self.driver_features = 0
        self.config_len = config_len
        self.status = 0
        self.hooks: TransportHooks | None = None
        # Work the device lost, by reason; survives resets (it is the device's history).
        self.dropped: Counter[str] = Counter()

    # -- transport side -------------------------------------------------------------------
    def attach(self, hooks: TransportHooks) -> None:
        self.hooks = hooks

    def reset(self) -> None:
        """Device reset (status 0): queues back to defaults, features cleared (§2.4)."""
        self.status = 0
        self.driver_features = 0
        for q in self.queues:
            q.set_packed(False)
            q.reset()

    def set_driver_features(self, features: int) -> None:
        self.driver_features = features & self.host_features
        # §2.8: with VIRTIO_F_RING_PACKED every queue of the device uses the packed layout.
        packed = bool(self.driver_features >> VIRTIO_F_RING_PACKED & 1)
        for q in self.queues:
            q.set_packed(packed)

    def validate_features(self) -> bool:
        """Called when the driver sets FEATURES_OK; False refuses it (§3.1.1 step 5)."""
        return True

    def set_status(self, status: int) -> None:
        """The driver wrote ``status`` (non-zero); subclasses react to DRIVER_OK."""
        self.status = status

    def queue_notify(self, index: int) -> None:
        """The driver made buffers available in queue ``index``."""

    def config_read(self, offset: int, size: int) -> int:
        """Little-endian read of device config; past its end reads all ones (QEMU)."""
        return (1 << (8 * size)) - 1

    def config_write(self, offset: int, size: int, value: int) -> None:
        """Writes past the config end are dropped."""

    def poll(self) -> int:
        """Give the backend a chance to deliver work (RX frames); returns how many were done."""
        return 0

    def counters(self) -> dict[str, int]:
        """Device-specific activity counters (frames, bytes, ...), for health views."""
        return {}

    # -- helpers for subclasses -------------------------------------------------------------
    def has_feature(self, bit: int) -> bool:
        return bool(self.driver_features >> bit & 1)

    @property
    def memory(self) -> Memory:
        assert self.hooks is not None, "device not attached to a transport"
        return self.hooks.memory
