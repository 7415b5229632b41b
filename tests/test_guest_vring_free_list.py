"""The split-ring driver model takes and returns descriptors as Linux 6.1's virtio_ring.c does:
a free list threaded through desc_extra[].next (i → i + 1, the last → 0), each descriptor written
with its free-list successor in ``next`` (the chain's last one too, NEXT cleared:
virtqueue_add_desc_split), a used chain given back at the front of the list (detach_buf_split:
the descriptor freed last is used first), and unused buffers taken back lowest head first with
the avail index stepped back (virtqueue_detach_unused_buf_split). The device sees these heads
and next fields, so they are Linux's, not an equivalent order."""

from __future__ import annotations

import struct

from virtio_msix.abi.ring import DESC, USED_ELEM, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT
from virtio_msix.abi.ring import VRING_DESC_F_WRITE as W
from virtio_msix.guest.errnos import EIO, ENOSPC
from virtio_msix.guest.kernel import Kernel
from virtio_msix.guest.vring import PackedVringVirtqueue, VringVirtqueue
from virtio_msix.pci.bus import PciBus
from virtio_msix.virtio.memory import GuestMemory

NUM = 8


def _vq(indirect: bool = False) -> VringVirtqueue:
    k = Kernel(PciBus(), GuestMemory(1 << 20))
    return VringVirtqueue(k, 0, NUM, "q", None, lambda vq: True, event_idx=False,
                          indirect=indirect)  # fmt: skip


def _desc(vq: VringVirtqueue, i: int) -> tuple[int, int, int, int]:
    return DESC.unpack(vq.k.memory.read(vq.desc + DESC.size * i, DESC.size))


def _avail(vq: VringVirtqueue) -> tuple[int, list[int]]:
    mem = vq.k.memory
    idx = struct.unpack("<H", mem.read(vq.avail + 2, 2))[0]
    return idx, [struct.unpack("<H", mem.read(vq.avail + 4 + 2 * (s % NUM), 2))[0]
                 for s in range(idx)]  # fmt: skip


def _use(vq: VringVirtqueue, *heads: int) -> None:
    """The device: ``heads`` used, in this order."""
    mem = vq.k.memory
    idx = struct.unpack("<H", mem.read(vq.used + 2, 2))[0]
    for h in heads:
        mem.write(vq.used + 4 + USED_ELEM.size * (idx % NUM), USED_ELEM.pack(h, 0))
        idx += 1
    mem.write(vq.used + 2, struct.pack("<H", idx))


def test_each_descriptor_carries_its_free_list_successor():
    vq = _vq()
    assert vq.add_sgs([(0x1000, 64)], [], "a") == 0  # head 0
    assert _desc(vq, 0) == (0x1000, 64, 0, 1)  # not NEXT, yet next = 1
    assert vq.add_sgs([(0x2000, 10)], [(0x3000, 20), (0x4000, 30)], "b") == 0  # 1, 2, 3
    assert [_desc(vq, i) for i in (1, 2, 3)] == [
        (0x2000, 10, VRING_DESC_F_NEXT, 2),
        (0x3000, 20, VRING_DESC_F_NEXT | W, 3),
        (0x4000, 30, W, 4),  # the last: NEXT cleared, next left as the free list had it
    ]
    assert vq.num_free == NUM - 4 and vq.free_head == 4
    for n in range(4):
        assert vq.add_sgs([], [(0x5000 + 0x100 * n, 8)], n) == 0
    assert _desc(vq, NUM - 1)[3] == 0  # the last entry's successor is 0 (kcalloc'd extra)
    assert not vq.free and vq.add_sgs([(0x9000, 1)], [], "x") < 0  # -ENOSPC


def test_used_chains_go_back_to_the_front_of_the_free_list():
    vq = _vq()
    for n in range(3):
        vq.add_sgs([(0x1000 * (n + 1), 64)], [], n)  # heads 0, 1, 2
    vq.add_sgs([(0x8000, 8), (0x8100, 8)], [], "pair")  # 3 → 4
    _use(vq, 1, 3, 0)
    assert [vq.get_buf()[0] for _ in range(3)] == [1, "pair", 0]
    # Freed 1, then 3–4, then 0: the list is now 0, 3, 4, 1, 5, 6, 7.
    heads = []
    for n in range(6):
        vq.add_sgs([(0xA000 + 0x100 * n, 8)], [], n)
        heads.append(_avail(vq)[1][-1])
    assert heads == [0, 3, 4, 1, 5, 6]
    assert _desc(vq, 0)[3] == 3 and _desc(vq, 4)[3] == 1  # each one's successor then


def test_an_indirect_buffer_takes_one_ring_descriptor_and_its_successor():
    vq = _vq(indirect=True)
    vq.add_sgs([(0x1000, 8)], [], "one")  # direct: head 0
    vq.add_sgs([(0x2000, 8)], [(0x3000, 8)], "two")  # indirect: head 1
    table, length, flags, nxt = _desc(vq, 1)
    assert flags == VRING_DESC_F_INDIRECT and length == 2 * DESC.size and nxt == 2
    assert vq.free_head == 2 and vq.num_free == NUM - 2
    _use(vq, 1)
    assert vq.get_buf()[0] == "two" and vq.free_head == 1 and vq.num_free == NUM - 1


def test_unused_buffers_come_back_lowest_head_first_and_the_avail_index_with_them():
    vq = _vq()
    for n in range(4):
        vq.add_sgs([(0x1000 * (n + 1), 64)], [], f"b{n}")  # heads 0..3
    _use(vq, 0)
    vq.get_buf()  # 0 back at the front
    vq.add_sgs([(0x9000, 8)], [], "again")  # takes head 0 again, posted last
    assert _avail(vq) == (5, [0, 1, 2, 3, 0])
    got = [vq.detach_unused_buf() for _ in range(5)]
    assert got == ["again", "b1", "b2", "b3", None]  # by head, not by when posted
    assert _avail(vq)[0] == 1 and vq.num_free == NUM  # avail idx stepped back per buffer


def test_packed_unused_buffers_come_back_lowest_id_first():
    k = Kernel(PciBus(), GuestMemory(1 << 20))
    vq = PackedVringVirtqueue(k, 0, NUM, "q", None, lambda vq: True, event_idx=False)
    for n in range(3):
        vq.add_sgs([(0x1000 * (n + 1), 64)], [], f"b{n}")  # ids 0, 1, 2
    state = vq.state.pop(2)
    vq.state = {2: state, **vq.state}  # the dict's first entry is not the lowest id
    assert [vq.detach_unused_buf() for _ in range(4)] == ["b0", "b1", "b2", None]


def test_a_full_ring_kicks_when_the_buffer_had_outgoing_parts():
    """virtqueue_add_split's -ENOSPC: "for historical reasons, we force a notify here if there
    are outgoing parts to the buffer" — a receive-only buffer gets no such notify."""
    kicks = []
    k = Kernel(PciBus(), GuestMemory(1 << 20))
    vq = VringVirtqueue(k, 0, NUM, "q", None, lambda q: kicks.append(q) or True,
                        event_idx=False)  # fmt: skip
    for n in range(NUM):
        assert vq.add_sgs([(0x1000 + 0x100 * n, 8)], [], n) == 0
    idx = _avail(vq)[0]
    assert vq.add_sgs([], [(0x9000, 8)], "rx") == -ENOSPC and kicks == []
    assert vq.add_sgs([(0x9000, 8)], [], "tx") == -ENOSPC and kicks == [vq]
    assert _avail(vq)[0] == idx and vq.num_free == 0  # nothing added


def test_a_broken_ring_takes_and_gives_nothing():
    vq = _vq()
    vq.add_sgs([(0x1000, 8)], [], "a")
    _use(vq, 5)  # a head never given: BAD_RING ("id 5 is not a head")
    assert vq.get_buf() is None and vq.broken
    _use(vq, 0)  # a good one now: a broken ring stays broken
    assert vq.get_buf() is None
    before = vq.k.memory.read(vq.base, vq.num * DESC.size)
    assert vq.add_sgs([(0x2000, 8)], [], "b") == -EIO
    assert vq.k.memory.read(vq.base, vq.num * DESC.size) == before and _avail(vq)[0] == 1
