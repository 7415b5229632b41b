"""Split virtqueue processing: well-formed chains and hostile ones (virtio 1.2 §2.7)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.queue import (
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VirtQueue,
    VirtqueueError,
)

DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000


def ring(size=8, mem_size=1 << 16):
    mem = GuestMemory(mem_size)
    q = VirtQueue(0, size)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = DESC, AVAIL, USED, True
    return mem, q


def desc(mem, i, addr, length, flags=0, nxt=0, table=DESC):
    mem.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


def offer(mem, q, *heads):
    idx = mem.read_u16(AVAIL + 2)
    for h in heads:
        mem.write_u16(AVAIL + 4 + 2 * (idx % q.size), h)
        idx += 1
    mem.write_u16(AVAIL + 2, idx)


def test_pop_gathers_readable_then_writable_and_push_publishes():
    mem, q = ring()
    desc(mem, 0, 0x5000, 10, VRING_DESC_F_NEXT, 3)
    desc(mem, 3, 0x6000, 20, VRING_DESC_F_WRITE)
    offer(mem, q, 0)
    e = q.pop(mem)
    assert e.readable == [(0x5000, 10)] and e.writable == [(0x6000, 20)]
    assert q.pop(mem) is None
    q.push(mem, e, 7)
    assert mem.read_u16(USED + 2) == 1
    assert struct.unpack("<II", mem.read(USED + 4, 8)) == (0, 7)


def test_indirect_table():
    mem, q = ring()
    desc(mem, 0, 0x8000, 32, VRING_DESC_F_INDIRECT)
    desc(mem, 0, 0x5000, 4, VRING_DESC_F_NEXT, 1, table=0x8000)
    desc(mem, 1, 0x6000, 4, VRING_DESC_F_WRITE, table=0x8000)
    offer(mem, q, 0)
    e = q.pop(mem)
    assert e.readable == [(0x5000, 4)] and e.writable == [(0x6000, 4)]


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda m: desc(m, 0, 0x5000, 4, VRING_DESC_F_NEXT, 0), "loops"),
        (lambda m: desc(m, 0, 0xFFFF_0000, 4), "outside guest memory"),
        (lambda m: desc(m, 0, 0x5000, 4, VRING_DESC_F_NEXT, 9), "next 9"),
        (lambda m: (desc(m, 0, 0x8000, 16, VRING_DESC_F_INDIRECT),
                    desc(m, 0, 0x9000, 16, VRING_DESC_F_INDIRECT, table=0x8000)), "inside an indirect"),
        (lambda m: desc(m, 0, 0x8000, 10, VRING_DESC_F_INDIRECT), "indirect table length"),
        (lambda m: (desc(m, 0, 0x5000, 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                    desc(m, 1, 0x5000, 4)), "readable descriptor after"),
    ],
)  # fmt: skip
def test_malformed_chains_are_errors(setup, match):
    mem, q = ring()
    setup(mem)
    offer(mem, q, 0)
    with pytest.raises(VirtqueueError, match=match):
        q.pop(mem)


def test_avail_index_jump_and_bad_head():
    mem, q = ring()
    mem.write_u16(AVAIL + 2, 100)
    with pytest.raises(VirtqueueError, match="more than the queue size"):
        q.pop(mem)
    mem, q = ring()
    offer(mem, q, 8)
    with pytest.raises(VirtqueueError, match="head 8"):
        q.pop(mem)


def test_event_idx_notification_suppression():
    mem, q = ring()
    q.event_idx = True
    desc(mem, 0, 0x5000, 4)
    for n in range(3):
        offer(mem, q, 0)
        q.push(mem, q.pop(mem), 0)
        mem.write_u16(AVAIL + 4 + 2 * q.size, 1)  # used_event: notify when idx passes 1
        results = q.should_notify(mem)
        assert results == (n in (0, 1))


def test_no_interrupt_flag_without_event_idx():
    mem, q = ring()
    assert q.should_notify(mem)
    mem.write_u16(AVAIL, 1)
    assert not q.should_notify(mem)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=0x400, max_size=0x400),
    st.integers(0, 0xFFFF),
    st.sampled_from([1, 2, 4, 8, 16]),
)
def test_random_ring_contents_only_raise_virtqueue_error(table, avail_idx, size):
    mem = GuestMemory(0x4000)
    mem.write(0, table * 16)
    q = VirtQueue(0, size)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = 0x100, 0x800, 0xA00, True
    mem.write_u16(0x802, avail_idx)
    for _ in range(size + 1):
        try:
            e = q.pop(mem)
        except VirtqueueError:
            break
        if e is None:
            break
        try:
            q.push(mem, e, random.randrange(0, 100))
        except VirtqueueError:
            break


class CountingMemory(GuestMemory):
    """Guest memory that counts the device's reads and writes of one address."""

    def __init__(self, size, watch):
        super().__init__(size)
        self.watch, self.reads, self.writes = watch, 0, 0

    def read(self, addr, length):
        self.reads += addr == self.watch
        return super().read(addr, length)

    def write(self, addr, data):
        self.writes += addr == self.watch
        super().write(addr, data)


def test_a_burst_reads_the_avail_index_once_and_publishes_the_used_index_once():
    mem = CountingMemory(1 << 16, AVAIL + 2)
    q = VirtQueue(0, 8)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = DESC, AVAIL, USED, True
    for i in range(4):
        desc(mem, i, 0x5000 + 0x100 * i, 16, VRING_DESC_F_WRITE)
    offer(mem, q, 0, 1, 2, 3)
    mem.reads = 0
    elems = [q.pop(mem) for _ in range(4)]
    assert mem.reads == 1  # QEMU's shadow avail index: read again only when used up
    assert q.pop(mem) is None and mem.reads == 2
    mem.watch, mem.writes = USED + 2, 0
    for e in elems:
        q.push(mem, e, 16, publish=False)
    assert mem.read_u16(USED + 2) == 0  # not visible to the driver yet
    q.publish_used(mem)
    assert mem.writes == 1 and mem.read_u16(USED + 2) == 4
    assert [struct.unpack("<II", mem.read(USED + 4 + 8 * i, 8)) for i in range(4)] == [
        (i, 16) for i in range(4)
    ]
    offer(mem, q, 0)  # a new chain: seen once the shadow is used up
    assert q.pop(mem).head == 0


def test_should_notify_publishes_pending_used_entries_first():
    mem, q = ring()
    desc(mem, 0, 0x5000, 16, VRING_DESC_F_WRITE)
    offer(mem, q, 0)
    q.push(mem, q.pop(mem), 16, publish=False)
    q.should_notify(mem)
    assert mem.read_u16(USED + 2) == 1


def test_irq_queue_kicks_are_suppressed_while_no_interrupt_waits():
    """virt-pci need not kick the irq queue when it gives a buffer back unless a message waits
    for one (VRING_USED_F_NO_NOTIFY in the used ring's flags)."""
    from virtio_msix.uml.pcidev import PcidevOp, VirtPciHost

    mem, irq = ring()
    host = VirtPciHost(mem, VirtQueue(0, 8), irq)
    desc(mem, 0, 0x5000, 20, VRING_DESC_F_WRITE)
    offer(mem, irq, 0)
    host.queue_irq(PcidevOp.MSI, 0xA0000, 65)
    assert host.signal_irq and mem.read_u16(USED + 2) == 1
    assert mem.read_u16(USED) == 1  # nothing waits: no kicks wanted
    host.queue_irq(PcidevOp.MSI, 0xA0000, 66)  # no buffer left: it waits
    assert len(host.pending_irqs) == 1
    assert mem.read_u16(USED) == 0  # now a kick is wanted when a buffer comes
    offer(mem, irq, 0)
    host.flush_irqs()
    assert not host.pending_irqs and mem.read_u16(USED + 2) == 2
    assert mem.read_u16(USED) == 1


class ReadLog(GuestMemory):
    def __init__(self, size):
        super().__init__(size)
        self.log = []

    def read(self, addr, length):
        self.log.append((addr, length))
        return super().read(addr, length)


def test_a_burst_reads_ring_and_table_whole_and_writes_used_elements_in_one_go():
    mem = ReadLog(1 << 16)
    q = VirtQueue(0, 8)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = DESC, AVAIL, USED, True
    for i in range(6):
        desc(mem, i, 0x5000 + 0x100 * i, 16, VRING_DESC_F_WRITE)
    offer(mem, q, 5, 4, 3, 2, 1, 0)
    mem.log.clear()
    elems = [q.pop(mem) for _ in range(6)]
    assert [e.head for e in elems] == [5, 4, 3, 2, 1, 0]
    assert [e.writable for e in elems] == [[(0x5000 + 0x100 * h, 16)] for h in (5, 4, 3, 2, 1, 0)]
    # avail idx, the avail ring, the descriptor table: three reads for six chains
    assert mem.log == [(AVAIL + 2, 2), (AVAIL + 4, 16), (DESC, 16 * 8)]
    for e in elems[:4]:
        q.push(mem, e, 1, publish=False)
    q.unpop(2)  # not given back: unpop applies to the unpushed two
    assert [q.pop(mem).head for _ in range(2)] == [1, 0]


def test_a_ring_whose_table_runs_past_memory_is_walked_as_before():
    """The copy covers only what lies inside memory: chains inside it are served, one outside
    fails as the walk in place would."""
    size = 0x4000
    mem = GuestMemory(size)
    q = VirtQueue(0, 8)
    table = size - 16 * 5  # five of eight entries inside memory
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = table, AVAIL, USED, True
    for i in range(5):
        desc(mem, i, 0x100 * (i + 1), 8, VRING_DESC_F_WRITE, table=table)
    offer(mem, q, 0, 1, 2, 3, 4, 7)
    assert [q.pop(mem).head for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(VirtqueueError):
        q.pop(mem)
