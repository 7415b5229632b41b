"""What a user sees of the device's troubles: VirtioPciDevice.health() and its rendering in
``virtio-msix sim`` (text and --json)."""

from __future__ import annotations

import json
import subprocess
import sys

from rig import F_WRITE, NEEDS_RESET, Rig, frame

from virtio_msix.guest.cli import health_lines


def test_health_reports_drops_errors_and_the_needs_reset_reason():
    rig = Rig(mergeable=False)
    rig.rx.set_desc(0, rig.buffer(20), 20, F_WRITE)
    rig.rx.offer(0)
    rig.inject(frame(76))
    rig.kick(rig.rx)
    rig.tx.set_desc(0, rig.mem.size - 2, 4)  # outside memory
    rig.tx.offer(0)
    rig.kick(rig.tx)
    h = rig.dev.health()
    assert h["dropped"] == {"rx_buffer_too_small": 1}
    assert "outside guest memory" in h["needs_reset"]
    assert h["errors"] == [h["needs_reset"]]
    assert h["counters"]["rx_dropped"] == 1 and h["counters"]["ring_errors"] == 1
    assert rig.status() & NEEDS_RESET
    text = "\n".join(health_lines(h))
    assert "rx_buffer_too_small 1" in text and "DEVICE_NEEDS_RESET: queue 1" in text
    assert "tx_frames" not in text  # zero counters are not shown
    # A reset clears NEEDS_RESET; the history (drops, errors) stays.
    rig.wr("device_status", 0)
    h = rig.dev.health()
    assert h["needs_reset"] is None and len(h["errors"]) == 1 and h["dropped"]


def test_error_list_is_bounded():
    rig = Rig()
    for n in range(40):
        rig.wr("device_status", 0)
        rig.rx.avail_idx = 0
        rig.mem.poke(rig.rx.avail, bytes(4))
        rig.bring_up()
        rig.rx.set_desc(0, 0, 0, F_WRITE)  # zero-length
        rig.rx.offer(0)
        rig.inject(frame(60, tag=n))
        rig.kick(rig.rx)
    h = rig.dev.health()
    assert len(h["errors"]) == 16 and h["counters"]["ring_errors"] == 40
    assert h["counters"]["rx_held"] == 1  # the frame waits for a working driver


def test_sim_shows_device_health_in_text_and_json():
    cmd = [sys.executable, "-m", "virtio_msix.cli", "sim", "--packets", "3", "--color", "never"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    section = out.split("Device health\n", 1)[1].split("\n\n", 1)[0]
    assert "tx_frames 3" in section and "rx_frames 3" in section and "dropped" not in section
    doc = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)  # fmt: skip
    assert doc["health"]["counters"]["rx_frames"] == 3
    assert doc["health"]["needs_reset"] is None and doc["health"]["dropped"] == {}


def test_device_entry_points_with_odd_arguments_raise_nothing():
    rig = Rig()
    net = rig.net
    for index in (-1, 3, 99, 2**16):
        net.queue_notify(index)
        rig.dev.bar_write(4, 0x3000 + 4 * (index % 0x400), 2, index & 0xFFFF)
    detached = type(net)()
    detached.queue_notify(0)  # never attached to a transport: nothing to do
    assert detached.poll() == 0
    assert not rig.status() & NEEDS_RESET
