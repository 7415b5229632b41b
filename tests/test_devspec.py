"""``--device``/``--netdev`` (QEMU's syntax) on every command: parsing as QEMU parses, the old
flags as shorthands, one-line errors, the device the properties build (big MSI-X tables,
page-per-vq, the peer's offloads) and the Linux 6.1 model's reaction to them (ctrl_vq=off
rejected with -EINVAL and FAILED, page-per-vq notify addresses, the receive buffer layouts).
The same properties against the real QEMU: tests/test_qemu_devspec.py; against real Linux
captures: tests/test_devspec_captures.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from virtio_msix import SpecError, make_device, parse_device
from virtio_msix.cli import main
from virtio_msix.devcli import replay_records
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.pci.msix import exclusive_bar_layout
from virtio_msix.virtio.devspec import PROPERTIES
from virtio_msix.virtio.memory import SparseMemory
from virtio_msix.virtio.regs import COMMON

DATA = Path(__file__).parent / "data"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("word,value", [("on", True), ("yes", True), ("true", True), ("y", True),
                                        ("off", False), ("no", False), ("false", False), ("n", False)])  # fmt: skip
def test_bool_words_as_qemu(word, value):
    assert parse_device(f"virtio-net-pci,mq={word}").get("mq") is value


def test_integers_as_qemus_strtoll():
    assert parse_device("virtio-net-pci,vectors=0x10").vectors == 16
    assert parse_device("virtio-net-pci,vectors=010").vectors == 8
    assert parse_device("vectors=7").vectors == 7  # the driver name may be left out


@pytest.mark.parametrize(
    "text,message",
    [
        ("virtio-net-pci,foo=1", "Property 'virtio-net-pci.foo' not found"),
        ("virtio-net-pci,mq=ON", "Parameter 'mq' expects 'on' or 'off'"),
        ("virtio-net-pci,vectors=4294967296", "Parameter 'vectors' expects uint32_t"),
        ("virtio-net-pci,rss=on", "rss=on is not modelled"),
        ("virtio-net-pci,iommu_platform=on", "iommu_platform=on is not modelled"),
        ("virtio-blk-pci", "'virtio-blk-pci' is not a valid device model name"),
        ("virtio-net-pci,netdev=n1", None),
    ],
)
def test_refusals_are_one_line(text, message):
    netdev = "user,id=n0" if "netdev=" in text else None
    with pytest.raises(SpecError) as e:
        parse_device(text, netdev)
    assert "\n" not in str(e.value)
    if message:
        assert message in str(e.value)


def test_every_property_has_a_type_default_and_effect():
    names = [p.name for p in PROPERTIES]
    assert len(names) == len(set(names))
    for p in PROPERTIES:
        assert p.kind in ("bool", "uint16", "uint32", "int32", "str", "onoffauto", "mac")
        assert p.effect in ("model", "none", "refuse-on")
    # QEMU 7.2's property names (qemu-system-x86_64 -device virtio-net-pci,help) are all known.
    for name in ("csum", "guest_csum", "gso", "guest_tso4", "guest_tso6", "guest_ecn", "guest_ufo",
                 "guest_announce", "host_tso4", "host_tso6", "host_ecn", "host_ufo", "mrg_rxbuf",
                 "status", "ctrl_vq", "ctrl_rx", "ctrl_vlan", "ctrl_rx_extra", "ctrl_mac_addr",
                 "ctrl_guest_offloads", "mq", "rss", "hash", "mac", "host_mtu", "speed", "duplex",
                 "rx_queue_size", "tx_queue_size", "indirect_desc", "event_idx", "notify_on_empty",
                 "any_layout", "iommu_platform", "packed", "vectors", "disable-legacy",
                 "disable-modern", "page-per-vq", "modern-pio-notify", "ioeventfd", "addr",
                 "netdev"):  # fmt: skip
        assert name in names


# -- the device ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n,layout", [(1, (0x1000, 0, 0x800)), (128, (0x1000, 0, 0x800)),
                                      (129, (0x1000, 0, 0x810)), (256, (0x2000, 0, 0x1000)),
                                      (2048, (0x10000, 0, 0x8000))])  # fmt: skip
def test_msix_bar_as_msix_init_exclusive_bar(n, layout):
    assert exclusive_bar_layout(n) == layout


def test_entry_128_does_not_shadow_the_pba():
    d = make_device("virtio-net-pci,vectors=129", memory=SparseMemory())
    d.cfg_write(0x14, 4, 0xE100_0000)
    d.cfg_write(0x04, 2, 0x6)
    d.bar_write(1, 128 * 16 + 8, 4, 0x4321)  # entry 128's data
    assert d.bar_read(1, 128 * 16 + 8, 4) == 0x4321
    assert d.bar_read(1, 0x810, 4) == 0  # the PBA: nothing pending
    d.bar_write(1, 0x810, 4, 0xFFFFFFFF)  # the PBA is read-only
    assert d.bar_read(1, 0x810, 4) == 0


def test_vectors_qemu_cannot_place_mean_no_msix():
    spec = parse_device("virtio-net-pci,vectors=2049")
    assert spec.warnings == ["warning: unable to init msix vectors to 2049"]
    assert make_device(spec).msix is None


def test_peer_decides_offloads_and_pairs():
    assert make_device("virtio-net-pci").device.host_features == 0x10130BF8024
    assert make_device("virtio-net-pci", netdev="tap").device.host_features == 0x10130BFFFA7
    plain = make_device("virtio-net-pci", netdev="tap,vnet_hdr=off").device.host_features
    assert plain == 0x10130BF8024
    d = make_device("virtio-net-pci", netdev="tap,queues=2")  # no mq: MQ not offered
    assert not d.device.host_features >> 22 & 1 and d.device.config_len == 8
    d.device.set_driver_features(d.device.host_features | 1 << 22)
    assert len(d.device.queues) == 3  # one pair for ever
    assert d.msix is not None and d.msix.table_size == 6  # QEMU's default: 2 * peers + 2


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sim", "show"])
def test_flags_conflicting_with_the_description(capsys, command):
    for argv, word in (
        (["--vectors", "4", "--device", "virtio-net-pci,vectors=6"], "conflicts"),
        (["--queue-pairs", "2", "--netdev", "tap,queues=3"], "conflicts"),
        (["--disable-legacy", "--device", "virtio-net-pci,disable-legacy=off"], "conflicts"),
        (["--device", "virtio-net-pci,bogus=1"], "Property 'virtio-net-pci.bogus' not found"),
        (["--netdev", "socket"], "does not accept value 'socket'"),
    ):
        rc, out, err = run(capsys, command, *argv)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and word in err, err


def test_shorthands_equal_the_description(capsys):
    rc1, a, _ = run(
        capsys, "show", "--json", "--vectors", "6", "--queue-pairs", "2", "--disable-legacy"
    )
    rc2, b, _ = run(capsys, "show", "--json", "--device", "virtio-net-pci,mq=on,vectors=6,disable-legacy=on",
                    "--netdev", "tap,queues=2,vnet_hdr=off")  # fmt: skip
    assert rc1 == rc2 == 0 and json.loads(a) == json.loads(b)


def test_device_help_lists_the_properties(capsys):
    rc, out, _ = run(capsys, "show", "--device", "help")
    assert rc == 0 and "page-per-vq=<bool>" in out and "vectors=<uint32>" in out


# -- the Linux 6.1 model's reaction ------------------------------------------------------------------


def status_writes(res) -> list[int]:
    off = COMMON["device_status"].offset
    return [r["value"] for r in res.recorder.records
            if r.get("space") == "common" and r.get("op") == "w" and r["offset"] == off]  # fmt: skip


def test_ctrl_vq_off_is_rejected_by_virtnet_validate():
    """QEMU still offers CTRL_RX, CTRL_VLAN, ... without CTRL_VQ; Linux 6.1's
    virtnet_validate_features refuses that, probe fails with -EINVAL, and virtio_dev_probe
    sets FAILED on top of ACKNOWLEDGE | DRIVER — no FEATURES_OK, no queue."""
    res = run_sim(SimOptions(spec=parse_device("virtio-net-pci,ctrl_vq=off")))
    assert res.probe_rc == -22
    assert status_writes(res) == [0, 0x1, 0x3, 0x83]
    assert not any(r.get("space") == "msix-table" for r in res.recorder.records)


def test_ctrl_vq_off_with_its_dependants_probes_without_control_queue():
    spec = parse_device("virtio-net-pci,ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,guest_announce=off,"
                        "ctrl_mac_addr=off")  # fmt: skip
    res = run_sim(SimOptions(spec=spec, packets=4))
    assert res.probe_rc == 0 and res.net is not None and res.net.cvq is None
    # Two queues set up by the driver; QEMU's control queue exists but stays unused.
    assert len(res.net.rq) + len(res.net.sq) == 2 and len(res.device.device.queues) == 3
    assert res.net.rx_packets == 4


def test_page_per_vq_notify_addresses():
    """Linux maps each queue's notify address from the capability (the structure is larger
    than a page) and kicks queue N at N * 0x1000."""
    res = run_sim(SimOptions(spec=parse_device("virtio-net-pci,page-per-vq=on"), packets=2))
    assert res.probe_rc == 0
    kicks = {r["offset"] for r in res.recorder.records if r.get("space") == "notify"}
    assert kicks == {0x0000, 0x1000, 0x2000}
    assert res.net is not None and res.net.rx_packets == 2


@pytest.mark.parametrize(
    "device,netdev,segments,length",
    [
        ("virtio-net-pci,mrg_rxbuf=off", None, 1, 12 + 1518),  # add_recvbuf_small
        ("virtio-net-pci,mrg_rxbuf=off", "tap", 19, 12),  # add_recvbuf_big: header first,
        # in an indirect table (INDIRECT_DESC, and big buffers' queues have no context)
        ("virtio-net-pci", None, 1, 1536 + 12),  # mergeable
    ],
)
def test_receive_buffer_layout(device, netdev, segments, length):
    res = run_sim(SimOptions(spec=parse_device(device, netdev), packets=3, teardown=False))
    assert res.probe_rc == 0 and res.net is not None
    rq = res.net.rq[0]
    desc = res.kernel.memory.read(rq.desc, 16 * rq.num)
    last = (int.from_bytes(res.kernel.memory.read(rq.avail + 2, 2), "little") - 1) % rq.num
    head = int.from_bytes(res.kernel.memory.read(rq.avail + 4 + 2 * last, 2), "little")
    chain, i = [], head
    head_flags = int.from_bytes(desc[16 * head + 12 : 16 * head + 14], "little")
    if head_flags & 4:  # VRING_DESC_F_INDIRECT: a big buffer's segments are in a table
        addr = int.from_bytes(desc[16 * head : 16 * head + 8], "little")
        size = int.from_bytes(desc[16 * head + 8 : 16 * head + 12], "little")
        desc, i = res.kernel.memory.read(addr, size), 0
    for _ in range(rq.num):
        addr_len_flags_next = desc[16 * i : 16 * i + 16]
        chain.append(int.from_bytes(addr_len_flags_next[8:12], "little"))
        flags = int.from_bytes(addr_len_flags_next[12:14], "little")
        if not flags & 1:
            break
        i = int.from_bytes(addr_len_flags_next[14:16], "little")
    assert len(chain) == segments and chain[0] == length
    assert res.net.rx_packets == 3 and all(len(f) > 60 for f in res.net.received)


# -- replay ---------------------------------------------------------------------------------------


def test_replay_takes_the_device_from_the_meta_line(tmp_path, capsys):
    """sim --trace-json starts with the meta record naming its device; replay needs no flags,
    and the same trace without that record is replayed against QEMU's default device."""
    trace = tmp_path / "t.jsonl"
    device = "virtio-net-pci,vectors=129,page-per-vq=on,host_mtu=9000"
    rc, _, _ = run(capsys, "sim", "--device", device, "--netdev", "tap", "--trace-json", str(trace))
    assert rc == 0
    first, *rest = trace.read_text().splitlines()
    meta = json.loads(first)
    assert (meta["space"], meta["device"], meta["netdev"]) == ("meta", device, "tap")
    rc, out, _ = run(capsys, "replay", str(trace))
    assert rc == 0 and out.strip().endswith(" 0 mismatched")
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(rest) + "\n")
    rc, out, _ = run(capsys, "replay", str(bare))
    assert rc != 0


def test_old_capture_uses_its_meta_json(tmp_path, capsys):
    """tests/data/qemu-q35-vectors2 has no meta line; its NAME.meta.json says vectors 2."""
    src = DATA / "qemu-q35-vectors2.jsonl"
    rc, out, _ = run(capsys, "replay", str(src))
    assert rc == 0 and out.strip().endswith(" 0 mismatched")
    alone = tmp_path / "v2.jsonl"  # the same trace without its meta.json: the default device
    shutil.copy(src, alone)
    rc, out, _ = run(capsys, "replay", str(alone))
    assert rc == 1
    records = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    assert replay_records(records, vectors=2) == []


def test_modern_pio_notify():
    """QEMU's second notify structure in I/O BAR2 (multiplier 0) comes first in the capability
    list, so Linux's capability walk takes it: every kick is the queue index written to one
    port (iowrite16 on pci_iomap's port cookie)."""
    res = run_sim(SimOptions(spec=parse_device("virtio-net-pci,modern-pio-notify=on"), packets=3))
    assert res.probe_rc == 0 and res.net is not None and res.net.rx_packets == 3
    kicks = [r for r in res.recorder.records if r.get("space") in ("notify", "notify-pio")]
    assert kicks and {(r["space"], r["offset"]) for r in kicks} == {("notify-pio", 0)}
    assert {r["value"] for r in kicks} <= {0, 1, 2}


@pytest.mark.parametrize("props,speed,duplex", [("speed=1000,duplex=full", 1000, 1),
                                                ("duplex=half", 0xFFFFFFFF, 0), ("", 0xFFFFFFFF, 0xFF)])  # fmt: skip
def test_speed_duplex_read_when_the_link_comes_up(props, speed, duplex):
    res = run_sim(SimOptions(spec=parse_device(f"virtio-net-pci,{props}" if props else "virtio-net-pci"),
                             packets=1))  # fmt: skip
    assert res.net is not None and (res.net.speed, res.net.duplex) == (speed, duplex)
    reads = [(r["offset"], r["size"]) for r in res.recorder.records
             if r.get("space") == "device" and r.get("phase") == "run"]  # fmt: skip
    assert reads[:3] == ([(6, 2), (12, 4), (16, 1)] if props else [(6, 2)])


# -- TX: tx and x-txburst ------------------------------------------------------------------------


def test_tx_modes_bh_timer_and_unknown():
    assert parse_device("virtio-net-pci,tx=bh").warnings == []
    # tx=timer: said, not refused (config space is QEMU's either way: replay stays exact)
    timer = parse_device("virtio-net-pci,tx=timer")
    assert timer.warnings == ["warning: tx=timer is not modelled: the device serves each TX "
                              "kick at once, as tx=bh"]  # fmt: skip
    assert make_device(timer).device.tx_burst == 256
    # An unknown mode: QEMU's two warning lines (measured in test_qemu_devspec), then bh.
    spec = parse_device("virtio-net-pci,tx=fast")
    assert spec.warnings == ['warning: virtio-net: Unknown option tx=fast, valid options: '
                             '"timer" "bh"', 'Defaulting to "bh"']  # fmt: skip


@pytest.mark.parametrize("text,burst", [("", 256), ("x-txburst=2", 2), ("x-txburst=0", 1),
                                        ("x-txburst=-7", 1), ("x-txburst=0x7fffffff", 4096)])  # fmt: skip
def test_x_txburst_reaches_the_device(text, burst):
    """virtio_net_flush_tx serves one chain before it compares its count with tx_burst, so 0
    and negative values serve one per flush; the model also ends a flush at TX_BURST_MAX."""
    assert make_device(f"virtio-net-pci,{text}".rstrip(",")).device.tx_burst == burst


@pytest.mark.parametrize("text,message", [
    ("id=1x", "Parameter 'id' expects an identifier"),
    ("id=", "Parameter 'id' expects an identifier"),
    ("bus=nosuch", "Bus 'nosuch' not found"),
])  # fmt: skip
def test_qdev_id_and_bus_are_checked_as_qemu_does(text, message):
    with pytest.raises(SpecError) as e:
        parse_device(f"virtio-net-pci,{text}")
    assert str(e.value).startswith(message)
    for ok in ("id=net0,bus=pcie.0", "id=a_b-c.d,bus=pci.0"):
        assert parse_device(f"virtio-net-pci,{ok}").warnings == []
