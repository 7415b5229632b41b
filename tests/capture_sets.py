"""The committed QEMU captures and the options each was taken with."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"

# name → device vectors (None: QEMU's default, 4); Debian 12's Linux 6.1
CAPTURES = {
    "qemu-q35": None,
    "qemu-pc": None,
    "qemu-q35-vectors2": 2,
    "qemu-q35-vectors0": 0,
}
# the same, Debian's 6.12 from bookworm-backports (capture-qemu --kernel 6.12): virtio_pci is
# built in, so the init script unbinds the device, loads virtio_net, binds it again (the probe
# phase) and unbinds it at the end (qemu/capture.py)
CAPTURES_612 = {
    "qemu612-q35": None,
    "qemu612-q35-vectors2": 2,
    "qemu612-q35-vectors0": 0,
}
# 6.12 with two guest CPUs (capture-qemu --kernel 6.12 --smp 2): replayed, and the model's
# probe equal to it (test_sim_vs_real_kernel.py test_612_two_cpus_equal_the_real_kernel)
CAPTURES_612_SMP2 = {"qemu612-q35-smp2": None}
ALL_CAPTURES = {**CAPTURES, **CAPTURES_612, **CAPTURES_612_SMP2}


def load(name: str) -> list[dict]:
    with open(DATA / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# Issue 10's configurations (Linux 6.1, capture-qemu's own options): name → the arguments after
# ``capture-qemu OUT``. Each file starts with its meta record (the full -device string given to
# QEMU, the netdev, machine, smp, kernel, teardown). Regenerate one with
# ``python tests/capture_sets.py NAME`` (as root: the tap ones run in a private netns).
MQ2 = ["--device", "virtio-net-pci,mq=on,vectors=6", "--netdev", "tap,queues=2"]
LEGACY = "virtio-net-pci,disable-modern=on"
CAPTURES_10 = {
    "qemu-q35-smp2": ["--smp", "2"],
    "qemu-q35-smp4": ["--smp", "4"],
    "qemu-q35-mq2-v6": ["--smp", "2", *MQ2],
    "qemu-q35-mq2-v5": ["--smp", "2", "--device", "virtio-net-pci,mq=on,vectors=5",
                        "--netdev", "tap,queues=2"],
    "qemu-q35-mq2-v3": ["--smp", "2", "--device", "virtio-net-pci,mq=on,vectors=3",
                        "--netdev", "tap,queues=2"],
    "qemu-q35-mq4-smp2": ["--smp", "2", "--device", "virtio-net-pci,mq=on,vectors=10",
                          "--netdev", "tap,queues=4"],
    "qemu-q35-mq2-smp4": ["--smp", "4", *MQ2],
    "qemu-q35-modern": ["--device", "virtio-net-pci,disable-legacy=on"],
    "qemu-q35-teardown": ["--teardown"],
    "qemu-q35-teardown-mq2": ["--smp", "2", *MQ2, "--teardown"],
    "qemu-q35-teardown-mq2-smp1": ["--device", "virtio-net-pci,mq=on,vectors=6",
                                   "--netdev", "tap,queues=2,vnet_hdr=off", "--teardown"],
    "qemu-q35-teardown-vectors2": ["--vectors", "2", "--teardown"],
    "qemu-q35-teardown-vectors0": ["--vectors", "0", "--teardown"],
    "qemu-q35-teardown-modern": ["--device", "virtio-net-pci,disable-legacy=on", "--teardown"],
    "qemu-q35-ctrlvq-off": ["--device", "virtio-net-pci,ctrl_vq=off"],
    "qemu-q35-ctrlvq-off-deps": ["--device", "virtio-net-pci,ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,"
                                 "ctrl_rx_extra=off,ctrl_mac_addr=off,guest_announce=off,mq=off"],
    "qemu-q35-event-idx-off": ["--device", "virtio-net-pci,event_idx=off"],
    "qemu-q35-mrg-rxbuf-off": ["--device", "virtio-net-pci,mrg_rxbuf=off"],
    "qemu-q35-indirect-off": ["--device", "virtio-net-pci,indirect_desc=off"],
    "qemu-q35-packed": ["--device", "virtio-net-pci,packed=on"],
    "qemu-q35-page-per-vq": ["--device", "virtio-net-pci,page-per-vq=on"],
    "qemu-q35-tap-vnethdr": ["--netdev", "tap,vnet_hdr=on"],
    "qemu-q35-tap-novnethdr": ["--netdev", "tap,vnet_hdr=off"],
    "qemu-pc-mq2-v6": ["--machine", "pc", "--smp", "2", *MQ2],
    "qemu-pc-teardown": ["--machine", "pc", "--teardown"],
    "qemu612-q35-teardown": ["--kernel", "6.12", "--teardown"],
    # Legacy-only (disable-modern=on, device ID 0x1000): Linux's virtio_pci_legacy.c path.
    "qemu-q35-legacy": ["--device", LEGACY],
    "qemu-q35-legacy-vectors2": ["--device", f"{LEGACY},vectors=2"],
    "qemu-q35-legacy-smp2-mq2": ["--smp", "2", "--device", f"{LEGACY},mq=on,vectors=6",
                                 "--netdev", "tap,queues=2"],
    "qemu-q35-legacy-mq2-v3": ["--smp", "2", "--device", f"{LEGACY},mq=on,vectors=3",
                               "--netdev", "tap,queues=2"],
    "qemu-q35-legacy-mrg-rxbuf-off": ["--device", f"{LEGACY},mrg_rxbuf=off"],
    "qemu-q35-legacy-any-layout-off": ["--device", f"{LEGACY},any_layout=off"],
    "qemu-pc-legacy-teardown": ["--machine", "pc", "--device", LEGACY, "--teardown"],
    "qemu-q35-legacy-teardown-mq2": ["--smp", "2", "--device", f"{LEGACY},mq=on,vectors=6",
                                     "--netdev", "tap,queues=2", "--teardown"],
    "qemu-q35-legacy-teardown-vectors0": ["--device", f"{LEGACY},vectors=0", "--teardown"],
    "qemu612-q35-legacy": ["--kernel", "6.12", "--device", LEGACY],
}  # fmt: skip


def load_meta(name: str) -> dict:
    """The capture's first record (its configuration)."""
    with open(DATA / f"{name}.jsonl") as f:
        first = json.loads(f.readline())
    assert first.get("space") == "meta", name
    return first


if __name__ == "__main__":
    import subprocess
    import sys

    for name in sys.argv[1:] or list(CAPTURES_10):
        out = DATA / f"{name}.jsonl"
        cmd = [sys.executable, "-m", "virtio_msix", "capture-qemu", str(out), *CAPTURES_10[name]]
        with open(DATA / f"{name}.meta.json", "w") as meta:
            rc = subprocess.call(cmd, stdout=meta)
        print(name, "rc", rc, flush=True)
