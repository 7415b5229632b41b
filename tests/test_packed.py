"""Packed virtqueues (virtio 1.2 §2.8) end to end in simulation: offered only with packed=on,
negotiated by the driver model as Linux 6.1 does, the probe equal to real Linux on real QEMU
with packed=on (a capture-qemu capture), traffic through the packed rings, reset back to split.
The hostile cases are tests/hostile/test_hostile_packed.py; the real kernel is
tests/test_uml_boot.py."""

from __future__ import annotations

import struct

import pytest
from capture_sets import DATA, load

from virtio_msix.abi.ring import DESC_F_AVAIL, DESC_F_USED
from virtio_msix.devcli import count_reads, replay_records
from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.vring import PackedVringVirtqueue, VringVirtqueue
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.memory import SparseMemory
from virtio_msix.virtio.net import VirtioNet
from virtio_msix.virtio.regs import COMMON

RING_PACKED = 1 << 34
# Real Linux 6.1 probing real QEMU 7.2's virtio-net-pci,packed=on (q35, TCG), made by
# `capture-qemu --device virtio-net-pci,packed=on` (tests/capture_sets.py).
PACKED_CAPTURES = [n for n in ("qemu-q35-packed",) if (DATA / f"{n}.jsonl").exists()]


def test_ring_packed_is_offered_only_with_packed_on():
    assert not VirtioNet().host_features & RING_PACKED
    assert VirtioNet(packed=True).host_features == VirtioNet().host_features | RING_PACKED
    dev = make_virtio_net_pci(packed=True)
    dev.bar_write(4, COMMON["device_feature_select"].offset, 4, 1)
    assert dev.bar_read(4, COMMON["device_feature"].offset, 4) == 0x105  # VERSION_1|RING_RESET too


def test_a_capture_of_real_linux_on_packed_qemu_exists():
    assert PACKED_CAPTURES, "no capture of -device virtio-net-pci,packed=on in tests/data"


@pytest.mark.parametrize("name", PACKED_CAPTURES)
def test_real_linux_negotiated_packed_and_the_model_probes_the_same(name):
    real = load(name)
    words = [r["value"] for r in real if r["space"] == "common" and r["op"] == "w"
             and r["offset"] == COMMON["driver_feature"].offset]  # fmt: skip
    assert words[-1] >> 2 & 1, "the real driver did not take RING_PACKED"
    res = run_sim(SimOptions(packed=True, teardown=False, packets=0))
    assert res.device.device.driver_features & RING_PACKED
    expected, got = virtio_phase(real), virtio_phase(res.recorder.records)
    d = diff(expected, got)
    assert len(expected) > 100
    assert d == [], "\n".join(f"{x.index}: {format_key(x.expected)} | {format_key(x.got)}"
                              for x in d[:10])  # fmt: skip


@pytest.mark.parametrize("name", PACKED_CAPTURES)
def test_replay_packed_capture_zero_mismatches(name):
    records = load(name)
    dev = make_virtio_net_pci(packed=True, memory=SparseMemory())
    assert count_reads(records) > 200
    mismatches = replay_records(records, device=dev)
    assert mismatches == [], mismatches[:5]
    # The same trace against a device without packed=on differs at the feature window.
    assert replay_records(records, device=make_virtio_net_pci(memory=SparseMemory()))


def test_sim_packed_runs_traffic_around_the_ring_many_times():
    res = run_sim(SimOptions(packed=True, teardown=False, packets=700))
    net = res.device.device
    assert all(q.packed for q in net.queues)
    assert all(isinstance(vq, PackedVringVirtqueue) for vq in res.vp.vqs)
    assert net.stats["tx_frames"] == net.stats["rx_frames"] == 700
    assert not net.status & 0x40  # no NEEDS_RESET
    # 700 frames on 256-entry rings: the device's wrap counters flipped twice (back to 1) on
    # both rings, and the driver reaped everything it was given back.
    for i in (0, 1):
        pr = net.queues[i]._packed
        assert pr is not None and pr.inuse == 0
    sq = res.net.sq[0]
    assert sq.num_free == sq.num and not sq.state


def test_without_packed_the_driver_model_stays_split():
    res = run_sim(SimOptions(teardown=False, packets=3))
    assert not any(q.packed for q in res.device.device.queues)
    assert all(type(vq) is VringVirtqueue for vq in res.vp.vqs)


def test_device_reset_returns_the_queues_to_split_and_queue_sizes_follow_the_layout():
    dev = make_virtio_net_pci(packed=True, memory=SparseMemory())

    def wr(name, v):
        dev.bar_write(4, COMMON[name].offset, COMMON[name].size, v)

    def rd(name):
        return dev.bar_read(4, COMMON[name].offset, COMMON[name].size)

    wr("device_status", 1 | 2)
    wr("driver_feature_select", 1)
    wr("driver_feature", 0x5)  # VERSION_1 | RING_PACKED
    wr("device_status", 1 | 2 | 8)
    assert all(q.packed for q in dev.device.queues)
    wr("queue_select", 0)
    wr("queue_size", 100)  # §2.8: any size for a packed ring
    assert rd("queue_size") == 100
    wr("device_status", 0)
    assert not any(q.packed for q in dev.device.queues)
    wr("device_status", 1 | 2)
    wr("driver_feature_select", 1)
    wr("driver_feature", 0x1)
    wr("device_status", 1 | 2 | 8)
    wr("queue_select", 0)
    wr("queue_size", 100)  # §2.7: a split ring's size is a power of two
    assert rd("queue_size") == 256
    wr("queue_size", 128)
    assert rd("queue_size") == 128


def test_driver_model_kick_follows_the_device_event_suppression():
    """virtqueue_kick_prepare_packed: DISABLE means no notify write; DESC one at the event."""
    res = run_sim(SimOptions(packed=True, teardown=False, packets=0))
    k, sq = res.kernel, res.net.sq[0]
    notifies = []
    sq.notify = lambda q: notifies.append(q.next_avail_idx) or True
    buf = k.pages.alloc(64, align=64)
    k.memory.write(sq.used, struct.pack("<HH", 0, 1))  # DISABLE
    sq.add_sgs([(buf, 64)], [], "a")
    sq.kick()
    assert notifies == []
    # DESC at the position after the next two: only the add that passes it kicks.
    pos = sq.next_avail_idx
    k.memory.write(sq.used, struct.pack("<HH", (pos + 1) | sq.avail_wrap_counter << 15, 2))
    for tok in "bc":
        sq.add_sgs([(buf, 64)], [], tok)
        sq.kick()
    assert notifies == [pos + 2]


def test_driver_model_add_writes_the_head_flags_for_its_wrap():
    res = run_sim(SimOptions(packed=True, teardown=False, packets=0))
    k, sq = res.kernel, res.net.sq[0]
    buf = k.pages.alloc(64, align=64)
    flags = []
    for n in range(sq.num + 1):
        pos = sq.next_avail_idx
        assert sq.add_sgs([(buf, 64)], [], n) == 0
        flags.append(struct.unpack_from("<H", k.memory.read(sq.desc + 16 * pos + 14, 2))[0])
        while sq.get_buf() is not None:
            pass
        k.take_interrupts()
        res.device.device.queue_notify(1)
        while sq.get_buf() is not None:
            pass
    avail_w1 = DESC_F_AVAIL
    avail_w0 = DESC_F_USED
    assert flags[0] & (DESC_F_AVAIL | DESC_F_USED) == avail_w1
    assert flags[sq.num] & (DESC_F_AVAIL | DESC_F_USED) == avail_w0


def test_driver_model_sends_control_commands_through_indirect_tables():
    """virtqueue_use_indirect: with INDIRECT_DESC a multi-segment buffer (a control command:
    header, payload, status) takes one ring position; the device walks the table (§2.8.19)."""
    res = run_sim(SimOptions(packed=True, teardown=False, packets=0))
    cvq = res.net.cvq
    assert cvq.indirect
    results = res.net.ctrl_results
    assert results and all(ack == 0 for *_, ack in results)
    assert cvq.next_avail_idx == len(results)  # one position per command
    assert cvq.num_free == cvq.num and not cvq.state  # every table given back
    ctrl = res.device.device.queues[res.device.device.ctrl_index]
    assert ctrl.desc_reads >= 4 * len(results)  # the ring descriptor and each table entry


@pytest.mark.qemu
def test_packed_on_against_real_qemu_register_for_register():
    """QEMU 7.2's own ``-device virtio-net-pci,packed=on`` (qtest) and ours, the same accesses:
    the feature windows, the real kernel's packed probe from the capture, then a packed-only
    queue size."""
    from virtio_msix.qemu.qtest import QemuDevice, Qtest, qemu_available

    missing = qemu_available()
    if missing:
        pytest.fail(f"this test needs the real QEMU: {missing}", pytrace=False)
    ours = make_virtio_net_pci(packed=True, memory=SparseMemory())
    with Qtest("packed=on") as qt:
        q = QemuDevice(qt)
        for off, val in ((0x10, 0xC000), (0x14, 0xE0100000), (0x20, 0xE0000000), (0x24, 0)):
            ours.cfg_write(off, 4, val)
        ours.cfg_write(4, 2, 7)
        q.map_bars()
        log = []

        def both(op, bar, off, size, val=0):
            if op == "w":
                q.bar_write(bar, off, size, val)
                ours.bar_write(bar, off, size, val)
            else:
                log.append((bar, off, size, q.bar_read(bar, off, size),
                            ours.bar_read(bar, off, size)))  # fmt: skip

        both("w", 4, COMMON["device_status"].offset, 1, 0)
        for sel in (0, 1, 2):
            both("w", 4, COMMON["device_feature_select"].offset, 4, sel)
            both("r", 4, COMMON["device_feature"].offset, 4)
        regions = {"common": 0, "isr": 0x1000, "device": 0x2000, "notify": 0x3000,
                   "msix-table": 0, "msix-pba": 0x800}  # fmt: skip
        bars = {"common": 4, "isr": 4, "device": 4, "notify": 4, "msix-table": 1, "msix-pba": 1}
        for r in load(PACKED_CAPTURES[-1]):
            if r.get("phase") != "probe" or r["space"] not in regions:
                continue
            both(r["op"], bars[r["space"]], regions[r["space"]] + r["offset"], r["size"],
                 r["value"])  # fmt: skip
        both("w", 4, COMMON["device_status"].offset, 1, 0)
        for name, val in (("device_status", 3), ("driver_feature_select", 1),
                          ("driver_feature", 5), ("device_status", 11)):  # fmt: skip
            both("w", 4, COMMON[name].offset, COMMON[name].size, val)
        both("r", 4, COMMON["device_status"].offset, 1)
        both("w", 4, COMMON["queue_select"].offset, 2, 1)
        both("w", 4, COMMON["queue_size"].offset, 2, 100)
        both("r", 4, COMMON["queue_size"].offset, 2)
    assert len(log) > 40
    bad = [f"bar{b}+{o:#x}/{n}: qemu {a:#x} ours {c:#x}" for b, o, n, a, c in log if a != c]
    assert bad == [], bad[:8]
    assert log[1][3] == 0x105  # RING_PACKED in QEMU's own feature window 1
    assert log[-1][3] == 100


def _packed_rng():
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "rng.py"
    rng = runpy.run_path(str(example))["make_device"]()
    rng.host_features |= RING_PACKED  # a device of the user's that offers packed rings
    return rng


def test_any_virtio_device_gets_packed_rings_from_the_generic_driver():
    """The public API: packed is the transport's and the core's, not virtio-net's."""
    from virtio_msix import Machine

    rng = _packed_rng()
    m = Machine(rng)
    v = m.probe()
    assert v.rc == 0 and v.features & RING_PACKED and rng.queues[0].packed
    for _ in range(20):  # an 8-entry ring, around it more than twice
        data = m.transfer(0, in_len=64)
        assert len(data) == 64 and data == rng.produced[-1]
    assert not rng.status & 0x40
