"""Packed virtqueues (virtio 1.2 §2.8), the device's side, read and written in guest memory.

One ring of descriptors serves both directions: the driver makes a descriptor available by
setting its AVAIL flag to its wrap counter and USED to the opposite (§2.8.1); the device marks
a buffer used by writing one descriptor with AVAIL = USED = its own wrap counter at the ring
position where the buffer started, and then skips as many positions as the buffer had
descriptors (§2.8.7, §2.8.22; Linux virtqueue_get_buf_ctx_packed reads it there). The queue's
three addresses are the descriptor ring, the driver event suppression structure (driver area,
written by the driver: whether it wants used-buffer notifications, §2.8.10) and the device event
suppression structure (device area, written by us: whether we want kicks, §2.8.14).

The bounds are those of the split ring (virtio/queue.py): a chain in the ring is at most the
queue size, an indirect table at most VIRTQUEUE_MAX_SIZE entries (QEMU's bound on an element),
no zero-length buffer, nothing outside guest memory, no more descriptors in use than the ring
holds; every break is a VirtqueueError (DEVICE_NEEDS_RESET), and a descriptor the driver never
made available is simply "nothing to do" — one read, no waiting.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ..abi.ring import (
    DESC_F_AVAIL,
    DESC_F_USED,
    PACKED_DESC,
    PACKED_DESC_FLAGS,
    PACKED_DESC_LEN,
    PACKED_DESC_SIZE,
    PACKED_EVENT_FLAGS,
    PACKED_EVENT_FLAGS_MASK,
    PACKED_EVENT_OFF_WRAP,
    PACKED_USED,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_PACKED_EVENT_F_WRAP_CTR,
    VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE,
    packed_desc_avail,
    packed_need_event,
)
from .memory import GuestMemoryError, Memory, load16, store16
from .queue import VIRTQUEUE_MAX_SIZE, Element, VirtqueueError

if TYPE_CHECKING:
    from .queue import VirtQueue


def _segment(
    elem: Element, addr: int, length: int, writable: bool, mem: Memory, where: str
) -> None:
    if length == 0:
        # QEMU 7.2 virtqueue_map_desc: "zero sized buffers are not allowed".
        raise VirtqueueError(f"{where}: zero-length descriptor")
    if addr + length > mem.size:
        raise VirtqueueError(f"{where}: buffer [{addr:#x}, +{length:#x}) outside guest memory")
    if writable:
        elem.writable.append((addr, length))
    else:
        if elem.writable:
            # §2.8.4 as §2.7.4.2: device-readable descriptors come first (QEMU: "Incorrect
            # order for descriptors").
            raise VirtqueueError(f"{where}: readable descriptor after a writable one")
        elem.readable.append((addr, length))


def walk_packed_chain(
    mem: Memory, ring: int, num: int, head: int, first: tuple[int, int, int, int], where: str
) -> tuple[Element, int, int]:
    """Walk the buffer whose first descriptor ``first`` = (addr, len, id, flags) sits at ring
    position ``head`` of a packed ring of ``num`` entries at ``ring``. Returns the element, the
    ring positions it takes (1 for an indirect table) and the descriptors read. Bounded: at most
    ``num`` ring descriptors, at most VIRTQUEUE_MAX_SIZE indirect entries."""
    elem = Element(0)
    addr, length, buf_id, flags = first
    pos, count, reads = head, 0, 1
    while True:
        count += 1
        if flags & VRING_DESC_F_INDIRECT:
            # §2.8.19/§2.8.20: one INDIRECT descriptor stands alone for the buffer; the driver
            # must not combine it with NEXT. QEMU 7.2 looks for INDIRECT on the first
            # descriptor only; a later one (or NEXT with it) is refused here, as the split
            # walker refuses them, rather than half-honoured.
            if count > 1:
                raise VirtqueueError(f"{where}: INDIRECT descriptor at {pos} after direct ones")
            if flags & VRING_DESC_F_NEXT:
                raise VirtqueueError(f"{where}: INDIRECT together with NEXT")
            if length == 0 or length % PACKED_DESC_SIZE:
                raise VirtqueueError(f"{where}: indirect table length {length}")
            entries = length // PACKED_DESC_SIZE
            if entries > VIRTQUEUE_MAX_SIZE:
                # QEMU maps at most VIRTQUEUE_MAX_SIZE segments per element ("too many
                # descriptors in indirect table").
                raise VirtqueueError(f"{where}: indirect table of {entries} entries")
            if addr + length > mem.size:
                raise VirtqueueError(f"{where}: indirect table outside memory")
            try:
                table = mem.read(addr, length)
            except GuestMemoryError as e:
                raise VirtqueueError(f"{where}: indirect table: {e}") from None
            reads += entries
            # §2.8.19: every entry of the table is part of the buffer (no NEXT chaining);
            # WRITE is the only flag that counts, the others and the entries' ids are
            # reserved and ignored by the device.
            for t_addr, t_len, _t_id, t_flags in PACKED_DESC.iter_unpack(table):
                _segment(elem, t_addr, t_len, bool(t_flags & VRING_DESC_F_WRITE), mem, where)
            elem.head = buf_id  # the id of the descriptor that refers to the table
            return elem, 1, reads
        _segment(elem, addr, length, bool(flags & VRING_DESC_F_WRITE), mem, where)
        if not flags & VRING_DESC_F_NEXT:
            # §2.8.6: the buffer ID is in the last descriptor of the chain. (QEMU 7.2 takes the
            # first's; Linux writes the same id into each, so both agree for Linux.)
            elem.head = buf_id
            return elem, count, reads
        if count >= num:
            # A chain cannot take more positions than the ring has (QEMU: "Looped descriptor").
            raise VirtqueueError(f"{where}: descriptor chain longer than the queue size {num}")
        pos = pos + 1 if pos + 1 < num else 0
        try:
            raw = mem.read(ring + PACKED_DESC_SIZE * pos, PACKED_DESC_SIZE)
        except GuestMemoryError as e:
            raise VirtqueueError(f"{where}: descriptor ring: {e}") from None
        reads += 1
        addr, length, buf_id, flags = PACKED_DESC.unpack(raw)


class PackedRing:
    """The device's state of one packed virtqueue (QEMU's VirtQueue fields for it): where the
    next available descriptor is expected and on which wrap, where the next used descriptor
    goes and on which wrap, and how many descriptors the device holds."""

    def __init__(self, q: VirtQueue) -> None:
        self.q = q
        self.last_avail_idx = 0
        self.avail_wrap = 1  # §2.8.1: both wrap counters start at 1
        self.used_idx = 0
        self.used_wrap = 1
        self.inuse = 0  # ring positions popped and not yet used
        # Pushed, not yet written: (buffer id, bytes written, ring positions).
        self._pending: list[tuple[int, int, int]] = []
        # Ring positions of each chain popped lately, newest last, so that unpop can give
        # chains back; bounded (only chains popped since the last push may be given back).
        self._popped: deque[int] = deque(maxlen=max(q.max_size, 1))
        self.signalled_used = 0
        self.signalled_used_valid = False
        self._notify_state: tuple[int, int, int] | None = None  # (area, flags, off_wrap) written

    @property
    def where(self) -> str:
        return f"queue {self.q.index}"

    def _desc(self, mem: Memory, pos: int) -> tuple[int, int, int, int]:
        try:
            raw = mem.read(self.q.desc_addr + PACKED_DESC_SIZE * pos, PACKED_DESC_SIZE)
        except GuestMemoryError as e:
            raise VirtqueueError(f"{self.where}: descriptor ring: {e}") from None
        return PACKED_DESC.unpack(raw)

    def _flags(self, mem: Memory, pos: int) -> int:
        try:  # one 16-bit load (memory.py says why)
            return load16(mem, self.q.desc_addr + PACKED_DESC_SIZE * pos + PACKED_DESC_FLAGS)
        except GuestMemoryError as e:
            raise VirtqueueError(f"{self.where}: descriptor ring: {e}") from None

    # -- available side ----------------------------------------------------------------------
    def has_available(self, mem: Memory) -> bool:
        if not self.q.ready() or self.last_avail_idx >= self.q.size:
            return False
        return packed_desc_avail(self._flags(mem, self.last_avail_idx), self.avail_wrap)

    def pop(self, mem: Memory) -> Element | None:
        q = self.q
        if not q.ready():
            return None
        if self.last_avail_idx >= q.size:
            # The size changed under a live ring (the transport forbids it once enabled).
            raise VirtqueueError(f"{self.where}: ring position beyond the queue size")
        # The flags first, the rest after (QEMU vring_packed_desc_read with a barrier): the
        # driver writes a head's flags last, and a real kernel runs beside us (UML), so a
        # descriptor read whole could pair new flags with the old address.
        if not packed_desc_avail(self._flags(mem, self.last_avail_idx), self.avail_wrap):
            return None
        first = self._desc(mem, self.last_avail_idx)
        if not packed_desc_avail(first[3], self.avail_wrap):
            return None  # the driver took it back meanwhile (it may not; nothing to do)
        if self.inuse >= q.size:
            # QEMU virtqueue_packed_pop: "Virtqueue size exceeded".
            raise VirtqueueError(f"{self.where}: more buffers in use than the queue size")
        elem, ndescs, reads = walk_packed_chain(
            mem, q.desc_addr, q.size, self.last_avail_idx, first, self.where
        )
        if self.inuse + ndescs > q.size:
            # The chain runs over descriptors the device still holds.
            raise VirtqueueError(f"{self.where}: chain overlaps buffers still in use")
        elem.ndescs = ndescs
        self.last_avail_idx += ndescs
        if self.last_avail_idx >= q.size:
            self.last_avail_idx -= q.size
            self.avail_wrap ^= 1
        self.inuse += ndescs
        self._popped.append(ndescs)
        q.pops += 1
        q.walks += 1
        q.desc_reads += reads
        return elem

    def unpop(self, count: int) -> None:
        """Give the last ``count`` popped chains back (QEMU virtqueue_packed_rewind)."""
        for _ in range(count):
            if not self._popped:
                return
            n = self._popped.pop()
            self.last_avail_idx -= n
            if self.last_avail_idx < 0:
                self.last_avail_idx += self.q.size
                self.avail_wrap ^= 1
            self.inuse -= n
            self.q.pops -= 1

    # -- used side ------------------------------------------------------------------------------
    def push(self, mem: Memory, elem: Element, written: int, publish: bool) -> None:
        self._pending.append((elem.head, written, elem.ndescs))
        self.q.pushes += 1
        if publish:
            self.publish_used(mem)

    def publish_used(self, mem: Memory) -> None:
        """Write the pushed buffers' used descriptors. Length and id of each go first, then the
        flags of all but the first, then the first's flags, so that the driver, which reads in
        ring order, sees the whole batch at once (QEMU virtqueue_packed_flush)."""
        if not self._pending:
            return
        q = self.q
        pending, self._pending = self._pending, []
        pos, wrap = self.used_idx, self.used_wrap
        slots: list[tuple[int, int, int]] = []  # (position, wrap, flags)
        try:
            for buf_id, written, ndescs in pending:
                base = q.desc_addr + PACKED_DESC_SIZE * pos
                mem.write(base + PACKED_DESC_LEN, PACKED_USED.pack(written & 0xFFFFFFFF, buf_id))
                flags = (DESC_F_AVAIL | DESC_F_USED) if wrap else 0
                if written:
                    # §2.8.4: the length of a used descriptor counts only with WRITE set
                    # (QEMU 7.2 leaves WRITE clear; Linux reads the length either way).
                    flags |= VRING_DESC_F_WRITE
                slots.append((pos, wrap, flags))
                self.inuse -= ndescs
                pos += ndescs
                if pos >= q.size:
                    pos -= q.size
                    wrap ^= 1
                    self.signalled_used_valid = False  # as QEMU after a wrap
            for p, _w, flags in slots[1:] + slots[:1]:
                store16(mem, q.desc_addr + PACKED_DESC_SIZE * p + PACKED_DESC_FLAGS, flags)
        except GuestMemoryError as e:
            raise VirtqueueError(f"{self.where}: used descriptor: {e}") from None
        finally:
            self.used_idx, self.used_wrap = pos, wrap
            self.inuse = max(self.inuse, 0)

    def should_notify(self, mem: Memory) -> bool:
        """Whether the driver's event suppression structure asks for a used-buffer
        notification now (§2.8.10; QEMU virtio_packed_should_notify)."""
        self.publish_used(mem)
        a = self.q.avail_addr
        try:
            # Two 16-bit loads, the flags first (QEMU vring_packed_event_read: flags, a
            # barrier, then off_wrap; memory.py says why not a 4-byte copy of a live field).
            flags = load16(mem, a + PACKED_EVENT_FLAGS)
            off_wrap = load16(mem, a + PACKED_EVENT_OFF_WRAP)
        except GuestMemoryError as e:
            raise VirtqueueError(f"{self.where}: driver event suppression: {e}") from None
        old, new = self.signalled_used, self.used_idx
        valid = self.signalled_used_valid
        self.signalled_used, self.signalled_used_valid = new, True
        # §2.8.14: desc_event_flags is the low 2 bits, the other 14 are reserved (QEMU 7.2
        # compares the whole word, so a driver setting reserved bits gets DESC treatment there).
        flags &= PACKED_EVENT_FLAGS_MASK
        if flags == VRING_PACKED_EVENT_FLAG_DISABLE:
            return False
        if flags == VRING_PACKED_EVENT_FLAG_ENABLE:
            return True
        # DESC, and — as QEMU — the reserved value 3: an event offset. Any off_wrap is a
        # position modulo 2^16: it can only make the answer yes or no.
        return not valid or packed_need_event(off_wrap, self.used_wrap, self.q.size, new, old)

    def set_no_notify(self, mem: Memory, on: bool) -> None:
        """The device event suppression structure (§2.8.14; QEMU
        virtio_queue_packed_set_notification): DISABLE, or with EVENT_IDX an event at the next
        available position (off_wrap first, then flags), or ENABLE."""
        q = self.q
        if on:
            state = (q.used_addr, VRING_PACKED_EVENT_FLAG_DISABLE, 0)
        elif q.event_idx:
            off_wrap = self.last_avail_idx | self.avail_wrap << VRING_PACKED_EVENT_F_WRAP_CTR
            state = (q.used_addr, VRING_PACKED_EVENT_FLAG_DESC, off_wrap)
        else:
            state = (q.used_addr, VRING_PACKED_EVENT_FLAG_ENABLE, 0)
        if self._notify_state == state:
            return
        try:  # one 16-bit store each, off_wrap first
            if state[1] == VRING_PACKED_EVENT_FLAG_DESC:
                store16(mem, q.used_addr + PACKED_EVENT_OFF_WRAP, state[2])
            store16(mem, q.used_addr + PACKED_EVENT_FLAGS, state[1])
        except GuestMemoryError as e:
            raise VirtqueueError(f"{self.where}: device event suppression: {e}") from None
        self._notify_state = state
