"""The real kernel (UML) behind two user-facing features: ``boot --pcap`` writes the guest's
frames both ways, and the vector limit of virt-pci, which ``sim --arch um`` models: Linux 6.1's
virt-pci has 32 MSI vectors for its whole bus (MAX_MSI_VECTORS), a device asking for more gets
-ENOSPC from pci_alloc_irq_vectors and virtio_pci falls back to two shared vectors — the real
kernel does it with our device, and the model the same, access for access."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml.boot import BootOptions, run_boot

pytestmark = pytest.mark.uml


def test_more_vectors_than_virt_pci_has_fall_back_like_the_real_kernel(linux):
    # 16 pairs: 1 + 32 vectors wanted, 32 available.
    opts = BootOptions(queue_pairs=16, timeout=90)
    opts.script = "true\n"
    real = run_boot(opts)
    assert real.error is None, real.error
    events = dict(real.snapshot["event_vectors"])
    assert events["config"] == 0 and events["input.0"] == events["output.15"] == 1, (
        f"{events}\n{real.times}\n{real.console[-3000:]}")
    model = run_sim(SimOptions(queue_pairs=16, arch="um", packets=0))
    assert model.vp.ladder[0].endswith("error -ENOSPC") and model.vp.ladder[1].endswith("ok")
    differences = diff(virtio_phase(real.recorder.records), virtio_phase(model.recorder.records))
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
    # One pair fewer fits: one vector per queue.
    fits = run_sim(SimOptions(queue_pairs=15, arch="um", packets=0))
    assert fits.vp.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): ok"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_boot_pcap_has_the_guests_ping_both_ways(linux, tmp_path):
    path = tmp_path / "boot.pcapng"
    out = subprocess.run([sys.executable, "-m", "virtio_msix", "boot", "--quiet", "--pcap",
                          str(path)], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.packet_flags_direction",
         "-e", "icmp.type", "-e", "arp.opcode"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    fields = [r.split("\t") for r in rows]
    outbound = "0x00000002"
    # ping -c 3 from the guest: requests (type 8) leave, replies (type 0) come in.
    assert sorted(d for d, icmp, _ in fields if icmp == "8") == [outbound] * 3
    assert sorted(d for d, icmp, _ in fields if icmp == "0") == ["0x00000001"] * 3
    assert [d for d, _, arp in fields if arp == "1"][:1] == [outbound]  # the guest's ARP request


@pytest.mark.parametrize("cmd,status", [("true", 0), ("exit 3", 3), ("false", 1), ("", 0),
                                        ("# only a comment", 0)])
def test_boot_cmd_exits_with_the_guest_commands_status(linux, cmd, status):
    """`boot -- CMD` as `ssh host CMD`: CMD's status is boot's, so a guest check can fail a
    script; the device views are still printed, and --json says it as script_status."""
    out = subprocess.run([sys.executable, "-m", "virtio_msix", "boot", "--quiet", "--json",
                          "--", cmd], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == status, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["finished"] and doc["script_status"] == status and doc["error"] is None
    assert ("exited with status" in out.stderr) == (status != 0)
