"""The legacy register block (§4.1.4.10) and the PCI_CFG access window (§4.1.4.9)."""

from __future__ import annotations

from toydev import ToyDevice

from virtio_msix.pci.sink import NullSink
from virtio_msix.trace import Recorder
from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.pci import VirtioPciDevice
from virtio_msix.virtio.regs import LEGACY

PCI_CFG = 0x84


def make(vectors=4):
    rec = Recorder()
    dev = VirtioPciDevice(
        ToyDevice(), vectors=vectors, sink=NullSink(), memory=GuestMemory(1 << 20), recorder=rec
    )
    return dev, rec


def lrd(dev, name):
    r = LEGACY[name]
    return dev.bar_read(0, r.offset, r.size)


def lwr(dev, name, v):
    r = LEGACY[name]
    dev.bar_write(0, r.offset, r.size, v)


def test_legacy_features_status_and_queue_pfn():
    dev, _ = make()
    # QEMU sets VIRTIO_F_BAD_FEATURE (bit 30) in every legacy host_features word.
    assert lrd(dev, "host_features") == 0x40000005
    lwr(dev, "guest_features", 0xFF)
    assert lrd(dev, "guest_features") == 0x5
    lwr(dev, "queue_select", 1)
    assert lrd(dev, "queue_size") == 256
    lwr(dev, "queue_address", 0x10)
    assert lrd(dev, "queue_address") == 0x10
    q = dev.device.queues[1]
    assert (q.desc_addr, q.avail_addr, q.used_addr) == (0x10000, 0x11000, 0x12000)
    lwr(dev, "device_status", 7)
    assert lrd(dev, "device_status") == 7
    lwr(dev, "queue_address", 0)  # PFN 0 resets the device
    assert lrd(dev, "device_status") == 0


def test_legacy_config_moves_when_msix_enabled():
    dev, _ = make()
    assert dev.bar_read(0, 0x14, 1) == 0x10  # device config right after ISR
    dev.cfg_write(0x9A, 2, 0x8000)
    assert dev.bar_read(0, 0x18, 1) == 0x10  # after the two vector registers
    lwr(dev, "config_msix_vector", 1)
    assert lrd(dev, "config_msix_vector") == 1


def test_pci_cfg_window_reads_and_writes_the_named_bar():
    dev, rec = make()
    dev.cfg_write(PCI_CFG + 4, 1, 4)  # bar 4
    dev.cfg_write(PCI_CFG + 8, 4, 0x2000)  # device config
    dev.cfg_write(PCI_CFG + 12, 4, 4)
    assert dev.cfg_read(PCI_CFG + 16, 4) == 0x13121110
    dev.cfg_write(PCI_CFG + 8, 4, 0x14)  # device_status through the window
    dev.cfg_write(PCI_CFG + 12, 4, 1)
    dev.cfg_write(PCI_CFG + 16, 4, 0x1)
    assert dev.device.status == 1
    assert any(r.get("via") == "pci_cfg" and r["space"] == "common" for r in rec.records)


def test_pci_cfg_window_bad_length_does_nothing():
    dev, _ = make()
    dev.cfg_write(PCI_CFG + 4, 1, 4)
    dev.cfg_write(PCI_CFG + 8, 4, 0x14)
    dev.cfg_write(PCI_CFG + 12, 4, 3)
    dev.cfg_write(PCI_CFG + 16, 4, 0x1)
    assert dev.device.status == 0
