"""capture-qemu itself, really run: Debian's Linux 6.1 under QEMU 7.2 (TCG) with a two-queue TAP
in a private network namespace, two CPUs, mq=on and --teardown. The trace starts with its
configuration, the guest uses both queue pairs, the removal is its own phase, and the host's
network is untouched."""

from __future__ import annotations

import json
import subprocess

import pytest

from virtio_msix.guest.compare import phase
from virtio_msix.qemu.capture import capture, tap_missing
from virtio_msix.qemu.debian import PrerequisiteMissing

pytestmark = pytest.mark.qemu


def host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    why = tap_missing()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("cap") / "mq2.jsonl"
    before = host_links()
    try:
        meta = capture(out, smp=2, device="virtio-net-pci,mq=on,vectors=6",
                       netdev="tap,queues=2,vnet_hdr=on", teardown=True, progress=False)  # fmt: skip
    except PrerequisiteMissing as e:
        pytest.skip(f"capture-qemu cannot run here: {e}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return meta, records, out.with_suffix(".console.txt").read_text(), before


def test_meta_record_first(captured):
    meta, records, _, _ = captured
    first = records[0]
    assert first["space"] == "meta"
    assert first["device"] == "virtio-net-pci,netdev=n0,addr=0x3,ioeventfd=off,mq=on,vectors=6"
    assert first["netdev"] == "tap,queues=2,vnet_hdr=on" and first["smp"] == 2
    assert first["teardown"] is True and first["qemu"].startswith("7.2")
    assert all(r["space"] != "meta" for r in records[1:])


def test_guest_pinged_through_both_pairs_and_removed_the_modules(captured):
    meta, records, console, _ = captured
    assert meta["ping_ok"] and meta["teardown_ok"], console[-3000:]
    after = console.split("VMSIX-INTERRUPTS-AFTER")[1].split("VMSIX-DMESG")[0]
    assert "virtio0-input.1" in after and "virtio0-output.1" in after
    # the device offered MQ and, with a vnet-header TAP as its peer, QEMU's tap offloads
    features = [r["value"] for r in records if r.get("space") == "common" and r.get("op") == "r"
                and r["offset"] == 0x04]  # fmt: skip
    assert features[0] == 0x30FFFFA7


def test_teardown_is_its_own_phase(captured):
    _, records, _, _ = captured
    down = phase(records, "teardown")
    # virtnet_remove unregisters the netdev first, and a frame the stack sends meanwhile is
    # still kicked: a TX notify (queue 3) was seen before the reset once in ~10 runs.
    first = next(r for r in down if r["space"] != "notify")
    assert (first["space"], first["op"], first["offset"], first["value"]) == (
        "common", "w", 0x14, 0)
    # MSI-X Enable cleared in the removal, Bus Master last
    assert any(r["space"] == "cfg" and r["op"] == "w" and r["offset"] == 0x9A
               and not r["value"] & 0x8000 for r in down)  # fmt: skip
    assert (down[-1]["space"], down[-1]["offset"]) == ("cfg", 0x04) and not down[-1]["value"] & 4
    phases = [r.get("phase") for r in records[1:]]
    first = phases.index("teardown")  # the guest's marker before rmmod starts it, to the end
    assert "run" in phases[:first] and set(phases[first:]) == {"teardown"}


def test_host_network_untouched(captured):
    *_, before = captured
    # The TAP existed only in the namespace, which went away with QEMU.
    assert "vmsixq0" not in before and "vmsixq0" not in host_links()
