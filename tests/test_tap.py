"""The real kernel with ``--net tap``, each run inside a private network namespace (``unshare
--net``: the TAP and the host's sockets exist only there). tests/tap_scenarios.py runs the boot
and reports JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_msix.qemu.debian import PrerequisiteMissing
from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.virtio.net import (
    QEMU_72_TAP_VNET_FEATURES,
    QEMU_72_USER_NETDEV_FEATURES,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_HOST_TSO4,
)

pytestmark = pytest.mark.uml

SCENARIOS = Path(__file__).with_name("tap_scenarios.py")


@pytest.fixture(scope="module")
def linux():
    try:
        return uml_kernel.build(progress=True)
    except PrerequisiteMissing as e:
        pytest.fail(f"the UML kernel cannot be built here: {e}", pytrace=False)


def run_scenario(*args: str, timeout: float = 400) -> dict:
    if os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"):
        pytest.fail("TAP tests need root, unshare (util-linux) and /dev/net/tun", pytrace=False)
    p = subprocess.run(["unshare", "--net", sys.executable, str(SCENARIOS), *args],
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_readable_tap_does_not_spin_the_loop(linux):
    """Frames wait on the TAP from before the kernel starts (no receive buffers until
    DRIVER_OK, and after it only while buffers are posted): the loop must not wake for them
    while the device cannot take one. Spinning showed as tens of thousands of passes; a loop
    that waits makes about one pass per event (kick, message, frame batch) plus one per 50 ms
    select timeout."""
    out = run_scenario("flood")
    assert out["error"] is None, out
    loop = out["loop"]
    assert out["injected"] > 500  # the TAP really was readable all along
    events = loop["kicks"] + out["vhost_messages"] + out["counters"]["rx_frames"]
    seconds = out["times"]["done"]
    assert loop["passes"] <= 2 * events + seconds / 0.05 + 200, out
    assert loop["tap_watched"] < loop["passes"]


def _intact(out: dict, nbytes: int) -> None:
    host, guest = out["host"], out["guest"]
    assert host["g2h"]["bytes"] == nbytes
    assert host["g2h"]["md5"] == guest["g2h_md5"]
    assert guest["h2g_bytes"] == nbytes
    assert guest["h2g_md5"] == host["h2g"]["md5"]


def test_offloads_negotiated_and_segmented_data_intact(linux):
    """A TAP with a vnet header: the device offers QEMU 7.2's tap feature set, the real kernel
    takes the offloads, hands the device frames far larger than the MTU (TSO), and the host
    kernel segments and checksums them: 4 MiB each way arrive whole (MD5 on both ends; the
    host's TCP stack drops any segment whose checksum is wrong)."""
    nbytes = 4 << 20
    out = run_scenario("transfer", str(nbytes), "vnet")
    assert out["error"] is None, out
    assert out["tap_vnet_hdr"] is True
    assert out["offered"] == QEMU_72_TAP_VNET_FEATURES
    for bit in (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4):  # fmt: skip
        assert out["negotiated"] >> bit & 1, hex(out["negotiated"])
    assert out["guest_offloads"] >> VIRTIO_NET_F_GUEST_TSO4 & 1
    # Larger than any one segment: only TSO makes such a frame. How large is the sender's
    # choice (tcp_tso_autosize: about 1 ms of its pacing rate, at least two segments), so a
    # slow moment of the host gives smaller ones (seen once under the whole suite: none above 4).
    assert out["max_tx_frame"] > 12 + 1514  # one descriptor chain, several segments' worth
    _intact(out, nbytes)
    assert out["max_rx_frame"] > 12 + 1514  # GUEST_TSO4: the host sends large ones too
    assert out["counters"]["rx_dropped"] == out["counters"]["tx_dropped"] == 0


def test_tap_without_vnet_header_keeps_the_user_feature_set(linux):
    """QEMU's vnet_hdr=off: no offloads offered (0x30bf8024 in the low word), the guest sends
    MTU-sized frames, data intact both ways."""
    nbytes = 1 << 20
    out = run_scenario("transfer", str(nbytes), "novnet")
    assert out["error"] is None, out
    assert out["tap_vnet_hdr"] is False
    assert out["offered"] == QEMU_72_USER_NETDEV_FEATURES
    assert out["max_tx_frame"] <= 1514
    assert out["max_rx_frame"] <= 1514
    _intact(out, nbytes)


def test_event_loop_counters_are_in_the_health_summary():
    from virtio_msix.uml.cli import render_health

    h = {
        "bad_messages": {"count": 0, "by_kind": {}, "last": []},
        "irq_messages": {"dropped": 0, "dropped_by_reason": {}, "coalesced": 0, "pending": 0},
        "vhost_user": None,
        "device": None,
        "event_loop": {"passes": 812, "kicks": 300, "tap_watched": 90},
    }
    assert "event loop: 812 passes, 300 kicks, TAP watched in 90" in "\n".join(render_health(h))
