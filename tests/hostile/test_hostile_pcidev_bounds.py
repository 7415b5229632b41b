"""Issue 8, review round: one service pass of virt-pci requests makes a bounded number of
register accesses — a 4096-byte MMIO_MEMSET to the notify area is 512 notify writes (kicks) —
and leaves the other requests for the next pass."""

from __future__ import annotations

import struct

from virtio_msix.trace import Recorder
from virtio_msix.uml import pcidev
from virtio_msix.uml.pcidev import MSG, VirtPciHost
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.queue import VirtQueue

NOTIFY = 0x3000  # the modern BAR's notify structure


def test_memsets_to_the_notify_area_are_served_a_bounded_number_of_accesses_per_pass():
    mem = GuestMemory(1 << 20)
    cmd, irq = VirtQueue(0, 64), VirtQueue(1, 64)
    cmd.desc_addr, cmd.avail_addr, cmd.used_addr, cmd.enabled = 0x1000, 0x1400, 0x1800, True
    rec = Recorder()
    dev = make_virtio_net_pci(memory=mem, recorder=rec)
    host = VirtPciHost(mem, cmd, irq)
    host.attach(dev)
    # MMIO_MEMSET (5) of 4096 bytes of value 1 at BAR 4's notify area, 64 times.
    mem.write(0x10000, MSG.pack(5, 4, 0, 4096, NOTIFY) + b"\x01")
    for i in range(64):
        struct.pack_into("<QIHH", mem.buf, 0x1000 + 16 * i, 0x10000, MSG.size + 1, 0, 0)
        struct.pack_into("<H", mem.buf, 0x1404 + 2 * i, i)
    struct.pack_into("<H", mem.buf, 0x1402, 64)
    served = []
    while True:
        before = len(rec.records)
        n = host.process_cmds()
        writes = len(rec.records) - before
        if not n:
            break
        served.append(n)
        # At most the bound plus one request's pieces (the request that crossed it).
        assert writes <= pcidev.MAX_ACCESSES_PER_PASS + 4096 // 8
        assert host.backlog == (sum(served) < 64)
    assert sum(served) == 64 and len(served) > 1
    assert host.accesses == 64 * 4096 // 8
