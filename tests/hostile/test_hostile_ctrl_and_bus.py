"""Issue 8, defects 13 and 12 (bus half): a failed control command changes nothing; the
simulator's PciBus refuses accesses no CPU could make with a clear error."""

from __future__ import annotations

import struct

import pytest
from rig import F_NEXT, F_WRITE, NEEDS_RESET, Rig

from virtio_msix.pci.bus import PciBus, PciBusError
from virtio_msix.virtio import make_virtio_net_pci

VLAN, RX, MAC, MQ, OFFLOADS = 2, 0, 1, 4, 5


def ctrl(rig: Rig, cls: int, cmd: int, payload: bytes) -> int:
    n = rig.cvq.avail_idx % rig.cvq.size
    i = (2 * n) % rig.cvq.size
    cmd_buf, ack_buf = rig.buffer(2 + len(payload)), rig.buffer(1)
    rig.mem.poke(cmd_buf, bytes([cls, cmd]) + payload)
    rig.mem.poke(ack_buf, b"\xff")
    rig.cvq.set_desc(i, cmd_buf, 2 + len(payload), F_NEXT, i + 1)
    rig.cvq.set_desc(i + 1, ack_buf, 1, F_WRITE)
    rig.cvq.offer(i)
    rig.kick(rig.cvq)
    return rig.mem.buf[ack_buf]


def net_state(rig: Rig) -> tuple:
    n = rig.net
    return (n.promisc, n.allmulti, bytes(n.mac), list(n.mac_table), set(n.vlans),
            n.guest_offloads, n.curr_queue_pairs)  # fmt: skip


def test_invalid_vlan_command_leaves_the_vlan_table_unchanged():
    rig = Rig()
    assert ctrl(rig, VLAN, 0, struct.pack("<H", 5)) == 0  # ADD 5
    assert rig.net.vlans == {5}
    assert ctrl(rig, VLAN, 7, struct.pack("<H", 5)) == 1  # invalid cmd: ERR...
    assert rig.net.vlans == {5}  # ...and nothing removed
    assert ctrl(rig, VLAN, 9, struct.pack("<H", 6)) == 1
    assert rig.net.vlans == {5}  # nothing added either
    assert ctrl(rig, VLAN, 1, struct.pack("<H", 5)) == 0  # DEL 5
    assert rig.net.vlans == set()


@pytest.mark.parametrize(
    "cls,cmd,payload",
    [
        (VLAN, 2, struct.pack("<H", 5)),
        (VLAN, 0, struct.pack("<H", 4096)),
        (VLAN, 0, b"\x05"),
        (RX, 0, b"\x00\x00"),
        (RX, 9, b"\x00"),
        (MAC, 1, b"\x02" * 5),
        (MAC, 0, struct.pack("<I", 1) + b"\x02" * 6),  # the multicast table is missing
        (MAC, 0, struct.pack("<I", 0) + struct.pack("<I", 1) + b"\x02" * 6 + b"x"),
        (MAC, 7, b""),
        (MQ, 0, struct.pack("<H", 2)),  # MQ not negotiated
        (OFFLOADS, 0, struct.pack("<Q", 1 << 60)),
        (99, 0, b""),
    ],
)
def test_every_failed_control_command_changes_nothing(cls, cmd, payload):
    rig = Rig()
    ctrl(rig, VLAN, 0, struct.pack("<H", 5))
    before = net_state(rig)
    assert ctrl(rig, cls, cmd, payload) == 1
    assert net_state(rig) == before
    assert not rig.status() & NEEDS_RESET


@pytest.mark.parametrize(
    "call,args,words",
    [
        ("cfg_read", (0, 0, 0, -1), "size"),
        ("cfg_read", (0, 0, 0, 2**31), "size"),
        ("cfg_read", (0, 0, -4, 4), "address"),
        ("cfg_read", (0, 0, 0x1000, 1), "address"),
        ("cfg_write", (0, 0, 0, 3, 0), "size"),
        ("cfg_write", (0, 0, 4, 2, 1 << 16), "value"),
        ("cfg_write", (0, 0, 4, 2, -1), "value"),
        ("mmio_read", (0xFE00_0000, -1), "size"),
        ("mmio_read", (0xFE00_0000, 2**31), "size"),
        ("mmio_read", (-8, 4), "address"),
        ("mmio_read", (2**64 - 2, 4), "address"),
        ("mmio_write", (0xFE00_0000, 16, 0), "size"),
        ("mmio_write", (0xFE00_0000, 4, 2**32), "value"),
        ("io_read", (0xC000, 8), "size"),
        ("io_read", (0x1_0000, 1), "address"),
        ("io_write", (0xC000, 0, 0), "size"),
    ],
)
def test_pci_bus_refuses_impossible_accesses_with_a_clear_error(call, args, words):
    bus = PciBus()
    bus.attach(3, make_virtio_net_pci())
    with pytest.raises(PciBusError, match=words):
        getattr(bus, call)(*args)


def test_pci_bus_still_answers_what_a_cpu_can_do():
    bus = PciBus()
    bus.attach(3, make_virtio_net_pci())
    assert bus.cfg_read(3, 0, 0, 2) == 0x1AF4
    assert bus.cfg_read(4, 0, 0, 4) == 0xFFFFFFFF  # no device: master abort
    assert bus.mmio_read(0xFE00_0000, 8) == 2**64 - 1  # nobody decodes it
    bus.mmio_write(0xFE00_0000, 8, 2**64 - 1)
    assert bus.io_read(0xFFFC, 4) == 0xFFFFFFFF
