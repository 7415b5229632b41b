"""The transport's PCI face: ids, BARs, capability chain, config-space write rules."""

from __future__ import annotations

import pytest
from toydev import ToyDevice

from virtio_msix.pci.sink import NullSink
from virtio_msix.virtio.pci import VirtioPciDevice


def make(vectors: int = 4, **kw) -> VirtioPciDevice:
    return VirtioPciDevice(ToyDevice(), vectors=vectors, sink=NullSink(), **kw)


def walk_caps(dev: VirtioPciDevice) -> list[tuple[int, int, int]]:
    out = []
    pos = dev.cfg_read(0x34, 1)
    while pos:
        out.append((pos, dev.cfg_read(pos, 1), dev.cfg_read(pos + 3, 1)))
        pos = dev.cfg_read(pos + 1, 1)
    return out


def test_identity_transitional_and_modern():
    t = make()
    assert t.cfg_read(0, 4) == 0x1000_1AF4
    assert t.cfg_read(8, 1) == 0  # revision 0: transitional
    assert t.cfg_read(0x2C, 4) == 0x0001_1AF4  # subsystem id = virtio id
    assert t.cfg_read(0x3D, 1) == 1
    m = make(disable_legacy=True)
    assert m.cfg_read(0, 4) == 0x1041_1AF4
    assert m.cfg_read(8, 1) == 1
    assert m.bars[0] is None


def test_capability_chain_in_qemu_order():
    caps = walk_caps(make())
    assert [c[0] for c in caps] == [0x98, 0x84, 0x70, 0x60, 0x50, 0x40]
    assert caps[0][1] == 0x11
    # vendor caps: cfg_type in order pci_cfg, notify, device, isr, common
    assert [c[2] for c in caps[1:]] == [5, 2, 4, 3, 1]
    assert make().cfg_read(6, 2) & 0x10  # CAP_LIST


def test_no_msix_capability_with_zero_vectors():
    caps = walk_caps(make(vectors=0))
    assert [c[0] for c in caps] == [0x84, 0x70, 0x60, 0x50, 0x40]
    assert make(vectors=0).bars[1] is None


@pytest.mark.parametrize(
    "bar,expect", [(0, 0xFFFFFFE1), (1, 0xFFFFF000), (4, 0xFFFFC00C), (5, 0xFFFFFFFF)]
)
def test_bar_sizing(bar, expect):
    dev = make()
    off = 0x10 + 4 * bar
    dev.cfg_write(off, 4, 0xFFFFFFFF)
    assert dev.cfg_read(off, 4) == expect


def test_read_only_header_ignores_writes_and_status_is_rw1c():
    dev = make()
    dev.cfg_write(0, 4, 0)
    assert dev.cfg_read(0, 2) == 0x1AF4
    dev.set_config(6, 2, dev.cfg_read(6, 2) | 0x8000)  # detected parity error
    dev.cfg_write(6, 2, 0x8000)
    assert not dev.cfg_read(6, 2) & 0x8000
    assert dev.cfg_read(6, 2) & 0x10  # CAP_LIST is not W1C


def test_msix_control_only_enable_and_maskall_writable():
    dev = make()
    dev.cfg_write(0x9A, 2, 0xFFFF)
    assert dev.cfg_read(0x9A, 2) == 0xC003
    assert dev.msix.enabled and dev.msix.function_masked


def test_notify_cap_multiplier_and_extended_space_reads_ones():
    dev = make()
    assert dev.cfg_read(0x70 + 16, 4) == 4
    assert dev.cfg_read(0x70 + 8, 4) == 0x3000
    assert dev.cfg_read(0x100, 4) == 0xFFFFFFFF
