"""Our device against the real QEMU 7.2 virtio-net-pci (Debian's qemu-system-x86 under qtest):
the same access sequences applied to both, every read must be equal."""

from __future__ import annotations

import random

import pytest
from capture_sets import load

from virtio_msix.qemu.qtest import QemuDevice, Qtest, qemu_available
from virtio_msix.virtio import make_virtio_net_pci
from virtio_msix.virtio.memory import SparseMemory

pytestmark = pytest.mark.qemu

missing = qemu_available()
if missing:
    pytest.fail(f"the differential tests need the real QEMU: {missing}", pytrace=False)


@pytest.fixture(params=["", "vectors=2", "vectors=0", "disable-legacy=on"], scope="module")
def pair(request):
    args = request.param
    opts = dict(kv.split("=") for kv in args.split(",") if kv)
    with Qtest(args) as qt:
        q = QemuDevice(qt)
        ours = make_virtio_net_pci(
            vectors=int(opts["vectors"]) if "vectors" in opts else None,
            disable_legacy=opts.get("disable-legacy") == "on",
            memory=SparseMemory(),
        )
        yield q, ours


class Both:
    def __init__(self, q, ours):
        self.q, self.ours, self.log = q, ours, []

    def cfg_read(self, off, size):
        a, b = self.q.cfg_read(off, size), self.ours.cfg_read(off, size)
        self.log.append(("cfg", off, size, a, b))
        return a, b

    def cfg_write(self, off, size, val):
        self.q.cfg_write(off, size, val)
        self.ours.cfg_write(off, size, val)

    def bar_read(self, bar, off, size):
        a, b = self.q.bar_read(bar, off, size), self.ours.bar_read(bar, off, size)
        self.log.append((f"bar{bar}", off, size, a, b))
        return a, b

    def bar_write(self, bar, off, size, val):
        self.log.append((f"w-bar{bar}", off, size, val, val))
        self.q.bar_write(bar, off, size, val)
        self.ours.bar_write(bar, off, size, val)

    def mismatches(self):
        out = [f"{s}+{o:#x}/{n}: qemu {a:#x} ours {b:#x}" for s, o, n, a, b in self.log if a != b]
        # A short message: pytest's list diff of hundreds of entries takes minutes.
        return out[:8] + ([f"... {len(out) - 8} more"] if len(out) > 8 else [])


def fresh(pair):
    q, ours = pair
    # Start from the same state: a device reset through both, BARs where QemuDevice wants them.
    b = Both(q, ours)
    for off, val in ((0x10, 0xC000), (0x14, 0xE0100000), (0x20, 0xE0000000), (0x24, 0)):
        ours.cfg_write(off, 4, val)
    ours.cfg_write(4, 2, 7)
    q.map_bars()
    b.bar_write(4, 0x14, 1, 0)
    return b


def test_config_space_identical(pair):
    b = fresh(pair)
    for off in range(0, 0x100, 4):
        b.cfg_read(off, 4)
    for off in range(0, 0x40):
        b.cfg_read(off, 1)
    assert b.mismatches() == []


def test_bar_sizing_and_readonly_header(pair):
    b = fresh(pair)
    for off in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30):
        orig = b.q.cfg_read(off, 4)
        b.cfg_write(off, 4, 0xFFFFFFFF)
        b.cfg_read(off, 4)
        b.cfg_write(off, 4, orig)
    for off, size in ((0, 4), (8, 4), (0x2C, 4), (0x3D, 1), (0x06, 2), (0x9A, 2), (0xA4, 4)):
        b.cfg_write(off, size, 0xFFFFFFFF & ((1 << 8 * size) - 1))
        b.cfg_read(off, size)
    assert b.mismatches() == []
    b.q.map_bars()


def test_linux_probe_sequence_from_capture(pair):
    """The real kernel's probe accesses (from the committed q35 capture) applied to both."""
    b = fresh(pair)
    regions = {"common": 0, "isr": 0x1000, "device": 0x2000, "notify": 0x3000, "msix-table": 0,
               "msix-pba": 0x800}  # fmt: skip
    bars = {"common": 4, "isr": 4, "device": 4, "notify": 4, "msix-table": 1, "msix-pba": 1}
    if b.ours.msix is None:
        regions.pop("msix-table"), regions.pop("msix-pba")
    for r in load("qemu-q35"):
        if r.get("phase") != "probe" or r["space"] not in regions:
            continue
        bar, off = bars[r["space"]], regions[r["space"]] + r["offset"]
        if r["op"] == "r":
            b.bar_read(bar, off, r["size"])
        else:
            b.bar_write(bar, off, r["size"], r["value"])
    assert b.mismatches() == []


def test_invalid_accesses(pair):
    b = fresh(pair)
    seq = [
        ("w", 4, 0x10, 2, 0x7FF), ("r", 4, 0x10, 2),  # vector beyond the table
        ("w", 4, 0x16, 2, 5), ("r", 4, 0x18, 2), ("r", 4, 0x1A, 2), ("r", 4, 0x1C, 2),  # no queue 5
        ("r", 4, 0x1E, 2),
        ("w", 4, 0x16, 2, 2000), ("r", 4, 0x16, 2),  # select ≥ 1024 ignored
        ("w", 4, 0x00, 4, 7), ("r", 4, 0x04, 4),  # feature window 7
        ("r", 4, 0x11, 1), ("r", 4, 0x10, 4), ("r", 4, 0x13, 1),  # inside / across fields
        ("w", 4, 0x12, 2, 9), ("r", 4, 0x12, 2),  # write to read-only num_queues
        ("r", 4, 0x2006, 4), ("r", 4, 0x2008, 4), ("r", 4, 0x2010, 1),  # past device config
        ("w", 4, 0x2000, 1, 0xAA), ("r", 4, 0x2000, 1),  # MAC not writable for a modern driver
        ("r", 4, 0x3000, 2), ("r", 4, 0x0FFE, 2), ("r", 4, 0x40, 4),
        ("w", 4, 0x14, 1, 1), ("w", 4, 0x14, 1, 3), ("r", 4, 0x14, 1),
        ("r", 4, 0x1000, 1), ("r", 4, 0x1000, 4), ("w", 4, 0x1000, 1, 3), ("r", 4, 0x1000, 1),
    ]  # fmt: skip
    if b.ours.msix is not None:
        seq += [("r", 1, 0x0C, 1), ("r", 1, 0x0C, 2), ("w", 1, 0x0C, 2, 0), ("r", 1, 0x0C, 4),
                ("w", 1, 0x00, 8, 0x1_FEE01000), ("r", 1, 0x00, 8), ("r", 1, 0x804, 4),
                ("w", 1, 0x800, 4, 0xF), ("r", 1, 0x800, 4), ("r", 1, 0x400, 4)]  # fmt: skip
    for op, bar, off, size, *val in seq:
        if op == "r":
            b.bar_read(bar, off, size)
        else:
            b.bar_write(bar, off, size, val[0])
    assert b.mismatches() == []


@pytest.mark.parametrize("args", ["", "vectors=2", "vectors=0", "disable-legacy=on"])
def test_random_accesses_fixed_seed(args):
    """A fresh QEMU (not the module's, whose queues earlier tests enabled with real addresses).
    Random sizes and values at every field of common config, ISR, device config and the
    MSI-X table; queue_size writes stay powers of two (see the transport's docstring: the
    device follows §2.7 there and QEMU does not)."""
    opts = dict(kv.split("=") for kv in args.split(",") if kv)
    with Qtest(args) as qt:
        ours = make_virtio_net_pci(
            vectors=int(opts["vectors"]) if "vectors" in opts else None,
            disable_legacy=opts.get("disable-legacy") == "on",
            memory=SparseMemory(),
        )
        _random_accesses(fresh((QemuDevice(qt), ours)))


def _random_accesses(b):
    rng = random.Random(2026)
    fields = [0x00, 0x04, 0x08, 0x0C, 0x10, 0x12, 0x16, 0x1A, 0x1C, 0x1E, 0x20, 0x24, 0x28, 0x2C,
              0x30, 0x34, 0x38, 0x3A]  # fmt: skip
    for _ in range(600):
        kind = rng.random()
        if kind < 0.55:
            off = rng.choice(fields)
            size = rng.choice((1, 2, 4))
            if rng.random() < 0.5:
                b.bar_read(4, off, size)
            else:
                val = rng.getrandbits(32)
                if off == 0x16:
                    # Only existing queues: for a select past num_queues QEMU stores and reads
                    # back whatever is written, we read 0 (spec; see the transport docstring).
                    val = rng.randrange(
                        0, b.ours.device.num_queues if hasattr(b.ours.device, "num_queues") else 3
                    )
                if off == 0x1C:
                    val = 1  # anything else is a device error by design, compared elsewhere
                if off in (0x12, 0x14, 0x18, 0x3A):  # 0x12/4 spans device_status
                    continue  # status/size/reset: covered by the sequences above
                b.bar_write(4, off, size & 0x6 or 2, val & 0xFFFF if size < 4 else val)
        elif kind < 0.7:
            b.bar_read(4, 0x2000 + rng.randrange(0, 12), rng.choice((1, 2, 4)))
        elif b.ours.msix is not None:
            off = rng.randrange(0, b.ours.msix.table_size * 16, 4)
            if rng.random() < 0.5:
                b.bar_read(1, off, 4)
            else:
                b.bar_write(1, off, 4, rng.getrandbits(32))
    assert b.mismatches() == []
