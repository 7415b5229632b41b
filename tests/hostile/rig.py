"""A hostile driver's workbench: a virtio-net-pci device on a small guest memory, brought up
through its registers only (as a driver would), with rings the test lays out byte by byte.

Nothing here is a mock: the device, the transport, MSI-X and the memory are the real ones; the
memory is wrapped only to count what the device reads and writes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from virtio_msix.host.backends import LoopbackBackend
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.net import (
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_MRG_RXBUF,
)
from virtio_msix.virtio.regs import COMMON

VERSION_1 = 1 << 32
ACK, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET = 1, 2, 4, 8, 0x40
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
MSI_ADDR = 0xFEE0_0000
NOTIFY = 0x3000  # modern BAR offset of the notify structure (multiplier 4)
CONFIG_VECTOR, RX_VECTOR, TX_VECTOR, CTRL_VECTOR = 0, 1, 2, 3


class CountingMemory(GuestMemory):
    """GuestMemory that counts the device's accesses (DMA reads/writes and descriptor reads)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.reads = 0
        self.writes = 0
        self.desc_reads = 0
        # Called before each device read: a driver acting concurrently (another vCPU).
        self.on_read: Callable[[int, int], None] | None = None

    def read(self, addr: int, length: int) -> bytes:
        if self.on_read is not None:
            self.on_read(addr, length)
        self.reads += 1
        if length == 16:
            self.desc_reads += 1
        return super().read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.writes += 1
        super().write(addr, data)

    def poke(self, addr: int, data: bytes) -> None:
        """The driver's own store (not counted as device DMA)."""
        self.buf[addr : addr + len(data)] = data


class Sink:
    def __init__(self) -> None:
        self.msis: list[int] = []  # MSI-X entries (data - 0x40)
        self.intx = False

    def msi(self, address: int, data: int) -> None:
        self.msis.append(data - 0x40)

    def set_intx(self, level: bool) -> None:
        self.intx = level


class Ring:
    """One split ring the test controls: descriptor table, avail ring, used ring."""

    def __init__(self, mem: CountingMemory, index: int, size: int, base: int) -> None:
        self.mem, self.index, self.size = mem, index, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 0xFFF) & ~0xFFF
        self.avail_idx = 0

    @property
    def end(self) -> int:
        return self.used + 6 + 8 * self.size

    def set_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                 table: int | None = None) -> None:  # fmt: skip
        base = self.desc if table is None else table
        self.mem.poke(base + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def offer(self, *heads: int) -> None:
        for h in heads:
            self.mem.poke(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", h))
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.poke(self.avail + 2, struct.pack("<H", self.avail_idx))

    def used_idx(self) -> int:
        return int.from_bytes(self.mem.buf[self.used + 2 : self.used + 4], "little")

    def used_elem(self, n: int) -> tuple[int, int]:
        off = self.used + 4 + 8 * (n % self.size)
        return struct.unpack("<II", bytes(self.mem.buf[off : off + 8]))


RING_PACKED = 1 << 34
EVENT_IDX = 1 << 29
P_AVAIL, P_USED = 1 << 7, 1 << 15  # packed descriptor flags (§2.8.1)


class PackedRing:
    """One packed ring the test controls (§2.8): the descriptor ring, the driver event
    suppression structure (``avail``: the driver area) and the device's (``used``)."""

    def __init__(self, mem: CountingMemory, index: int, size: int, base: int) -> None:
        self.mem, self.index, self.size = mem, index, size
        self.desc = base
        self.avail = base + 16 * size  # driver area: off_wrap, flags
        self.used = self.avail + 0x100  # device area
        self.next = 0  # the driver's next position and wrap counter
        self.wrap = 1
        self.last_used = 0  # where the driver expects the next used descriptor
        self.used_wrap = 1
        self.ids: dict[int, int] = {}  # buffer id → descriptors

    @property
    def end(self) -> int:
        return self.used + 4

    def avail_flags(self, wrap: int | None = None) -> int:
        w = self.wrap if wrap is None else wrap
        return P_AVAIL if w else P_USED

    def put(self, pos: int, addr: int, length: int, buf_id: int, flags: int) -> None:
        self.mem.poke(self.desc + 16 * pos, struct.pack("<QIHH", addr, length, buf_id, flags))

    def add(self, segs: list[tuple[int, int, int]], buf_id: int = 0) -> None:
        """Make a chain of (addr, len, flags) available, its head's flags written last."""
        head, head_flags = self.next, 0
        for n, (addr, length, flags) in enumerate(segs):
            f = flags | self.avail_flags() | (F_NEXT if n + 1 < len(segs) else 0)
            if self.next == head and n == 0:
                head_flags = f
                self.put(self.next, addr, length, buf_id, 0)
            else:
                self.put(self.next, addr, length, buf_id, f)
            self.next += 1
            if self.next == self.size:
                self.next, self.wrap = 0, self.wrap ^ 1
        self.mem.poke(self.desc + 16 * head + 14, struct.pack("<H", head_flags))
        self.ids[buf_id] = len(segs)

    def take_used(self) -> tuple[int, int, int] | None:
        """The next used descriptor as the driver reads it: (id, len, flags), or None."""
        off = self.desc + 16 * self.last_used
        _a, length, buf_id, flags = struct.unpack("<QIHH", bytes(self.mem.buf[off : off + 16]))
        avail, used = bool(flags & P_AVAIL), bool(flags & P_USED)
        if not (avail == used == bool(self.used_wrap)):
            return None
        self.last_used += self.ids.pop(buf_id, 1)
        if self.last_used >= self.size:
            self.last_used -= self.size
            self.used_wrap ^= 1
        return buf_id, length, flags

    def driver_event(self, off_wrap: int, flags: int) -> None:
        self.mem.poke(self.avail, struct.pack("<HH", off_wrap, flags))

    def device_event(self) -> tuple[int, int]:
        return struct.unpack("<HH", bytes(self.mem.buf[self.used : self.used + 4]))


class Rig:
    """virtio-net-pci with MSI-X on, brought to DRIVER_OK with small rings at known places;
    ``packed``: the device built with packed=on and the driver taking RING_PACKED."""

    def __init__(
        self,
        mem_size: int = 1 << 20,
        mergeable: bool = True,
        qsize: int = 8,
        ctrl: bool = True,
        packed: bool = False,
        event_idx: bool = False,
        tx_burst: int | None = None,
    ) -> None:
        self.mem = CountingMemory(mem_size)
        self.sink = Sink()
        self.backend = LoopbackBackend()
        extra = {} if tx_burst is None else {"tx_burst": tx_burst}  # x-txburst
        self.dev = make_virtio_net_pci(memory=self.mem, sink=self.sink, backend=self.backend,
                                       packed=packed, **extra)  # fmt: skip
        self.net = self.dev.device
        self.qsize = qsize
        self.features = VERSION_1 | (1 << VIRTIO_NET_F_MRG_RXBUF if mergeable else 0)
        if ctrl:
            self.features |= 1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_CTRL_VLAN
        if packed:
            self.features |= RING_PACKED
        if event_idx:
            self.features |= EVENT_IDX
        kind = PackedRing if packed else Ring
        self.rings = [kind(self.mem, i, qsize, 0x1000 + 0x3000 * i) for i in range(3)]
        self.rx, self.tx, self.cvq = self.rings
        self.data = 0x10000  # buffers from here on
        self.bring_up()

    # -- registers ------------------------------------------------------------------------------
    def wr(self, name: str, value: int) -> None:
        r = COMMON[name]
        self.dev.bar_write(4, r.offset, r.size, value)

    def rd(self, name: str) -> int:
        r = COMMON[name]
        return self.dev.bar_read(4, r.offset, r.size)

    def bring_up(self) -> None:
        dev = self.dev
        dev.cfg_write(4, 2, 0x6)  # MEM + Bus Master
        msix = dev.msix
        assert msix is not None
        for entry in range(4):
            dev.bar_write(1, 16 * entry, 4, MSI_ADDR)
            dev.bar_write(1, 16 * entry + 4, 4, 0)
            dev.bar_write(1, 16 * entry + 8, 4, 0x40 + entry)
            dev.bar_write(1, 16 * entry + 12, 4, 0)
        dev.cfg_write(msix.cap + 2, 2, 0x8000)  # MSI-X enable
        self.wr("device_status", 0)
        self.wr("device_status", ACK | DRIVER)
        for sel in (0, 1):
            self.wr("driver_feature_select", sel)
            self.wr("driver_feature", self.features >> (32 * sel) & 0xFFFFFFFF)
        self.wr("device_status", ACK | DRIVER | FEATURES_OK)
        assert self.rd("device_status") & FEATURES_OK
        self.wr("msix_config", CONFIG_VECTOR)
        for ring, vector in zip(self.rings, (RX_VECTOR, TX_VECTOR, CTRL_VECTOR), strict=True):
            self.wr("queue_select", ring.index)
            self.wr("queue_size", ring.size)
            self.wr("queue_msix_vector", vector)
            for name, addr in (("desc", ring.desc), ("driver", ring.avail), ("device", ring.used)):
                self.wr(f"queue_{name}_lo", addr & 0xFFFFFFFF)
                self.wr(f"queue_{name}_hi", addr >> 32)
            self.wr("queue_enable", 1)
        self.wr("device_status", ACK | DRIVER | FEATURES_OK | DRIVER_OK)

    def kick(self, ring: Ring) -> None:
        self.dev.bar_write(4, NOTIFY + 4 * ring.index, 2, ring.index)

    def status(self) -> int:
        return self.rd("device_status")

    def buffer(self, size: int) -> int:
        """A fresh guest buffer address (16-byte aligned, never reused)."""
        addr = self.data
        self.data = (self.data + size + 15) & ~15
        return addr

    def inject(self, frame: bytes) -> None:
        self.backend.inject(frame)


def frame(n: int = 64, tag: int = 0) -> bytes:
    """An Ethernet frame of ``n`` bytes with recognisable contents."""
    mac = bytes.fromhex("525400123456")
    body = bytes((tag + i) & 0xFF for i in range(n - 14))
    return mac + mac + b"\x88\xb5" + body
