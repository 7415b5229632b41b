"""capture-qemu --kernel 6.12: Debian's 6.12 image (bookworm-backports, in the cache) under QEMU
7.2 TCG, its compressed modules unpacked into the initramfs, the built-in virtio_pci rebound
through sysfs; what it records replays against our device with no mismatched read."""

from __future__ import annotations

import json
import lzma

import pytest

from virtio_msix.devcli import count_reads, replay_records
from virtio_msix.qemu.capture import capture
from virtio_msix.qemu.debian import DebianKernel, PrerequisiteMissing, build_initramfs


def test_initramfs_decompresses_xz_modules(tmp_path):
    mods = tmp_path / "kernel"
    (mods / "drivers/net").mkdir(parents=True)
    payload = b"\x7fELF" + bytes(range(256)) * 8
    (mods / "drivers/net/virtio_net.ko.xz").write_bytes(lzma.compress(payload))
    kernel = DebianKernel("6.12.0-test", "test.deb", tmp_path / "vmlinuz", mods)
    out = build_initramfs(kernel, "#!/bin/sh\n", tmp_path / "i.cpio",
                          ("drivers/net/virtio_net.ko.xz",))  # fmt: skip
    data = out.read_bytes()
    assert b"modules/00-virtio_net.ko\0" in data and b".ko.xz" not in data
    assert payload in data


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    out = tmp_path_factory.mktemp("cap612") / "q35.jsonl"
    try:
        meta = capture(out, vectors=2, kernel_version="6.12", progress=False)
    except PrerequisiteMissing as e:
        pytest.fail(f"capture-qemu --kernel 6.12 cannot run here: {e}", pytrace=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return meta, records, out.with_suffix(".console.txt").read_text()


@pytest.mark.qemu
def test_capture_612_boots_debian_612_and_pings(captured):
    meta, records, console = captured
    assert "linux-image-6.12." in meta["kernel"] and meta["ping_ok"], console[-2000:]
    assert "FAILED" not in console and "failed" not in console.split("VMSIX-DONE")[0][-4000:]
    assert meta["modules"][-1] == "drivers/net/virtio_net.ko.xz"
    assert records[0]["space"] == "meta" and records[0]["kernel_version"] == "6.12"
    assert {r["phase"] for r in records[1:]} == {"enumeration", "probe", "run"}


@pytest.mark.qemu
def test_capture_612_replays_with_zero_mismatches(captured):
    _, records, _ = captured
    assert count_reads(records) > 200
    assert replay_records(records, vectors=2) == []


@pytest.mark.qemu
def test_capture_612_teardown_is_the_sysfs_unbind(captured):
    """After the traffic: virtio_dev_remove's reset and re-acknowledge, then MSI-X disabled."""
    _, records, _ = captured
    run = [r for r in records if r.get("phase") == "run" and "op" in r]
    status = [r["value"] for r in run if r["space"] == "common" and r["op"] == "w"
              and r["offset"] == 0x14]  # fmt: skip
    assert status == [0, 1]
    msix_ctrl = [r["value"] for r in run if r["space"] == "cfg" and r["op"] == "w"
                 and r["offset"] == 0x9A]  # fmt: skip
    assert msix_ctrl and not msix_ctrl[-1] & 0x8000
