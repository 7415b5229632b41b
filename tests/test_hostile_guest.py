"""A guest may write anything to any register: 100 000 random accesses raise nothing."""

from __future__ import annotations

import random

import pytest
from toydev import ToyDevice

from virtio_msix.pci.sink import NullSink
from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.pci import VirtioPciDevice

SIZES = (1, 2, 3, 4, 8, 0, 16)


def random_access(dev: VirtioPciDevice, rng: random.Random) -> None:
    size = rng.choice(SIZES)
    value = rng.getrandbits(64)
    if rng.random() < 0.3:
        offset = rng.choice((rng.randrange(0, 0x1010), rng.randrange(0x40, 0xB0), -1))
        if rng.random() < 0.5:
            dev.cfg_read(offset, size)
        else:
            dev.cfg_write(offset, size, value)
        return
    bar = rng.choice((0, 1, 2, 4, 5, 6, 7, -1))
    b = dev.bars[bar] if 0 <= bar < len(dev.bars) else None
    limit = b.size + 8 if b is not None else 0x5000
    offset = rng.randrange(-4, limit)
    if rng.random() < 0.4 and b is not None and bar == 4:
        offset = rng.choice((0x0, 0x1000, 0x2000, 0x3000)) + rng.randrange(0, 0x40)
    if rng.random() < 0.5:
        dev.bar_read(bar, offset, size)
    else:
        dev.bar_write(bar, offset, size, value)


@pytest.mark.parametrize("vectors,legacy", [(4, True), (2, False), (0, True)])
def test_random_register_accesses_never_raise(vectors, legacy):
    rng = random.Random(1234 + vectors)
    mem = GuestMemory(1 << 16)
    dev = VirtioPciDevice(
        ToyDevice(), vectors=vectors, disable_legacy=not legacy, memory=mem, sink=NullSink()
    )
    for _ in range(100_000 // 3):
        random_access(dev, rng)
    # The device still answers sanely afterwards.
    assert dev.cfg_read(0, 2) == 0x1AF4
    dev.cfg_write(4, 2, 0x6)
    dev.bar_write(4, 0x14, 1, 0)
    assert dev.bar_read(4, 0x14, 1) == 0
