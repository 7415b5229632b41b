"""Split virtqueues (virtio 1.2 §2.7), read and written in guest memory; a queue whose device
negotiated VIRTIO_F_RING_PACKED hands each operation to its packed ring (virtio/packed.py, §2.8).

The transport programs ``size``, the three ring addresses, ``enabled`` and ``vector``; the
device pops available descriptor chains and pushes used elements. A guest may put anything in
a ring: every index, length, address and chain shape is checked, and every problem becomes a
``VirtqueueError`` (the device then sets DEVICE_NEEDS_RESET, §2.1.2) — never another exception,
never an endless walk.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..abi import ring
from ..abi.ring import DESC as _DESC
from ..abi.ring import (
    DESC_SIZE,
    USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
)
from ..abi.ring import USED_ELEM as _USED_ELEM
from ..abi.virtio import VIRTIO_MSI_NO_VECTOR as NO_VECTOR
from .memory import WINDOWED, GuestMemoryError, Memory, load16, store16

if TYPE_CHECKING:
    from .packed import PackedRing

# QEMU 7.2's VIRTQUEUE_MAX_SIZE: no chain maps more than 1024 segments, whatever an indirect
# table's length claims (virtqueue_map_desc). A direct chain is further capped at the queue
# size (§2.7.5.3: a chain cannot be longer than the ring it lives in without a loop).
VIRTQUEUE_MAX_SIZE = 1024
_AVAIL_RING = ring.AVAIL_RING
_AVAIL_IDX = ring.AVAIL_IDX
_U16 = struct.Struct("<H")
_USED_RING = ring.USED_RING
_USED_IDX = ring.USED_IDX
_F_NEXT_OR_INDIRECT = VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT
SNAPSHOT_MIN_CHAINS = 2  # available chains from which the ring and table are read whole


class VirtqueueError(Exception):
    """The driver broke a ring rule; the device must enter DEVICE_NEEDS_RESET."""


@dataclass(slots=True)
class Element:
    """One available descriptor chain as a scatter-gather list: device-readable segments first,
    then device-writable ones (§2.7.4.2). The device reads only ``readable`` and writes only
    ``writable``; every segment was checked to lie inside guest memory when it was walked."""

    head: int  # split: the head's index; packed: the buffer ID (§2.8.6)
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)
    ndescs: int = 1  # packed: the ring positions the buffer takes (QEMU's elem->ndescs)

    @property
    def segments(self) -> list[tuple[int, int, bool]]:
        """(addr, len, writable) in chain order."""
        return [(a, n, False) for a, n in self.readable] + [(a, n, True) for a, n in self.writable]

    @property
    def readable_len(self) -> int:
        r = self.readable
        if len(r) == 1:  # the usual chain: no generator for one segment
            return r[0][1]
        return sum(n for _, n in r)

    @property
    def writable_len(self) -> int:
        w = self.writable
        if len(w) == 1:
            return w[0][1]
        return sum(n for _, n in w)

    def read(self, mem: Memory, limit: int | None = None) -> bytes:
        """The device-readable bytes, or only the first ``limit`` of them (so that a header
        can be looked at before a peer-chosen length is read whole)."""
        left = self.readable_len if limit is None else limit
        pieces = []
        for a, n in self.readable:
            if left <= 0:
                break
            pieces.append((a, min(n, left)))
            left -= n
        try:
            return gather(mem, pieces)
        except GuestMemoryError as e:
            raise VirtqueueError(str(e)) from None

    def write(self, mem: Memory, data: bytes, offset: int = 0) -> int:
        """Scatter ``data`` into the writable segments starting ``offset`` bytes into them;
        returns how many bytes fitted. Nothing is ever written past the last segment."""
        try:
            return scatter(mem, self.writable, data, offset)
        except GuestMemoryError as e:
            raise VirtqueueError(str(e)) from None


def _runs(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent pieces joined: a driver's buffers often follow each other in memory (the
    pages of one skb, mergeable receive buffers carved one after another from a page frag),
    and each run is then one access instead of one per descriptor."""
    runs: list[tuple[int, int]] = []
    ra, rn = pieces[0]
    for a, n in pieces[1:]:
        if a == ra + rn:
            rn += n
        else:
            runs.append((ra, rn))
            ra, rn = a, n
    runs.append((ra, rn))
    return runs


def gather(mem: Memory, pieces: list[tuple[int, int]]) -> bytes:
    """The bytes of ``pieces`` (addr, len), in order, adjacent ones read together. A joined
    run that memory refuses (it could span two regions of a vhost-user peer) is read piece
    by piece, so the outcome is that of reading each piece."""
    if not pieces:
        return b""
    if len(pieces) == 1:
        return mem.read(*pieces[0])
    runs = _runs(pieces)
    if len(runs) < len(pieces):
        try:
            return b"".join([mem.read(a, n) for a, n in runs])
        except GuestMemoryError:
            pass
    return b"".join([mem.read(a, n) for a, n in pieces])


def scatter(mem: Memory, segments: list[tuple[int, int]], data: bytes | memoryview,
            offset: int = 0) -> int:  # fmt: skip
    """Write ``data`` over ``segments`` starting ``offset`` bytes into them (never past the
    last); returns how many bytes fitted. Adjacent segments are written together (the bytes
    written are the same); a joined run memory refuses is written piece by piece."""
    pieces: list[tuple[int, int]] = []
    pos = 0
    total = len(data)
    for a, n in segments:
        if pos >= total:
            break
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, total - pos)
        pieces.append((a + offset, take))
        offset = 0
        pos += take
    _write_pieces(mem, pieces, data)
    return pos


def _write_pieces(mem: Memory, pieces: list[tuple[int, int]], data: bytes | memoryview) -> None:
    """``data`` laid out over ``pieces`` in order (their lengths add up to what is written)."""
    if not pieces:
        return
    view = memoryview(data)
    runs = _runs(pieces) if len(pieces) > 1 else pieces
    if len(runs) < len(pieces):
        try:
            pos = 0
            for a, n in runs:
                mem.write(a, view[pos : pos + n])
                pos += n
            return
        except GuestMemoryError:
            pass  # written again piece by piece: the same bytes, or the error where it is
    pos = 0
    for a, n in pieces:
        mem.write(a, view[pos : pos + n])
        pos += n


def scatter_chains(mem: Memory, elems: list[Element], data: bytes | memoryview) -> list[int]:
    """Fill the writable buffers of ``elems`` in order with ``data`` (a packet spread over
    mergeable receive buffers, §5.1.6.4); returns the bytes each chain got. Buffers adjacent
    in memory, also across chains, are written together."""
    pieces: list[tuple[int, int]] = []
    lens: list[int] = []
    pos = 0
    total = len(data)
    for elem in elems:
        got = 0
        for a, n in elem.writable:
            if pos >= total:
                break
            take = min(n, total - pos)
            pieces.append((a, take))
            got += take
            pos += take
        lens.append(got)
    try:
        _write_pieces(mem, pieces, data)
    except GuestMemoryError as e:
        raise VirtqueueError(str(e)) from None
    return lens


def walk_chain(
    mem: Memory, table: int, table_size: int, head: int, where: str = "queue"
) -> tuple[Element, int]:
    """Walk the split-ring chain starting at ``head`` of the descriptor table at ``table``
    (``table_size`` entries): the one walker every consumer uses. Returns the element and the
    number of descriptors read. Bounded: at most ``table_size`` descriptors of the ring's table
    and at most VIRTQUEUE_MAX_SIZE segments in all (an indirect table's own length does not
    raise that bound). Every rule break is a VirtqueueError (§2.7.5, QEMU virtqueue_split_pop).
    """
    if head >= table_size:
        raise VirtqueueError(f"{where}: head {head} ≥ queue size {table_size}")
    # The common chain, one plain descriptor, checked as the loop below would check it.
    a = table + DESC_SIZE * head
    if type(mem) in WINDOWED and mem.lo <= a and a + DESC_SIZE <= mem.hi:
        addr, length, flags, nxt = _DESC.unpack_from(mem.buf, a - mem.lo)  # in place, checked
    else:
        try:
            addr, length, flags, nxt = _DESC.unpack(mem.read(a, DESC_SIZE))
        except GuestMemoryError as e:
            raise VirtqueueError(f"{where}: descriptor table: {e}") from None
    if not flags & _F_NEXT_OR_INDIRECT and length and addr + length <= mem.size:
        if flags & VRING_DESC_F_WRITE:
            return Element(head, [], [(addr, length)]), 1
        return Element(head, [(addr, length)], []), 1
    elem = Element(head)
    limit, i = table_size, head
    indirect = False
    visited = 0  # descriptors of the current table in this chain
    reads = 0
    segments = 0
    while True:
        visited += 1
        if visited > limit:
            raise VirtqueueError(f"{where}: descriptor chain loops or is too long")
        if reads:  # the head's descriptor was read above
            try:
                raw = mem.read(table + DESC_SIZE * i, DESC_SIZE)
            except GuestMemoryError as e:
                raise VirtqueueError(f"{where}: descriptor table: {e}") from None
            addr, length, flags, nxt = _DESC.unpack(raw)
        reads += 1
        if flags & VRING_DESC_F_INDIRECT:
            # §2.7.5.3.1: no indirect table inside an indirect table, no NEXT with INDIRECT.
            if indirect:
                raise VirtqueueError(f"{where}: indirect table inside an indirect table")
            if reads > 1:
                # Only a chain's head may refer to an indirect table: the driver puts one
                # INDIRECT descriptor alone in the ring (§2.7.5.3.1: INDIRECT with NEXT is
                # forbidden, so an indirect descriptor ends a chain; Linux never chains one).
                # QEMU 7.2 honours INDIRECT only on the head and maps a later one as a plain
                # buffer; we refuse it as a device error instead, so the driver learns.
                raise VirtqueueError(f"{where}: INDIRECT descriptor {i} after direct ones")
            if flags & VRING_DESC_F_NEXT:
                raise VirtqueueError(f"{where}: INDIRECT together with NEXT")
            if length == 0 or length % DESC_SIZE:
                raise VirtqueueError(f"{where}: indirect table length {length}")
            if addr + length > mem.size:
                raise VirtqueueError(f"{where}: indirect table outside memory")
            # QEMU bounds the walk of a table by its entries and, through the segment array,
            # by VIRTQUEUE_MAX_SIZE: whichever is smaller.
            table, i, indirect, visited = addr, 0, True, 0
            table_size = length // DESC_SIZE
            limit = min(table_size, VIRTQUEUE_MAX_SIZE)
            # The part of the table the walk may visit, copied in one read (§2.7.5.3.1: the
            # driver does not touch it while the chain is available) rather than one read per
            # descriptor; memory that refuses the whole copy is read entry by entry instead.
            try:
                mem = _TableCopy(mem, addr, mem.read(addr, DESC_SIZE * limit))
            except GuestMemoryError:
                pass
            continue
        if length == 0:
            # QEMU 7.2 virtqueue_map_desc: "zero sized buffers are not allowed".
            raise VirtqueueError(f"{where}: zero-length descriptor {i}")
        if addr + length > mem.size:
            raise VirtqueueError(
                f"{where}: buffer [{addr:#x}, +{length:#x}) outside guest memory"
            )
        segments += 1
        if segments > VIRTQUEUE_MAX_SIZE:
            raise VirtqueueError(f"{where}: more than {VIRTQUEUE_MAX_SIZE} segments in a chain")
        if flags & VRING_DESC_F_WRITE:
            elem.writable.append((addr, length))
        else:
            if elem.writable:
                # §2.7.4.2: device-readable descriptors come before device-writable ones.
                raise VirtqueueError(f"{where}: readable descriptor after a writable one")
            elem.readable.append((addr, length))
        if not flags & VRING_DESC_F_NEXT:
            return elem, reads
        if nxt >= table_size:
            raise VirtqueueError(f"{where}: next {nxt} ≥ table size {table_size}")
        i = nxt


class VirtQueue:
    def __init__(self, index: int, max_size: int) -> None:
        self.index = index
        self._where = f"queue {index}"  # what a walker error names
        self.max_size = max_size  # 0 = the queue does not exist
        self.event_idx = False  # VIRTIO_F_EVENT_IDX negotiated (set by the device)
        self.packed = False  # VIRTIO_F_RING_PACKED negotiated (set by the device: set_packed)
        self.reset()

    def set_packed(self, on: bool) -> None:
        """Use the packed layout (§2.8) or the split one (§2.7): the driver's features decide,
        before any ring is live (FEATURES_OK comes before queue_enable, §3.1.1)."""
        if on != self.packed:
            self.packed = on
            self._packed = self._new_packed()

    def _new_packed(self) -> PackedRing | None:
        if not self.packed:
            return None
        from .packed import PackedRing  # packed.py builds on this module's walker types

        return PackedRing(self)

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.enabled = False
        self.vector = NO_VECTOR
        self.last_avail_idx = 0
        self.used_idx = 0
        # Chains known to be available past last_avail_idx (QEMU's shadow_avail_idx): the
        # avail index is read again only once they are used up, so a burst costs one read.
        self.shadow_pending = 0
        # The used index as the driver last saw it written: pushes of a burst write their
        # elements, and one write of the index publishes them all (publish_used).
        self.published_used = 0
        self._used_elems = bytearray()  # pushed, not yet written (from slot _used_first)
        self._used_first = 0
        self._snap: _RingSnapshot | None = None
        self._no_notify: tuple[int, bool] | None = None  # (used ring, flag) last written
        # EVENT_IDX avail_event (§2.7.10): the value owed (last_avail_idx after the last pop)
        # and the value last written. Written once per burst, not per pop: when the consumer
        # publishes, and before the ring is declared empty (then read again, so a chain the
        # driver added while the old value stood is not missed).
        self._avail_event_due: int | None = None
        self._avail_event: int | None = None
        self.signalled_used = 0
        self.signalled_used_valid = False
        self.pops = 0
        self.pushes = 0
        self.desc_reads = 0  # descriptors read by walks (a measure of the work guests cause)
        self.walks = 0  # chains walked (pops, including those given back by unpop)
        self._packed = self._new_packed()

    # -- raw ring access -------------------------------------------------------------------------
    # A memory's window (memory.Windowed: the simulator's memory, a vhost-user peer's mapped
    # region) is read and written in place after the same bounds test the memory makes
    # itself; an access outside it, and other memories (a peer's region read with pread, a
    # counting test memory), go through read/write and their errors.
    def _u16(self, mem: Memory, addr: int) -> int:
        try:
            return load16(mem, addr)
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: {e}") from None

    def _w16(self, mem: Memory, addr: int, value: int) -> None:
        try:
            store16(mem, addr, value)
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: {e}") from None

    def avail_idx(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr + ring.AVAIL_IDX)

    def avail_flags(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr + ring.AVAIL_FLAGS)

    def used_event(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr + ring.used_event(self.size))

    def ready(self) -> bool:
        return self.enabled and self.size > 0 and self.desc_addr != 0

    def has_available(self, mem: Memory) -> bool:
        if self._packed is not None:
            return self._packed.has_available(mem)
        if not self.ready():
            return False
        if self.shadow_pending:
            return True
        avail = self.avail_idx(mem)
        if avail == self.last_avail_idx:
            if not self._write_avail_event(mem):
                return False
            avail = self.avail_idx(mem)
            if avail == self.last_avail_idx:
                return False
        # Remember what was found, so that the pop that follows need not read it again (a
        # count past the queue size stays unremembered: that pop reads it and reports it).
        pending = (avail - self.last_avail_idx) & 0xFFFF
        if pending <= self.size:
            self._take_pending(mem, pending)
        return True

    def _take_pending(self, mem: Memory, pending: int) -> None:
        self.shadow_pending = pending
        # A burst is copied in two reads; a chain or two is cheaper read in place.
        self._snap = _RingSnapshot(self, mem) if pending >= SNAPSHOT_MIN_CHAINS else None

    def _write_avail_event(self, mem: Memory) -> bool:
        """Write the avail_event owed, if any; True if it was written."""
        due = self._avail_event_due
        if not self.event_idx or due is None or due == self._avail_event:
            return False
        a = self.used_addr + _USED_RING + USED_ELEM_SIZE * self.size  # ring.avail_event(size)
        if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
            mem.buf16[(a - mem.lo) >> 1] = due  # _w16, in place
        else:
            self._w16(mem, a, due)
        self._avail_event = due
        return True

    def forget_shadow(self) -> None:
        """The ring's indexes were set from outside (vhost-user SET_VRING_BASE): nothing is
        known to be available until the avail index is read again."""
        self.shadow_pending = 0
        self.published_used = self.used_idx
        self._used_elems.clear()
        self._snap = None
        self._no_notify = None
        self._avail_event = self._avail_event_due = None

    # -- pop / push --------------------------------------------------------------------------------
    def pop(self, mem: Memory) -> Element | None:
        """The next available chain, or None when the driver offered nothing new."""
        if self._packed is not None:
            return self._packed.pop(mem)
        if not (self.enabled and self.size > 0 and self.desc_addr != 0):
            return None
        if not self.shadow_pending:
            a = self.avail_addr + _AVAIL_IDX
            if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
                avail = mem.buf16[(a - mem.lo) >> 1]  # in place: the common case
            else:
                avail = self._u16(mem, a)
            pending = (avail - self.last_avail_idx) & 0xFFFF
            if pending == 0:
                if not self._write_avail_event(mem):
                    return None
                # what came while the old avail_event stood (avail_idx(mem), in place)
                if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
                    avail = mem.buf16[(a - mem.lo) >> 1]
                else:
                    avail = self._u16(mem, a)
                pending = (avail - self.last_avail_idx) & 0xFFFF
                if pending == 0:
                    return None
            if pending > self.size:
                raise VirtqueueError(
                    f"queue {self.index}: avail idx {avail} is {pending} ahead of "
                    f"{self.last_avail_idx}, more than the queue size {self.size}"
                )
            # _take_pending(mem, pending), inline
            self.shadow_pending = pending
            self._snap = _RingSnapshot(self, mem) if pending >= SNAPSHOT_MIN_CHAINS else None
        size = self.size
        slot = self.last_avail_idx % size
        snap = self._snap
        desc_addr = self.desc_addr
        # Where the head's descriptor is read from: the burst's copy of the table, or the
        # memory's window in place (the bounds tests below are walk_chain's and the
        # memory's); None: through walk_chain's reads.
        table: bytes | bytearray | mmap.mmap | None = None
        off = limit = 0  # the head descriptor's offset in ``table``, and the bytes it has
        # snap.valid_for(self), inline
        if (
            snap is not None and snap.ring is not None and snap.base == desc_addr
            and snap.avail_addr == self.avail_addr and snap.qsize == size
        ):  # fmt: skip
            head = _U16.unpack_from(snap.ring, 2 * slot)[0]  # snap.head(slot)
            walked: Memory = snap
            table, off, limit = snap.data, DESC_SIZE * head, len(snap.data)
        else:
            a = self.avail_addr + _AVAIL_RING + 2 * slot
            if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
                head = mem.buf16[(a - mem.lo) >> 1]
                lo = mem.lo
                table, off, limit = mem.buf, desc_addr + DESC_SIZE * head - lo, mem.hi - lo
            else:
                head = self._u16(mem, a)
            walked = mem
        self.walks += 1
        # The usual chain, one plain descriptor, as walk_chain's first step finds it and with
        # its tests (head in the table, the descriptor inside what is read, no NEXT or
        # INDIRECT, a non-empty buffer inside memory); anything else is walk_chain's.
        if table is not None and head < size and 0 <= off and off + DESC_SIZE <= limit:
            addr, length, flags, _next = _DESC.unpack_from(table, off)
            if not flags & _F_NEXT_OR_INDIRECT and length and addr + length <= mem.size:
                if flags & VRING_DESC_F_WRITE:
                    elem = Element(head, [], [(addr, length)])
                else:
                    elem = Element(head, [(addr, length)], [])
                reads = 1
            else:
                elem, reads = walk_chain(walked, desc_addr, size, head, self._where)
        else:
            elem, reads = walk_chain(walked, desc_addr, size, head, self._where)
        self.desc_reads += reads
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        self.shadow_pending -= 1
        self.pops += 1
        if self.event_idx:
            # avail_event: ask for a kick as soon as anything new is added (§2.7.10); written
            # at the end of the burst (publish_used) or when the ring is found empty.
            self._avail_event_due = self.last_avail_idx
        return elem

    def unpop(self, count: int = 1) -> None:
        """Give the last ``count`` popped chains back unused (QEMU's virtqueue_unpop): the
        next pop returns them again. Only chains popped since the last push may be given back."""
        if self._packed is not None:
            self._packed.unpop(count)
            return
        self.last_avail_idx = (self.last_avail_idx - count) & 0xFFFF
        self.shadow_pending += count
        self.pops -= count

    def push(self, mem: Memory, elem: Element, written: int, publish: bool = True) -> None:
        """Return a chain to the driver with ``written`` bytes filled (§2.7.8). With
        ``publish=False`` the used index is not written yet: the caller publishes a burst with
        ``publish_used`` (before any notification, §2.7.8.2 order: element, then index)."""
        if self._packed is not None:
            self._packed.push(mem, elem, written, publish)
            return
        if not self._used_elems:
            self._used_first = self.used_idx % self.size
        self._used_elems += _USED_ELEM.pack(elem.head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.pushes += 1
        if publish:
            self.publish_used(mem)

    def _write_used_elems(self, mem: Memory) -> None:
        """The pushed elements, in as few writes as the ring's wrap allows."""
        data, first = self._used_elems, self._used_first
        self._used_elems = bytearray()
        try:
            if first * USED_ELEM_SIZE + len(data) <= self.size * USED_ELEM_SIZE:
                # No wrap (a burst's usual case): one write of the whole run.
                mem.write(self.used_addr + _USED_RING + USED_ELEM_SIZE * first, bytes(data))
                return
            while data:
                n = min(len(data), (self.size - first) * USED_ELEM_SIZE)
                mem.write(self.used_addr + ring.used_entry(first), bytes(data[:n]))
                data, first = data[n:], 0
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: used ring: {e}") from None

    def set_no_notify(self, mem: Memory, on: bool) -> None:
        """VRING_USED_F_NO_NOTIFY (§2.7.7.1 and §2.7.10: without EVENT_IDX): whether the driver
        need not kick when it adds buffers. Written only when it changes. A packed ring
        writes its device event suppression structure instead (§2.8.14)."""
        if self._packed is not None:
            self._packed.set_no_notify(mem, on)
            return
        state = (self.used_addr, on)
        if self._no_notify != state:
            self._w16(mem, self.used_addr + ring.USED_FLAGS, VRING_USED_F_NO_NOTIFY if on else 0)
            self._no_notify = state

    def publish_used(self, mem: Memory) -> None:
        """Write the used elements and then the used index if pushes since the last write
        left them behind."""
        if self._packed is not None:
            self._packed.publish_used(mem)
            return
        data = self._used_elems
        if data:
            a = self.used_addr + _USED_RING + USED_ELEM_SIZE * self._used_first
            if (
                type(mem) in WINDOWED and mem.lo <= a and a + len(data) <= mem.hi
                and self._used_first * USED_ELEM_SIZE + len(data) <= self.size * USED_ELEM_SIZE
            ):  # fmt: skip
                # _write_used_elems' one-write case, in place: no wrap, inside memory.
                self._used_elems = bytearray()
                a -= mem.lo
                mem.buf[a : a + len(data)] = data
            else:
                self._write_used_elems(mem)
        used_idx = self.used_idx
        if self.published_used != used_idx:
            a = self.used_addr + _USED_IDX
            if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
                mem.buf16[(a - mem.lo) >> 1] = used_idx  # _w16, in place
            else:
                self._w16(mem, a, used_idx)
            self.published_used = used_idx
        due = self._avail_event_due
        if due is not None and due != self._avail_event and self.event_idx:
            # _write_avail_event, inline (its tests are the three above)
            a = self.used_addr + _USED_RING + USED_ELEM_SIZE * self.size  # ring.avail_event
            if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
                mem.buf16[(a - mem.lo) >> 1] = due
            else:
                self._w16(mem, a, due)
            self._avail_event = due

    def should_notify(self, mem: Memory) -> bool:
        """Whether the driver wants a used-buffer notification now (§2.7.7.2, §2.7.10;
        packed: §2.8.10)."""
        if self._packed is not None:
            return self._packed.should_notify(mem)
        if self._used_elems or self.published_used != self.used_idx or (
            self._avail_event_due is not None and self._avail_event_due != self._avail_event
        ):
            self.publish_used(mem)  # the same test publish_used makes, without its frame
        if not self.event_idx:
            return not self.avail_flags(mem) & VRING_AVAIL_F_NO_INTERRUPT
        was_valid = self.signalled_used_valid
        old, new = self.signalled_used, self.used_idx
        self.signalled_used, self.signalled_used_valid = new, True
        a = self.avail_addr + _AVAIL_RING + 2 * self.size  # used_event (§2.7.10)
        if type(mem) in WINDOWED and mem.lo <= a and a + 2 <= mem.hi and not a & 1:
            event = mem.buf16[(a - mem.lo) >> 1]  # self.used_event(mem), in place
        else:
            event = self.used_event(mem)
        # Notify if used_event lies in (old, new] (vring_need_event).
        return not was_valid or ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class _TableCopy:
    """A copy of ``data`` at ``base`` in front of ``mem``: reads inside it come from the copy,
    others (and all writes) from memory."""

    def __init__(self, mem: Memory, base: int, data: bytes) -> None:
        self.mem = mem
        self.size = mem.size
        self.base = base
        self.data = data

    def read(self, addr: int, length: int) -> bytes:
        off = addr - self.base
        if 0 <= off and off + length <= len(self.data):
            return self.data[off : off + length]
        return self.mem.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.mem.write(addr, data)


class _RingSnapshot(_TableCopy):
    """The avail ring and the descriptor table, each read whole when the avail index is read
    (one read each instead of one per head and per descriptor). The driver wrote every
    descriptor and ring entry of a chain before publishing the avail index (§2.7.13), and may
    not touch them until the chain is used, so the copy holds for every chain counted then.
    Reads outside the copied table (indirect tables, buffers) go to memory; the copy covers
    only what lies inside guest memory, so a ring at its end fails exactly as before."""

    def __init__(self, q: VirtQueue, mem: Memory) -> None:
        self.key = (q.desc_addr, q.avail_addr, q.size)
        self.avail_addr, self.qsize = q.avail_addr, q.size  # key's parts, for VirtQueue.pop
        self.ring: bytes | None = None
        try:
            self.ring = mem.read(q.avail_addr + ring.AVAIL_RING, 2 * q.size)
        except GuestMemoryError:
            pass  # read entry by entry (and fail where the walk would)
        n = min(DESC_SIZE * q.size, max(0, mem.size - q.desc_addr))
        table = b""
        try:
            table = mem.read(q.desc_addr, n) if n else b""
        except GuestMemoryError:
            pass
        super().__init__(mem, q.desc_addr, table)  # the table: data at desc_addr

    def valid_for(self, q: VirtQueue) -> bool:
        return self.ring is not None and self.key == (q.desc_addr, q.avail_addr, q.size)

    def head(self, slot: int) -> int:
        assert self.ring is not None
        return self.ring[2 * slot] | self.ring[2 * slot + 1] << 8
