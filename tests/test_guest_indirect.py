"""The split-ring driver model posts a multi-segment buffer as Linux 6.1's virtqueue_add_split
does: in one indirect table when VIRTIO_RING_F_INDIRECT_DESC is negotiated and the queue has no
per-buffer context. virtio_net's big receive buffers (no MRG_RXBUF, guest GSO offered) are the
case: MAX_SKB_FRAGS + 2 segments each, one ring descriptor each, so the ring fills with as many
buffers as it has entries."""

from __future__ import annotations

import struct

from virtio_msix.abi.ring import DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.virtio_net import MAX_SKB_FRAGS, PADDED_VNET_HDR, RX_PAGE
from virtio_msix.virtio.devspec import parse_device

DESC_SIZE = DESC.size


def _sim(device: str, packets: int = 0):
    return run_sim(SimOptions(spec=parse_device(device, "tap"), teardown=False, packets=packets))


def _posted_heads(res, vq):
    mem = res.kernel.memory
    idx = struct.unpack("<H", mem.read(vq.avail + 2, 2))[0]
    heads = [struct.unpack("<H", mem.read(vq.avail + 4 + 2 * (s % vq.num), 2))[0]
             for s in range(idx - vq.num if idx > vq.num else 0, idx)]  # fmt: skip
    return [DESC.unpack(mem.read(vq.desc + DESC_SIZE * h, DESC_SIZE)) for h in heads]


def test_big_receive_buffers_go_indirect():
    res = _sim("virtio-net-pci,mrg_rxbuf=off")
    vi, mem = res.net, res.kernel.memory
    assert vi.big_packets and not vi.mergeable_rx_bufs
    rq = vi.rq[0]
    posted = _posted_heads(res, rq)
    assert len(posted) == rq.num == 256  # one ring entry per buffer: the ring is full
    segs = MAX_SKB_FRAGS + 2
    for table, length, flags, _next in posted:
        assert flags == VRING_DESC_F_INDIRECT and length == segs * DESC_SIZE
        entries = [DESC.unpack_from(mem.read(table, length), DESC_SIZE * i) for i in range(segs)]
        for i, (_addr, n, f, nxt) in enumerate(entries):
            more = VRING_DESC_F_NEXT if i < segs - 1 else 0
            assert f == VRING_DESC_F_WRITE | more and nxt == i + 1  # alloc_indirect_split's next
            assert n == (vi.hdr_len if i == 0 else RX_PAGE - PADDED_VNET_HDR if i == 1 else RX_PAGE)


def test_frames_arrive_through_indirect_buffers_and_tables_are_freed():
    res = _sim("virtio-net-pci,mrg_rxbuf=off", packets=50)
    counters = res.device.device.counters()
    assert counters["rx_frames"] == counters["tx_frames"] == 50
    assert counters["rx_dropped"] == 0 and not res.device.broken
    rq = res.net.rq[0]
    # every buffer still posted holds its table (one ring descriptor each); the used ones'
    # tables went back to the pages. Linux 6.1's virtnet_receive refills only once more than
    # min(budget 64, ring size) / 2 buffers are free: after frame 33, so 17 are not back yet.
    refill_at = min(64, rq.num) // 2 + 1
    assert rq.num_free == 50 - refill_at
    assert len(rq.tables) == len(rq.data) == rq.num - rq.num_free


def test_without_indirect_desc_a_big_buffer_is_a_direct_chain():
    res = _sim("virtio-net-pci,mrg_rxbuf=off,indirect_desc=off")
    rq = res.net.rq[0]
    posted = _posted_heads(res, rq)
    assert not any(f & VRING_DESC_F_INDIRECT for _, _, f, _ in posted)
    assert len(rq.data) == rq.num // (MAX_SKB_FRAGS + 2)  # 13 chains of 19 fill 256 entries


def test_mergeable_buffers_never_go_indirect():
    res = _sim("virtio-net-pci")  # MRG_RXBUF: the receive queues have a context
    rq = res.net.rq[0]
    assert rq.indirect is False and res.net.sq[0].indirect is True
    assert all(f == VRING_DESC_F_WRITE for _, _, f, _ in _posted_heads(res, rq))
