"""The public API: any VirtioDevice probed by the Linux 6.1 model (``Machine``/``probe``) and by
the real kernel (``boot --device-module``), with examples/rng.py as the device."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import virtio_msix
from virtio_msix import Machine, VirtioDevice, VirtqueueError, probe
from virtio_msix.virtio.device import DEVICE_NEEDS_RESET, DRIVER_OK, VIRTIO_F_VERSION_1

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rng.py"


def make_rng():
    return runpy.run_path(str(EXAMPLE))["make_device"]()


def test_rng_probed_in_simulation_with_msix():
    rng = make_rng()
    m = Machine(rng)
    v = m.probe()
    assert v.rc == 0 and v.error is None
    assert v.status == 0xF  # ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    assert v.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): ok"]
    assert v.per_vq_vectors and v.msix_enabled
    assert v.device_features == v.features == 1 << VIRTIO_F_VERSION_1
    assert v.event_vectors == [("config", 0), ("input", 1)]
    assert [(r["entry"], r["masked"]) for r in v.msix_table] == [(0, False), (1, False)]
    assert all(r["decoded"].startswith("logical dest 0x1 vector") for r in v.msix_table)
    assert [r["name"] for r in v.interrupts] == ["virtio0-config", "virtio0-input"]
    kinds = [c["kind"] for c in v.capabilities]
    assert kinds[0] == "MSI-X" and "virtio common" in kinds
    # A buffer through the queue: the device's interrupt runs the handler, the bytes are ours.
    data = m.transfer(0, in_len=64)
    assert len(data) == 64 and data == rng.produced[-1]
    after = {r["name"]: r["counts"] for r in m.views().interrupts}
    assert after == {"virtio0-config": [0], "virtio0-input": [1]}
    assert m.views().msix_table[1]["sent"] == 1
    m.remove()
    assert all(r["masked"] for r in m.views().msix_table)
    assert not m.views().msix_enabled


@pytest.mark.parametrize(
    ("vectors", "ladder", "vectors_used"),
    [
        (1, ["error -ENOSPC", "error -ENOSPC", "ok"], [("config", 0xFFFF), ("input", 0xFFFF)]),
        (0, ["error -EINVAL", "error -EINVAL", "ok"], [("config", 0xFFFF), ("input", 0xFFFF)]),
    ],
)
def test_rng_ladder_falls_back_to_intx(vectors, ladder, vectors_used):
    rng = make_rng()
    m = Machine(rng, vectors=vectors)
    v = m.probe()
    assert v.rc == 0
    assert [step.split(": ", 1)[1] for step in v.ladder] == ladder
    assert v.event_vectors == vectors_used
    assert m.transfer(0, in_len=16) == rng.produced[-1]  # through INTx and the ISR read


def test_rng_under_uml_msi_flavour():
    v = probe(make_rng(), arch="um")
    assert [r["decoded"] for r in v.msix_table] == ["UML irq 65", "UML irq 66"]


def test_driver_features_are_negotiated():
    class Dev(VirtioDevice):
        device_id = 4
        name = "with-features"

        def __init__(self):
            super().__init__([8, 8], host_features=1 << VIRTIO_F_VERSION_1 | 0b101, config_len=0)

    v = probe(Dev(), features=(0, 1))  # the driver knows bits 0 and 1; the device offers 0, 2
    assert v.features == 1 << VIRTIO_F_VERSION_1 | 1
    assert v.event_vectors == [("config", 0), ("queue0", 1), ("queue1", 2)]


def test_a_ring_fault_in_a_user_device_sets_needs_reset():
    class Faulty(VirtioDevice):
        device_id = 4
        name = "faulty"

        def __init__(self):
            super().__init__([8], host_features=1 << VIRTIO_F_VERSION_1, config_len=0)

        def queue_notify(self, index):
            raise VirtqueueError("descriptor out of range")

    dev = Faulty()
    m = Machine(dev)
    assert m.probe().rc == 0
    with pytest.raises(LookupError):
        m.transfer(0, in_len=8)
    assert dev.status & DEVICE_NEEDS_RESET and dev.status & DRIVER_OK
    assert "descriptor out of range" in m.function.errors[-1]


def test_readme_snippet_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Write your own virtio device", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})


def test_public_names():
    assert {"Machine", "probe", "ProbeResult", "VirtioDevice", "VirtQueue"} <= set(
        virtio_msix.__all__
    )
    with pytest.raises(AttributeError):
        virtio_msix.NoSuchThing  # noqa: B018


def test_boot_rejects_a_bad_device_module(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def make_device():\n    return 42\n")
    for arg, why in ((str(bad), "not a VirtioDevice"), (str(tmp_path / "none.py"), "no such")):
        out = subprocess.run([sys.executable, "-m", "virtio_msix", "boot", "--device-module", arg],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 2 and why in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.uml
def test_real_kernel_reads_our_rng_through_dev_hwrng():
    from virtio_msix.uml import kernel as uml_kernel
    from virtio_msix.uml.boot import MARK, BootOptions, run_boot

    uml_kernel.build(progress=True)
    rng = make_rng()
    # /dev/hwrng as it comes: uml.config leaves out UML's own hw_random (quality 1024, which
    # would outrank virtio_rng's 1000), so the kernel picks our device by itself.
    script = (f"echo {MARK} rng; head -c 64 /dev/hwrng | od -An -v -tx1; echo {MARK} end\n"
              f"echo {MARK} current; cat /sys/class/misc/hw_random/rng_current; echo {MARK} end\n")  # fmt: skip
    res = run_boot(BootOptions(device=rng, script=script, timeout=90))
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    assert res.sections["current"].strip() == "virtio_rng.0"
    got = bytes.fromhex("".join(res.sections["rng"].split()))
    assert len(got) == 64
    # The 64 bytes are runs of what our device wrote, in order: the hwrng core hands out the
    # driver's buffer as it was filled (virtio_read/copy_data), each run a piece of one buffer.
    produced = b"".join(rng.produced)
    pos, runs = 0, 0
    while pos < len(got):
        n = max(n for n in range(1, len(got) - pos + 1) if got[pos : pos + n] in produced)
        assert n >= 8, f"bytes {pos}.. are not ours"
        pos, runs = pos + n, runs + 1
    assert runs <= 8
    # The kernel's virtio_rng driver probed it with MSI-X: config and "input" vectors.
    assert res.snapshot["event_vectors"] == [("config", 0), ("input", 1)]
    assert [r["decoded"].startswith("UML irq") for r in res.snapshot["table"]] == [True, True]
    assert res.snapshot["table"][1]["sent"] >= 1
