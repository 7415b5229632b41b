"""The driver's half of a split virtqueue (drivers/virtio/virtio_ring.c): ring layout in guest
memory, adding buffers, kicking, reaping used buffers, interrupt suppression with event idx."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..abi import ring
from ..abi.ring import (
    DESC,
    USED_ELEM,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    vring_layout,
    vring_need_event,
    vring_size,
)
from ..abi.virtio import VIRTIO_MSI_NO_VECTOR
from .errnos import ENOSPC
from .kernel import Kernel

SMP_CACHE_BYTES = 64


class VringVirtqueue:
    """The driver's side of a split virtqueue: struct vring_virtqueue. The device's side is
    virtio/queue.py's VirtQueue."""

    def __init__(
        self,
        k: Kernel,
        index: int,
        num: int,
        name: str,
        callback: Callable[[VringVirtqueue], None] | None,
        notify: Callable[[VringVirtqueue], bool],
        event_idx: bool,
    ) -> None:
        self.k = k
        self.index = index
        self.num = num
        self.name = name
        self.callback = callback
        self.notify = notify
        self.event_idx = event_idx
        self.broken = False
        size = vring_size(num, SMP_CACHE_BYTES)
        self.base = k.pages.alloc(size)
        k.memory.write(self.base, bytes(size))
        _, avail, used = vring_layout(num, SMP_CACHE_BYTES)  # vring_init
        self.desc, self.avail, self.used = self.base, self.base + avail, self.base + used
        self.free = list(range(num))
        self.data: dict[int, tuple[Any, int]] = {}  # head → (token, descriptor count)
        self.avail_idx_shadow = 0
        self.last_used_idx = 0
        self.num_added = 0
        self.priv: int = 0  # notify address
        self.msix_vector = VIRTIO_MSI_NO_VECTOR

    @property
    def short(self) -> str:
        return self.name

    # -- adding buffers ---------------------------------------------------------------------------
    def add_sgs(self, out: list[tuple[int, int]], inb: list[tuple[int, int]], token: Any) -> int:
        total = len(out) + len(inb)
        if total == 0 or total > len(self.free):
            return -ENOSPC
        mem = self.k.memory
        descs = [self.free.pop(0) for _ in range(total)]
        for i, (addr, length) in enumerate(out + inb):
            flags = (VRING_DESC_F_WRITE if i >= len(out) else 0) | (
                VRING_DESC_F_NEXT if i + 1 < total else 0
            )
            nxt = descs[i + 1] if i + 1 < total else 0
            mem.write(self.desc + ring.DESC_SIZE * descs[i], DESC.pack(addr, length, flags, nxt))
        head = descs[0]
        self.data[head] = (token, total)
        self._chain = getattr(self, "_chain", {})
        self._chain[head] = descs
        slot = self.avail_idx_shadow % self.num
        mem.write(self.avail + ring.avail_entry(slot), struct.pack("<H", head))
        self.avail_idx_shadow = (self.avail_idx_shadow + 1) & 0xFFFF
        mem.write(self.avail + ring.AVAIL_IDX, struct.pack("<H", self.avail_idx_shadow))
        self.num_added += 1
        return 0

    def kick_prepare(self) -> bool:
        mem = self.k.memory
        new = self.avail_idx_shadow
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        if self.event_idx:
            avail_event = struct.unpack("<H", mem.read(self.used + ring.avail_event(self.num), 2))[0]
            return vring_need_event(avail_event, new, old)
        flags = struct.unpack("<H", mem.read(self.used + ring.USED_FLAGS, 2))[0]
        return not flags & VRING_USED_F_NO_NOTIFY

    def kick(self) -> bool:
        if self.kick_prepare():
            return self.notify(self)
        return True

    # -- reaping -------------------------------------------------------------------------------------
    def more_used(self) -> bool:
        idx = struct.unpack("<H", self.k.memory.read(self.used + ring.USED_IDX, 2))[0]
        return idx != self.last_used_idx

    def get_buf(self) -> tuple[Any, int] | None:
        if not self.more_used():
            return None
        mem = self.k.memory
        slot = self.last_used_idx % self.num
        head, length = USED_ELEM.unpack(mem.read(self.used + ring.used_entry(slot), USED_ELEM.size))
        if head not in self.data:
            self.broken = True  # the device returned a buffer we never gave it
            return None
        token, _count = self.data.pop(head)
        self.free.extend(self._chain.pop(head))
        self.last_used_idx = (self.last_used_idx + 1) & 0xFFFF
        if self.event_idx:
            mem.write(self.avail + ring.used_event(self.num), struct.pack("<H", self.last_used_idx))
        return token, length

    def detach_unused_buf(self) -> Any:
        """A buffer the device never used, taken back after reset (virtqueue_detach_unused_buf);
        None when there is none left."""
        if not self.data:
            return None
        head = next(iter(self.data))
        token, _count = self.data.pop(head)
        self.free.extend(self._chain.pop(head))
        return token

    def enable_cb(self) -> bool:
        mem = self.k.memory
        if self.event_idx:
            mem.write(self.avail + ring.used_event(self.num), struct.pack("<H", self.last_used_idx))
        else:
            mem.write(self.avail + ring.AVAIL_FLAGS, struct.pack("<H", 0))
        return not self.more_used()

    def disable_cb(self) -> None:
        if not self.event_idx:
            self.k.memory.write(
                self.avail + ring.AVAIL_FLAGS, struct.pack("<H", VRING_AVAIL_F_NO_INTERRUPT)
            )


def vring_interrupt(desc: Any, vq: VringVirtqueue | None = None) -> bool:
    """The per-queue MSI-X handler: nothing to do unless the device used buffers."""
    if vq is None:
        return False
    if not vq.more_used():
        return False
    if vq.callback is not None:
        vq.callback(vq)
    return True
