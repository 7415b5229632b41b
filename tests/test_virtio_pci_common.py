"""Common configuration, ISR, notify and interrupt-delivery rules (virtio 1.2 §4.1.4, §4.1.5)."""

from __future__ import annotations

from toydev import ToyDevice

from virtio_msix.pci.sink import NullSink
from virtio_msix.virtio.device import DRIVER_OK, FEATURES_OK
from virtio_msix.virtio.pci import VirtioPciDevice
from virtio_msix.virtio.regs import COMMON

NO_VECTOR = 0xFFFF


def make(vectors: int = 4) -> VirtioPciDevice:
    dev = VirtioPciDevice(ToyDevice(), vectors=vectors, sink=NullSink())
    dev.cfg_write(4, 2, 0x6)  # memory decode and Bus Master, as pci_enable_device + set_master
    return dev


def rd(dev, name):
    r = COMMON[name]
    return dev.bar_read(4, r.offset, r.size)


def wr(dev, name, value):
    r = COMMON[name]
    dev.bar_write(4, r.offset, r.size, value)


def drive_to_ok(dev):
    dev.cfg_write(4, 2, 0x7)
    wr(dev, "device_status", 1)
    wr(dev, "device_status", 3)
    wr(dev, "driver_feature_select", 1)
    wr(dev, "driver_feature", 1)
    wr(dev, "device_status", 0xB)
    wr(dev, "device_status", 0xF)


def test_feature_windows():
    dev = make()
    wr(dev, "device_feature_select", 0)
    assert rd(dev, "device_feature") == 0x5
    wr(dev, "device_feature_select", 1)
    assert rd(dev, "device_feature") == 0x1
    wr(dev, "device_feature_select", 2)
    assert rd(dev, "device_feature") == 0


def test_driver_features_masked_and_frozen_after_features_ok():
    dev = make()
    wr(dev, "driver_feature_select", 0)
    wr(dev, "driver_feature", 0xFFFF)
    assert dev.device.driver_features == 0x5
    assert rd(dev, "driver_feature") == 0xFFFF  # the raw word reads back (QEMU)
    wr(dev, "driver_feature_select", 1)
    wr(dev, "driver_feature", 1)
    wr(dev, "device_status", FEATURES_OK)
    wr(dev, "driver_feature", 0)
    assert dev.device.driver_features >> 32 == 1


def test_vector_mapping_rules():
    dev = make(vectors=4)
    wr(dev, "msix_config", 3)
    assert rd(dev, "msix_config") == 3
    wr(dev, "msix_config", 4)  # beyond the table
    assert rd(dev, "msix_config") == NO_VECTOR
    wr(dev, "queue_select", 1)
    wr(dev, "queue_msix_vector", 0x7FF)
    assert rd(dev, "queue_msix_vector") == NO_VECTOR
    wr(dev, "queue_msix_vector", 2)
    assert rd(dev, "queue_msix_vector") == 2
    nomsix = make(vectors=0)
    wr(nomsix, "msix_config", 0)
    assert rd(nomsix, "msix_config") == NO_VECTOR


def test_missing_queue_reads_zero_and_ignores_writes():
    dev = make()
    wr(dev, "queue_select", 5)
    assert rd(dev, "queue_size") == 0
    wr(dev, "queue_size", 16)
    wr(dev, "queue_msix_vector", 1)
    assert rd(dev, "queue_msix_vector") == NO_VECTOR
    assert rd(dev, "queue_enable") == 0
    assert rd(dev, "num_queues") == 2


def test_queue_size_power_of_two_up_to_max():
    dev = make()
    wr(dev, "queue_size", 128)
    assert rd(dev, "queue_size") == 128
    wr(dev, "queue_size", 100)
    wr(dev, "queue_size", 512)
    assert rd(dev, "queue_size") == 128


def test_reset_unmaps_and_disables():
    dev = make()
    wr(dev, "msix_config", 0)
    wr(dev, "queue_select", 0)
    wr(dev, "queue_msix_vector", 1)
    wr(dev, "queue_desc_lo", 0x1000)
    wr(dev, "queue_enable", 1)
    dev.isr = 3
    wr(dev, "device_status", 0)
    assert rd(dev, "device_status") == 0
    assert rd(dev, "msix_config") == NO_VECTOR
    assert rd(dev, "queue_msix_vector") == NO_VECTOR
    assert rd(dev, "queue_enable") == 0
    assert rd(dev, "queue_size") == 256
    assert dev.isr == 0


def test_isr_read_clears_and_lowers_intx():
    dev = make(vectors=0)
    drive_to_ok(dev)
    dev.notify_queue(0)
    assert dev.sink.intx_level
    assert dev.bar_read(4, 0x1000, 1) == 1
    assert not dev.sink.intx_level
    assert dev.bar_read(4, 0x1000, 1) == 0


def test_config_notification_sets_isr_bit1_and_generation():
    dev = make(vectors=0)
    drive_to_ok(dev)
    gen = rd(dev, "config_generation")
    dev.notify_config()
    assert rd(dev, "config_generation") == (gen + 1) & 0xFF
    assert dev.bar_read(4, 0x1000, 1) == 3


def test_no_interrupt_before_driver_ok_nor_for_no_vector():
    dev = make()
    dev.cfg_write(4, 2, 0x6)
    dev.cfg_write(0x9A, 2, 0x8000)  # MSI-X on
    dev.bar_write(1, 12, 4, 0)  # unmask entry 0
    wr(dev, "queue_msix_vector", 0)
    dev.notify_queue(0)
    assert dev.sink.messages == []
    wr(dev, "device_status", DRIVER_OK)
    dev.notify_queue(1)  # queue 1 has NO_VECTOR
    assert dev.sink.messages == []
    dev.notify_queue(0)
    assert len(dev.sink.messages) == 1


def test_notify_before_driver_ok_is_served_after():
    dev = make()
    wr(dev, "queue_select", 1)
    wr(dev, "queue_enable", 1)
    dev.bar_write(4, 0x3000 + 4 * 1, 2, 1)
    assert dev.device.kicks == []
    wr(dev, "device_status", DRIVER_OK)
    assert dev.device.kicks == [1]
    dev.bar_write(4, 0x3004, 2, 1)
    assert dev.device.kicks == [1, 1]


def test_queue_enable_zero_is_a_device_error():
    dev = make(vectors=0)
    drive_to_ok(dev)
    wr(dev, "queue_enable", 0)
    assert rd(dev, "device_status") & 0x40
    assert dev.sink.intx_level  # config change notification (§2.1.2)


def test_common_dispatch_on_field_start_only():
    dev = make()
    assert dev.bar_read(4, 0x11, 1) == 0  # middle of msix_config
    assert dev.bar_read(4, 0x10, 4) == NO_VECTOR  # size ignored: msix_config only


def test_device_config_past_end_reads_ones():
    dev = make()
    assert dev.bar_read(4, 0x2000, 4) == 0x13121110
    assert dev.bar_read(4, 0x2008, 4) == 0xFFFFFFFF
    # An unaligned access is cut into aligned pieces, as the bus does: 2 bytes in, 2 past.
    assert dev.bar_read(4, 0x2006, 4) == 0xFFFF1716


def test_every_register_has_its_handlers_or_construction_fails():
    """The register tables dispatch to _common_r_NAME/_common_w_NAME methods: a misspelt or
    missing handler is an error when the device is built, never a register that reads 0."""
    import pytest

    from virtio_msix.virtio import make_virtio_net_pci
    from virtio_msix.virtio.pci import VirtioPciDevice
    from virtio_msix.virtio.regs import COMMON_CFG, LEGACY_CFG

    dev = make_virtio_net_pci()
    for table, handlers in ((COMMON_CFG, dev._common_handlers),
                            (LEGACY_CFG, dev._legacy_handlers)):  # fmt: skip
        for reg in table:
            read, write = handlers[reg.offset]
            assert read is not None or reg.name == "queue_notify", reg.name
            assert (write is not None) == (reg.access == "rw"), reg.name

    class Misspelt(VirtioPciDevice):
        _common_w_queue_enabel = VirtioPciDevice._common_w_queue_enable
        _common_w_queue_enable = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="queue_enable is rw"):
        Misspelt(make_virtio_net_pci().device, vectors=2)
