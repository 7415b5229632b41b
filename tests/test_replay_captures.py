"""Every read in the real QEMU captures is reproduced by our device model."""

from __future__ import annotations

import pytest
from capture_sets import CAPTURES, load

from virtio_msix.devcli import count_reads, replay_records


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_replay_capture_zero_mismatches(name):
    records = load(name)
    mismatches = replay_records(records, vectors=CAPTURES[name])
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
