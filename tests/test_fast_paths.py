"""The tables compiled for speed (issue 11) answer exactly what the general paths answer, follow
every change that could make them stale, and stay bounded whatever a guest tries."""

from __future__ import annotations

from toydev import ToyDevice

from virtio_msix.host.phases import PhaseTagger
from virtio_msix.pci.bus import DECODED_MAX, PciBus
from virtio_msix.pci.region import COMPILED_MAX
from virtio_msix.trace import Recorder
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.device import DRIVER_OK
from virtio_msix.virtio.pci import VirtioPciDevice
from virtio_msix.virtio.regs import COMMON


def _walk_read(regions, offset: int, size: int) -> int:
    """RegionMap.read without the compiled table: the general walk, piece by piece."""
    value = 0
    for region, off, length, pos in regions._walk(offset, size):
        if region is not None:
            value |= region.dispatch_read(off, length) << (8 * pos)
    return value


def test_compiled_region_reads_equal_the_walk_at_every_offset_and_size():
    dev = make_virtio_net_pci(vectors=6, queue_pairs=2)
    for bar in (b for b in dev.bars if b is not None):
        for size in (1, 2, 4, 8):
            for offset in range(0, min(bar.size, 0x3100) - size + 1):
                got = bar.regions.read(offset, size)
                assert got == _walk_read(bar.regions, offset, size), (bar.index, offset, size)


def test_compiled_table_is_bounded_and_dropped_when_a_region_is_added():
    dev = make_virtio_net_pci()
    modern = next(b for b in dev.bars if b is not None and b.regions.find(0)
                  and b.regions.find(0).name == "common")  # fmt: skip
    for offset in range(modern.size - 8):
        for size in (1, 2, 4, 8):
            modern.regions.read(offset, size)
    assert len(modern.regions._compiled) <= COMPILED_MAX
    first = modern.regions.regions[0]
    modern.regions.add(first)  # any change of the region list
    assert modern.regions._compiled == {}


def test_bus_decode_follows_a_moved_bar_and_the_command_register():
    bus = PciBus()
    dev = VirtioPciDevice(ToyDevice(), vectors=4)
    bus.attach(3, dev)
    bus.cfg_write(3, 0, 0x14, 4, 0xFEB00000)  # BAR1: the MSI-X table
    bus.cfg_write(3, 0, 4, 2, 0x2)
    assert bus.mmio_read(0xFEB00000 + 12, 4) == 1  # entry 0 masked
    bus.cfg_write(3, 0, 0x14, 4, 0xFEA00000)  # moved: the old address decodes no more
    assert bus.mmio_read(0xFEB00000 + 12, 4) == 0xFFFFFFFF
    assert bus.mmio_read(0xFEA00000 + 12, 4) == 1
    bus.cfg_write(3, 0, 4, 2, 0x0)  # memory decode off
    assert bus.mmio_read(0xFEA00000 + 12, 4) == 0xFFFFFFFF
    dev.function_reset()  # a device-internal change of config space counts too
    bus.cfg_write(3, 0, 4, 2, 0x2)
    assert bus.mmio_read(0xFEA00000 + 12, 4) == 0xFFFFFFFF  # BAR back to 0: not decoded
    for addr in range(0xFEA00000, 0xFEA00000 + 2 * DECODED_MAX, 4):
        bus.mmio_read(addr, 4)
    assert len(bus._decoded) <= DECODED_MAX


def test_recording_off_keeps_the_phase_and_makes_no_other_records():
    rec = Recorder(enabled=False)
    tagger = PhaseTagger(rec)
    seen: list[dict] = []
    tagger.phase = "probe"
    assert rec.active  # the tagger still needs common-config records
    rec.access("notify", "w", 0, 2, 0)
    rec.event("msi", vector=1, address=0xFEE00000, data=0x41)
    rec.access("common", "w", COMMON["device_status"].offset, 1, DRIVER_OK)
    assert tagger.phase == "run" and rec.records == []
    rec.subscribe(seen.append)  # a listener that wants everything: every record again
    rec.access("notify", "w", 0, 2, 0)
    rec.event("msi", vector=1, address=0xFEE00000, data=0x41)
    assert [(r["space"], r["phase"]) for r in seen] == [("notify", "run"), ("msi", "run")]
    rec.enabled = True
    rec.access("isr", "r", 0, 1, 1)
    assert [r["space"] for r in rec.records] == ["isr"]
