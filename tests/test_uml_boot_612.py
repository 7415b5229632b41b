"""The real Linux 6.12 kernel (User-Mode Linux built from Debian's linux-source-6.12, fetched from
bookworm-backports into the cache) drives our virtio-net device over virt-pci, beside 6.1: MSI-X
probe, the interrupt lines in /proc/interrupts, traffic through our device, the 2-vector and
the INTx fallbacks (the latter needs patches/6.12/virt-pci-intx-chip.patch, as 6.1 does)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import BootOptions, run_boot

pytestmark = pytest.mark.uml

KERNEL = "6.12"
CONFIGS = {"default": None, "vectors2": 2, "vectors0": 0}


@pytest.fixture(scope="module")
def linux(linux612):
    return linux612


@pytest.fixture(scope="module")
def boots(linux):
    return {name: run_boot(BootOptions(vectors=v, timeout=90, kernel=KERNEL))
            for name, v in CONFIGS.items()}  # fmt: skip


def _why(res) -> str:
    """The console lines that tell why a probe went wrong (a whole console is too long)."""
    words = ("virt", "WARN", "delay", "probe", "error", "failed")
    return "\n".join(line for line in res.console.splitlines() if any(w in line for w in words))


def _irq_rows(res, when):
    return {r["name"]: r for r in res.interrupts(when) if r["name"].startswith("virtio1")}


def test_the_kernel_is_6_12(boots):
    res = boots["default"]
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    assert "Linux version 6.12." in res.console
    assert uml_kernel.kernel_path(KERNEL) != uml_kernel.kernel_path()
    assert uml_kernel.is_built(KERNEL) and uml_kernel.is_built()


def test_default_probe_uses_msix_and_passes_traffic(boots):
    res = boots["default"]
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1-config", "virtio1-input.0", "virtio1-output.0"}, _why(res)
    for r in before.values():
        assert r["chip"] == "UM virtio PCIe MSI"
    for name in ("virtio1-input.0", "virtio1-output.0"):
        assert sum(after[name]["counts"]) > sum(before[name]["counts"]), name
    assert res.ping()["received"] == res.ping()["sent"] == 3
    table = res.snapshot["table"]
    unmasked = [e for e in table if not e["masked"]]
    assert len(unmasked) == 3 and res.snapshot["msix_enabled"]
    irqs = sorted(int(r["irq"]) for r in before.values())
    assert sorted(e["data"] for e in unmasked) == irqs
    assert {e["address"] for e in unmasked} == {0xA0000}
    vectors = dict(res.snapshot["event_vectors"])
    assert (vectors["config"], vectors["input.0"], vectors["output.0"]) == (0, 1, 2)
    sent = sum(e["sent"] for e in table)
    counted = sum(sum(r["counts"]) for r in _irq_rows(res, "after").values())
    assert sent >= counted > 0


def test_two_vectors_share_one_for_the_queues(boots):
    res = boots["vectors2"]
    assert res.error is None, res.error
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1-config", "virtio1-virtqueues"}, _why(res)
    assert sum(after["virtio1-virtqueues"]["counts"]) > sum(before["virtio1-virtqueues"]["counts"])
    assert res.ping()["received"] == 3
    vectors = dict(res.snapshot["event_vectors"])
    assert (vectors["config"], vectors["input.0"], vectors["output.0"]) == (0, 1, 1)


def test_no_msix_falls_back_to_intx(boots):
    res = boots["vectors0"]
    assert res.error is None, res.error
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1"}, _why(res)
    assert sum(after["virtio1"]["counts"]) > sum(before["virtio1"]["counts"])
    assert res.ping()["received"] == 3
    assert res.host is not None and res.host.stats.int_sent > 0 and res.host.stats.msi_sent == 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_612_kernel_trace_equals_model(boots, name):
    """``sim --arch um --kernel 6.12`` against the real 6.12 kernel: first common-config access
    to DRIVER_OK, access for access, values included (ring addresses aside)."""
    real = virtio_phase(boots[name].recorder.records)
    assert len(real) > 50, _why(boots[name])
    opts = SimOptions(vectors=CONFIGS[name], arch="um", kernel=KERNEL)
    model = virtio_phase(run_sim(opts).recorder.records)
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"


def test_real_612_saves_config_space_before_the_driver_as_the_model_does(boots):
    """pci_bus_add_device → pci_save_state under UML too (virt-pci's rescan): the model's 24
    reads, values aside from what the host chose (BARs, interrupt line)."""
    from test_sim_vs_real_kernel import _masked, save_state_reads

    real = save_state_reads(boots["default"].recorder.records)
    assert len(real) == 24
    model = save_state_reads(run_sim(SimOptions(arch="um", kernel=KERNEL)).recorder.records)
    assert _masked(model) == _masked(real)


def test_6_12_and_6_1_differ_on_our_device(boots):
    """The two real kernels are different drivers on the same device: with two vectors 6.12
    tries one more rung (SHARED_SLOW) and reads MSI-X Message Control once more than 6.1, so
    a comparison against one kernel cannot pass with the other."""
    six_one = run_boot(BootOptions(vectors=2, timeout=90))
    assert six_one.error is None, six_one.error
    assert "Linux version 6.1." in six_one.console
    new, old = (virtio_phase(r.recorder.records) for r in (boots["vectors2"], six_one))
    assert diff(new, old)
    from test_sim_vs_real_kernel import save_state_reads

    assert save_state_reads(six_one.recorder.records) == []
    def control_reads(records):
        return [r for r in records if r["space"] == "cfg" and r["op"] == "r" and r["offset"] == 0x9A]

    assert len(control_reads(new)) == len(control_reads(old)) + 1


def test_cli_boot_kernel_6_12(linux):
    cli = [sys.executable, "-m", "virtio_msix.cli", "boot", "--kernel", KERNEL, "--quiet", "--json"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    views = json.loads(out.stdout)
    assert views["kernel"] == KERNEL
    assert views["ping"]["received"] == 3 and views["msix_enabled"]


def test_cli_refuses_an_unknown_kernel():
    cli = [sys.executable, "-m", "virtio_msix.cli", "boot", "--kernel", "5.10"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: '5.10'" in out.stderr
