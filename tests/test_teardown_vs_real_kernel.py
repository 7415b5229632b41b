"""The removal path (``rmmod virtio_net; rmmod virtio_pci``; 6.12: virtio_pci is built in, so its
removal is the sysfs unbind) of the driver model against the real kernel's, captured from QEMU
7.2 with ``capture-qemu --teardown`` (tests/data/*teardown*): the simulator, configured from each
capture's meta record, makes the same accesses with the same values from virtio_pci's first
access through DRIVER_OK and through the whole ``teardown`` phase — ring addresses aside."""

from __future__ import annotations

import pytest
from capture_sets import CAPTURES_10, load

from virtio_msix.devcli import spec_for_records
from virtio_msix.guest.compare import diff, format_key, phase, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.host.phases import is_driver_ok_write
from virtio_msix.virtio.regs import COMMON, LEGACY

TEARDOWN = sorted(n for n in CAPTURES_10 if "--teardown" in CAPTURES_10[n])
# On several CPUs too, with the MSI values: the x86 vector matrix model places and moves the
# vectors as the real kernel did (the removal's flush reads show where they ended up).


def sim_for(name: str):
    """sim with the capture's own device and netdev (its meta record), CPUs and kernel."""
    records = load(name)
    meta = records[0]
    return run_sim(SimOptions(spec=spec_for_records(records), cpus=meta["smp"],
                              kernel=meta["kernel_version"]))  # fmt: skip


def shown(differences) -> str:
    return "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                     for d in differences[:10])  # fmt: skip


@pytest.mark.parametrize("name", TEARDOWN)
def test_captures_hold_the_removal_path(name):
    """What each teardown capture holds (the real kernel's removal): the reset first, the MSI-X
    Enable clear, the status check and ACKNOWLEDGE write after it, the Vendor/Device dword read
    and, last, the Command write that clears Bus Master."""
    meta = load(name)[0]
    assert meta["teardown"] is True and meta["space"] == "meta"
    down = phase(load(name), "teardown")
    first, last = down[0], down[-1]
    # device_status: in the common config, or BAR0's legacy block on a disable-modern device.
    legacy = "disable-modern=on" in meta["device"]
    space, status_off = ("legacy", LEGACY["device_status"].offset) if legacy else (
        "common", COMMON["device_status"].offset)  # fmt: skip
    assert (first["space"], first["op"], first["offset"], first["value"]) == (space, "w", status_off, 0)
    assert (last["space"], last["op"], last["offset"]) == ("cfg", "w", 0x04)
    assert not last["value"] & 0x4  # Bus Master off
    vendor = down[-3]  # pci_device_is_present, before pci_disable_device's read-modify-write
    assert (vendor["space"], vendor["op"], vendor["offset"], vendor["size"]) == ("cfg", "r", 0, 4)
    status = [(r["op"], r["value"]) for r in down
              if r["space"] == space and r["offset"] == status_off]  # fmt: skip
    assert status[-3:] == [("r", 0), ("r", 0), ("w", 1)]


@pytest.mark.parametrize("name", TEARDOWN)
def test_teardown_equals_real_kernel(name):
    real = load(name)
    res = sim_for(name)
    model = res.recorder.records
    # The probe phase: from virtio_pci's first access (the guest's marker) through DRIVER_OK,
    # which holds the virtio part (first common-config access onwards).
    # (> 30: a legacy device on INTx, vectors=0, has the shortest: 34 accesses)
    assert len(virtio_phase(real)) > 30 and is_driver_ok_write(phase(real)[-1])
    probe = diff(phase(real), phase(model))
    assert not probe, f"probe: {len(probe)} differences:\n{shown(probe)}"
    real_down, model_down = phase(real, "teardown"), phase(model, "teardown")
    assert len(real_down) > 5
    differences = diff(real_down, model_down)
    assert not differences, f"teardown: {len(differences)} differences:\n{shown(differences)}"
    assert res.status_after_teardown == 1 and res.msix_enabled_after_teardown in (False, None)


def test_comparison_catches_a_difference():
    """Not vacuous: one queue pair's removal is not two pairs' (fewer queues, fewer entries)."""
    real = phase(load("qemu-q35-teardown-mq2-smp1"), "teardown")
    model = phase(run_sim(SimOptions()).recorder.records, "teardown")
    assert diff(real, model)


def test_sim_views_show_the_removal(capsys):
    from virtio_msix.cli import main

    assert main(["sim", "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)["teardown"]
    assert [s["step"] for s in out["steps"]] == ["rmmod virtio_net", "rmmod virtio_pci"]
    assert out["steps"][1]["accesses"] == 3 and out["status_after"] == 1
    assert not out["command_after"] & 0x4
    assert main(["sim"]) == 0
    assert "Removal (phase 'teardown')" in capsys.readouterr().out
