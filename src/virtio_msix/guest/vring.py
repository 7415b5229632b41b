"""The driver's half of a virtqueue (drivers/virtio/virtio_ring.c): ring layout in guest
memory, adding buffers, kicking, reaping used buffers, interrupt suppression with event idx —
split (VringVirtqueue) and packed (PackedVringVirtqueue, when VIRTIO_F_RING_PACKED was
negotiated: vring_create_virtqueue picks it)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from ..abi import ring
from ..abi.ring import (
    DESC,
    USED_ELEM,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    vring_layout,
    vring_need_event,
    vring_size,
)
from ..abi.virtio import VIRTIO_MSI_NO_VECTOR
from .errnos import EIO, ENOMEM, ENOSPC
from .kernel import Kernel

SMP_CACHE_BYTES = 64
_DESC_SIZE = ring.DESC_SIZE
_USED_ELEM_SIZE = ring.USED_ELEM_SIZE
_DESC_PACK_INTO = DESC.pack_into
_USED_ELEM_UNPACK_FROM = USED_ELEM.unpack_from
_U16 = struct.Struct("<H")
_U16_PACK_INTO = _U16.pack_into
_U16_UNPACK_FROM = _U16.unpack_from


class Virtqueue:
    """What both ring layouts share (Linux's struct virtqueue and vring_virtqueue's common
    part): the queue's identity, its callback and notify, and the interrupt vector it uses."""

    def __init__(
        self,
        k: Kernel,
        index: int,
        num: int,
        name: str,
        callback: Callable[[Any], None] | None,
        notify: Callable[[Any], bool],
        event_idx: bool,
        indirect: bool = False,
    ) -> None:
        self.k = k
        self.index = index
        self.num = num
        self.name = name
        self.callback = callback
        self.notify = notify
        self.event_idx = event_idx  # vq->event: VIRTIO_RING_F_EVENT_IDX negotiated
        # vq->indirect: VIRTIO_RING_F_INDIRECT_DESC and no per-buffer context (virtio_net gives
        # its receive queues one unless they post big buffers: virtnet_find_vqs clears it).
        self.indirect = indirect
        self.broken = False
        self.num_added = 0
        # vq->event_triggered (virtqueue_init: false): vring_interrupt sets it when the ring
        # uses event idx — the device has just notified, and will not again until used_event is
        # passed — so disable_cb need not write anything; enable_cb_prepare and
        # enable_cb_delayed clear it. Linux calls it "just a hint": racy on SMP; the model
        # runs one CPU at a time, where it is exact.
        self.event_triggered = False
        self.priv: int = 0  # notify address
        self.msix_vector = VIRTIO_MSI_NO_VECTOR

    @property
    def short(self) -> str:
        return self.name


class VringVirtqueue(Virtqueue):
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
        vring_align: int = SMP_CACHE_BYTES,
        indirect: bool = False,
    ) -> None:
        super().__init__(k, index, num, name, callback, notify, event_idx, indirect)
        # vring_align: where the used ring starts (modern: a cache line; legacy: 4096, the
        # layout the device derives from the PFN alone).
        size = vring_size(num, vring_align)
        self.base = k.pages.alloc(size)
        k.memory.write(self.base, bytes(size))
        _, avail, used = vring_layout(num, vring_align)  # vring_init
        self.desc, self.avail, self.used = self.base, self.base + avail, self.base + used
        # The free descriptors, a list threaded through desc_extra[].next (vring_alloc_desc_extra:
        # i → i + 1, the last one → 0), taken from free_head and given back at its front
        # (detach_buf_split): the descriptor freed last is used first.
        self.free_next = [i + 1 for i in range(num)]
        self.free_next[-1] = 0
        self.free_head = 0
        self.num_free = num
        # Ring addresses used on every buffer, computed once (abi/ring.py's offsets).
        self._avail_ring = self.avail + ring.avail_entry(0)
        self._avail_idx = self.avail + ring.AVAIL_IDX
        self._used_event = self.avail + ring.used_event(num)
        self._used_ring = self.used + ring.used_entry(0)
        self._used_idx = self.used + ring.USED_IDX
        self._avail_event = self.used + ring.avail_event(num)
        # head → (token, its chain's last descriptor, how many it has): desc_state and what
        # detach_buf_split finds walking the chain
        self.data: dict[int, tuple[Any, int, int]] = {}
        # head → its indirect table (detach_buf_split kfrees it)
        self.tables: dict[int, int] = {}
        self.avail_idx_shadow = 0
        self.last_used_idx = 0
        # virtqueue_vring_init_split: the driver's copy of avail->flags. A queue without
        # callback (virtio_net's control queue) starts with NO_INTERRUPT in it — written to the
        # ring only without event idx (§2.7.7: with it, the device reads used_event instead,
        # which stays 0: get_buf_ctx_split does not write it while NO_INTERRUPT is set).
        self.avail_flags_shadow = 0
        if callback is None:
            self.avail_flags_shadow = VRING_AVAIL_F_NO_INTERRUPT
            if not event_idx:
                k.memory.write_u16(self.avail + ring.AVAIL_FLAGS, VRING_AVAIL_F_NO_INTERRUPT)

    # -- adding buffers ---------------------------------------------------------------------------
    # The hot methods below store into and load from the simulator's memory in place
    # (``pack_into``/``unpack_from`` on its buffer) after GuestMemory's end-of-memory test
    # (the ring addresses come from the page allocator: never negative); an address past the
    # end goes through GuestMemory, which raises as before.
    @property
    def free(self) -> bool:
        """Whether a descriptor is free (vq->num_free, as try_fill_recv asks)."""
        return self.num_free > 0

    def add_sgs(self, out: list[tuple[int, int]], inb: list[tuple[int, int]], token: Any) -> int:
        """virtqueue_add_split: every descriptor written carries its free-list successor in
        ``next`` (virtqueue_add_desc_split), the chain's last one too, with NEXT cleared."""
        if self.broken:
            return -EIO
        total = len(out) + len(inb)
        nfree = self.num_free
        # virtqueue_use_indirect; a table that cannot be allocated falls back to a direct
        # chain, as Linux's alloc_indirect_split failing does.
        table = self._indirect_table(out, inb) if total > 1 and self.indirect and nfree else 0
        if not table and (total == 0 or total > nfree):
            if out:
                # "for historical reasons, we force a notify here if there are outgoing
                # parts to the buffer" (6.1 and 6.12; the packed ring does not)
                self.notify(self)
            return -ENOSPC
        mem = self.k.memory
        buf, size, base, free_next = mem.buf, mem.size, self.desc, self.free_next
        head = self.free_head
        if table:
            # One ring descriptor pointing at the table (virtqueue_add_desc_split, INDIRECT).
            nxt = free_next[head]
            mem.write(base + _DESC_SIZE * head,
                      DESC.pack(table, total * _DESC_SIZE, VRING_DESC_F_INDIRECT, nxt))  # fmt: skip
            self.tables[head] = table
            last, used = head, 1
        elif total == 1:
            # One segment (a TX skb with its header in front, a mergeable RX buffer): the
            # loop below without its lists; the same descriptor, written the same way.
            nxt = free_next[head]
            addr, length = out[0] if out else inb[0]
            a = base + _DESC_SIZE * head
            if a + _DESC_SIZE <= size:
                _DESC_PACK_INTO(buf, a, addr, length, 0 if out else VRING_DESC_F_WRITE, nxt)
            else:
                mem.write(a, DESC.pack(addr, length, 0 if out else VRING_DESC_F_WRITE, nxt))
            last, used = head, 1
        else:
            nout, end, pack = len(out), total - 1, DESC.pack
            i = last = head
            for n, (addr, length) in enumerate(out + inb):
                flags = VRING_DESC_F_WRITE if n >= nout else 0
                if n < end:
                    flags |= VRING_DESC_F_NEXT
                nxt = free_next[i]
                mem.write(base + _DESC_SIZE * i, pack(addr, length, flags, nxt))
                last, i = i, nxt
            used = total
        self.free_head = free_next[last]
        self.num_free = nfree - used
        self.data[head] = (token, last, used)
        shadow = self.avail_idx_shadow
        a = self._avail_ring + 2 * (shadow % self.num)
        if a + 2 <= size:
            _U16_PACK_INTO(buf, a, head)
        else:
            mem.write_u16(a, head)
        self.avail_idx_shadow = shadow = (shadow + 1) & 0xFFFF
        a = self._avail_idx
        if a + 2 <= size:
            _U16_PACK_INTO(buf, a, shadow)
        else:
            mem.write_u16(a, shadow)
        self.num_added += 1
        return 0

    def _indirect_table(self, out: list[tuple[int, int]], inb: list[tuple[int, int]]) -> int:
        """alloc_indirect_split and the loop that fills it: the segments in a table of their
        own, chained with NEXT (each entry's next is its index + 1, as the allocation leaves
        it, the last one's too); its address, or 0 when it cannot be allocated."""
        total = len(out) + len(inb)
        try:
            table = self.k.pages.alloc(total * _DESC_SIZE, align=_DESC_SIZE)
        except MemoryError:
            return 0
        nout, last = len(out), total - 1
        self.k.memory.write(table, b"".join(
            DESC.pack(addr, length,
                      (VRING_DESC_F_WRITE if i >= nout else 0) | (VRING_DESC_F_NEXT if i < last else 0),
                      i + 1)
            for i, (addr, length) in enumerate(out + inb)
        ))  # fmt: skip
        return table

    def kick_prepare(self) -> bool:
        mem = self.k.memory
        new = self.avail_idx_shadow
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        if self.event_idx:
            return vring_need_event(mem.read_u16(self._avail_event), new, old)
        return not mem.read_u16(self.used + ring.USED_FLAGS) & VRING_USED_F_NO_NOTIFY

    def kick(self) -> bool:
        if self.event_idx:
            # kick_prepare with EVENT_IDX, inline (one frame less per buffer posted).
            new = self.avail_idx_shadow
            old = (new - self.num_added) & 0xFFFF
            self.num_added = 0
            mem = self.k.memory
            a = self._avail_event
            event = _U16_UNPACK_FROM(mem.buf, a)[0] if a + 2 <= mem.size else mem.read_u16(a)
            if ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF):  # vring_need_event
                return self.notify(self)
            return True
        if self.kick_prepare():
            return self.notify(self)
        return True

    # -- reaping -----------------------------------------------------------------------------------
    def more_used(self) -> bool:
        mem = self.k.memory
        a = self._used_idx
        used = _U16_UNPACK_FROM(mem.buf, a)[0] if a + 2 <= mem.size else mem.read_u16(a)
        return used != self.last_used_idx

    def get_buf(self) -> tuple[Any, int] | None:
        if self.broken:
            return None  # virtqueue_get_buf_ctx_split: a broken ring gives nothing back
        mem = self.k.memory
        buf, size = mem.buf, mem.size
        last = self.last_used_idx
        a = self._used_idx
        if (_U16_UNPACK_FROM(buf, a)[0] if a + 2 <= size else mem.read_u16(a)) == last:
            return None  # more_used
        a = self._used_ring + _USED_ELEM_SIZE * (last % self.num)
        if a + _USED_ELEM_SIZE <= size:
            head, length = _USED_ELEM_UNPACK_FROM(buf, a)
        else:
            head, length = USED_ELEM.unpack(mem.read(a, _USED_ELEM_SIZE))
        got = self.data.pop(head, None)
        if got is None:
            self.broken = True  # the device returned a buffer we never gave it
            return None
        # detach_buf_split: the chain goes back at the front of the free list
        self.free_next[got[1]] = self.free_head
        self.free_head = head
        self.num_free += got[2]
        if self.tables:
            table = self.tables.pop(head, 0)
            if table:
                self.k.pages.free(table)  # detach_buf_split: the indirect table, kfree'd
        self.last_used_idx = last = (last + 1) & 0xFFFF
        # virtqueue_get_buf_ctx_split: while callbacks are on, used_event follows last_used_idx
        # (the next entry interrupts, §2.7.10); written with or without event idx, as Linux
        # does (without it the device ignores the field). Off (NO_INTERRUPT in the shadow: a
        # NAPI poll, the control queue), it is left where disable_cb put it.
        if not self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            a = self._used_event
            if a + 2 <= size:
                _U16_PACK_INTO(buf, a, last)
            else:
                mem.write_u16(a, last)
        return got[0], length

    def detach_unused_buf(self) -> Any:
        """A buffer the device never used, taken back after reset (virtqueue_detach_unused_buf
        _split: the lowest head first, and the avail index taken back by one and written);
        None when there is none left."""
        if not self.data:
            return None
        head = min(self.data)
        token, last, count = self.data.pop(head)
        self.free_next[last] = self.free_head
        self.free_head = head
        self.num_free += count
        table = self.tables.pop(head, 0)
        if table:
            self.k.pages.free(table)
        self.avail_idx_shadow = (self.avail_idx_shadow - 1) & 0xFFFF
        self.k.memory.write_u16(self._avail_idx, self.avail_idx_shadow)
        return token

    # -- interrupt suppression (§2.7.7, §2.7.10) ------------------------------------------------
    # virtio_ring.c keeps avail->flags' driver copy in avail_flags_shadow and decides from it;
    # with event idx the ring's flags are never written (the device reads used_event instead).
    # Every NAPI poll calls these (several times per packet): used_event is stored and
    # used->idx loaded in place, as get_buf does.
    def disable_cb(self) -> None:
        """virtqueue_disable_cb_split: NO_INTERRUPT into the shadow; then nothing if the
        device has just notified (event_triggered: it will not again before used_event is
        passed), else with event idx used_event = 0 (Linux's own "hack": the device then
        notifies only when its used index next crosses 0), else avail->flags."""
        if self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            return
        self.avail_flags_shadow |= VRING_AVAIL_F_NO_INTERRUPT
        if self.event_triggered:
            return
        if self.event_idx:
            mem, a = self.k.memory, self._used_event
            if a + 2 <= mem.size:
                _U16_PACK_INTO(mem.buf, a, 0)
            else:
                mem.write_u16(a, 0)
        else:
            self.k.memory.write_u16(self.avail + ring.AVAIL_FLAGS, self.avail_flags_shadow)

    def enable_cb_prepare(self) -> int:
        """virtqueue_enable_cb_prepare (its split half): clear event_triggered and NO_INTERRUPT
        (avail->flags written without event idx), point used_event at the next entry (always,
        event idx or not); the index to hand to poll()."""
        last = self.last_used_idx
        self._callbacks_on(last)
        return last

    def _callbacks_on(self, used_event: int) -> Any:
        """What enable_cb_prepare and enable_cb_delayed share: event_triggered and
        NO_INTERRUPT cleared (avail->flags written without event idx), used_event stored
        (always, event idx or not). Returns the memory, for the caller's next load."""
        self.event_triggered = False
        mem = self.k.memory
        if self.avail_flags_shadow & VRING_AVAIL_F_NO_INTERRUPT:
            self.avail_flags_shadow &= ~VRING_AVAIL_F_NO_INTERRUPT
            if not self.event_idx:
                mem.write_u16(self.avail + ring.AVAIL_FLAGS, self.avail_flags_shadow)
        a = self._used_event
        if a + 2 <= mem.size:
            _U16_PACK_INTO(mem.buf, a, used_event)
        else:
            mem.write_u16(a, used_event)
        return mem

    def poll(self, last_used_idx: int) -> bool:
        """virtqueue_poll: whether the device used buffers past ``last_used_idx`` (what
        enable_cb_prepare returned); a broken ring has none."""
        if self.broken:
            return False
        mem, a = self.k.memory, self._used_idx
        used = _U16_UNPACK_FROM(mem.buf, a)[0] if a + 2 <= mem.size else mem.read_u16(a)
        return (last_used_idx & 0xFFFF) != used

    def enable_cb(self) -> bool:
        """virtqueue_enable_cb: prepare, then True when nothing was used meanwhile."""
        return not self.poll(self.enable_cb_prepare())

    def enable_cb_delayed(self) -> bool:
        """virtqueue_enable_cb_delayed (split): callbacks on as enable_cb_prepare, but
        used_event set 3/4 of the way through the buffers outstanding
        ((avail_idx_shadow - last_used_idx) * 3 / 4, in u16); False when the device has
        already used more than that."""
        last = self.last_used_idx
        bufs = ((self.avail_idx_shadow - last) & 0xFFFF) * 3 // 4
        mem = self._callbacks_on((last + bufs) & 0xFFFF)
        a = self._used_idx
        used = _U16_UNPACK_FROM(mem.buf, a)[0] if a + 2 <= mem.size else mem.read_u16(a)
        return ((used - last) & 0xFFFF) <= bufs


def vring_interrupt(desc: Any, vq: VringVirtqueue | None = None) -> bool:
    """The per-queue MSI-X handler: nothing to do unless the device used buffers; a broken
    ring's interrupt is handled and goes no further (6.1 without
    CONFIG_VIRTIO_HARDEN_NOTIFICATION); with event idx, event_triggered is set before the
    callback runs."""
    if vq is None:
        return False
    if type(vq) is VringVirtqueue:
        # more_used(), inline for the split ring (an interrupt per used burst)
        mem = vq.k.memory
        a = vq._used_idx
        used = _U16_UNPACK_FROM(mem.buf, a)[0] if a + 2 <= mem.size else mem.read_u16(a)
        if used == vq.last_used_idx:
            return False
    elif not vq.more_used():
        return False
    if vq.broken:
        return True
    if vq.event_idx:
        vq.event_triggered = True
    if vq.callback is not None:
        vq.callback(vq)
    return True


class PackedVringVirtqueue(Virtqueue):
    """The driver's side of a packed virtqueue (virtio_ring.c, *_packed): the descriptor ring
    and the two event suppression structures, each its own zeroed allocation
    (vring_alloc_queue_packed: alloc_pages_exact, so page-aligned); queue_desc, queue_driver and
    queue_device get their addresses. The device's side is virtio/packed.py."""

    def __init__(
        self,
        k: Kernel,
        index: int,
        num: int,
        name: str,
        callback: Callable[[PackedVringVirtqueue], None] | None,
        notify: Callable[[PackedVringVirtqueue], bool],
        event_idx: bool,
        indirect: bool = False,
    ) -> None:
        super().__init__(k, index, num, name, callback, notify, event_idx, indirect)
        ring_bytes = num * ring.PACKED_DESC_SIZE
        self.desc = k.pages.alloc(ring_bytes)
        k.memory.write(self.desc, bytes(ring_bytes))
        # The driver event suppression structure (the device reads it) and the device's.
        self.avail = k.pages.alloc(ring.PACKED_EVENT_SIZE)
        self.used = k.pages.alloc(ring.PACKED_EVENT_SIZE)
        k.memory.write(self.avail, bytes(ring.PACKED_EVENT_SIZE))
        k.memory.write(self.used, bytes(ring.PACKED_EVENT_SIZE))
        # virtqueue_vring_init_packed and virtqueue_init.
        self.next_avail_idx = 0
        self.avail_wrap_counter = 1
        self.avail_used_flags = ring.DESC_F_AVAIL
        self.event_flags_shadow = ring.VRING_PACKED_EVENT_FLAG_ENABLE
        self.last_used_idx = 1 << ring.VRING_PACKED_EVENT_F_WRAP_CTR  # position 0, wrap 1
        self.num_free = num
        # desc_extra[].next: the free list of buffer ids; desc_state[id]: (token, descriptors,
        # last id of the buffer, indirect table or 0).
        self.free_next = [i + 1 for i in range(num)]
        self.free_head = 0
        self.state: dict[int, tuple[Any, int, int, int]] = {}
        if callback is None:
            # "No callback? Tell other side not to bother us."
            self.event_flags_shadow = ring.VRING_PACKED_EVENT_FLAG_DISABLE
            self._write_driver_flags()

    @property
    def free(self) -> bool:
        """Whether a descriptor is free (the split queue's free list, as try_fill_recv asks)."""
        return self.num_free > 0

    def _write_driver_off_wrap(self) -> None:
        off_wrap = struct.pack("<H", self.last_used_idx)
        self.k.memory.write(self.avail + ring.PACKED_EVENT_OFF_WRAP, off_wrap)

    def _write_driver_flags(self) -> None:
        self.k.memory.write(
            self.avail + ring.PACKED_EVENT_FLAGS, struct.pack("<H", self.event_flags_shadow)
        )

    # -- adding buffers (virtqueue_add_packed) -----------------------------------------------------
    def add_sgs(self, out: list[tuple[int, int]], inb: list[tuple[int, int]], token: Any) -> int:
        total = len(out) + len(inb)
        if self.broken:
            return -EIO
        if total == 0:
            return -ENOSPC
        if self.indirect and total > 1 and self.num_free:  # virtqueue_use_indirect
            rc = self._add_indirect(out, inb, token)
            if rc != -ENOMEM:
                return rc
        if self.num_free < total:
            return -ENOSPC
        mem = self.k.memory
        head = i = self.next_avail_idx
        buf_id = self.free_head
        curr = buf_id
        head_flags = 0
        for c, (addr, length) in enumerate(out + inb, 1):
            flags = (
                self.avail_used_flags
                | (0 if c == total else ring.VRING_DESC_F_NEXT)
                | (ring.VRING_DESC_F_WRITE if c > len(out) else 0)
            )
            # Every descriptor but the head is complete at once; the head's flags are written
            # last, which makes the whole chain available (§2.8.6): until then they stay what
            # the device last wrote there.
            raw = ring.PACKED_DESC.pack(addr, length, buf_id, flags)
            mem.write(self.desc + ring.PACKED_DESC_SIZE * i,
                      raw[: ring.PACKED_DESC_FLAGS] if i == head else raw)  # fmt: skip
            if i == head:
                head_flags = flags
            prev, curr = curr, self.free_next[curr] if curr < self.num else self.num
            i += 1
            if i >= self.num:
                i = 0
                self.avail_used_flags ^= ring.DESC_F_AVAIL | ring.DESC_F_USED
        if i <= head:
            self.avail_wrap_counter ^= 1
        self.num_free -= total
        self.next_avail_idx = i
        self.free_head = curr
        self.state[buf_id] = (token, total, prev, 0)
        mem.write(
            self.desc + ring.PACKED_DESC_SIZE * head + ring.PACKED_DESC_FLAGS,
            struct.pack("<H", head_flags),
        )
        self.num_added += total
        return 0

    def _add_indirect(self, out: list[tuple[int, int]], inb: list[tuple[int, int]],
                      token: Any) -> int:  # fmt: skip
        """virtqueue_add_indirect_packed: the segments in a table of their own (only WRITE in
        its flags), one ring descriptor with INDIRECT pointing at it."""
        total = len(out) + len(inb)
        try:
            table = self.k.pages.alloc(total * ring.PACKED_DESC_SIZE, align=ring.PACKED_DESC_SIZE)
        except MemoryError:
            return -ENOMEM
        mem = self.k.memory
        entries = b"".join(
            ring.PACKED_DESC.pack(addr, length, 0, ring.VRING_DESC_F_WRITE if n >= len(out) else 0)
            for n, (addr, length) in enumerate(out + inb)
        )
        mem.write(table, entries)
        head, buf_id = self.next_avail_idx, self.free_head
        flags = ring.VRING_DESC_F_INDIRECT | self.avail_used_flags
        raw = ring.PACKED_DESC.pack(table, len(entries), buf_id, 0)
        mem.write(self.desc + ring.PACKED_DESC_SIZE * head, raw[: ring.PACKED_DESC_FLAGS])
        n = head + 1
        if n >= self.num:
            n = 0
            self.avail_wrap_counter ^= 1
            self.avail_used_flags ^= ring.DESC_F_AVAIL | ring.DESC_F_USED
        self.next_avail_idx = n
        self.free_head = self.free_next[buf_id]
        self.num_free -= 1
        self.state[buf_id] = (token, 1, buf_id, table)
        # The head's flags last: they make the buffer available.
        mem.write(
            self.desc + ring.PACKED_DESC_SIZE * head + ring.PACKED_DESC_FLAGS,
            struct.pack("<H", flags),
        )
        self.num_added += 1
        return 0

    def kick_prepare(self) -> bool:
        """virtqueue_kick_prepare_packed: the device event suppression structure decides."""
        new = self.next_avail_idx
        old = (new - self.num_added) & 0xFFFF
        self.num_added = 0
        off_wrap, flags = ring.PACKED_EVENT.unpack(self.k.memory.read(self.used, 4))
        if flags != ring.VRING_PACKED_EVENT_FLAG_DESC:
            return flags != ring.VRING_PACKED_EVENT_FLAG_DISABLE
        return ring.packed_need_event(off_wrap, self.avail_wrap_counter, self.num, new, old)

    def kick(self) -> bool:
        if self.kick_prepare():
            return self.notify(self)
        return True

    # -- reaping -----------------------------------------------------------------------------------
    def _last_used(self) -> tuple[int, int]:
        """(position, wrap counter) in last_used_idx (packed_last_used and
        packed_used_wrap_counter)."""
        shift = ring.VRING_PACKED_EVENT_F_WRAP_CTR
        return self.last_used_idx & ((1 << shift) - 1), self.last_used_idx >> shift

    def more_used(self) -> bool:
        pos, wrap = self._last_used()
        flags_at = self.desc + ring.PACKED_DESC_SIZE * pos + ring.PACKED_DESC_FLAGS
        raw = self.k.memory.read(flags_at, 2)
        return ring.packed_desc_used(struct.unpack("<H", raw)[0], wrap)

    def get_buf(self) -> tuple[Any, int] | None:
        """virtqueue_get_buf_ctx_packed."""
        if self.broken or not self.more_used():
            return None
        mem = self.k.memory
        pos, wrap = self._last_used()
        _addr, length, buf_id, _flags = ring.PACKED_DESC.unpack(
            mem.read(self.desc + ring.PACKED_DESC_SIZE * pos, ring.PACKED_DESC_SIZE)
        )
        if buf_id >= self.num or buf_id not in self.state:
            self.broken = True  # BAD_RING: "id out of range" / "is not a head"
            return None
        token, count = self._detach(buf_id)
        pos += count
        if pos >= self.num:
            pos -= self.num
            wrap ^= 1
        self.last_used_idx = pos | wrap << ring.VRING_PACKED_EVENT_F_WRAP_CTR
        if self.event_flags_shadow == ring.VRING_PACKED_EVENT_FLAG_DESC:
            self._write_driver_off_wrap()
        return token, length

    def _detach(self, buf_id: int) -> tuple[Any, int]:
        """detach_buf_packed: the buffer's ids go back to the head of the free list."""
        token, count, last, table = self.state.pop(buf_id)
        self.free_next[last] = self.free_head
        self.free_head = buf_id
        self.num_free += count
        if table:
            self.k.pages.free(table)  # the indirect table, kfree'd
        return token, count

    def detach_unused_buf(self) -> Any:
        """virtqueue_detach_unused_buf_packed: the lowest buffer id first."""
        if not self.state:
            return None
        token, _count = self._detach(min(self.state))
        return token

    # -- interrupt suppression (§2.8.10, §2.8.14): the driver event suppression structure --------
    def disable_cb(self) -> None:
        """virtqueue_disable_cb_packed: DISABLE into the shadow; the structure's flags are
        written unless the device has just notified (event_triggered)."""
        if self.event_flags_shadow != ring.VRING_PACKED_EVENT_FLAG_DISABLE:
            self.event_flags_shadow = ring.VRING_PACKED_EVENT_FLAG_DISABLE
            if self.event_triggered:
                return
            self._write_driver_flags()

    def _enable_flags(self) -> None:
        """What enable_cb_prepare_packed and enable_cb_delayed_packed share, after off_wrap:
        a DISABLE shadow becomes DESC (event idx) or ENABLE, written."""
        if self.event_flags_shadow == ring.VRING_PACKED_EVENT_FLAG_DISABLE:
            self.event_flags_shadow = (
                ring.VRING_PACKED_EVENT_FLAG_DESC
                if self.event_idx
                else ring.VRING_PACKED_EVENT_FLAG_ENABLE
            )
            self._write_driver_flags()

    def enable_cb_prepare(self) -> int:
        """virtqueue_enable_cb_prepare (packed half): clear event_triggered; with event idx
        off_wrap = last_used_idx first, then the flags; last_used_idx (position and wrap) for
        poll()."""
        self.event_triggered = False
        if self.event_idx:
            self._write_driver_off_wrap()
        self._enable_flags()
        return self.last_used_idx

    def poll(self, off_wrap: int) -> bool:
        """virtqueue_poll_packed: whether the descriptor at ``off_wrap``'s position is used
        for its wrap counter."""
        if self.broken:
            return False
        shift = ring.VRING_PACKED_EVENT_F_WRAP_CTR
        pos, wrap = off_wrap & ((1 << shift) - 1), (off_wrap >> shift) & 1
        flags_at = self.desc + ring.PACKED_DESC_SIZE * pos + ring.PACKED_DESC_FLAGS
        return ring.packed_desc_used(self.k.memory.read_u16(flags_at), wrap)

    def enable_cb(self) -> bool:
        """virtqueue_enable_cb: prepare, then True when nothing was used meanwhile."""
        return not self.poll(self.enable_cb_prepare())

    def enable_cb_delayed(self) -> bool:
        """virtqueue_enable_cb_delayed_packed: with event idx off_wrap points 3/4 of the way
        through the descriptors in use ((num - num_free) * 3 / 4 past last_used, the wrap
        flipped past the end); the flags as enable_cb_prepare; False when the descriptor at
        last_used is already used."""
        self.event_triggered = False
        if self.event_idx:
            bufs = (self.num - self.num_free) * 3 // 4
            pos, wrap = self._last_used()
            pos += bufs
            if pos >= self.num:
                pos -= self.num
                wrap ^= 1
            off_wrap = pos | wrap << ring.VRING_PACKED_EVENT_F_WRAP_CTR
            self.k.memory.write_u16(self.avail + ring.PACKED_EVENT_OFF_WRAP, off_wrap)
        self._enable_flags()
        return not self.more_used()
