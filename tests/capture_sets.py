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
