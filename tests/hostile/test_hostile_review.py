"""Issue 8, review round: a guest that adds buffers while the device walks, a broken device
rewritten to DRIVER_OK, backends that fail or pile up, a legal MAC table longer than 64 KiB,
an indirect descriptor in the middle of a chain.

Each test counts work (ring walks, memory reads), bytes, frames or records; none measures time.
"""

from __future__ import annotations

import errno
import io
import os
import struct

import pytest
from rig import F_INDIRECT, F_NEXT, F_WRITE, NEEDS_RESET, CountingMemory, Rig, frame

from virtio_msix.host.backends import ResponderBackend, TapBackend, inet_checksum, ip_bytes
from virtio_msix.trace.pcapng import FrameTap, PcapngWriter
from virtio_msix.virtio.queue import VirtqueueError, walk_chain

ACK_CMD = bytes([3, 0])  # VIRTIO_NET_CTRL_ANNOUNCE_ACK: always OK


class Reposter:
    """A second vCPU: each time the device looks at ``ring``'s avail index, one more chain
    (``head``, already laid out) is there — as fast as the device consumes them."""

    def __init__(self, rig: Rig, ring, head: int, limit: int = 100_000) -> None:
        self.n = 0
        orig = rig.mem.read

        def read(addr: int, length: int) -> bytes:
            if addr == ring.avail + 2 and length == 2:
                self.n += 1
                if self.n > limit:
                    raise AssertionError(f"{limit} chains offered inside one call")
                ring.offer(head)
            return orig(addr, length)

        rig.mem.read = read  # type: ignore[method-assign]


def tx_rig(tx_burst: int | None = None) -> Rig:
    rig = Rig(mergeable=False, tx_burst=tx_burst)
    buf = rig.buffer(100)
    rig.mem.poke(buf, bytes(12) + frame(60))
    rig.tx.set_desc(0, buf, 72)
    return rig


def test_one_tx_kick_serves_at_most_a_burst_while_the_guest_keeps_refilling():
    rig = tx_rig()
    Reposter(rig, rig.tx, 0)
    rig.tx.offer(0)
    rig.kick(rig.tx)  # returns: before the fix this loop never ended
    assert not rig.status() & NEEDS_RESET
    first = rig.net.stats["tx_frames"]
    # x-txburst's default, QEMU's TX_BURST: virtio_net_flush_tx stops there
    assert rig.net.tx_burst == 256 and first == rig.net.tx_burst
    # The rest is not forgotten: the queue is in the backlog, and each poll serves one more
    # burst (the boot loop and QEMU's rescheduled bottom half come back).
    assert rig.dev.health()["counters"]["backlog_queues"] == 1
    rig.dev.poll()
    assert rig.net.stats["tx_frames"] == first + rig.net.tx_burst


def test_tx_backlog_is_served_by_poll_until_the_ring_is_empty():
    rig = tx_rig(tx_burst=8)  # -device virtio-net-pci,x-txburst=8: one ring's worth here
    rig.tx.offer(*[0] * rig.qsize)
    # The guest adds more while the first ring's worth is being served (seen at the device's
    # next read of the avail index: per chain, or once per burst with a shadow index).
    orig = rig.mem.read
    state = {"added": False}

    def read(addr: int, length: int) -> bytes:
        if addr == rig.tx.avail + 2 and not state["added"] and rig.net.stats["tx_frames"] >= 4:
            state["added"] = True
            rig.tx.offer(*[0] * 4)
        return orig(addr, length)

    rig.mem.read = read  # type: ignore[method-assign]
    rig.kick(rig.tx)
    assert rig.net.stats["tx_frames"] == rig.qsize
    assert rig.net.backlog == {1}
    rig.dev.poll()
    assert rig.net.stats["tx_frames"] == rig.qsize + 4
    assert rig.net.backlog == set()


def test_x_txburst_chains_per_kick_then_one_burst_per_poll():
    """-device virtio-net-pci,x-txburst=2: five chains and one kick give two frames and a
    used index of 2; each poll (the rescheduled bottom half) two more, then the last one."""
    rig = tx_rig(tx_burst=2)
    rig.tx.offer(*[0] * 5)
    rig.kick(rig.tx)
    served = [rig.net.stats["tx_frames"]]
    used = [rig.tx.used_idx()]
    for _ in range(3):
        rig.dev.poll()
        served.append(rig.net.stats["tx_frames"])
        used.append(rig.tx.used_idx())
    assert served == [2, 4, 5, 5] and used == served
    assert rig.net.backlog == set()


def test_one_ctrl_kick_serves_at_most_a_ring_while_the_guest_keeps_adding():
    rig = Rig()
    cmd, ack = rig.buffer(4), rig.buffer(1)
    rig.mem.poke(cmd, ACK_CMD)
    rig.cvq.set_desc(0, cmd, 2, F_NEXT, 1)
    rig.cvq.set_desc(1, ack, 1, F_WRITE)
    Reposter(rig, rig.cvq, 0)
    rig.cvq.offer(0)
    rig.kick(rig.cvq)
    assert 0 < len(rig.net.ctrl_log) <= rig.qsize
    assert rig.net.backlog == {2}


def test_mergeable_rx_pops_at_most_a_ring_for_one_frame_and_gives_back_only_those():
    rig = Rig(mergeable=True)
    rig.rx.set_desc(0, rig.buffer(64), 64, 0)  # device-readable only: adds no room
    rig.inject(frame(64))
    Reposter(rig, rig.rx, 0)
    rig.rx.offer(0)
    walks0 = rig.net.queues[0].walks
    rig.kick(rig.rx)
    q = rig.net.queues[0]
    assert q.walks - walks0 <= 2 * q.size  # the deliver loop's bound
    # unpop gave back exactly what was popped: last_avail_idx never went behind where the
    # device started (0), i.e. it did not wrap to ~65535.
    assert q.last_avail_idx < 2 * q.size
    h = rig.dev.health()
    assert h["dropped"] == {"rx_ring_too_small": 1}


class ConcurrentMemory(CountingMemory):
    """Guest memory whose driver re-posts the first head of its rings each time the device
    reads a ring's avail index (and a used slot is free): the rings are never empty."""

    rings: list = []

    def read(self, addr: int, length: int) -> bytes:
        for ring in self.rings:
            # A well-behaved driver: never more in flight than the ring holds.
            in_flight = (ring.avail_idx - ring.used_idx()) & 0xFFFF
            if addr == ring.avail + 2 and length == 2 and in_flight < ring.size:
                head = int.from_bytes(self.buf[ring.avail + 4 : ring.avail + 6], "little")
                ring.offer(head % ring.size)
        return super().read(addr, length)


@pytest.mark.parametrize("mergeable", [True, False])
@pytest.mark.parametrize("what", ["rx", "tx", "cvq"])
def test_every_kick_and_poll_is_bounded_while_the_guest_keeps_adding(mergeable, what):
    rig = Rig(mergeable=mergeable)
    mem = ConcurrentMemory(rig.mem.size)
    mem.buf[:] = rig.mem.buf
    # Re-attach the same device to the concurrent memory (same rings, same contents).
    rig.dev.memory = mem
    for ring in rig.rings:
        ring.mem = mem
    rig.mem = mem
    for i in range(rig.qsize):
        rig.rx.set_desc(i, rig.buffer(2048), 2048, F_WRITE)
        b = rig.buffer(100)
        mem.poke(b, bytes(12) + frame(60))
        rig.tx.set_desc(i, b, 72)
    cmd, ack = rig.buffer(4), rig.buffer(1)
    mem.poke(cmd, ACK_CMD)
    rig.cvq.set_desc(0, cmd, 2, F_NEXT, 1)
    rig.cvq.set_desc(1, ack, 1, F_WRITE)
    for _ in range(50):
        rig.inject(frame(60))
    ring = getattr(rig, what)
    ring.offer(0)
    mem.rings = [ring]
    for step in range(3):
        mem.reads = 0
        rig.kick(ring) if step == 0 else rig.dev.poll()
        # Each call: at most a ring's worth on the kicked queue, plus RX's own bound.
        assert mem.reads <= 40 * rig.qsize, (step, mem.reads)
    assert not rig.status() & NEEDS_RESET, rig.dev.health()


def test_a_broken_device_does_no_dma_when_the_driver_rewrites_driver_ok():
    rig = Rig(mergeable=False)
    rig.tx.offer(5, 5, 5, 5, 5, 5, 5, 5, 5)  # avail idx 9 ahead on an 8-ring: ring error
    rig.kick(rig.tx)
    assert rig.status() & NEEDS_RESET and rig.dev.broken
    for i in range(8):
        rig.rx.set_desc(i, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0)
    rig.inject(frame(60))
    ACK, DRIVER, FEATURES_OK, DRIVER_OK = 1, 2, 8, 4
    writes = rig.mem.writes
    rig.wr("device_status", ACK | DRIVER | FEATURES_OK)
    rig.wr("device_status", ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    rig.dev.cfg_write(4, 2, 0x2)  # Bus Master off (clears DRIVER_OK) ...
    rig.dev.cfg_write(4, 2, 0x6)  # ... and on
    rig.wr("device_status", ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert rig.mem.writes == writes
    assert rig.rx.used_idx() == 0 and rig.net.stats["rx_frames"] == 0
    assert rig.status() & NEEDS_RESET
    # After a reset the frame is delivered: it was held, not lost.
    assert rig.dev.health()["counters"]["rx_held"] + len(rig.backend.queue) == 1


def send_one(rig: Rig) -> None:
    b = rig.buffer(100)
    rig.mem.poke(b, bytes(12) + frame(60))
    rig.tx.set_desc(0, b, 72)
    rig.tx.offer(0)
    rig.kick(rig.tx)


class FailingBackend(ResponderBackend):
    """A backend whose host side fails every send (a full disk, a vanished TAP)."""

    def send(self, frame: bytes) -> bool | None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_backend_oserror_is_counted_and_the_device_goes_on():
    rig = Rig(mergeable=False)
    rig.net.backend = FailingBackend()
    send_one(rig)  # must not raise
    h = rig.dev.health()
    assert h["dropped"] == {"tx_backend_error": 1}
    assert h["counters"]["tx_frames"] == 0 and h["counters"]["tx_dropped"] == 1
    assert rig.tx.used_idx() == 1 and not rig.status() & NEEDS_RESET


def test_a_pcap_that_cannot_be_written_never_drops_traffic():
    """--pcap on a full disk: the capture stops (its error kept for the command to report),
    the frame still goes to the backend."""
    rig = Rig(mergeable=False)
    w = PcapngWriter(io.BytesIO())
    with open("/dev/full", "wb", buffering=0) as full:
        w.out = full  # the disk filled up after the file was opened
        rig.net.backend = FrameTap(ResponderBackend(), w)
        send_one(rig)
    h = rig.dev.health()
    assert h["counters"]["tx_frames"] == 1 and h["counters"]["tx_dropped"] == 0
    assert isinstance(w.error, OSError) and w.frames == 0


def test_a_tap_that_refuses_a_frame_is_counted_as_a_drop_not_as_sent():
    r_end, w_end = os.pipe()  # writing to a pipe's read end fails, as a refusing TAP does
    try:
        os.set_blocking(r_end, False)
        tap = object.__new__(TapBackend)
        tap.fd, tap.name, tap.sent, tap.dropped = r_end, "stand-in", 0, 0
        rig = Rig(mergeable=False)
        rig.net.backend = tap
        send_one(rig)
        c = rig.dev.health()["counters"]
        assert (tap.sent, tap.dropped) == (0, 1)
        assert c["tx_frames"] == 0 and c["tx_dropped"] == 1 and c["backend_dropped"] == 1
    finally:
        os.close(r_end)
        os.close(w_end)


def test_loopback_drops_show_in_health():
    rig = Rig(mergeable=False)
    rig.backend.limit = 0
    send_one(rig)
    assert rig.dev.health()["counters"]["backend_dropped"] == 1


def echo_request(resp: ResponderBackend, payload: int) -> bytes:
    icmp = bytearray(b"\x08\x00\x00\x00\x00\x01\x00\x01" + bytes(payload))
    icmp[2:4] = struct.pack("!H", inet_checksum(bytes(icmp)))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                               ip_bytes("10.0.2.15"), ip_bytes("10.0.2.2")))  # fmt: skip
    ip[10:12] = struct.pack("!H", inet_checksum(bytes(ip)))
    return resp.host_mac + bytes.fromhex("525400123456") + b"\x08\x00" + bytes(ip) + bytes(icmp)


def test_responder_answers_pile_up_only_to_a_bound_and_the_rest_are_counted():
    resp = ResponderBackend(host_ip="10.0.2.2")
    rig = Rig(mergeable=False)
    rig.net.backend = resp
    eth = echo_request(resp, 60000)
    for i in range(8):
        b = rig.buffer(12 + len(eth))
        rig.mem.poke(b, bytes(12) + eth)
        rig.tx.set_desc(i, b, 12 + len(eth))
    for _ in range(100):  # 800 requests, no receive buffers posted
        rig.tx.offer(*range(8))
        rig.kick(rig.tx)
    assert resp.sent == 800
    queued = sum(map(len, resp.queue))
    assert queued <= resp.max_bytes
    assert resp.answered + resp.dropped == 800 and resp.dropped > 0
    assert rig.dev.health()["counters"]["backend_dropped"] == resp.dropped


def mac_table_cmd(uni: int, multi: int) -> bytes:
    return (bytes([1, 0]) + struct.pack("<I", uni) + bytes.fromhex("525400000001") * uni
            + struct.pack("<I", multi) + bytes.fromhex("01005e000001") * multi)  # fmt: skip


def ctrl(rig: Rig, cmd: bytes) -> int:
    b, ack = rig.buffer(len(cmd)), rig.buffer(1)
    rig.mem.poke(b, cmd)
    rig.mem.poke(ack, b"\xaa")
    rig.cvq.set_desc(0, b, len(cmd), F_NEXT, 1)
    rig.cvq.set_desc(1, ack, 1, F_WRITE)
    rig.cvq.offer(0)
    rig.kick(rig.cvq)
    return rig.mem.buf[ack]


def test_a_mac_table_over_64_kib_is_ok_and_sets_the_overflow_flag():
    rig = Rig(mem_size=2 << 20)
    cmd = mac_table_cmd(0, 11000)  # 66 010 bytes: legal, Linux sends uc + mc entries
    rig.mem.reads = 0
    assert ctrl(rig, cmd) == 0  # VIRTIO_NET_OK, as QEMU answers
    assert not rig.status() & NEEDS_RESET
    assert rig.net.multi_overflow and not rig.net.uni_overflow and rig.net.mac_table == []
    assert rig.mem.reads < 20  # the 11 000 MACs were not read


def test_mac_table_keeps_at_most_64_entries_and_checks_lengths():
    rig = Rig()
    assert ctrl(rig, mac_table_cmd(64, 0)) == 0 and len(rig.net.mac_table) == 64
    assert not rig.net.uni_overflow
    assert ctrl(rig, mac_table_cmd(60, 5)) == 0
    assert len(rig.net.mac_table) == 60 and rig.net.multi_overflow
    assert ctrl(rig, mac_table_cmd(65, 1)) == 0
    assert rig.net.uni_overflow and rig.net.mac_table == [bytes.fromhex("01005e000001")]
    assert ctrl(rig, mac_table_cmd(1, 1) + b"\0") == 1  # a length the counts do not give
    assert ctrl(rig, mac_table_cmd(2, 0)[:-3]) == 1
    assert not rig.status() & NEEDS_RESET
    # The log keeps a bounded prefix of each payload.
    assert all(len(p) <= 64 for _, _, p, _ in rig.net.ctrl_log)


def test_an_indirect_descriptor_after_direct_ones_is_refused():
    mem = CountingMemory(1 << 16)
    mem.poke(0x1000, struct.pack("<QIHH", 0x8000, 16, F_NEXT, 1))
    mem.poke(0x1010, struct.pack("<QIHH", 0x9000, 32, F_INDIRECT, 0))
    mem.poke(0x9000, struct.pack("<QIHH", 0xA000, 64, F_WRITE | F_NEXT, 1))
    mem.poke(0x9010, struct.pack("<QIHH", 0xB000, 64, F_WRITE, 0))
    with pytest.raises(VirtqueueError, match="INDIRECT descriptor 1 after direct ones"):
        walk_chain(mem, 0x1000, 4, 0)
    # On the head it is honoured.
    elem, _ = walk_chain(mem, 0x1000, 4, 1)
    assert elem.writable == [(0xA000, 64), (0xB000, 64)]
