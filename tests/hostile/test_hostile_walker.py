"""Issue 8, defect 5 and the fuzzing the issue asks for: the one descriptor-chain walker, and
queue_notify on random rings, against oracles that do not use the device's code.

Oracles (computed from the raw bytes the test wrote, never from the walker):
- every segment the walker returns is a descriptor the driver wrote, with the same
  direction, inside guest memory and not empty;
- every byte the device changes lies in a used ring or in a buffer some descriptor marked
  device-writable (memory snapshots before and after);
- the work of one walk or one kick is bounded by the queue size and QEMU's
  VIRTQUEUE_MAX_SIZE (descriptor reads counted by an instrumented memory object);
- nothing but VirtqueueError leaves the walker, and nothing at all leaves a device entry point.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from rig import F_INDIRECT, F_NEXT, F_WRITE, NEEDS_RESET, CountingMemory, Rig, frame

from virtio_msix.virtio.queue import VirtqueueError, walk_chain

MAX_SEGMENTS = 1024  # QEMU 7.2 VIRTQUEUE_MAX_SIZE, written here independently of the code


def _put(mem: CountingMemory, table: int, i: int, d: tuple[int, int, int, int]) -> None:
    mem.poke(table + 16 * i, struct.pack("<QIHH", *d))


# -- deterministic cases --------------------------------------------------------------------------
def test_indirect_table_spanning_all_memory_is_walked_with_bounded_work():
    mem = CountingMemory(4 << 20)
    # Every entry of a table as large as memory: a 1-byte buffer chained to entry 1 (a loop
    # the old walker followed table-size times).
    mem.poke(0, struct.pack("<QIHH", 0x100, 1, F_NEXT, 1) * (mem.size // 16))
    table = 0x2000
    _put(mem, table, 0, (0, mem.size, F_INDIRECT, 0))
    mem.reads = mem.desc_reads = 0
    with pytest.raises(VirtqueueError, match="loops or is too long"):
        walk_chain(mem, table, 8, 0)
    assert mem.desc_reads <= 1 + MAX_SEGMENTS


def test_indirect_chain_of_1024_segments_is_accepted_and_1025_refused():
    mem = CountingMemory(1 << 20)
    for n, ok in ((MAX_SEGMENTS, True), (MAX_SEGMENTS + 1, False)):
        tbl = 0x10000
        for i in range(n):
            last = i == n - 1
            _put(mem, tbl, i, (0x80000 + i, 1, 0 if last else F_NEXT, i + 1))
        _put(mem, 0x1000, 0, (tbl, 16 * 4096, F_INDIRECT, 0))
        mem.desc_reads = 0
        if ok:
            elem, reads = walk_chain(mem, 0x1000, 4, 0)
            assert len(elem.readable) == MAX_SEGMENTS and reads == 1 + MAX_SEGMENTS
        else:
            with pytest.raises(VirtqueueError):
                walk_chain(mem, 0x1000, 4, 0)
        assert mem.desc_reads <= 1 + MAX_SEGMENTS


def test_direct_chain_is_capped_at_the_queue_size():
    mem = CountingMemory(1 << 16)
    for i in range(8):
        _put(mem, 0x1000, i, (0x8000, 4, F_NEXT, (i + 1) % 8))
    with pytest.raises(VirtqueueError, match="loops"):
        walk_chain(mem, 0x1000, 8, 3)
    assert mem.desc_reads == 8


@pytest.mark.parametrize(
    "desc,words",
    [
        ((0x8000, 0, 0, 0), "zero-length"),
        ((0xFFFC, 8, 0, 0), "outside guest memory"),
        ((2**64 - 8, 16, 0, 0), "outside guest memory"),
        ((0x8000, 0, F_INDIRECT, 0), "indirect table length"),
        ((0x8000, 24, F_INDIRECT, 0), "indirect table length"),
        ((0xFFF0, 32, F_INDIRECT, 0), "indirect table outside memory"),
        ((0x8000, 16, F_INDIRECT | F_NEXT, 1), "INDIRECT together with NEXT"),
    ],
)
def test_malformed_descriptors_are_walker_errors(desc, words):
    mem = CountingMemory(1 << 16)
    _put(mem, 0x1000, 0, desc)
    with pytest.raises(VirtqueueError, match=words):
        walk_chain(mem, 0x1000, 4, 0)


def test_one_kick_on_a_ring_pointing_at_a_huge_indirect_table_is_bounded():
    rig = Rig(mem_size=4 << 20)
    base = 0x100000
    rig.mem.poke(base, struct.pack("<QIHH", rig.buffer(64), 1, F_NEXT, 1) * ((3 << 20) // 16))
    rig.tx.set_desc(0, base, 3 << 20, F_INDIRECT)
    rig.tx.offer(0)
    rig.mem.reads = 0
    rig.kick(rig.tx)
    assert rig.status() & NEEDS_RESET
    assert rig.mem.reads < 2 * (rig.qsize + MAX_SEGMENTS)


# -- fuzzing ----------------------------------------------------------------------------------
MEM = 2 << 20
DATA = 0x10000  # buffers live in [DATA, DATA + 0x10000)
INDIRECT_TABLES = (0x20000, 0x28000)
PATTERN = 0x40000  # a region filled with one looping descriptor
PATTERN_LEN = MEM - PATTERN


def descriptors(size: int) -> st.SearchStrategy[tuple[int, int, int, int]]:
    addr = st.one_of(
        st.integers(DATA, DATA + 0x10000),
        st.sampled_from([0, MEM - 4, MEM - 1, MEM, 2**64 - 16, *INDIRECT_TABLES, PATTERN]),
        st.integers(0, 2**64 - 1),
    )
    length = st.one_of(
        st.sampled_from([0, 1, 4, 10, 12, 16, 64, 1514, 0x1000, 2**32 - 1, PATTERN_LEN]),
        st.integers(0, 0x3000),
    )
    flags = st.one_of(st.integers(0, 7), st.integers(0, 0xFFFF))
    nxt = st.integers(0, size + 2)
    plain = st.tuples(addr, length, flags, nxt)
    to_pattern = st.tuples(st.just(PATTERN), st.just(PATTERN_LEN), st.just(F_INDIRECT), nxt)
    to_table = st.tuples(
        st.sampled_from(INDIRECT_TABLES), st.sampled_from([16, 48, 160, 640]),
        st.sampled_from([F_INDIRECT, F_INDIRECT | F_WRITE]), nxt,
    )  # fmt: skip
    good = st.tuples(
        st.integers(DATA, DATA + 0xF000), st.integers(1, 0x800),
        st.sampled_from([0, F_WRITE, F_NEXT, F_NEXT | F_WRITE]), st.integers(0, size - 1),
    )  # fmt: skip
    return st.one_of(good, good, good, good, plain, to_table, to_pattern)


def writable_oracle(mem: CountingMemory, tables: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every range some descriptor marks device-writable, in the given tables and in every
    indirect table they reference (at most MAX_SEGMENTS entries of each are reachable)."""
    out = []
    seen = set()
    todo = list(tables)
    while todo:
        table, n = todo.pop()
        if (table, n) in seen:
            continue
        seen.add((table, n))
        for i in range(min(n, MAX_SEGMENTS)):
            off = table + 16 * i
            if off + 16 > mem.size:
                break
            addr, length, flags, _ = struct.unpack_from("<QIHH", mem.buf, off)
            if flags & F_INDIRECT and not flags & F_NEXT:
                if length and length % 16 == 0 and addr + length <= mem.size:
                    todo.append((addr, length // 16))
            elif flags & F_WRITE:
                out.append((addr, length))
    return out


def ring_setup(draw, mem: CountingMemory, table: int, size: int) -> None:
    for i, d in enumerate(draw(st.lists(descriptors(size), min_size=size, max_size=size))):
        _put(mem, table, i, d)


@st.composite
def walker_case(draw):
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    mem = CountingMemory(MEM)
    mem.poke(PATTERN, struct.pack("<QIHH", DATA, 1, draw(st.sampled_from([1, 3])), 1) * (PATTERN_LEN // 16))
    ring_setup(draw, mem, 0x1000, size)
    for t in INDIRECT_TABLES:
        ring_setup(draw, mem, t, draw(st.integers(0, 40)))
    head = draw(st.integers(0, size))
    return mem, size, head


@given(walker_case())
def test_fuzz_walker_returns_only_offered_segments_with_bounded_work(case):
    mem, size, head = case
    mem.reads = mem.desc_reads = 0
    try:
        elem, reads = walk_chain(mem, 0x1000, size, head)
    except VirtqueueError:
        elem = None
    assert mem.desc_reads <= size + MAX_SEGMENTS
    event("error" if elem is None else f"{len(elem.segments) > 1 and 'multi' or 'single'}")
    if elem is None:
        return
    # The walker counts every descriptor it looked at; an indirect table is copied in one
    # read (not one per entry), so memory sees at most that many 16-byte reads.
    assert mem.desc_reads <= reads <= size + MAX_SEGMENTS
    offered_w = set(writable_oracle(mem, [(0x1000, size)]))
    segs = elem.segments
    assert 0 < len(segs) <= MAX_SEGMENTS
    for addr, length, writable in segs:
        assert length > 0 and 0 <= addr and addr + length <= mem.size
        if writable:
            assert (addr, length) in offered_w
    # device-readable segments come first (§2.7.4.2)
    flags = [w for _, _, w in segs]
    assert flags == sorted(flags)


@st.composite
def device_case(draw):
    size = draw(st.sampled_from([1, 2, 4, 8]))
    mergeable = draw(st.booleans())
    rig = Rig(mem_size=MEM, mergeable=mergeable, qsize=size)
    pattern_flags = draw(st.sampled_from([F_NEXT, F_NEXT | F_WRITE]))
    rig.mem.poke(PATTERN, struct.pack("<QIHH", DATA, 1, pattern_flags, 1) * (PATTERN_LEN // 16))
    for ring in rig.rings:
        if draw(st.booleans()):
            ring_setup(draw, rig.mem, ring.desc, size)
            heads = st.integers(0, size - 1) | st.integers(0, 0xFFFF)
            ring.offer(*draw(st.lists(heads, max_size=size + 1)))
            if draw(st.booleans()):  # a wild avail index
                rig.mem.poke(ring.avail + 2, struct.pack("<H", draw(st.integers(0, 0xFFFF))))
            continue
        # A well-formed ring, so that traffic flows in some examples.
        for i in range(size):
            addr = DATA + 0x800 * (8 * ring.index + i)
            length = draw(st.integers(1, 0x800))
            flags, nxt = [(F_WRITE, 0), (0, 0), (F_NEXT, i + 1)][ring.index]
            if ring.index == 2 and (i % 2 or i == size - 1):
                flags, nxt = F_WRITE, 0
            _put(rig.mem, ring.desc, i, (addr, length, flags, nxt))
        step = 2 if ring.index == 2 else 1
        ring.offer(*draw(st.lists(st.sampled_from(range(0, size, step)), max_size=size)))
    for t in INDIRECT_TABLES:
        ring_setup(draw, rig.mem, t, draw(st.integers(0, 40)))
    frames = draw(st.lists(st.sampled_from([14, 60, 200, 1514, 70000]), max_size=3))
    for n in frames:
        rig.inject(frame(n) if n >= 14 else bytes(n))
    order = draw(st.permutations(["rx", "tx", "cvq", "poll"]))
    if draw(st.booleans()):
        # A driver adding buffers while the device walks: each time the device reads a ring's
        # avail index, one more entry (a head already offered in that ring) is there, as long
        # as the ring has room. The rings never run dry.
        reposts = [0]

        def repost(addr: int, length: int) -> None:
            for ring in rig.rings:
                in_flight = (ring.avail_idx - ring.used_idx()) & 0xFFFF
                if addr == ring.avail + 2 and length == 2 and in_flight < ring.size:
                    slot = ring.avail + 4 + 2 * ((ring.avail_idx - 1) % ring.size)
                    ring.offer(int.from_bytes(rig.mem.buf[slot : slot + 2], "little"))
                    reposts[0] += 1
                    assert reposts[0] < 10_000, "one call keeps consuming what the guest adds"

        rig.mem.on_read = repost
    return rig, order, len(frames)


@given(device_case())
def test_fuzz_queue_notify_writes_only_offered_buffers_with_bounded_work(case):
    rig, order, nframes = case
    size = rig.qsize
    before = bytes(rig.mem.buf)
    allowed = [(r.used, 6 + 8 * size) for r in rig.rings]
    allowed += writable_oracle(rig.mem, [(r.desc, size) for r in rig.rings])
    if rig.mem.on_read is not None:  # the concurrent driver's own writes to its avail rings
        allowed += [(r.avail, 4 + 2 * size) for r in rig.rings]
    # One kick may walk each offered chain once, and RX about twice the queue size more
    # (frames that do not fit give their chains back), each walk bounded by size +
    # VIRTQUEUE_MAX_SIZE descriptors and as many segment reads; a few ring-index reads on top.
    # Nothing here depends on the memory size or on an indirect table's claimed length.
    bound = (4 * size + 2) * 2 * (size + MAX_SEGMENTS + 4)
    for what in order:
        rig.mem.reads = 0
        if what == "poll":
            rig.dev.poll()
        else:
            rig.kick(getattr(rig, what))
        assert rig.mem.reads <= bound, what
    after = bytes(rig.mem.buf)
    if before != after:
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
    assert set(h) == {"dropped", "errors", "needs_reset", "counters"}
    assert len(h["errors"]) <= 16
    # No frame lost unseen: every frame for the guest (injected, or looped back from TX) was
    # received, dropped with a reason, is held, or still waits in the backend.
    c = h["counters"]
    offered = nframes + rig.backend.sent - rig.backend.dropped
    assert offered == c["rx_frames"] + c["rx_dropped"] + c["rx_held"] + len(rig.backend.queue)
    assert c["tx_frames"] == rig.backend.sent
    event("needs reset" if h["needs_reset"] else "no error")
    c = h["counters"]
    event(f"rx {min(c['rx_frames'], 1)} tx {min(c['tx_frames'], 1)} dropped {bool(h['dropped'])}")


def test_element_read_with_a_limit_reads_only_that_much():
    mem = CountingMemory(1 << 16)
    mem.poke(0x8000, bytes(range(64)))
    for i in range(4):
        _put(mem, 0x1000, i, (0x8000 + 16 * i, 16, F_NEXT if i < 3 else 0, i + 1))
    elem, _ = walk_chain(mem, 0x1000, 4, 0)
    seen: list[tuple[int, int]] = []
    mem.on_read = lambda a, n: seen.append((a, n))
    # The four 16-byte buffers are adjacent: read together, and only the 20 bytes asked for.
    assert elem.read(mem, limit=20) == bytes(range(20)) and seen == [(0x8000, 20)]
    mem.on_read = None
    assert elem.read(mem) == bytes(range(64))
    assert elem.read(mem, limit=0) == b""


def test_rx_work_per_poll_is_bounded_by_the_queue_size_not_the_peer():
    rig = Rig(mergeable=False, qsize=4)
    rig.rx.set_desc(0, rig.buffer(20), 20, F_WRITE)  # too small for every frame
    rig.rx.offer(0)
    for n in range(100):
        rig.inject(frame(60, tag=n))
    rig.dev.poll()
    h = rig.dev.health()
    assert h["dropped"] == {"rx_buffer_too_small": 8}  # 2 × queue size walks per call
    assert len(rig.backend.queue) == 92  # the rest wait, not lost
