"""Address decode on the bus: BARs route only while the driver enabled decode."""

from __future__ import annotations

from toydev import ToyDevice

from virtio_msix.pci.bus import PciBus
from virtio_msix.virtio.pci import VirtioPciDevice


def setup_bus():
    bus = PciBus()
    dev = VirtioPciDevice(ToyDevice(), vectors=4)
    bus.attach(3, dev)
    bus.cfg_write(3, 0, 0x20, 4, 0xFE000000)  # BAR4 low
    bus.cfg_write(3, 0, 0x24, 4, 0x1)  # BAR4 high: 0x1_FE000000
    bus.cfg_write(3, 0, 0x14, 4, 0xFEB00000)  # BAR1
    bus.cfg_write(3, 0, 0x10, 4, 0xC000)  # BAR0 I/O
    return bus, dev


def test_empty_slot_reads_all_ones():
    bus, _ = setup_bus()
    assert bus.cfg_read(4, 0, 0, 4) == 0xFFFFFFFF


def test_no_decode_until_command_mem_and_io():
    bus, _ = setup_bus()
    assert bus.mmio_read(0x1_FE000000 + 0x14, 1) == 0xFF
    bus.cfg_write(3, 0, 4, 2, 0x3)
    assert bus.mmio_read(0x1_FE000000 + 0x14, 1) == 0  # device_status
    assert bus.mmio_read(0xFEB00000 + 12, 4) == 1  # MSI-X entry 0 masked
    assert bus.io_read(0xC000 + 0x0C, 2) == 256  # legacy queue size


def test_64bit_bar_high_half_and_sizing():
    bus, dev = setup_bus()
    bus.cfg_write(3, 0, 4, 2, 0x2)
    assert dev.bar_address(4) == 0x1_FE000000
    bus.cfg_write(3, 0, 0x24, 4, 0xFFFFFFFF)
    assert bus.cfg_read(3, 0, 0x24, 4) == 0xFFFFFFFF
    assert dev.bar_address(4) == 0xFFFFFFFF_FE000000
