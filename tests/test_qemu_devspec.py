"""``-device virtio-net-pci,PROPS`` against the real QEMU 7.2 (qtest): for each property set the
device model built from the same string (virtio_msix.make_device) must read the same in every
config-space byte, BAR size, and every register of every BAR — the MSI-X table and PBA where
QEMU's msix_init_exclusive_bar puts them, the modern structures (feature windows, num_queues,
every queue's size and notify offset, device config byte by byte), the legacy block — and QEMU's
errors and warnings must be ours, word for word."""

from __future__ import annotations

import pytest

from virtio_msix import SpecError, make_device, parse_device
from virtio_msix.qemu.qtest import QemuDevice, Qtest, QtestError, qemu_available
from virtio_msix.virtio.memory import SparseMemory
from virtio_msix.virtio.regs import COMMON

pytestmark = pytest.mark.qemu

missing = qemu_available()
if missing:
    pytest.fail(f"the differential tests need the real QEMU: {missing}", pytrace=False)

# BAR addresses both devices get: the modern BAR's 8 MiB (page-per-vq) aligned, the MSI-X BAR
# above it, all inside q35's 32-bit hole.
BARS = {0: 0xC000, 1: 0xE100_0000, 2: 0xC100, 4: 0xE000_0000}

PROPERTY_SETS = [
    "vectors=129",
    "vectors=256",
    "vectors=2048",
    "vectors=0",
    "vectors=5000",  # QEMU warns and runs without MSI-X
    "page-per-vq=on",
    "disable-legacy=on",
    "disable-modern=on",
    "mrg_rxbuf=off",
    "ctrl_vq=off",
    "ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,guest_announce=off,ctrl_mac_addr=off",
    "event_idx=off,indirect_desc=off",
    "host_mtu=1400",
    "speed=1000,duplex=full",
    "speed=100",
    "duplex=half",
    "mq=on",
    "mq=on,vectors=6,host_mtu=9000,speed=10000,duplex=full",
    "packed=on,disable-legacy=on",
    "notify_on_empty=off,any_layout=off,gso=off,queue_reset=off",
    "rx_queue_size=1024,tx_queue_size=1024",
    "mac=02:11:22:33:44:55,status=off",
    "modern-pio-notify=on",
    "modern-pio-notify=on,disable-legacy=on,vectors=300",
    "tx=bh,x-txburst=1",
    "tx=fast,x-txtimer=1000",  # QEMU warns and goes on with the bottom half
    "id=net0,bus=pcie.0",  # qdev_device_add's options, in every copied command line
]


class Pair:
    def __init__(self, q: QemuDevice, ours) -> None:
        self.q, self.ours, self.diffs = q, ours, []

    def cfg(self, off: int, size: int) -> None:
        a, b = self.q.cfg_read(off, size), self.ours.cfg_read(off, size)
        if a != b:
            self.diffs.append(f"cfg+{off:#x}/{size}: qemu {a:#x} ours {b:#x}")

    def cfg_write(self, off: int, size: int, value: int) -> None:
        self.q.cfg_write(off, size, value)
        self.ours.cfg_write(off, size, value)

    def bar(self, bar: int, off: int, size: int) -> None:
        a, b = self.q.bar_read(bar, off, size), self.ours.bar_read(bar, off, size)
        if a != b:
            self.diffs.append(f"bar{bar}+{off:#x}/{size}: qemu {a:#x} ours {b:#x}")

    def bar_write(self, bar: int, off: int, size: int, value: int) -> None:
        self.q.bar_write(bar, off, size, value)
        self.ours.bar_write(bar, off, size, value)

    def short(self) -> list[str]:
        return self.diffs[:10] + (
            [f"... {len(self.diffs) - 10} more"] if len(self.diffs) > 10 else []
        )


def bar_sizes(p: Pair) -> None:
    for off in range(0x10, 0x28, 4):
        orig = p.q.cfg_read(off, 4)
        p.cfg_write(off, 4, 0xFFFFFFFF)
        p.cfg(off, 4)
        p.cfg_write(off, 4, orig)


@pytest.mark.parametrize("props", PROPERTY_SETS)
def test_device_properties_equal_qemu(props):
    spec = parse_device(f"virtio-net-pci,{props}")
    ours = make_device(spec, memory=SparseMemory())
    with Qtest(props) as qt:
        p = Pair(QemuDevice(qt, bar_base=BARS), ours)
        # The warning QEMU starts with is ours (vectors it cannot place).
        warnings = [line.split(": ", 2)[-1] for line in qt.stderr().splitlines() if line]
        assert warnings == spec.warnings
        for off in range(0, 0x100, 4):
            p.cfg(off, 4)
        bar_sizes(p)
        for bar, addr in BARS.items():
            off = 0x10 + 4 * bar
            if ours.bars[bar] is not None:
                p.cfg_write(off, 4, addr)
        if ours.bars[4] is not None:
            p.cfg_write(0x24, 4, 0)
        p.cfg_write(0x04, 2, 0x7)
        for off in range(0, 0x100, 4):
            p.cfg(off, 4)
        for off in range(0x40, 0x100):
            p.cfg(off, 1)
        if ours.bars[1] is not None:  # the whole MSI-X BAR: table, the gap, PBA, the rest
            for off in range(0, ours.bars[1].size, 4):
                p.bar(1, off, 4)
        if ours.bars[0] is not None:  # the legacy block
            for off in range(0, ours.bars[0].size, 4):
                p.bar(0, off, 4)
            for off in range(0, ours.bars[0].size):
                p.bar(0, off, 1)
        if ours.bars[2] is not None:  # modern-pio-notify's I/O BAR
            for off in range(0, 4):
                p.bar(2, off, 1)
        if ours.bars[4] is not None:
            c = lambda name: COMMON[name].offset  # noqa: E731
            for sel in range(3):
                p.bar_write(4, c("device_feature_select"), 4, sel)
                p.bar(4, c("device_feature"), 4)
            p.bar(4, c("num_queues"), 2)
            nq = ours.device.queues
            for sel in list(range(len(nq) + 2)) + [1023, 1024]:
                p.bar_write(4, c("queue_select"), 2, sel)
                for name in ("queue_size", "queue_msix_vector", "queue_enable", "queue_notify_off",
                             "queue_notify_data", "queue_reset"):  # fmt: skip
                    p.bar(4, c(name), 2)
            for off in range(0, 0x20):
                p.bar(4, 0x2000 + off, 1)
            for off in range(0, 0x20, 2):
                p.bar(4, 0x2000 + off, 2)
            for off in range(0, 0x20, 4):
                p.bar(4, 0x2000 + off, 4)
            p.bar(4, 0x1000, 1)
            for off in (0, 4, 0xFFC, 0x1000, ours.notify_size - 4):
                p.bar(4, 0x3000 + off, 4)
    assert p.short() == []


@pytest.mark.parametrize(
    "props",
    [
        "foo=1",
        "mq=maybe",
        "vectors=-1",
        "vectors=abc",
        "host_mtu=70000",
        "speed=-2",
        "duplex=foo",
        "rx_queue_size=128",
        "rx_queue_size=2048",
        "tx_queue_size=100",
        "disable-legacy=yes",
        "disable-legacy=on,disable-modern=on",
        "mac=52:54:00:12:34",
        "romsize=1000",
        "romsize=0",
        "romsize=0,rombar=0",
        "id=1x",
        "bus=nosuch",
        "romsize=4096",
    ],
)
def test_refusals_are_qemus(props):
    """Where QEMU refuses to start, so do we, with its message (QEMU prefixes its own with
    the program and the -device string; two-line messages are joined into one)."""
    with pytest.raises(SpecError) as ours:
        parse_device(f"virtio-net-pci,{props}")
    with pytest.raises(QtestError) as theirs:
        Qtest(props).close()
    qemu_msg = str(theirs.value).split("netdev=n0: ", 1)[1]
    assert str(ours.value).startswith(qemu_msg.rstrip(".")), (str(ours.value), qemu_msg)


def test_netdev_queues_give_the_pairs():
    """mq=on only offers MQ; the pairs and the default vectors are the netdev's queues=N
    (a TAP peer, which the real QEMU cannot open here without one: our side only)."""
    d = make_device("virtio-net-pci,mq=on", netdev="tap,queues=3,vnet_hdr=off")
    assert d.msix is not None and d.msix.table_size == 8 and d.device.config_read(8, 2) == 3
    d.device.set_driver_features(d.device.host_features)  # the driver accepts MQ
    assert len(d.device.queues) == 7
    assert d.device.host_features == 0x10130FF8024
    d = make_device("virtio-net-pci", netdev="tap")
    assert d.device.host_features & 0xFFFFFFFF == 0x30BFFFA7
    with pytest.raises(SpecError, match="Invalid number of queue pairs"):
        make_device("virtio-net-pci", netdev="tap,queues=512")


def _can_make_a_tap() -> str | None:
    import os
    import shutil

    if os.geteuid() != 0:
        return "a TAP peer in a private network namespace needs root"
    if not shutil.which("unshare") or not os.path.exists("/dev/net/tun"):
        return "no unshare(1) or /dev/net/tun"
    return None


@pytest.mark.parametrize(
    "props,netdev,features",
    [
        ("mq=on", "tap,queues=2", 0x30FFFFA7),
        ("", "tap", 0x30BFFFA7),
        ("mq=on,vectors=10", "tap,queues=4,vnet_hdr=off", 0x30FF8024),
        ("", "tap,queues=2,vnet_hdr=off", 0x30BF8024),  # pairs without MQ: one pair used
        ("mrg_rxbuf=off,guest_tso4=off", "tap", 0x30BF7F27),
    ],
)
def test_tap_peer_equal_qemu(props, netdev, features):
    """A TAP peer (QEMU creates it in a private network namespace, ``unshare --net``): the
    offloads it keeps and its queue pairs, before and after the driver accepts MQ (QEMU has
    one pair until then, and again after a reset), against the same description here."""
    why = _can_make_a_tap()
    if why:
        pytest.skip(why)
    ours = make_device(f"virtio-net-pci,{props}" if props else "virtio-net-pci", netdev=netdev,
                       memory=SparseMemory())  # fmt: skip
    qemu_netdev = netdev.replace("tap", "tap,ifname=vmsix0,script=no,downscript=no", 1)
    with Qtest(props, netdev=qemu_netdev, prefix=["unshare", "--net"]) as qt:
        p = Pair(QemuDevice(qt, bar_base=BARS), ours)
        for bar, addr in BARS.items():
            if ours.bars[bar] is not None:
                p.cfg_write(0x10 + 4 * bar, 4, addr)
        p.cfg_write(0x24, 4, 0)
        p.cfg_write(0x04, 2, 0x7)
        c = lambda name: COMMON[name].offset  # noqa: E731

        def queues() -> None:
            p.bar(4, c("num_queues"), 2)
            for sel in range(12):
                p.bar_write(4, c("queue_select"), 2, sel)
                p.bar(4, c("queue_size"), 2)
                p.bar(4, c("queue_notify_off"), 2)

        p.bar_write(4, c("device_feature_select"), 4, 0)
        assert p.q.bar_read(4, c("device_feature"), 4) == features
        p.bar(4, c("device_feature"), 4)
        for off in range(0, 0x10):
            p.bar(4, 0x2000 + off, 1)
        p.bar(1, 0, 4)
        p.cfg(0x98 + 2, 2)  # MSI-X Message Control: the table size from the peers
        queues()
        p.bar_write(4, c("device_status"), 1, 1)
        p.bar_write(4, c("device_status"), 1, 3)
        for sel, value in ((0, features), (1, 1)):
            p.bar_write(4, c("driver_feature_select"), 4, sel)
            p.bar_write(4, c("driver_feature"), 4, value)
        queues()
        p.bar_write(4, c("device_status"), 1, 0)
        queues()
    assert p.short() == []
