"""``boot --device``: the real Linux 6.1 kernel (User-Mode Linux) on the device QEMU's
properties describe — a 129-vector table (PBA moved), page-per-vq notify pages, no mergeable
buffers, host_mtu, speed/duplex — passes traffic and shows the properties where Linux puts them
(/sys/class/net/eth0/{mtu,speed,duplex}); with ctrl_vq=off the real kernel rejects the device
as the model does (virtnet_validate: -EINVAL, FAILED). Each run's accesses equal ``sim --arch um``
with the same description from the first common-config access to DRIVER_OK (or FAILED)."""

from __future__ import annotations

import re

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml.boot import DEFAULT_SCRIPT, BootOptions, run_boot
from virtio_msix.virtio.devspec import parse_device
from virtio_msix.virtio.regs import COMMON

pytestmark = pytest.mark.uml

RICH = (
    "virtio-net-pci,vectors=129,page-per-vq=on,mrg_rxbuf=off,host_mtu=1400,speed=1000,duplex=full"
)
SHOW = """
echo devspec-net mtu=$(cat /sys/class/net/eth0/mtu) speed=$(cat /sys/class/net/eth0/speed) \
duplex=$(cat /sys/class/net/eth0/duplex)
"""


def window(records: list[dict]) -> list[dict]:
    out = virtio_phase(records)
    status = COMMON["device_status"].offset
    for i, r in enumerate(out):
        if (r.get("space"), r.get("op"), r.get("offset")) == ("common", "w", status) and r[
            "value"
        ] & 0x80:
            return out[: i + 1]
    return out


def same_as_sim(res, spec) -> None:
    real = window(res.recorder.records)
    model = window(run_sim(SimOptions(spec=spec, arch="um")).recorder.records)
    assert len(real) > 10
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"


def test_properties_under_the_real_kernel(linux):
    spec = parse_device(RICH)
    res = run_boot(BootOptions(spec=spec, script=DEFAULT_SCRIPT + SHOW, timeout=120))
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    assert res.ping()["received"] == res.ping()["sent"] == 3
    m = re.search(r"devspec-net mtu=(\d+) speed=(\d+) duplex=(\w+)", res.console)
    assert m is not None, res.console[-2000:]
    assert m.groups() == ("1400", "1000", "full")

    # After DRIVER_OK the config work reads status, then speed and duplex (virtnet_update_settings):
    # the same reads, same values, in the model.
    def settings(records):
        return [(r["offset"], r["size"], r["value"]) for r in records
                if r.get("space") == "device" and r.get("phase") == "run"][:3]  # fmt: skip

    model_run = run_sim(SimOptions(spec=spec, arch="um", packets=1)).recorder.records
    assert (
        settings(res.recorder.records)
        == settings(model_run)
        == [(6, 2, 1), (12, 4, 1000), (16, 1, 1)]
    )
    kicks = {r["offset"] for r in res.recorder.records if r.get("space") == "notify"}
    assert kicks and all(k % 0x1000 == 0 for k in kicks)  # one notify page per queue
    same_as_sim(res, spec)


def test_ctrl_vq_off_rejected_by_the_real_kernel(linux):
    spec = parse_device("virtio-net-pci,ctrl_vq=off")
    res = run_boot(BootOptions(spec=spec, script="true\n", timeout=120))
    status = COMMON["device_status"].offset
    writes = [r["value"] for r in res.recorder.records
              if (r.get("space"), r.get("op"), r.get("offset")) == ("common", "w", status)]  # fmt: skip
    assert 0x83 in writes, writes  # ACKNOWLEDGE | DRIVER | FAILED
    assert not any(w & 0x4 for w in writes)  # never DRIVER_OK
    # the run says so: the kernel's probe failure, found in its console, and the status
    assert res.probe_errors() == [{"device": "virtio1", "error": -22}]
    assert res.snapshot["device_status"] == 0x83
    same_as_sim(res, spec)


def test_two_pairs_under_the_real_kernel(linux):
    """``boot --device virtio-net-pci,mq=on,vectors=6`` with a two-queue peer: the real kernel
    takes both pairs (the device grows from one pair when it accepts MQ), one vector each."""
    spec = parse_device("virtio-net-pci,mq=on,vectors=6", "responder,queues=2")
    res = run_boot(BootOptions(spec=spec, timeout=120))
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    assert res.ping()["received"] == res.ping()["sent"] == 3
    vectors = dict(res.snapshot["event_vectors"])
    assert [vectors[n] for n in ("config", "input.0", "output.0", "input.1", "output.1")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    same_as_sim(res, spec)
