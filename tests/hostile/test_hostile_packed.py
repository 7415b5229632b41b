"""Packed virtqueues (virtio 1.2 §2.8) under a hostile driver: the packed walker and the device
entry points on rings the test writes byte by byte.

Oracles (from the raw bytes the test wrote, never from the device's code):
- every segment the walker returns is a descriptor the driver wrote, with the same direction,
  inside guest memory and not empty;
- every byte the device changes lies in a device-writable buffer some descriptor offered, in
  the len/id/flags fields of a ring descriptor, or in the device event suppression structure;
- the work of one walk or one kick is bounded by the queue size and QEMU's VIRTQUEUE_MAX_SIZE;
- a descriptor the driver never made available (wrong or missing AVAIL/USED bits) is no work;
- nothing but VirtqueueError leaves the walker, nothing at all leaves a device entry point.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from rig import (
    F_INDIRECT,
    F_NEXT,
    F_WRITE,
    NEEDS_RESET,
    P_AVAIL,
    P_USED,
    CountingMemory,
    Rig,
    frame,
)

from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.packed import walk_packed_chain
from virtio_msix.virtio.queue import VirtQueue, VirtqueueError

MAX_SEGMENTS = 1024  # QEMU 7.2 VIRTQUEUE_MAX_SIZE, written here independently of the code
HDR = 12


def _put(mem: CountingMemory, ring: int, i: int, d: tuple[int, int, int, int]) -> None:
    """(addr, len, id, flags) at position i."""
    mem.poke(ring + 16 * i, struct.pack("<QIHH", *d))


def _walk(mem, ring, num, head=0):
    first = struct.unpack("<QIHH", bytes(mem.buf[ring + 16 * head : ring + 16 * head + 16]))
    return walk_packed_chain(mem, ring, num, head, first, "test")


# -- the walker, deterministic --------------------------------------------------------------------
@pytest.mark.parametrize(
    "desc,words",
    [
        ((0x8000, 0, 0, 0), "zero-length"),
        ((0xFFFC, 8, 0, 0), "outside guest memory"),
        ((2**64 - 8, 16, 0, 0), "outside guest memory"),
        ((0x8000, 0, 0, F_INDIRECT), "indirect table length"),
        ((0x8000, 24, 0, F_INDIRECT), "indirect table length"),
        ((0xFFF0, 32, 0, F_INDIRECT), "indirect table outside memory"),
        ((0x8000, 16, 0, F_INDIRECT | F_NEXT), "INDIRECT together with NEXT"),
        ((0x0, 16 * (MAX_SEGMENTS + 1), 0, F_INDIRECT), "indirect table of 1025"),
    ],
)
def test_malformed_descriptors_are_walker_errors(desc, words):
    mem = CountingMemory(1 << 16)
    _put(mem, 0x1000, 0, desc)
    with pytest.raises(VirtqueueError, match=words):
        _walk(mem, 0x1000, 4)


def test_direct_chain_is_capped_at_the_queue_size_and_wraps_the_ring():
    mem = CountingMemory(1 << 16)
    for i in range(8):
        _put(mem, 0x1000, i, (0x8000 + i, 4, 7, F_NEXT))
    mem.desc_reads = 0
    with pytest.raises(VirtqueueError, match="longer than the queue size 8"):
        _walk(mem, 0x1000, 8, head=5)
    assert mem.desc_reads == 7  # the head was read by the caller: 8 positions in all
    # A chain of exactly the ring's size, wrapping from position 5 to 4, is a valid buffer.
    _put(mem, 0x1000, 4, (0x9000, 4, 42, F_WRITE))
    for i in range(8):
        if i != 4:
            _put(mem, 0x1000, i, (0x8000 + i, 4, 7, F_NEXT | (F_WRITE if i < 4 else 0)))
    elem, ndescs, _ = _walk(mem, 0x1000, 8, head=5)
    assert ndescs == 8 and elem.head == 42  # §2.8.6: the id of the last descriptor
    assert [a for a, _ in elem.readable] == [0x8005, 0x8006, 0x8007]
    assert [a for a, _ in elem.writable] == [0x8000, 0x8001, 0x8002, 0x8003, 0x9000]


def test_indirect_rules():
    mem = CountingMemory(1 << 16)
    table = 0x4000
    # §2.8.19: every entry belongs to the buffer, NEXT and ids in the table are ignored.
    _put(mem, table, 0, (0x8000, 10, 0xAAAA, F_NEXT))
    _put(mem, table, 1, (0x8100, 20, 0xBBBB, 0))
    _put(mem, table, 2, (0x8200, 30, 0xCCCC, F_WRITE | F_INDIRECT))
    _put(mem, 0x1000, 0, (table, 48, 5, F_INDIRECT | F_WRITE))
    elem, ndescs, reads = _walk(mem, 0x1000, 4)
    assert (ndescs, elem.head, reads) == (1, 5, 4)
    assert elem.readable == [(0x8000, 10), (0x8100, 20)] and elem.writable == [(0x8200, 30)]
    # Readable after writable inside the table.
    _put(mem, table, 1, (0x8100, 20, 0, F_WRITE))
    _put(mem, table, 2, (0x8200, 30, 0, 0))
    with pytest.raises(VirtqueueError, match="readable descriptor after a writable"):
        _walk(mem, 0x1000, 4)
    # INDIRECT on a later descriptor of a chain.
    _put(mem, 0x1000, 0, (0x8000, 4, 0, F_NEXT))
    _put(mem, 0x1000, 1, (table, 48, 0, F_INDIRECT))
    with pytest.raises(VirtqueueError, match="after direct ones"):
        _walk(mem, 0x1000, 4)


def test_indirect_table_spanning_memory_is_refused_before_any_entry_is_read():
    mem = CountingMemory(4 << 20)
    _put(mem, 0x1000, 0, (0, mem.size, 0, F_INDIRECT))
    mem.reads = 0
    with pytest.raises(VirtqueueError):
        _walk(mem, 0x1000, 8)
    assert mem.reads == 0


# -- the walker, fuzzed ----------------------------------------------------------------------------
MEM = 1 << 20
DATA = 0x10000
TABLES = (0x20000, 0x28000)


def descriptors() -> st.SearchStrategy[tuple[int, int, int, int]]:
    addr = st.one_of(
        st.integers(DATA, DATA + 0x10000),
        st.sampled_from([0, MEM - 4, MEM - 1, MEM, 2**64 - 16, *TABLES]),
        st.integers(0, 2**64 - 1),
    )
    length = st.one_of(st.sampled_from([0, 1, 16, 48, 1514, 2**32 - 1]), st.integers(0, 0x3000))
    flags = st.one_of(
        st.sampled_from([0, F_NEXT, F_WRITE, F_NEXT | F_WRITE, F_INDIRECT]),
        st.integers(0, 0xFFFF),
    )
    to_table = st.tuples(
        st.sampled_from(TABLES), st.sampled_from([16, 48, 160, 640]), st.integers(0, 0xFFFF),
        st.sampled_from([F_INDIRECT, F_INDIRECT | F_WRITE]),
    )  # fmt: skip
    good = st.tuples(
        st.integers(DATA, DATA + 0xF000), st.integers(1, 0x800), st.integers(0, 0xFFFF),
        st.sampled_from([0, F_WRITE, F_NEXT, F_NEXT | F_WRITE]),
    )  # fmt: skip
    plain = st.tuples(addr, length, st.integers(0, 0xFFFF), flags)
    return st.one_of(good, good, good, plain, to_table)


def writable_oracle(mem: CountingMemory, ring: int, num: int) -> set[tuple[int, int]]:
    """Every (addr, len) some descriptor of the ring or of a table it names marks writable."""
    out = set()
    for i in range(num):
        addr, length, _id, flags = struct.unpack_from("<QIHH", mem.buf, ring + 16 * i)
        if flags & F_INDIRECT:
            if length % 16 == 0 and 0 < length and addr + length <= mem.size:
                for j in range(min(length // 16, MAX_SEGMENTS)):
                    a, n, _i, f = struct.unpack_from("<QIHH", mem.buf, addr + 16 * j)
                    if f & F_WRITE:
                        out.add((a, n))
        elif flags & F_WRITE:
            out.add((addr, length))
    return out


@st.composite
def walker_case(draw):
    num = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))  # packed sizes need not be powers of 2
    mem = CountingMemory(MEM)
    for i, d in enumerate(draw(st.lists(descriptors(), min_size=num, max_size=num))):
        _put(mem, 0x1000, i, d)
    for t in TABLES:
        for i, d in enumerate(draw(st.lists(descriptors(), max_size=40))):
            _put(mem, t, i, d)
    return mem, num, draw(st.integers(0, num - 1))


@given(walker_case())
def test_fuzz_walker_returns_only_offered_segments_with_bounded_work(case):
    mem, num, head = case
    mem.reads = mem.desc_reads = 0
    try:
        elem, ndescs, reads = _walk(mem, 0x1000, num, head)
    except VirtqueueError:
        elem = None
    assert mem.reads <= num + 1  # ring descriptors, and at most one table read whole
    event("error" if elem is None else "walked")
    if elem is None:
        return
    assert 1 <= ndescs <= num
    offered = writable_oracle(mem, 0x1000, num)
    segs = elem.segments
    assert 0 < len(segs) <= max(num, MAX_SEGMENTS)
    for addr, length, writable in segs:
        assert length > 0 and 0 <= addr and addr + length <= mem.size
        if writable:
            assert (addr, length) in offered
    flags = [w for _, _, w in segs]
    assert flags == sorted(flags)  # device-readable first


# -- the device --------------------------------------------------------------------------------
def test_traffic_wraps_the_ring_many_times_with_the_right_used_flags():
    rig = Rig(packed=True, qsize=5, ctrl=False)  # a size no split ring may have
    assert rig.net.queues[1].packed and rig.net.queues[1].size == 5
    buf = rig.buffer(HDR + 60)
    for n in range(23):
        rig.rx.add([(rig.buffer(2048), 2048, F_WRITE)], buf_id=n % 5)
        rig.kick(rig.rx)
        rig.mem.poke(buf, bytes(HDR) + frame(60, tag=n))
        # A two-descriptor TX chain: the used descriptor goes where the chain started, and the
        # device then skips both positions.
        rig.tx.add([(buf, HDR, 0), (buf + HDR, 60, 0)], buf_id=n % 5)
        rig.kick(rig.tx)
        got = rig.tx.take_used()
        assert got is not None and got[0] == n % 5, n
        rx = rig.rx.take_used()
        assert rx is not None and rx[:2] == (n % 5, HDR + 60), n
        assert rig.rx.take_used() is None
    assert not rig.status() & NEEDS_RESET
    assert rig.net.stats["tx_frames"] == rig.net.stats["rx_frames"] == 23


def test_a_driver_that_never_sets_avail_is_no_work():
    rig = Rig(packed=True, qsize=8)
    for i in range(8):  # complete descriptors, but AVAIL never set (or set for the other wrap)
        rig.tx.put(i, rig.buffer(64), 64, i, F_NEXT if i % 2 else P_USED)
    for _ in range(50):
        rig.mem.reads = 0
        rig.kick(rig.tx)
        assert rig.mem.reads <= 1
    assert not rig.status() & NEEDS_RESET and rig.net.queues[1].pops == 0


def test_wrap_counter_confusion_is_not_availability():
    rig = Rig(packed=True, qsize=4, ctrl=False)
    buf = rig.buffer(HDR + 60)
    rig.mem.poke(buf, bytes(HDR) + frame(60))
    # AVAIL = USED = 1 is "used on wrap 1", AVAIL = 0 USED = 1 "available on wrap 0": neither
    # is available while the device's counter is 1 (§2.8.1).
    for flags in (P_AVAIL | P_USED, P_USED, 0):
        rig.tx.put(0, buf, HDR + 60, 0, flags)
        rig.kick(rig.tx)
        assert rig.net.queues[1].pops == 0
    rig.tx.put(0, buf, HDR + 60, 0, P_AVAIL)
    rig.kick(rig.tx)
    assert rig.net.queues[1].pops == 1 and rig.net.stats["tx_frames"] == 1
    # The same descriptor left as it is after the device used it: not available again.
    rig.kick(rig.tx)
    assert rig.net.queues[1].pops == 1


def test_more_buffers_in_use_than_the_ring_holds_is_needs_reset():
    mem = GuestMemory(1 << 16)
    q = VirtQueue(0, 4)
    q.set_packed(True)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = 0x1000, 0x2000, 0x2100, True
    for wrap in (1, 0):
        for i in range(4):
            mem.write(0x1000 + 16 * i, struct.pack("<QIHH", 0x8000, 4, i,
                                                    P_AVAIL if wrap else P_USED))  # fmt: skip
        if wrap:
            for _ in range(4):
                assert q.pop(mem) is not None
            assert q.pop(mem) is None  # the old flags belong to the previous wrap
    # The driver re-offered positions the device still holds.
    with pytest.raises(VirtqueueError, match="in use"):
        q.pop(mem)


def test_descriptor_ring_outside_memory_is_needs_reset():
    rig = Rig(packed=True, qsize=8)
    rig.wr("queue_select", 1)
    rig.wr("queue_reset", 1)
    rig.wr("queue_size", 8)
    rig.wr("queue_desc_lo", rig.mem.size)
    rig.wr("queue_desc_hi", 0)
    rig.wr("queue_enable", 1)
    rig.kick(rig.tx)
    assert rig.status() & NEEDS_RESET


def test_unpopped_chains_come_back_with_their_wrap():
    """A frame that needs more mergeable buffers than offered gives them back (QEMU's rewind);
    across the end of the ring the wrap counter goes back too."""
    rig = Rig(packed=True, qsize=4, ctrl=False)
    for n in range(3):  # move the ring to position 3
        rig.rx.add([(rig.buffer(2048), 2048, F_WRITE)], buf_id=n)
        rig.inject(frame(60, tag=n))
        rig.kick(rig.rx)
        assert rig.rx.take_used() is not None
    rig.rx.add([(rig.buffer(64), 64, F_WRITE)], buf_id=0)  # position 3
    rig.rx.add([(rig.buffer(64), 64, F_WRITE)], buf_id=1)  # position 0, next wrap
    rig.inject(frame(1000))
    rig.kick(rig.rx)
    assert rig.rx.take_used() is None and rig.net.counters()["rx_held"] == 1
    for n in range(2, 4):
        rig.rx.add([(rig.buffer(512), 512, F_WRITE)], buf_id=n)
    rig.kick(rig.rx)
    used = [rig.rx.take_used() for _ in range(4)]
    assert [u[0] for u in used] == [0, 1, 2, 3]
    assert sum(u[1] for u in used) == HDR + 1000
    assert not rig.status() & NEEDS_RESET


@given(
    off_wrap=st.integers(0, 0xFFFF),
    flags=st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, 0xFFFF)),
    n=st.integers(1, 9),
)
def test_garbage_driver_event_suppression_gives_an_answer_not_an_error(off_wrap, flags, n):
    rig = Rig(packed=True, qsize=4, ctrl=False, event_idx=True)
    rig.tx.driver_event(off_wrap, flags)
    buf = rig.buffer(HDR + 60)
    rig.mem.poke(buf, bytes(HDR) + frame(60))
    for i in range(n):
        rig.tx.add([(buf, HDR + 60, 0)], buf_id=i % 4)
        rig.kick(rig.tx)
        assert rig.tx.take_used() is not None
    assert not rig.status() & NEEDS_RESET
    tx_msis = rig.sink.msis.count(2)
    # §2.8.14: the flags field is 2 bits wide, the rest reserved.
    if flags & 3 == 1:  # DISABLE
        assert tx_msis == 0
    elif flags & 3 == 0:  # ENABLE
        assert tx_msis == n
    else:  # DESC (and, as QEMU, the reserved 3): the first use, then at most one per use
        assert 1 <= tx_msis <= n
    event(f"flags {flags & 3}")


def test_driver_event_desc_asks_for_one_notification_at_its_position():
    rig = Rig(packed=True, qsize=8, ctrl=False, event_idx=True)
    buf = rig.buffer(HDR + 60)
    rig.mem.poke(buf, bytes(HDR) + frame(60))
    rig.tx.driver_event(3 | 1 << 15, 2)  # DESC: notify when position 3 of wrap 1 is used
    sent = []
    for i in range(8):
        rig.tx.add([(buf, HDR + 60, 0)], buf_id=i)
        rig.kick(rig.tx)
        sent.append(rig.sink.msis.count(2))
    # The first use is always signalled (nothing signalled before, as QEMU); then only the
    # use that moves past position 3, and the one that wraps the ring (QEMU forgets what it
    # signalled when its used index wraps).
    assert sent == [1, 1, 1, 2, 2, 2, 2, 3]


def test_device_event_suppression_is_written_for_the_irq_style_user():
    """set_no_notify on a packed queue writes the device area: DISABLE, then DESC with the
    next available position and wrap (EVENT_IDX) or ENABLE."""
    mem = GuestMemory(1 << 16)
    q = VirtQueue(0, 4)
    q.set_packed(True)
    q.desc_addr, q.avail_addr, q.used_addr, q.enabled = 0x1000, 0x2000, 0x2100, True
    q.set_no_notify(mem, True)
    assert struct.unpack("<HH", mem.read(0x2100, 4)) == (0, 1)
    q.set_no_notify(mem, False)
    assert struct.unpack("<HH", mem.read(0x2100, 4)) == (0, 0)
    q.event_idx = True
    for i in range(3):
        mem.write(0x1000 + 16 * i, struct.pack("<QIHH", 0x8000, 4, i, P_AVAIL))
        assert q.pop(mem) is not None
    q.set_no_notify(mem, False)
    assert struct.unpack("<HH", mem.read(0x2100, 4)) == (3 | 1 << 15, 2)


# -- the canary: the device writes nothing it was not given ----------------------------------------
@st.composite
def device_case(draw):
    size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    rig = Rig(mem_size=MEM, mergeable=draw(st.booleans()), qsize=size, packed=True,
              event_idx=draw(st.booleans()))  # fmt: skip
    for ring in rig.rings:
        if draw(st.booleans()):
            for i, (a, n, bid, f) in enumerate(
                draw(st.lists(descriptors(), min_size=size, max_size=size))
            ):
                if draw(st.booleans()):  # mostly available, on a wrap the device expects or not
                    f = (f & ~(P_AVAIL | P_USED)) | draw(st.sampled_from([P_AVAIL, P_USED, 0]))
                ring.put(i, a, n, bid, f)
            ring.driver_event(draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 3)))
            continue
        for n in range(draw(st.integers(0, size))):  # a well-formed ring
            addr = DATA + 0x800 * (8 * ring.index + n)
            if ring.index == 0:
                ring.add([(addr, 0x800, F_WRITE)], buf_id=n)
            elif ring.index == 1:
                ring.add([(addr, HDR + 60, 0)], buf_id=n)
            else:
                ring.add([(addr, 3, 0), (addr + 16, 1, F_WRITE)], buf_id=n)
            if ring.next == 0 and n:
                break
    for t in TABLES:
        for i, d in enumerate(draw(st.lists(descriptors(), max_size=40))):
            _put(rig.mem, t, i, d)
    for n in draw(st.lists(st.sampled_from([14, 60, 1514, 70000]), max_size=3)):
        rig.inject(frame(n))
    return rig, draw(st.permutations(["rx", "tx", "cvq", "poll"]))


@given(device_case())
def test_fuzz_queue_notify_writes_only_offered_buffers_with_bounded_work(case):
    rig, order = case
    size = rig.qsize
    before = bytes(rig.mem.buf)
    allowed = []
    for r in rig.rings:
        for i in range(size):  # a used descriptor's len, id and flags
            allowed.append((r.desc + 16 * i + 8, 8))
        allowed.append((r.used, 4))  # the device event suppression structure
    for r in rig.rings:
        allowed += writable_oracle(rig.mem, r.desc, size)
    bound = (4 * size + 2) * 2 * (size + MAX_SEGMENTS + 4)
    for what in order:
        rig.mem.reads = 0
        if what == "poll":
            rig.dev.poll()
        else:
            rig.kick(getattr(rig, what))
        assert rig.mem.reads <= bound, what
    after = bytes(rig.mem.buf)
    mask = bytearray(len(before))
    for addr, length in allowed:
        lo, hi = max(addr, 0), min(addr + length, len(mask))
        if lo < hi:
            mask[lo:hi] = b"\x01" * (hi - lo)
    for page in range(0, len(before), 4096):
        a, b = before[page : page + 4096], after[page : page + 4096]
        if a != b:
            for i in range(len(a)):
                if a[i] != b[i]:
                    assert mask[page + i], f"device wrote {page + i:#x}, not offered"
    h = rig.dev.health()
    event("needs reset" if h["needs_reset"] else "no error")
    event(f"tx {min(h['counters']['tx_frames'], 1)} rx {min(h['counters']['rx_frames'], 1)}")


def test_vhost_user_keeps_virt_pcis_own_rings_split():
    """The UML transport's vrings (virtio_pcidev's command and irq queues) are split: RING_PACKED
    is not offered there, and a peer that acks it anyway is refused, so GET/SET_VRING_BASE never
    need the packed encoding (vhost-user: bit 15 the wrap counter)."""
    import socket

    from virtio_msix.uml.vhost_user import VhostUserBackend, VhostUserError

    a, b = socket.socketpair()
    try:
        vu = VhostUserBackend(a, features=1 << 32, num_queues=2)
        assert not vu.features >> 34 & 1
        with pytest.raises(VhostUserError, match="did not offer"):
            vu._m_set_features(struct.pack("<Q", 1 << 32 | 1 << 34), [])
    finally:
        a.close()
        b.close()
