"""boot's device views are the device at the guest script's "done" marker, before the power-off
removes the driver — also when the removal's reset reaches the event loop before the console
line does (seen once on a loaded host: the views showed every event at NO_VECTOR). A reset of
a running driver reads the console first. No kernel needed: the session's console is a pipe."""

from __future__ import annotations

import os

import pytest

from virtio_msix.abi.virtio import VIRTIO_MSI_NO_VECTOR
from virtio_msix.uml.boot import MARK, BootOptions, BootSession

DRIVER_OK_STATUS = 0xF  # ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK


@pytest.fixture
def session():
    s = BootSession(BootOptions())
    r, w = os.pipe()
    os.set_blocking(r, False)
    s._out_fd = r  # what _loop sets: the kernel's console, non-blocking
    s.times["start"] = 0.0
    s.device.device.status = DRIVER_OK_STATUS
    s.device.device.queues[0].vector = 1  # input.0 on vector 1, as a driver programs it
    yield s, w
    os.close(r)
    os.close(w)


def test_done_printed_before_the_reset_is_snapshotted_before_it(session):
    s, w = session
    os.write(w, f"last words\n{MARK} done\n".encode())
    s.device.reset()  # the removal's status write, served before the loop read the console
    assert "done" in s.times
    assert dict(s.snapshot["event_vectors"])["input.0"] == 1
    assert s.snapshot["device_status"] == DRIVER_OK_STATUS
    assert s.device.device.status == 0  # and the reset still happened


def test_a_reset_without_done_reads_the_console_and_takes_no_views(session):
    s, w = session
    os.write(w, b"an ordinary line\n")
    s.device.reset()  # e.g. the script unbinding the driver itself
    assert "done" not in s.times and s.snapshot == {}
    assert "an ordinary line" in s.console.text()
    assert s.device.device.queues[0].vector == VIRTIO_MSI_NO_VECTOR


def test_no_console_read_when_the_driver_was_not_running(session):
    s, w = session
    s.device.device.status = 0x3  # ACKNOWLEDGE | DRIVER: the probe's own reset comes earlier
    os.write(w, f"{MARK} done\n".encode())
    s.device.reset()
    assert "done" not in s.times  # left for the loop: nothing was running to lose
