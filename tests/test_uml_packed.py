"""The real Linux 6.1 kernel (UML) on our virtio-net device built with packed=on (QEMU's
``-device virtio-net-pci,packed=on``): Linux negotiates VIRTIO_F_RING_PACKED (bit 34 of the
guest's own /sys/bus/virtio/devices/*/features), its virtio_ring.c drives packed rings that our
device walks (virtio/packed.py), traffic passes, and its probe equals the driver model's."""

from __future__ import annotations

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml.boot import DEFAULT_SCRIPT, MARK, BootOptions, run_boot
from virtio_msix.virtio.regs import COMMON

pytestmark = pytest.mark.uml

VIRTIO_F_RING_PACKED = 34
VIRTIO_ID_NET = 1

# The default script (interrupts, link up, ping) and, from the guest, each virtio device's id and
# the feature bits its driver negotiated (sysfs: one '0'/'1' character per bit, bit 0 first).
FEATURES_SCRIPT = f"""\
echo {MARK} features
for d in /sys/bus/virtio/devices/*; do echo "${{d##*/}} $(cat $d/device) $(cat $d/features)"; done
echo {MARK} end
"""
SCRIPT = DEFAULT_SCRIPT + FEATURES_SCRIPT


@pytest.fixture(scope="module")
def packed_boot(linux):
    return run_boot(BootOptions(device_options={"packed": True}, script=SCRIPT, timeout=120))


def _guest_features(res) -> dict[int, str]:
    out = {}
    for line in res.sections.get("features", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[int(parts[1], 16)] = parts[2]
    return out


def test_linux_negotiates_packed_rings_and_passes_traffic(packed_boot):
    res = packed_boot
    assert res.error is None, f"{res.error}\n{res.console[-2000:]}"
    feats = _guest_features(res)
    assert VIRTIO_ID_NET in feats, res.sections.get("features")
    assert feats[VIRTIO_ID_NET][VIRTIO_F_RING_PACKED] == "1"
    # What the kernel wrote to our driver_feature register (the device was reset at the end,
    # when the script unbound it): the high word with RING_PACKED.
    words = [r["value"] for r in res.recorder.records if r.get("space") == "common"
             and r.get("op") == "w" and r["offset"] == COMMON["driver_feature"].offset]  # fmt: skip
    assert words and words[-1] >> (VIRTIO_F_RING_PACKED - 32) & 1, words
    net = res.device.device
    assert res.ping()["received"] == res.ping()["sent"] == 3
    assert net.stats["tx_frames"] > 0 and net.stats["rx_frames"] > 0
    health = res.device.health()
    assert health["needs_reset"] is None and not health["errors"], health


def test_without_packed_on_linux_keeps_split_rings(linux):
    res = run_boot(BootOptions(script=SCRIPT, timeout=120))
    assert res.error is None, res.error
    assert _guest_features(res)[VIRTIO_ID_NET][VIRTIO_F_RING_PACKED] == "0"
    assert res.ping()["received"] == 3


def test_real_kernel_packed_probe_equals_model(packed_boot):
    """First common-config access to DRIVER_OK, values included (ring addresses aside): the
    real kernel with packed=on against ``sim --arch um`` with packed=on."""
    real = virtio_phase(packed_boot.recorder.records)
    assert len(real) > 50
    model = virtio_phase(run_sim(SimOptions(arch="um", packed=True)).recorder.records)
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
    # ...and the split model is not the same probe (the feature words differ).
    assert diff(real, virtio_phase(run_sim(SimOptions(arch="um")).recorder.records))


def test_traffic_around_the_packed_rings_many_times(linux):
    """600 echo requests and replies: the 256-entry TX and RX rings wrap twice, so the real
    driver and our device both flip their wrap counters, with no loss and no device error."""
    script = f"""ip link set eth0 up
ip addr add $GUEST_IP/24 dev eth0
echo {MARK} ping; ping -c 600 -i 0.01 -q $HOST_IP; echo {MARK} end
"""
    res = run_boot(BootOptions(device_options={"packed": True}, script=script, timeout=300))
    assert res.error is None, f"{res.error}\n{res.console[-2000:]}"
    assert res.ping()["received"] == res.ping()["sent"] == 600
    stats = res.device.device.stats
    assert stats["tx_frames"] >= 600 and stats["rx_frames"] >= 600
    health = res.device.health()
    assert health["needs_reset"] is None and not health["errors"] and not health["dropped"]


def test_a_device_module_of_the_users_gets_packed_rings_from_the_real_kernel(linux):
    """examples/rng.py offering RING_PACKED under the real kernel: virtio_rng's queue is packed
    (8 entries, so reading 256 bytes goes around it) and /dev/hwrng gives our bytes."""
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "rng.py"
    rng = runpy.run_path(str(example))["make_device"]()
    rng.host_features |= 1 << VIRTIO_F_RING_PACKED
    script = f"echo {MARK} rng; head -c 256 /dev/hwrng | od -An -v -tx1; echo {MARK} end\n"
    script += FEATURES_SCRIPT
    res = run_boot(BootOptions(device=rng, script=script, timeout=120))
    assert res.error is None, f"{res.error}\n{res.console[-2000:]}"
    feats = _guest_features(res)
    assert feats[4][VIRTIO_F_RING_PACKED] == "1", res.sections.get("features")  # virtio-rng
    got = bytes.fromhex("".join(res.sections["rng"].split()))
    assert len(got) == 256
    produced = b"".join(rng.produced)
    assert len(produced) >= 256 and got[:8] in produced
    assert not res.device.health()["errors"]


def test_linux_612_negotiates_packed_rings_too(linux612):
    res = run_boot(BootOptions(device_options={"packed": True}, script=SCRIPT, timeout=120,
                               kernel="6.12"))  # fmt: skip
    assert res.error is None, f"{res.error}\n{res.console[-2000:]}"
    assert _guest_features(res)[VIRTIO_ID_NET][VIRTIO_F_RING_PACKED] == "1"
    assert res.ping()["received"] == res.ping()["sent"] == 3
    assert not res.device.health()["errors"]
