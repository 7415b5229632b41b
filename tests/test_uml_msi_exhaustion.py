"""virt-pci in Linux 6.1 has 32 MSI vectors for its whole bus (MAX_MSI_VECTORS): a device
asking for more gets -ENOSPC from pci_alloc_irq_vectors and virtio_pci falls back to two shared
vectors. The real kernel does it with our device, and ``sim --arch um`` does the same, access
for access."""

from __future__ import annotations

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.qemu.debian import PrerequisiteMissing
from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import BootOptions, run_boot

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def linux():
    try:
        return uml_kernel.build(progress=True)
    except PrerequisiteMissing as e:
        pytest.fail(f"the UML kernel cannot be built here: {e}", pytrace=False)


def test_more_vectors_than_virt_pci_has_fall_back_like_the_real_kernel(linux):
    # 16 pairs: 1 + 32 vectors wanted, 32 available.
    opts = BootOptions(queue_pairs=16, timeout=90)
    opts.script = "true\n"
    real = run_boot(opts)
    assert real.error is None, real.error
    events = dict(real.snapshot["event_vectors"])
    assert events["config"] == 0 and events["input.0"] == events["output.15"] == 1
    model = run_sim(SimOptions(queue_pairs=16, arch="um", packets=0))
    assert model.vp.ladder[0].endswith("error -ENOSPC") and model.vp.ladder[1].endswith("ok")
    differences = diff(virtio_phase(real.recorder.records), virtio_phase(model.recorder.records))
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
    # One pair fewer fits: one vector per queue.
    fits = run_sim(SimOptions(queue_pairs=15, arch="um", packets=0))
    assert fits.vp.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): ok"]
