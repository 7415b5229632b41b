"""The driver model's accesses equal the real Linux 6.1 kernel's, captured from QEMU 7.2
(Debian's kernel package, q35 and pc): from virtio_pci's first access to the DRIVER_OK write,
same spaces, offsets, sizes, order and values — ring addresses aside."""

from __future__ import annotations

import pytest
from capture_sets import CAPTURES, load

from virtio_msix.guest.compare import diff, format_key, phase
from virtio_msix.guest.sim import SimOptions, run_sim


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_probe_trace_equals_real_kernel(name):
    real = phase(load(name))
    assert len(real) > 100, "the capture must contain the probe"
    model = run_sim(SimOptions(vectors=CAPTURES[name])).probe_records()
    differences = diff(real, model)
    shown = "\n".join(
        f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
        for d in differences[:10]
    )
    assert not differences, f"{len(differences)} differences:\n{shown}"


def test_probe_ends_with_driver_ok_and_msix_unmasks():
    real = phase(load("qemu-q35"))
    last = real[-1]
    assert (last["space"], last["op"], last["offset"], last["value"]) == ("common", "w", 0x14, 0xF)
    unmasks = [r for r in real if r["space"] == "msix-table" and r["op"] == "w"
               and r["offset"] % 16 == 12 and r["value"] == 0]  # fmt: skip
    assert [r["offset"] // 16 for r in unmasks] == [0, 1, 2]


def test_comparison_catches_a_difference():
    """The comparison is not vacuous: a model run with another table size differs."""
    real = phase(load("qemu-q35"))
    model = run_sim(SimOptions(vectors=2)).probe_records()
    assert diff(real, model)


def test_model_vectors_are_the_real_kernels():
    """x86: the message the real kernel wrote (0xFEE01004 / 0x26..0x28) is the model's."""
    real = load("qemu-q35")
    res = run_sim(SimOptions())
    final = {}
    for r in real:
        if r.get("phase") == "probe" and r["space"] == "msix-table" and r["op"] == "w":
            final[r["offset"]] = r["value"]
    for row in res.table_after_probe[:3]:
        assert final[16 * row["entry"]] == row["address"]
        assert final[16 * row["entry"] + 8] == row["data"]
