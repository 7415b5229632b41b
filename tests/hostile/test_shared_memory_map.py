"""The peer's memory is mapped only when no truncation can make the mapping SIGBUS: a shmem memfd
sealed against shrinking (vhost_user.unmappable). Every other file is read and written with
pread/pwrite, as before; both ways give the same bytes, and the ring code reads a mapped
region in place. No kernel needed."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from virtio_msix.abi.ring import VRING_DESC_F_WRITE
from virtio_msix.uml.vhost_user import SharedMemory, unmappable
from virtio_msix.virtio.memory import WINDOWED, GuestMemoryError
from virtio_msix.virtio.queue import VirtQueue

BASE = 0x6000_0000  # UML's memory sits at a high guest address (guest_addr == user_addr)
SIZE = 1 << 20


def sealed_memfd(size: int = SIZE, seals: int = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) -> int:
    fd = os.memfd_create("vmsix-test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_a_sealed_memfd_is_mapped_and_is_the_window():
    mem = SharedMemory()
    fd = sealed_memfd()
    mem.add(BASE, SIZE - 0x1000, BASE, 0x1000, fd)
    try:
        assert mem.mapped == 1 and mem.unmapped_why == []
        assert type(mem) in WINDOWED and (mem.lo, mem.hi) == (BASE, BASE + SIZE - 0x1000)
        # The mapping is the peer's file: what we write is in it, what it writes we read.
        mem.write(BASE + 0x10, b"device")
        assert os.pread(fd, 6, 0x1000 + 0x10) == b"device"
        os.pwrite(fd, b"driver", 0x1000 + 0x100)
        assert mem.read(BASE + 0x100, 6) == b"driver"
        assert mem.buf is not None and mem.buf[0x100:0x106] == b"driver"
        # Outside the region (before it, past it, across its end) is a DMA error, not a crash.
        for addr, n in ((BASE - 1, 2), (BASE + SIZE - 0x1000, 1), (BASE + SIZE - 0x1001, 2)):
            with pytest.raises(GuestMemoryError):
                mem.read(addr, n)
            with pytest.raises(GuestMemoryError):
                mem.write(addr, b"\0" * n)
    finally:
        mem.close()
    assert mem.buf is None and mem.lo == mem.hi == 0
    with pytest.raises(GuestMemoryError):
        mem.read(BASE, 1)


def test_the_seal_is_what_makes_the_mapping_safe():
    """The property relied on: a peer holding the same memfd cannot shrink it."""
    fd = sealed_memfd()
    try:
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, 0)
        assert e.value.errno == errno.EPERM
    finally:
        os.close(fd)


def _unsealed_memfd() -> int:
    fd = os.memfd_create("vmsix-test")  # no MFD_ALLOW_SEALING: F_SEAL_SEAL set at birth
    os.ftruncate(fd, SIZE)
    return fd


def _sealable_but_unsealed() -> int:
    fd = os.memfd_create("vmsix-test", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SIZE)
    return fd


def _grow_sealed_only() -> int:
    return sealed_memfd(seals=fcntl.F_SEAL_GROW)


def _tmp_file(tmp_path) -> int:
    fd = os.open(tmp_path / "mem", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, SIZE)
    return fd


def _read_only_sealed(tmp_path) -> int:
    fd = sealed_memfd()
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    return ro


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda tmp: _unsealed_memfd(), "not sealed against shrinking"),
        (lambda tmp: _sealable_but_unsealed(), "not sealed against shrinking"),
        (lambda tmp: _grow_sealed_only(), "not sealed against shrinking"),
        # on a disk file system F_GET_SEALS is refused; a tmpfs file answers F_SEAL_SEAL
        (_tmp_file, "not a memfd|not sealed against shrinking"),
        (_read_only_sealed, "mmap:"),
    ],
    ids=["memfd", "sealable-memfd", "grow-seal-only", "tmp-file", "read-only-sealed"],
)
def test_other_files_are_read_with_pread_and_say_why(tmp_path, make, why):
    fd = make(tmp_path)
    mem = SharedMemory()
    mem.add(BASE, SIZE, BASE, 0, fd)
    try:
        assert mem.mapped == 0 and len(mem.unmapped_why) == 1
        assert any(w in mem.unmapped_why[0] for w in why.split("|")), mem.unmapped_why
        assert mem.buf is None and mem.lo == mem.hi == 0  # no window: the ring code reads
        assert mem.read(BASE + 8, 4) == b"\0" * 4
        if why != "mmap:":  # a read-only descriptor cannot be written either way
            mem.write(BASE + 8, b"abcd")
            assert mem.read(BASE + 8, 4) == b"abcd"
    finally:
        mem.close()


def test_an_unaligned_file_offset_is_not_mapped():
    fd = sealed_memfd()
    try:
        assert "not page-aligned" in (unmappable(fd, 0x800, 0x1000) or "")
        assert unmappable(fd, mmap.PAGESIZE, 0x1000) is None
        assert "past the end" in (unmappable(fd, 0, SIZE + 1) or "")
    finally:
        os.close(fd)


def _offer_chain(write, base: int) -> None:
    """A ring at ``base`` (desc, avail, used: 16 entries) offering one write-only buffer."""
    write(base + 0x000, struct.pack("<QIHH", base + 0x800, 64, VRING_DESC_F_WRITE, 0))
    write(base + 0x100 + 4, struct.pack("<H", 0))  # avail ring[0] = head 0
    write(base + 0x100 + 2, struct.pack("<H", 1))  # avail idx 1


@pytest.mark.parametrize("sealed", [True, False], ids=["mapped", "pread"])
def test_a_queue_over_the_peer_memory_pops_and_pushes_the_same_either_way(sealed):
    fd = sealed_memfd() if sealed else _unsealed_memfd()
    mem = SharedMemory()
    mem.add(BASE, SIZE, BASE, 0, fd)
    try:
        assert mem.mapped == int(sealed)
        q = VirtQueue(0, 16)
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 16, BASE, BASE + 0x100, BASE + 0x200
        q.enabled = True
        _offer_chain(mem.write, BASE)
        calls: list[tuple[int, int]] = []
        read = mem.read

        def counted(addr: int, n: int) -> bytes:
            calls.append((addr, n))
            return read(addr, n)

        mem.read = counted  # type: ignore[method-assign]
        elem = q.pop(mem)
        # Mapped: the avail index, the head and the descriptor are read in place (the window);
        # read with pread: each through read().
        assert (calls == []) if sealed else len(calls) >= 3, calls
        assert elem is not None and elem.head == 0 and elem.writable == [(BASE + 0x800, 64)]
        assert elem.write(mem, b"x" * 10) == 10
        q.push(mem, elem, 10)
        # The used element and index are in the file, whichever way they were written.
        assert struct.unpack("<IIH", os.pread(fd, 10, 0x204)[:8] + os.pread(fd, 2, 0x202)) == (
            0, 10, 1)  # fmt: skip
        assert os.pread(fd, 10, 0x800) == b"x" * 10
        assert q.pop(mem) is None
    finally:
        mem.close()


def test_overlapping_regions_are_refused():
    """One address in two regions would let the window and read() disagree about its bytes."""
    mem = SharedMemory()
    a, b = sealed_memfd(), sealed_memfd()
    try:
        mem.add(BASE, 0x10000, BASE, 0, a)
        for start, size in ((BASE + 0x8000, 0x10000), (BASE - 0x1000, 0x2000), (BASE, 0x10)):
            with pytest.raises(ValueError, match="overlaps"):
                mem.add(start, size, start, 0, b)
        mem.add(BASE + 0x10000, 0x1000, BASE + 0x10000, 0, b)  # adjacent is fine
        assert len(mem.regions) == 2
    finally:
        mem.close()


class _Words:
    """buf16 standing in: records each 16-bit load and store the ring code makes."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.loads, self.stores = view, [], []

    def __getitem__(self, i: int) -> int:
        self.loads.append(i)
        return self.view[i]

    def __setitem__(self, i: int, v: int) -> None:
        self.stores.append((i, v))
        self.view[i] = v


@contextlib.contextmanager
def words_recorded() -> Iterator[tuple[SharedMemory, int, _Words]]:
    """A mapped region whose buf16 records the ring code's word accesses."""
    fd = sealed_memfd()
    mem = SharedMemory()
    mem.add(BASE, SIZE, BASE, 0, fd)
    view = mem.buf16
    assert view is not None
    words = _Words(view)
    mem.buf16 = words  # type: ignore[assignment]
    try:
        yield mem, fd, words
    finally:
        mem.buf16 = view  # the real view, which close() releases
        mem.close()


def test_ring_indexes_are_one_aligned_16_bit_access_each():
    """The peer runs while we read and write its rings: the avail index, the used index and
    the event fields must each be one 16-bit load or store (buf16), never two byte accesses
    (struct's), or a driver can see a used index half written (0x00ff → 0x0100 read as 0x0000:
    "id 0 is not a head", seen with UML before this)."""
    with words_recorded() as (mem, fd, words):
        q = VirtQueue(0, 16)
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 16, BASE, BASE + 0x100, BASE + 0x200
        q.enabled, q.event_idx = True, True
        _offer_chain(mem.write, BASE)
        elem = q.pop(mem)
        assert elem is not None
        assert (0x100 + 2) // 2 in words.loads  # the avail index
        q.push(mem, elem, 10)
        assert ((0x200 + 2) // 2, 1) in words.stores  # the used index, one store
        q.should_notify(mem)
        assert (0x100 + 4 + 2 * 16) // 2 in words.loads  # used_event
        assert struct.unpack("<H", os.pread(fd, 2, 0x202)) == (1,)


def test_a_window_closes_although_it_was_viewed_as_words():
    fd = sealed_memfd()
    mem = SharedMemory()
    mem.add(BASE, SIZE, BASE, 0, fd)
    assert mem.buf16 is not None and len(mem.buf16) == SIZE // 2
    mem.close()  # mmap.close() would raise BufferError if a view of it were left
    assert mem.buf is None and mem.buf16 is None


def test_packed_descriptor_flags_are_one_16_bit_access_each():
    """The packed ring's flags are its synchronisation point (§2.8.1): the device reads a
    head's flags first, alone, and writes a used buffer's flags last, each one 16-bit access;
    the event suppression fields (§2.8.14) too."""
    from virtio_msix.abi.ring import DESC_F_AVAIL, PACKED_DESC, VRING_DESC_F_WRITE

    with words_recorded() as (mem, _fd, words):
        q = VirtQueue(0, 16)
        q.set_packed(True)
        q.size, q.desc_addr, q.avail_addr, q.used_addr = 16, BASE, BASE + 0x200, BASE + 0x300
        q.enabled = True
        mem.write(BASE, PACKED_DESC.pack(BASE + 0x800, 64, 7, DESC_F_AVAIL | VRING_DESC_F_WRITE))
        elem = q.pop(mem)
        assert elem is not None and elem.head == 7
        assert 14 // 2 in words.loads  # descriptor 0's flags, read alone
        q.push(mem, elem, 10)
        assert [i for i, _v in words.stores] == [14 // 2]  # its flags written back, one store
        # The event suppression structures: the driver's read flags first, then off_wrap;
        # ours written a word at a time.
        words.loads.clear()
        q.should_notify(mem)
        assert words.loads == [(0x200 + 2) // 2, 0x200 // 2]
        q.set_no_notify(mem, True)
        assert words.stores[-1] == ((0x300 + 2) // 2, 1)  # VRING_PACKED_EVENT_FLAG_DISABLE
