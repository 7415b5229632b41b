"""Every capture in tests/data that names its device (a first ``{"space": "meta", "device":
..., "netdev": ...}`` record, capture-qemu --device/--netdev) against the model built from that
same description: replay with no flags reads every value the real QEMU 7.2 gave (ISR aside),
and ``sim`` with the same device, netdev and kernel makes the real Linux kernel's accesses with
the same values from the first common-config access through DRIVER_OK (through the FAILED write
when the real probe failed). Captures are found by their meta record, so new ones join alone.
Captures with more than one CPU are compared the same way: the x86 vector matrix model places
their MSI messages as the real kernel did (tests/test_smp_vs_real_kernel.py has the details)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from virtio_msix.devcli import count_reads, replay_records, spec_for_records
from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.virtio.regs import COMMON, LEGACY

DATA = Path(__file__).parent / "data"


def described() -> dict[str, list[dict]]:
    out = {}
    for path in sorted(DATA.glob("*.jsonl")):
        with open(path) as f:
            first = f.readline()
        try:
            meta = json.loads(first)
        except ValueError:
            continue
        if meta.get("space") == "meta" and isinstance(meta.get("device"), str):
            out[path.stem] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return out


CAPTURES = described()
NAMES = sorted(CAPTURES) or ["(none)"]
ALL_CPUS = NAMES


def need(name: str) -> list[dict]:
    if name not in CAPTURES:
        pytest.skip("no capture in tests/data has a meta record naming its device "
                    "(capture-qemu --device ... writes one)")  # fmt: skip
    return CAPTURES[name]


@pytest.mark.parametrize("name", NAMES)
def test_replay_from_the_meta_record(name):
    records = need(name)
    spec = spec_for_records(records)
    assert spec is not None
    mismatches = [m for m in replay_records(records, spec=spec) if m.space != "isr"]
    assert count_reads(records) > 100
    assert mismatches == [], mismatches[:5]


STATUS = {("common", COMMON["device_status"].offset), ("legacy", LEGACY["device_status"].offset)}


def status_failed(r: dict) -> bool:
    return (r.get("op") == "w" and (r.get("space"), r.get("offset")) in STATUS
            and bool(r["value"] & 0x80))  # fmt: skip


def window(records: list[dict]) -> list[dict]:
    """Within the probe phase (6.12's captures probe again after a sysfs bind), the first
    common-config access (a legacy-only device: the first access to BAR0's legacy registers)
    through DRIVER_OK, or through FAILED if the probe failed."""
    out = virtio_phase([r for r in records if r.get("phase") == "probe"] or records)
    for i, r in enumerate(out):
        if status_failed(r):
            return out[: i + 1]
    return out


@pytest.mark.parametrize("name", ALL_CPUS)
def test_sim_with_the_same_device_equals_the_real_kernel(name):
    records = need(name)
    meta = records[0]
    spec = spec_for_records(records)
    assert spec is not None
    res = run_sim(SimOptions(spec=spec, cpus=int(meta.get("smp", 1)), kernel=str(meta.get("kernel_version", "6.1"))))
    real, model = window(records), window(res.recorder.records)
    assert len(real) > 10
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, (
        f"{meta['device']} {meta['netdev']}: {len(differences)} differences:\n{shown}"
    )
