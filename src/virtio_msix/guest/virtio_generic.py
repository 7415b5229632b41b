"""A virtio driver for any device: what every Linux 6.1 virtio driver's probe has in common
(virtio_rng, virtio_blk, virtio_console all do it): find the device's virtqueues with one
callback each (``virtio_find_vqs``, so the MSI-X ladder runs), then ``virtio_device_ready``.
The callbacks reap used buffers; a caller posts buffers with ``generic_transfer``.

The driver-core path (``virtio_dev_probe``: reset, ACKNOWLEDGE, DRIVER, feature negotiation,
FEATURES_OK) is the shared one in virtio_pci.py; this module only supplies the driver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .irqcore import EINVAL
from .kernel import Kernel
from .virtio_pci import (
    VirtioDriver,
    VpDev,
    virtio_device_ready,
    virtio_find_vqs_ctx,
    vp_del_vqs,
    vp_reset,
)
from .vring import VringVirtqueue


@dataclass
class GenericInfo:
    """The driver's private data (vdev->priv)."""

    vp: VpDev
    vqs: list[VringVirtqueue] = field(default_factory=list)
    # (token, length) of each buffer the device used, per queue, as the callbacks reaped them.
    used: dict[int, list[tuple[Any, int]]] = field(default_factory=dict)


def generic_driver(
    device_id: int, queue_names: Sequence[str], feature_table: Sequence[int] = ()
) -> VirtioDriver:
    """A ``struct virtio_driver`` for virtio device ``device_id`` with one virtqueue per name,
    each with a callback (so each gets an MSI-X vector of its own when the ladder allows), and
    the device-specific feature bits it accepts (the transport bits are the core's)."""
    names = list(queue_names)

    def probe(k: Kernel, vp: VpDev) -> int:
        if not names:
            return -EINVAL
        info = GenericInfo(vp, used={i: [] for i in range(len(names))})
        vp.priv = info
        callbacks = [lambda q, info=info: _recv_done(info, q) for _ in names]
        vqs = virtio_find_vqs_ctx(k, vp, names, callbacks)
        if isinstance(vqs, int):
            return vqs
        info.vqs = vqs
        virtio_device_ready(k, vp)
        return 0

    def remove(k: Kernel, vp: VpDev) -> None:
        vp_reset(k, vp)
        info: GenericInfo | None = vp.priv
        if info is not None:
            for vq in info.vqs:
                while (buf := vq.detach_unused_buf()) is not None:
                    _free(k, buf)
        vp_del_vqs(k, vp)

    return VirtioDriver(
        name=f"virtio-generic-{device_id}",
        device_id=device_id,
        feature_table=tuple(feature_table),
        probe=probe,
        remove=remove,
    )


def _recv_done(info: GenericInfo, vq: VringVirtqueue) -> None:
    while (used := vq.get_buf()) is not None:
        info.used[vq.index].append(used)


def _free(k: Kernel, token: Any) -> None:
    for addr in token:
        if addr:
            k.pages.free(addr)


def generic_transfer(k: Kernel, info: GenericInfo, queue: int, out: bytes, in_len: int) -> bytes:
    """Post one buffer chain on ``queue`` — ``out`` device-readable, then ``in_len``
    device-writable bytes — kick, take the interrupts, and return what the device wrote
    (its used length, at most ``in_len``). Raises LookupError if the device did not use it."""
    vq = info.vqs[queue]
    out_buf = k.pages.alloc(len(out), align=64) if out else 0
    in_buf = k.pages.alloc(in_len, align=64) if in_len else 0
    token = (out_buf, in_buf)
    if out_buf:
        k.memory.write(out_buf, out)
    err = vq.add_sgs([(out_buf, len(out))] if out else [], [(in_buf, in_len)] if in_len else [],
                     token)  # fmt: skip
    if err:
        _free(k, token)
        raise LookupError(f"queue {queue}: no room for a buffer (error {err})")
    vq.kick()
    k.take_interrupts()
    _recv_done(info, vq)  # a device that used it without an interrupt (masked, suppressed)
    for i, (tok, length) in enumerate(info.used[queue]):
        if tok is token:
            del info.used[queue][i]
            data = k.memory.read(in_buf, min(length, in_len)) if in_buf else b""
            _free(k, token)
            return data
    raise LookupError(f"queue {queue}: the device did not use the buffer")
