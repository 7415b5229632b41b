"""virtio-net device: config, control queue, traffic, hostile rings, backends, pcap."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess

import pytest

from virtio_msix.guest.sim import SimOptions, make_frame, run_sim
from virtio_msix.guest.virtio_net import start_xmit
from virtio_msix.host.backends import LoopbackBackend, PcapWriter, ResponderBackend, inet_checksum
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.net import QEMU_72_USER_NETDEV_FEATURES, VirtioNet, feature_names


def test_default_features_and_config_are_qemus():
    dev = make_virtio_net_pci()
    net = dev.device
    assert net.host_features == 0x0000010130BF8024 == QEMU_72_USER_NETDEV_FEATURES
    assert "MRG_RXBUF" in feature_names(net.host_features)
    assert [q.max_size for q in net.queues] == [256, 256, 64]
    assert net.config_len == 8
    raw = bytes(dev.bar_read(4, 0x2000 + i, 1) for i in range(8))
    assert raw == bytes.fromhex("525400123456") + b"\x01\x00"


def test_mq_adds_feature_and_config():
    net = VirtioNet(queue_pairs=4)
    assert net.host_features >> 22 & 1
    # QEMU has one pair (and control) until the driver accepts MQ, then all four (qtest:
    # tests/test_qemu_devspec.py test_tap_peer_equal_qemu), and one again after a reset.
    assert len(net.queues) == 3 and net.config_len == 10
    assert net.config_read(8, 2) == 4
    net.set_driver_features(net.host_features)
    assert len(net.queues) == 9 and net.ctrl_index == 8 and net.queues[8].max_size == 64
    net.reset()
    assert len(net.queues) == 3 and net.ctrl_index == 2


def test_link_change_bumps_generation_and_interrupts():
    res = run_sim(SimOptions(teardown=False, packets=0))
    dev = res.device
    gen = dev.config_generation
    before = res.kernel.irqs[24].counts[0]
    dev.device.set_link(False)
    res.kernel.take_interrupts()
    assert dev.config_generation == gen + 1
    assert res.kernel.irqs[24].counts[0] == before + 1  # virtio0-config
    assert res.net.link_up is False  # the driver re-read the status


def test_control_commands_at_open_are_acknowledged():
    res = run_sim(SimOptions(teardown=False, packets=0))
    assert res.net.ctrl_results == [(0, 0, 0), (0, 1, 0), (1, 0, 0)]
    assert res.device.device.promisc is False


def test_hostile_ring_contents_mark_needs_reset_never_raise():
    rng = random.Random(7)
    errors = 0
    for trial in range(40):
        res = run_sim(SimOptions(teardown=False, packets=1))
        k, vi = res.kernel, res.net
        for vq in (vi.rq[0], vi.sq[0], vi.cvq):
            start = vq.desc
            k.memory.write(start, rng.randbytes(16 * vq.num))
            if trial % 2:
                k.memory.write(vq.avail + 2, struct.pack("<H", rng.randrange(65536)))
        for vq in (vi.sq[0], vi.cvq, vi.rq[0]):
            k.writew(vq.index, vq.priv)  # kick
        res.device.device.backend.inject(make_frame(vi.mac, 1))
        res.device.poll()
        if res.device.device.status & 0x40:
            errors += 1
            assert res.device.broken
    assert errors > 0


def test_responder_answers_arp_and_ping():
    r = ResponderBackend("10.0.2.2")
    mac = bytes.fromhex("525400123456")
    arp = (
        struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + mac
        + bytes([10, 0, 2, 15])
        + bytes(6)
        + bytes([10, 0, 2, 2])
    )
    r.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
    reply = r.take_frame()
    assert reply[:6] == mac and reply[12:14] == b"\x08\x06" and reply[20:22] == b"\x00\x02"
    icmp = b"\x08\x00\x00\x00\x12\x34\x00\x01" + b"ping"
    icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                               bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])))  # fmt: skip
    ip[10:12] = struct.pack("!H", inet_checksum(bytes(ip)))
    r.send(r.host_mac + mac + b"\x08\x00" + bytes(ip) + icmp)
    reply = r.take_frame()
    assert reply[14 + 20] == 0  # echo reply
    assert inet_checksum(reply[14:34]) == 0 and inet_checksum(reply[34:]) == 0


@pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark (Debian package tshark) not installed"
)
def test_pcap_is_readable_by_tshark(tmp_path):
    path = tmp_path / "t.pcap"
    res = run_sim(SimOptions(teardown=False, packets=0))
    pcap = PcapWriter(LoopbackBackend(), path)
    res.device.device.backend = pcap
    for n in range(3):
        start_xmit(res.kernel, res.net, make_frame(res.net.mac, n))
    pcap.close()
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "eth.type"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out == ["0x88b5"] * 6  # 3 sent + 3 looped back
