"""The vhost-user message reader's limits, the peer-memory accessor and the virt-pci queues,
each driven directly over a real socket pair, real files and real rings."""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct

import pytest
from fdcount import open_fds

from virtio_msix.uml.pcidev import MAX_PENDING_IRQS, MSG, PcidevOp, VirtPciHost
from virtio_msix.uml.vhost_user import (
    HEADER,
    MAX_FDS,
    MAX_PAYLOAD,
    Request,
    SharedMemory,
    VhostUserBackend,
    VhostUserError,
    describe_fd,
    read_message,
    send_message,
)
from virtio_msix.virtio.memory import GuestMemory, GuestMemoryError
from virtio_msix.virtio.queue import VirtQueue


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


# -- the reader ------------------------------------------------------------------------------
def test_header_is_judged_before_the_payload_is_read(pair):
    """An unknown request, a wrong version or an oversized payload is refused at once, with
    the socket left open and the announced payload never sent (nothing waits for it)."""
    peer, ours = pair
    for wire, words in [
        (HEADER.pack(99, 1, 100), "unknown vhost-user request 99"),
        (HEADER.pack(1, 0, 100), "GET_FEATURES: protocol version 0"),
        (HEADER.pack(5, 1, MAX_PAYLOAD + 1), "SET_MEM_TABLE: payload of 4097 bytes is too large"),
        (HEADER.pack(1, 1 | 4, 0), "a reply where a request was expected"),
    ]:
        peer.sendall(wire)
        with pytest.raises(VhostUserError, match=words):
            read_message(ours, timeout=30)


@pytest.mark.parametrize(
    "wire, words",
    [
        (HEADER.pack(1, 1, 0)[:7], "header: the peer sent 7 of 12 bytes, then nothing within"),
        (HEADER.pack(2, 1, 8) + b"\1", "SET_FEATURES payload: the peer sent 1 of 8 bytes"),
    ],
)
def test_a_stalled_message_times_out(pair, wire, words):
    peer, ours = pair
    peer.sendall(wire)
    with pytest.raises(VhostUserError, match=words):
        read_message(ours, timeout=0.2)


def test_deadline_bounds_the_message_as_a_whole(pair):
    """A deadline already past: what is there is read, what is missing is not waited for."""
    import time

    peer, ours = pair
    peer.sendall(HEADER.pack(1, 1, 0))
    assert read_message(ours, timeout=30, deadline=time.monotonic() - 1).request == 1
    peer.sendall(HEADER.pack(1, 1, 0)[:3])
    with pytest.raises(VhostUserError, match="3 of 12 bytes, then nothing within 0.0 s"):
        read_message(ours, timeout=30, deadline=time.monotonic() - 1)


def test_descriptors_are_closed_when_a_message_is_refused(pair):
    peer, ours = pair
    before = open_fds()
    nulls = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    send_fds(peer, HEADER.pack(5, 1, MAX_PAYLOAD + 1), nulls)
    with pytest.raises(VhostUserError, match="too large"):
        read_message(ours, timeout=1)
    for fd in nulls:
        os.close(fd)
    assert open_fds() == before


def test_more_descriptors_than_any_message_carries(pair):
    peer, ours = pair
    before = open_fds()
    nulls = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 4)]
    send_fds(peer, HEADER.pack(1, 1, 0), nulls)
    with pytest.raises(VhostUserError, match=f"more than {MAX_FDS} file descriptors"):
        read_message(ours, timeout=1)
    for fd in nulls:
        os.close(fd)
    assert open_fds() == before


def test_a_peer_that_never_reads_cannot_block_a_reply(pair):
    peer, ours = pair
    with pytest.raises(VhostUserError, match="GET_FEATURES: the peer does not read its replies"):
        for _ in range(1_000_000):  # the socket buffer fills long before
            send_message(ours, HEADER.pack(1, 5, 8) + bytes(8), "GET_FEATURES", timeout=0.2)


def test_unused_descriptors_are_closed_and_counted(pair):
    peer, ours = pair
    before = {f for f in open_fds() if f.split()[0] != str(ours.fileno())}  # be.close() closes it
    be = VhostUserBackend(ours, features=1 << 32, num_queues=2)
    nulls = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS)]
    for _ in range(50):
        send_fds(peer, HEADER.pack(Request.GET_FEATURES, 1, 0), nulls)
        assert be.handle_one() == Request.GET_FEATURES
        assert len(peer.recv(64)) == HEADER.size + 8
    for fd in nulls:
        os.close(fd)
    assert be.stats.unused_fds_closed == 50 * MAX_FDS
    assert "GET_FEATURES: 8 file descriptor(s) attached that it does not use" in be.errors[-1]
    # A refused SET_VRING_KICK: its descriptor is closed too.
    r, w = os.pipe()
    send_fds(peer, HEADER.pack(Request.SET_VRING_KICK, 1, 8) + struct.pack("<Q", 0), [r])
    with pytest.raises(VhostUserError, match="SET_VRING_KICK: expected eventfd, got a pipe"):
        be.handle_one()
    os.close(r)
    os.close(w)
    be.close()
    assert open_fds() == before


def _msg(request: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(request, 1, len(payload)) + payload


def test_get_vring_base_stops_the_ring(pair):
    peer, ours = pair
    be = VhostUserBackend(ours, features=1 << 32, num_queues=2)
    kick = os.eventfd(0)
    r, w = os.pipe()
    send_fds(peer, _msg(Request.SET_VRING_CALL, struct.pack("<Q", 0)), [w])
    be.handle_one()
    send_fds(peer, _msg(Request.SET_VRING_KICK, struct.pack("<Q", 0)), [kick])
    be.handle_one()
    vr = be.vrings[0]
    assert vr.started and vr.queue.enabled and vr.kick_fd >= 0
    vr.queue.last_avail_idx = 7
    peer.sendall(_msg(Request.GET_VRING_BASE, struct.pack("<II", 0, 0)))
    be.handle_one()
    assert struct.unpack("<II", peer.recv(64)[HEADER.size :]) == (0, 7)
    assert not vr.started and not vr.queue.enabled
    assert vr.kick_fd == vr.call_fd == -1  # no kicks served, no calls sent until restarted
    be.signal(0)
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError):
        os.read(r, 8)
    for fd in (kick, r, w):
        os.close(fd)
    be.close()


# -- the peer's memory -----------------------------------------------------------------------
def _memfd(size: int) -> int:
    fd = os.memfd_create("test-mem")
    os.ftruncate(fd, size)
    return fd


@pytest.mark.parametrize(
    "size, offset, words",
    [
        (1 << 63, 0, "extends past the end of its file"),
        (4096, (1 << 64) - 4096, "extends past the end of its file"),
        (0, 0, "empty or wraps"),
        (8192, 1 << 20, "extends past the end of its file"),
    ],
)
def test_regions_beyond_the_file_are_refused(size, offset, words):
    fd = _memfd(1 << 20)
    mem = SharedMemory()
    with pytest.raises(ValueError, match=words):
        mem.add(0, size, 0, offset, fd)
    assert not mem.regions
    os.close(fd)


def test_a_pipe_is_not_memory():
    r, w = os.pipe()
    with pytest.raises(ValueError, match="descriptor is a pipe, not a memory file"):
        SharedMemory().add(0, 4096, 0, 0, r)
    os.close(r)
    os.close(w)


def test_memory_is_shared_with_the_peer_and_survives_truncation():
    fd = _memfd(1 << 16)
    peer_view = mmap.mmap(fd, 1 << 16)
    mem = SharedMemory()
    mem.add(0x10000, 0x8000, 0x10000, 0x4000, os.dup(fd))
    peer_view[0x4010:0x4014] = b"abcd"
    assert mem.read(0x10010, 4) == b"abcd"
    mem.write(0x10020, b"xyz")
    assert peer_view[0x4020:0x4023] == b"xyz"
    with pytest.raises(GuestMemoryError, match="outside the peer's shared memory"):
        mem.read(0x17FFE, 4)
    peer_view.close()
    os.ftruncate(fd, 0x4000)  # cut below the region: a mapped read would be SIGBUS
    with pytest.raises(GuestMemoryError, match="truncated after SET_MEM_TABLE"):
        mem.read(0x10010, 4)
    mem.close()
    os.close(fd)


def test_describe_fd():
    e = os.eventfd(0)
    r, w = os.pipe()
    f = _memfd(10)
    a, b = socket.socketpair()
    assert [describe_fd(x) for x in (e, r, f, a.fileno())] == [
        "eventfd", "pipe", "regular file", "socket"]  # fmt: skip
    for x in (e, r, w, f):
        os.close(x)
    a.close()
    b.close()


# -- virt-pci: the irq queue when the guest gives no buffers ----------------------------------
def _host() -> VirtPciHost:
    mem = GuestMemory(1 << 16)
    return VirtPciHost(mem, VirtQueue(0, 16), VirtQueue(1, 16))


def test_pending_interrupts_are_bounded_and_dropped_with_a_reason():
    host = _host()
    for i in range(20_000):
        host.queue_irq(PcidevOp.MSI, 0xA0000, 64 + i)  # each a different message
    host.flush_irqs()  # no irq buffers: nothing leaves
    assert len(host.pending_irqs) == MAX_PENDING_IRQS
    assert host.stats.irq_dropped == 20_000 - MAX_PENDING_IRQS
    assert host.stats.irq_dropped_by_reason == {
        "no irq buffers (pending queue full)": 20_000 - MAX_PENDING_IRQS
    }


def test_identical_pending_interrupts_coalesce():
    host = _host()
    for _ in range(1000):
        host.queue_irq(PcidevOp.MSI, 0xA0000, 65)
        host.queue_irq(PcidevOp.INT, 1, None)
    assert len(host.pending_irqs) == 2
    assert host.stats.irq_coalesced == 1998 and host.stats.irq_dropped == 0
    assert MSG.unpack_from(host.pending_irqs[0])[0] == PcidevOp.MSI


def test_pending_interrupts_reach_buffers_in_order():
    """The real ring path: buffers offered after the messages queued get them, in order."""
    mem = GuestMemory(1 << 16)
    irq = VirtQueue(1, 16)
    irq.size, irq.desc_addr, irq.avail_addr, irq.used_addr, irq.enabled = (
        16,
        0x1000,
        0x2000,
        0x3000,
        True,
    )
    host = VirtPciHost(mem, VirtQueue(0, 16), irq)
    host.attach(None)  # type: ignore[arg-type]
    for data in (65, 66, 65):
        host.queue_irq(PcidevOp.MSI, 0xA0000, data)
    for i in range(2):
        mem.write(0x1000 + 16 * i, struct.pack("<QIHH", 0x4000 + 0x100 * i, 20, 2, 0))
        mem.write(0x2000 + 4 + 2 * i, struct.pack("<H", i))
    mem.write(0x2002, struct.pack("<H", 2))
    host.flush_irqs()
    assert [int.from_bytes(mem.read(0x4000 + 0x100 * i + MSG.size, 4), "little")
            for i in range(2)] == [65, 66]  # fmt: skip
    assert not host.pending_irqs and host.stats.irq_coalesced == 1


def test_a_broken_irq_ring_does_not_surface_inside_the_device():
    """An irq used ring outside guest memory: raising the interrupt (inside the device's register
    handling) does not raise; the owner's next flush does, as a ring error."""
    from virtio_msix.virtio.queue import VirtqueueError

    mem = GuestMemory(1 << 16)
    irq = VirtQueue(1, 16)
    irq.size, irq.desc_addr, irq.avail_addr, irq.used_addr = 16, 0x1000, 0x2000, 0xFFFC
    irq.enabled = True
    host = VirtPciHost(mem, VirtQueue(0, 16), irq)
    mem.write(0x1000, struct.pack("<QIHH", 0x4000, 20, 2, 0))
    mem.write(0x2002, struct.pack("<H", 1))
    host.queue_irq(PcidevOp.MSI, 0xA0000, 65)
    with pytest.raises(VirtqueueError):
        host.flush_irqs()


def test_a_broken_irq_ring_on_pop_ends_the_session_too_counted():
    """One way for a broken irq ring, pop or push: counted, the waiting interrupts dropped
    with the reason, and raised (the session ends with a VhostUserError)."""
    from virtio_msix.virtio.queue import VirtqueueError

    mem = GuestMemory(1 << 16)
    irq = VirtQueue(1, 16)
    irq.size, irq.desc_addr, irq.avail_addr, irq.used_addr = 16, 0x1000, 0x2000, 0x3000
    irq.enabled = True
    host = VirtPciHost(mem, VirtQueue(0, 16), irq)
    mem.write(0x2002, struct.pack("<H", 40))  # avail idx 40 ahead on a 16-ring: pop fails
    host.pending_irqs.extend([b"a" * 20, b"b" * 20])
    with pytest.raises(VirtqueueError):
        host.flush_irqs()
    assert host.stats.bad_by_kind == {"irq queue": 1}
    assert host.stats.irq_dropped_by_reason == {"irq queue broken": 2}
    assert not host.pending_irqs


def test_adjacent_buffers_across_two_regions_are_served_piece_by_piece():
    # Two regions whose guest ranges touch but whose file offsets do not: buffers that are
    # adjacent in guest memory are joined into one access, which no single region holds; the
    # device then reads and writes them piece by piece, with the same bytes as the peer sees.
    fd = _memfd(1 << 16)
    peer = mmap.mmap(fd, 1 << 16)
    mem = SharedMemory()
    mem.add(0x0, 0x1000, 0x0, 0x8000, os.dup(fd))
    mem.add(0x1000, 0x1000, 0x1000, 0x2000, os.dup(fd))
    peer[0x8FF8:0x9000] = b"ABCDEFGH"
    peer[0x2000:0x2008] = b"ijklmnop"
    from virtio_msix.virtio.queue import Element, scatter_chains

    elem = Element(0, readable=[(0xFF8, 8), (0x1000, 8)])
    assert elem.read(mem) == b"ABCDEFGHijklmnop"
    a, b = Element(0, writable=[(0xFF0, 8), (0xFF8, 8)]), Element(1, writable=[(0x1000, 16)])
    assert scatter_chains(mem, [a, b], memoryview(bytes(range(20)))) == [16, 4]
    assert peer[0x8FF0:0x9000] == bytes(range(16)) and peer[0x2000:0x2004] == bytes(range(16, 20))
    assert peer[0x2004:0x2008] == b"mnop"  # nothing past the data
    peer.close()
    mem.close()
    os.close(fd)
