"""MSI-X rules (PCI 3.0 §6.8.2) on the device's table, PBA and capability."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toydev import ToyDevice

from virtio_msix.pci.sink import NullSink
from virtio_msix.virtio.pci import VirtioPciDevice

CTRL = 0x98 + 2


def make(vectors: int = 4) -> VirtioPciDevice:
    dev = VirtioPciDevice(ToyDevice(), vectors=vectors, sink=NullSink())
    dev.cfg_write(4, 2, 0x6)  # MEM + bus master
    return dev


def program(dev, v, addr=0xFEE00000, data=0x30):
    dev.bar_write(1, 16 * v, 4, addr)
    dev.bar_write(1, 16 * v + 4, 4, 0)
    dev.bar_write(1, 16 * v + 8, 4, data + v)


def test_reset_state_every_entry_masked():
    dev = make()
    for v in range(4):
        assert dev.bar_read(1, 16 * v + 12, 4) == 1
        assert dev.bar_read(1, 16 * v, 4) == 0
    assert dev.bar_read(1, 0x800, 4) == 0
    assert dev.cfg_read(CTRL, 2) == 3


def test_masked_vector_goes_pending_and_is_delivered_once_on_unmask():
    dev = make()
    dev.cfg_write(CTRL, 2, 0x8000)
    program(dev, 1)
    assert dev.msix.vector_use(1)
    dev.msix.notify(1)
    dev.msix.notify(1)
    assert dev.sink.messages == []
    assert dev.bar_read(1, 0x800, 4) == 0b10
    dev.bar_write(1, 16 + 12, 4, 0)
    assert dev.sink.messages == [(0xFEE00000, 0x31)]
    assert dev.bar_read(1, 0x800, 4) == 0
    dev.msix.notify(1)
    assert len(dev.sink.messages) == 2


def test_function_mask_holds_and_releases():
    dev = make()
    dev.cfg_write(CTRL, 2, 0xC000)  # enable + mask all
    program(dev, 0)
    dev.bar_write(1, 12, 4, 0)
    dev.msix.vector_use(0)
    dev.msix.notify(0)
    assert dev.sink.messages == [] and dev.msix.pending(0)
    dev.cfg_write(CTRL, 2, 0x8000)
    assert dev.sink.messages == [(0xFEE00000, 0x30)]


def test_disabled_msix_masks_everything_and_enable_delivers_pending():
    dev = make()
    program(dev, 2)
    dev.bar_write(1, 32 + 12, 4, 0)
    dev.msix.vector_use(2)
    dev.msix.notify(2)
    assert dev.msix.pending(2)
    dev.cfg_write(CTRL, 2, 0x8000)
    assert dev.sink.messages == [(0xFEE00000, 0x32)]


def test_unused_vector_is_dropped_not_pending():
    dev = make()
    dev.cfg_write(CTRL, 2, 0x8000)
    dev.msix.notify(3)
    assert not dev.msix.pending(3)


def test_unuse_clears_pending():
    dev = make()
    dev.msix.vector_use(0)
    dev.msix.notify(0)
    assert dev.msix.pending(0)
    dev.msix.vector_unuse(0)
    assert not dev.msix.pending(0)


def test_no_message_without_bus_master():
    dev = make()
    dev.cfg_write(4, 2, 0x2)
    dev.cfg_write(CTRL, 2, 0x8000)
    program(dev, 0)
    dev.bar_write(1, 12, 4, 0)
    dev.msix.vector_use(0)
    dev.msix.notify(0)
    assert dev.sink.messages == []


def test_pba_is_read_only():
    dev = make()
    dev.msix.vector_use(0)
    dev.msix.notify(0)
    dev.bar_write(1, 0x800, 4, 0)
    assert dev.bar_read(1, 0x800, 4) == 1


@pytest.mark.parametrize("size", [1, 2])
def test_small_table_accesses_read_zero_and_write_nothing(size):
    dev = make()
    dev.bar_write(1, 12, size, 0)
    assert dev.bar_read(1, 12, 4) == 1
    assert dev.bar_read(1, 12, size) == 0


def test_eight_byte_accesses_are_two_halves():
    dev = make()
    dev.bar_write(1, 0, 8, 0x1_FEE01000)
    assert dev.bar_read(1, 0, 4) == 0xFEE01000
    assert dev.bar_read(1, 4, 4) == 1
    assert dev.bar_read(1, 8, 8) == 1 << 32  # data 0, control masked


def test_enabling_msix_takes_intx_down():
    dev = make()
    dev.set_irq_level(True)
    assert dev.sink.intx_level
    dev.cfg_write(CTRL, 2, 0x8000)
    assert not dev.sink.intx_level


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["mask", "unmask", "notify", "fmask", "funmask", "enable", "disable"]),
            st.integers(0, 3),
        ),
        max_size=40,
    )
)
def test_every_notify_is_delivered_once_or_left_pending(ops):
    """Property: a notification of a used vector is never lost — it is either delivered now,
    or pending, and pending ones are delivered as soon as nothing masks them."""
    dev = make()
    for v in range(4):
        program(dev, v)
        dev.msix.vector_use(v)
    owed = [False] * 4
    for op, v in ops:
        before = len(dev.sink.messages)
        if op == "mask":
            dev.bar_write(1, 16 * v + 12, 4, 1)
        elif op == "unmask":
            dev.bar_write(1, 16 * v + 12, 4, 0)
        elif op == "notify":
            dev.msix.notify(v)
            if dev.msix.is_masked(v):
                owed[v] = True
        else:
            ctrl = dev.cfg_read(CTRL, 2)
            bit = {"fmask": 0x4000, "funmask": 0x4000, "enable": 0x8000, "disable": 0x8000}[op]
            ctrl = ctrl | bit if op in ("fmask", "enable") else ctrl & ~bit
            dev.cfg_write(CTRL, 2, ctrl)
        for msg in dev.sink.messages[before:]:
            w = msg[1] - 0x30
            if owed[w]:
                owed[w] = False
        for w in range(4):
            assert dev.msix.pending(w) == owed[w]
            if not dev.msix.is_masked(w):
                assert not owed[w]
