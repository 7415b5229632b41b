"""Every read in the real QEMU captures is reproduced by our device model."""

from __future__ import annotations

import json

import pytest
from capture_sets import ALL_CAPTURES, CAPTURES_10, CAPTURES_612, DATA, load

from virtio_msix.devcli import count_reads, replay_records


@pytest.mark.parametrize("name", sorted(ALL_CAPTURES))
def test_replay_capture_zero_mismatches(name):
    records = load(name)
    mismatches = replay_records(records, vectors=ALL_CAPTURES[name])
    assert count_reads(records) > 200
    assert mismatches == [], mismatches[:5]


def test_replay_reports_a_wrong_value():
    records = load("qemu-q35")
    i = next(i for i, r in enumerate(records) if r.get("op") == "r" and r["space"] == "common")
    records[i] = dict(records[i], value=records[i]["value"] ^ 0x1)
    mismatches = replay_records(records)
    assert [m.index for m in mismatches] == [i]


def test_replay_rejects_malformed_records():
    with pytest.raises(ValueError, match="record 0"):
        replay_records([{"space": "common", "op": "r", "offset": "x"}])


@pytest.mark.parametrize("name", sorted(CAPTURES_612))
def test_612_captures_are_6_12_probes_bound_through_sysfs(name):
    """What the 6.12 captures hold: Debian's 6.12 kernel, a probe phase (sysfs bind) ending in
    DRIVER_OK, traffic, and the sysfs unbind at the end: virtio_dev_remove resets the device and
    acknowledges it again (the last two status writes)."""
    meta = (DATA / f"{name}.meta.json").read_text()
    assert "linux-image-6.12." in meta and '"ping_ok": true' in meta
    records = load(name)
    probe = [r for r in records if r.get("phase") == "probe" and "op" in r]
    last = probe[-1]
    assert (last["space"], last["op"], last["offset"], last["value"] & 0x4) == ("common", "w", 0x14, 4)
    status = [r for r in records if r.get("phase") == "run" and r["space"] == "common"
              and r["op"] == "w" and r["offset"] == 0x14]  # fmt: skip
    assert [r["value"] for r in status] == [0, 1]


# -- issue 10's captures (tests/capture_sets.py CAPTURES_10): replayed with the device their meta
# record names in tests/test_devspec_captures.py; here, what each console shows.


@pytest.mark.parametrize("name", sorted(CAPTURES_10))
def test_issue10_capture_outcome(name):
    """Each capture's console shows the outcome its configuration must have: the ping through
    the device, except ctrl_vq=off with CTRL_RX still offered, which Linux 6.1 rejects (-22);
    and, with --teardown, both modules removed."""
    meta = json.loads((DATA / f"{name}.meta.json").read_text())
    console = (DATA / f"{name}.console.txt").read_text()
    if "ctrl_vq=off" in meta["device"] and "ctrl_rx=off" not in meta["device"]:
        assert meta["probe_error"] == -22 and not meta["ping_ok"]
        assert "probe of virtio0 failed with error -22" in console
    else:
        assert meta["ping_ok"] and meta["probe_error"] is None
    assert meta.get("teardown_ok", True) and ("VMSIX-TEARDOWN-OK" in console) == meta["teardown"]
