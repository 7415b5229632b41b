"""The Linux 6.1 legacy virtio-pci driver model (guest/virtio_pci_legacy.py) on a legacy-only
device (disable-modern=on): which transport the probe picks, what it negotiates, the receive
and transmit layouts the legacy features choose, traffic through the device, and that the
comparison with the real kernel's captures is not vacuous. The access-for-access equality with
real Linux 6.1 on QEMU 7.2 is in test_devspec_captures.py and test_teardown_vs_real_kernel.py
(tests/data/qemu-*-legacy*.jsonl)."""

from __future__ import annotations

import pytest
from capture_sets import load

from virtio_msix.abi.ring import DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT
from virtio_msix.abi.virtio import FEATURES_OK, VIRTIO_F_VERSION_1
from virtio_msix.guest.compare import diff, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.virtio_pci import ModernTransport
from virtio_msix.guest.virtio_pci_legacy import LegacyTransport
from virtio_msix.virtio import net as dev_net
from virtio_msix.virtio.devspec import parse_device
from virtio_msix.virtio.regs import LEGACY

LEGACY_DEVICE = "virtio-net-pci,disable-modern=on"


def sim(device: str, netdev: str | None = None, **kw):
    frames: list[tuple[bytes, bool]] = []
    res = run_sim(SimOptions(spec=parse_device(device, netdev), **kw),
                  capture=lambda f, out: frames.append((f, out)))  # fmt: skip
    return res, frames


def test_modern_probe_leaves_the_device_to_the_legacy_driver():
    res, _ = sim(LEGACY_DEVICE)
    assert res.probe_rc == 0
    assert isinstance(res.vp.ops, LegacyTransport)
    assert "leaving for legacy driver" in "\n".join(res.kernel.log)
    # No common config: every virtio register access is in BAR0's legacy block.
    spaces = {r["space"] for r in res.probe_records()}
    assert "legacy" in spaces and not spaces & {"common", "device", "notify", "isr"}
    default, _ = sim("virtio-net-pci")
    assert isinstance(default.vp.ops, ModernTransport)


def test_legacy_negotiation_has_no_version_1_and_no_features_ok():
    res, _ = sim(LEGACY_DEVICE)
    vp = res.vp
    assert not vp.has_feature(VIRTIO_F_VERSION_1) and vp.features >> 32 == 0
    # features_legacy: ANY_LAYOUT and GSO besides the modern table; BAD_FEATURE (30) never.
    assert vp.has_feature(dev_net.VIRTIO_F_ANY_LAYOUT) and vp.has_feature(dev_net.VIRTIO_NET_F_GSO)
    assert not vp.features >> 30 & 1
    status = LEGACY["device_status"].offset
    writes = [r["value"] for r in res.probe_records()
              if r["space"] == "legacy" and r["op"] == "w" and r["offset"] == status]  # fmt: skip
    assert writes == [0, 0x1, 0x3, 0x7]  # reset, ACKNOWLEDGE, DRIVER, DRIVER_OK
    assert not any(w & FEATURES_OK for w in writes)
    guest = [r["value"] for r in res.probe_records()
             if r["space"] == "legacy" and r["op"] == "w"
             and r["offset"] == LEGACY["guest_features"].offset]  # fmt: skip
    assert guest == [vp.features]


@pytest.mark.parametrize(
    ("props", "hdr_len", "tx_segments"),
    [("", 12, 1), (",mrg_rxbuf=off", 10, 1), (",any_layout=off", 12, 2),
     (",mrg_rxbuf=off,any_layout=off", 10, 2)],
)  # fmt: skip
def test_legacy_header_layout_and_traffic(props, hdr_len, tx_segments):
    """virtnet_probe: the 12-byte header with MRG_RXBUF, the 10-byte legacy one without; the
    header pushed in front of the frame only with ANY_LAYOUT (no VERSION_1 here). Frames go
    out and come back through the loopback backend unchanged."""
    res, frames = sim(LEGACY_DEVICE + props)
    assert res.net is not None and res.net.hdr_len == hdr_len
    sent = [f for f, out in frames if out]
    received = [f for f, out in frames if not out]
    assert sent and received == sent
    # The first transmit's chain starts at descriptor 0 of the TX ring; two segments (header
    # apart) go into an indirect table, as virtqueue_add_split puts them (INDIRECT_DESC).
    sq = res.net.sq[0]
    addr, length, flags, _next = DESC.unpack(res.kernel.memory.read(sq.desc, DESC.size))
    if tx_segments == 1:
        assert length == hdr_len + len(sent[0]) and not flags & VRING_DESC_F_NEXT
    else:
        assert flags == VRING_DESC_F_INDIRECT and length == 2 * DESC.size
        _a, length, flags, _next = DESC.unpack(res.kernel.memory.read(addr, DESC.size))
        assert length == hdr_len and flags & VRING_DESC_F_NEXT
    assert not res.device.health().get("errors")


@pytest.mark.parametrize("cpus", [1, 2])
def test_legacy_multiqueue_and_teardown(cpus):
    res, frames = sim(LEGACY_DEVICE + ",mq=on,vectors=6", "tap,queues=2", cpus=cpus)
    assert res.probe_rc == 0 and res.net is not None and res.net.max_queue_pairs == 2
    # virtnet_probe: as many pairs as CPUs (at most the device's).
    assert res.net.curr_queue_pairs == min(cpus, 2)
    sent = [f for f, out in frames if out]
    assert sent and [f for f, out in frames if not out] == sent
    assert res.status_after_teardown == 1 and res.msix_enabled_after_teardown is False
    # del_vq deactivated every queue with a PFN 0 write after its vector went to NO_VECTOR.
    down = [r for r in res.recorder.records if r.get("phase") == "teardown" and "op" in r]
    pfn0 = [r for r in down if r["space"] == "legacy" and r["op"] == "w"
            and r["offset"] == LEGACY["queue_address"].offset]  # fmt: skip
    assert pfn0 and all(r["value"] == 0 for r in pfn0)


def test_comparison_with_the_legacy_capture_is_not_vacuous():
    """The modern driver on the default device is not the legacy probe the real kernel made."""
    real = virtio_phase([r for r in load("qemu-q35-legacy") if r.get("phase") == "probe"])
    modern, _ = sim("virtio-net-pci")
    assert len(real) > 50 and diff(real, virtio_phase(modern.recorder.records))


def test_sim_cli_takes_disable_modern(capsys):
    import json

    from virtio_msix.cli import main

    assert main(["sim", "--device", LEGACY_DEVICE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["transport"] == "legacy" and out["probe_rc"] == 0
    assert out["traffic"]["rx"] == out["traffic"]["tx"] > 0
    assert main(["sim", "--device", LEGACY_DEVICE]) == 0
    assert "legacy virtio-pci (virtio_pci_legacy.c)" in capsys.readouterr().out
    assert main(["sim", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transport"] == "modern"
