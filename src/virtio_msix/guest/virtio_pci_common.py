"""The part of drivers/virtio/virtio_pci_common.c that both virtio-pci transports build on
(Linux 6.1): the interface the shared code calls on a transport — struct virtio_config_ops and
vp_dev's setup_vq / del_vq / config_vector hooks — and vp_notify; with virtio_ring.c's
vring_transport_features, which both transports' finalize_features call. The ladder itself
(vp_find_vqs) and the driver core are in virtio_pci.py; the transports are ModernTransport
(virtio_pci.py) and LegacyTransport (virtio_pci_legacy.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..abi.virtio import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_ORDER_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    VIRTIO_TRANSPORT_F_END,
    VIRTIO_TRANSPORT_F_START,
)
from .kernel import Kernel
from .vring import VringVirtqueue

if TYPE_CHECKING:
    from .virtio_pci import VpDev

# drivers/virtio/virtio_ring.c vring_transport_features: the ring features the core keeps.
VRING_TRANSPORT_FEATURES = (
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_ORDER_PLATFORM,
)


def vring_transport_features(vp: VpDev) -> None:
    """virtio_ring.c: keep only the transport bits the ring code implements."""
    for bit in range(VIRTIO_TRANSPORT_F_START, VIRTIO_TRANSPORT_F_END):
        if bit not in VRING_TRANSPORT_FEATURES:
            vp.features &= ~(1 << bit)


class VpTransport:
    """What the shared code (virtio.c, virtio_pci_common.c) calls on one virtio-pci transport:
    the struct virtio_config_ops it installs (get, generation, get_status, set_status, reset,
    get_features, finalize_features, find_vqs) and the vp_dev hooks of the vp_find_vqs ladder
    (setup_vq, del_vq, config_vector). ModernTransport (virtio_pci.py) and LegacyTransport
    (virtio_pci_legacy.py); virtio_pci_probe picks one as Linux's does."""

    is_legacy = False

    def get(self, k: Kernel, vp: VpDev, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def generation(self, k: Kernel, vp: VpDev) -> int | None:
        """config->generation; None where the transport has none (legacy)."""
        return None

    def get_status(self, k: Kernel, vp: VpDev) -> int:
        raise NotImplementedError

    def set_status(self, k: Kernel, vp: VpDev, status: int) -> None:
        raise NotImplementedError

    def reset(self, k: Kernel, vp: VpDev) -> None:
        raise NotImplementedError

    def get_features(self, k: Kernel, vp: VpDev) -> int:
        raise NotImplementedError

    def finalize_features(self, k: Kernel, vp: VpDev) -> int:
        raise NotImplementedError

    # config->find_vqs; None: the shared vp_find_vqs ladder itself (legacy's ops point there).
    find_vqs: Callable[[Kernel, VpDev, list[str], list], list[VringVirtqueue] | int] | None = None

    def config_vector(self, k: Kernel, vp: VpDev, vector: int) -> int:
        raise NotImplementedError

    def setup_vq(
        self, k: Kernel, vp: VpDev, index: int, callback, name: str, msix_vec: int
    ) -> VringVirtqueue | int:
        raise NotImplementedError

    def del_vq(self, k: Kernel, vp: VpDev, vq: VringVirtqueue) -> None:
        raise NotImplementedError


def vp_notify(k: Kernel, vq: VringVirtqueue) -> bool:
    # Write the queue's index to its notify address (§4.1.4.4), iowrite16: memory or port.
    k.iowrite16(vq.index, vq.priv)
    return True
