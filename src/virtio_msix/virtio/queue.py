"""Split virtqueues (virtio 1.2 §2.7), read and written in guest memory.

The transport programs ``size``, the three ring addresses, ``enabled`` and ``vector``; the
device pops available descriptor chains and pushes used elements. A guest may put anything in
a ring: every index, length, address and chain shape is checked, and every problem becomes a
``VirtqueueError`` (the device then sets DEVICE_NEEDS_RESET, §2.1.2) — never another exception,
never an endless walk.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .memory import GuestMemoryError, Memory

NO_VECTOR = 0xFFFF

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16  # struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next
USED_ELEM_SIZE = 8  # struct virtq_used_elem: le32 id, le32 len
_DESC = struct.Struct("<QIHH")


class VirtqueueError(Exception):
    """The driver broke a ring rule; the device must enter DEVICE_NEEDS_RESET."""


@dataclass
class Element:
    """One available descriptor chain: where the device may read and where it may write."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)

    def read(self, mem: Memory) -> bytes:
        try:
            return b"".join(mem.read(a, n) for a, n in self.readable)
        except GuestMemoryError as e:
            raise VirtqueueError(str(e)) from None

    def write(self, mem: Memory, data: bytes) -> int:
        """Scatter ``data`` into the writable buffers; returns how many bytes fitted."""
        pos = 0
        try:
            for a, n in self.writable:
                if pos >= len(data):
                    break
                chunk = data[pos : pos + n]
                mem.write(a, chunk)
                pos += len(chunk)
        except GuestMemoryError as e:
            raise VirtqueueError(str(e)) from None
        return pos


class VirtQueue:
    def __init__(self, index: int, max_size: int) -> None:
        self.index = index
        self.max_size = max_size  # 0 = the queue does not exist
        self.event_idx = False  # VIRTIO_F_EVENT_IDX negotiated (set by the device)
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.enabled = False
        self.vector = NO_VECTOR
        self.last_avail_idx = 0
        self.used_idx = 0
        self.signalled_used = 0
        self.signalled_used_valid = False
        self.pops = 0
        self.pushes = 0

    # -- raw ring access -------------------------------------------------------------------------
    def _u16(self, mem: Memory, addr: int) -> int:
        try:
            return int.from_bytes(mem.read(addr, 2), "little")
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: {e}") from None

    def _w16(self, mem: Memory, addr: int, value: int) -> None:
        try:
            mem.write(addr, (value & 0xFFFF).to_bytes(2, "little"))
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: {e}") from None

    def avail_idx(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr + 2)

    def avail_flags(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr)

    def used_event(self, mem: Memory) -> int:
        return self._u16(mem, self.avail_addr + 4 + 2 * self.size)

    def ready(self) -> bool:
        return self.enabled and self.size > 0 and self.desc_addr != 0

    def has_available(self, mem: Memory) -> bool:
        if not self.ready():
            return False
        return self.avail_idx(mem) != self.last_avail_idx

    # -- pop / push --------------------------------------------------------------------------------
    def pop(self, mem: Memory) -> Element | None:
        """The next available chain, or None when the driver offered nothing new."""
        if not self.ready():
            return None
        avail = self.avail_idx(mem)
        pending = (avail - self.last_avail_idx) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.size:
            raise VirtqueueError(
                f"queue {self.index}: avail idx {avail} is {pending} ahead of "
                f"{self.last_avail_idx}, more than the queue size {self.size}"
            )
        slot = self.last_avail_idx % self.size
        head = self._u16(mem, self.avail_addr + 4 + 2 * slot)
        elem = self._walk(mem, head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        self.pops += 1
        if self.event_idx:
            # avail_event: ask for a kick as soon as anything new is added (§2.7.10).
            self._w16(mem, self.used_addr + 4 + USED_ELEM_SIZE * self.size, self.last_avail_idx)
        return elem

    def _read_desc(self, mem: Memory, table: int, i: int) -> tuple[int, int, int, int]:
        try:
            raw = mem.read(table + DESC_SIZE * i, DESC_SIZE)
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: descriptor table: {e}") from None
        return _DESC.unpack(raw)

    def _walk(self, mem: Memory, head: int) -> Element:
        if head >= self.size:
            raise VirtqueueError(f"queue {self.index}: head {head} ≥ queue size {self.size}")
        elem = Element(head)
        table, count, i = self.desc_addr, self.size, head
        indirect = False
        seen = 0
        while True:
            seen += 1
            if seen > count:
                raise VirtqueueError(f"queue {self.index}: descriptor chain loops or is too long")
            addr, length, flags, nxt = self._read_desc(mem, table, i)
            if flags & VRING_DESC_F_INDIRECT:
                # §2.7.5.3.1: no indirect table inside an indirect table, no NEXT with INDIRECT.
                if indirect:
                    raise VirtqueueError(
                        f"queue {self.index}: indirect table inside an indirect table"
                    )
                if flags & VRING_DESC_F_NEXT:
                    raise VirtqueueError(f"queue {self.index}: INDIRECT together with NEXT")
                if length == 0 or length % DESC_SIZE:
                    raise VirtqueueError(f"queue {self.index}: indirect table length {length}")
                if addr + length > mem.size:
                    raise VirtqueueError(f"queue {self.index}: indirect table outside memory")
                table, count, i, indirect, seen = addr, length // DESC_SIZE, 0, True, 0
                continue
            if addr + length > mem.size or addr < 0:
                raise VirtqueueError(
                    f"queue {self.index}: buffer [{addr:#x}, +{length:#x}) outside guest memory"
                )
            if flags & VRING_DESC_F_WRITE:
                elem.writable.append((addr, length))
            else:
                if elem.writable:
                    # §2.7.4.2: device-readable descriptors come before device-writable ones.
                    raise VirtqueueError(
                        f"queue {self.index}: readable descriptor after a writable one"
                    )
                elem.readable.append((addr, length))
            if not flags & VRING_DESC_F_NEXT:
                return elem
            if nxt >= count:
                raise VirtqueueError(f"queue {self.index}: next {nxt} ≥ table size {count}")
            i = nxt

    def push(self, mem: Memory, elem: Element, written: int) -> None:
        """Return a chain to the driver with ``written`` bytes filled (§2.7.8)."""
        slot = self.used_idx % self.size
        try:
            mem.write(
                self.used_addr + 4 + USED_ELEM_SIZE * slot,
                struct.pack("<II", elem.head, written),
            )
        except GuestMemoryError as e:
            raise VirtqueueError(f"queue {self.index}: used ring: {e}") from None
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._w16(mem, self.used_addr + 2, self.used_idx)
        self.pushes += 1

    def should_notify(self, mem: Memory) -> bool:
        """Whether the driver wants a used-buffer notification now (§2.7.7.2, §2.7.10)."""
        if not self.event_idx:
            return not self.avail_flags(mem) & VRING_AVAIL_F_NO_INTERRUPT
        was_valid = self.signalled_used_valid
        old, new = self.signalled_used, self.used_idx
        self.signalled_used, self.signalled_used_valid = new, True
        event = self.used_event(mem)
        # vring_need_event: notify if used_event lies in (old, new].
        return not was_valid or ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
