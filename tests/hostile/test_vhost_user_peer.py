"""A hostile vhost-user / virtio_pcidev front-end against the real boot loop.

Each test starts a real ``BootSession`` (its socket, its event loop, its device) whose "kernel"
is ``vhost_peer.py``, a process that is only the hostile peer. For each, the session must end
within its ``timeout`` with a clear error naming the problem (or serve the peer correctly), with
no exception escaping, no descriptor left open in this process, and no process left behind.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import pytest
from fdcount import open_fds

from virtio_msix.uml.boot import BootOptions, BootSession
from virtio_msix.uml.cli import render, to_json
from virtio_msix.virtio import make_virtio_net_pci

PEER = Path(__file__).with_name("vhost_peer.py")
TIMEOUT = 3.0
# Generous: run() adds its own teardown (waiting for the "kernel", then killing its group).
HANG = TIMEOUT + 30


def group_gone(pgid: int) -> bool:
    """Whether the process group is empty; killed members may take a moment to be reaped by
    init (a zombie still counts), so this waits for that, a few seconds at most."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)  # leave nothing behind even when failing
    return False


class Hung(Exception):
    pass


def _alarm(_sig, _frame):
    raise Hung(f"the boot session did not end within {HANG} s")


def run_peer(scenario: str, *args: object, timeout: float = TIMEOUT):
    """Run the boot session against the peer; check what every scenario must satisfy."""
    before = open_fds()
    opts = BootOptions(timeout=timeout, kernel_command=[sys.executable, str(PEER), scenario,
                                                        *map(str, args)])  # fmt: skip
    session = BootSession(opts)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG)
    try:
        res = session.run()  # an exception escaping here fails the test with its traceback
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert session.proc is not None
    assert group_gone(session.proc.pid), "a process of the peer's group is still running"
    leaked = open_fds() - before
    assert not leaked, leaked
    # The user's views of the run are whole.
    text = render(res)
    json.dumps(to_json(res))
    assert "Traceback" not in text + res.console
    return res


@pytest.mark.parametrize(
    "scenario, words",
    [
        ("partial-header", ["header: the peer sent 5 of 12 bytes, then nothing within"]),
        ("partial-payload", ["SET_FEATURES payload: the peer sent 3 of 8 bytes"]),
        ("no-read", ["GET_FEATURES: the peer does not read its replies"]),
        ("mem-size-overflow", ["SET_MEM_TABLE: region 0:", "past the end of its file"]),
        ("mem-offset-overflow", ["SET_MEM_TABLE: region 0:", "past the end of its file"]),
        ("kick-pipe", ["SET_VRING_KICK: expected eventfd, got a pipe"]),
    ],
)
def test_hostile_message_is_a_clear_error(scenario, words):
    res = run_peer(scenario)
    assert res.error is not None and res.error.startswith("vhost-user: "), res.error
    for w in words:
        assert w in res.error
    assert res.vhost is not None and res.vhost.stats.errors == 1
    # The error names the problem the reader saw (then how the "kernel" ended).
    assert res.error[len("vhost-user: ") :].startswith(res.vhost.errors[-1])
    assert "1 errors" in render(res)


def test_a_peer_that_never_stops_talking_ends_at_the_deadline():
    res = run_peer("chatter")
    assert res.error.startswith(f"timeout: the guest did not finish within {TIMEOUT:.0f} s")
    assert res.vhost is not None and res.vhost.stats.messages > 10
    assert res.vhost.stats.errors == 0


def test_no_process_of_the_peer_outlives_the_session():
    """The peer exits at once but leaves a child in its process group: killed too (run_peer
    checks the group is empty)."""
    res = run_peer("orphan")
    assert res.error is not None


def test_descriptors_a_message_does_not_use_are_closed():
    """500 GET_FEATURES carrying 8 descriptors each, then a rejected SET_VRING_KICK: every one
    closed (run_peer checks that this process has no more descriptors open than before)."""
    res = run_peer("fd-flood")
    assert res.error is not None and "SET_VRING_KICK: expected eventfd, got a pipe" in res.error
    assert res.vhost is not None
    assert res.vhost.stats.unused_fds_closed == 500 * 8
    assert res.vhost.stats.messages == 501
    h = to_json(res)["health"]["vhost_user"]
    assert h["unused_fds_closed"] == 4000 and h["errors"] == 1


def test_truncated_memory_file_is_an_error_not_sigbus():
    """The peer cuts its memory file to 0 bytes after SET_MEM_TABLE; a mapped ring read would
    have killed this process with SIGBUS."""
    res = run_peer("truncate-memory")
    assert "@@vmsix vendor f41a" in res.console  # served through the memory before the cut
    assert res.error is not None and "truncated after SET_MEM_TABLE" in res.error, res.error
    assert "virt-pci ring" in res.error


def test_get_vring_base_stops_the_ring_until_it_is_started_again():
    res = run_peer("stop-ring")
    assert res.error is None, res.error + "\n" + res.console
    lines = res.console.splitlines()
    assert "@@vmsix base 1" in lines  # where it stopped: one request served
    assert "@@vmsix stopped-used 1" in lines  # a request offered while stopped: not served
    assert "@@vmsix restarted f41a" in lines  # served once SET_VRING_KICK started it again


def test_pcidev_bad_bar_access_and_huge_request():
    """Absent BAR and past-the-end reads answer all-ones and are counted; a request of 16
    buffers of 16 MiB is answered from its header without reading the buffers."""
    bar4 = make_virtio_net_pci().bars[4]
    assert bar4 is not None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run_peer("pcidev", bar4.size)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    assert res.error is None, res.error + "\n" + res.console
    lines = res.console.splitlines()
    assert "@@vmsix vendor f41a" in lines
    assert "@@vmsix absent ffffffff" in lines
    assert "@@vmsix pastend ffffffff" in lines
    assert "@@vmsix bar4 ffffffff" not in lines and any(
        x.startswith("@@vmsix bar4 ") for x in lines
    )
    assert "@@vmsix big f41a" in lines
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"
    assert res.host is not None
    assert res.host.stats.bad_by_kind == {"absent BAR": 1, "past BAR end": 1}
    h = to_json(res)["health"]["bad_messages"]
    assert h["count"] == 2 and any("BAR 3" in e for e in h["last"])
    assert "bad virt-pci messages: 2 (absent BAR 1, past BAR end 1)" in render(res)


@pytest.mark.uml
def test_a_well_behaved_kernel_sees_no_difference():
    """The real Linux 6.1 kernel: no bad message, no interrupt dropped, no vhost-user problem,
    every descriptor it sent kept or closed; and the counters are in both views."""
    from virtio_msix.uml import kernel as uml_kernel
    from virtio_msix.uml.boot import run_boot

    uml_kernel.build(progress=True)
    before = open_fds()
    res = run_boot(BootOptions(timeout=90))
    assert res.error is None, res.error
    assert res.ping()["received"] == 3
    h = to_json(res)["health"]
    assert h["bad_messages"] == {"count": 0, "by_kind": {}, "last": []}
    assert h["irq_messages"]["dropped"] == 0 and h["irq_messages"]["pending"] == 0
    vu = h["vhost_user"]
    assert vu["errors"] == 0 and vu["unused_fds_closed"] == 0 and vu["last_errors"] == []
    assert vu["messages"] > 20
    assert "bad virt-pci messages: 0" in render(res)
    assert open_fds() == before


def test_device_health_is_rendered_when_the_device_reports_it():
    """The device half exposes ``health()`` (dropped, errors, needs_reset, counters): the
    summary shows it; before it exists the section simply has no device line."""
    from virtio_msix.uml.cli import render_health

    h = {
        "bad_messages": {"count": 1, "by_kind": {"absent BAR": 1}, "last": ["MMIO_READ on BAR 3"]},
        "irq_messages": {"dropped": 2, "dropped_by_reason": {"irq buffer too small": 2},
                         "coalesced": 5, "pending": 0},
        "vhost_user": None,
        "device": {"dropped": {"no rx buffers": 3}, "errors": ["queue 0: head 99 ≥ 64"],
                   "needs_reset": "queue 0: head 99 ≥ 64", "counters": {"rx_frames": 7}},
    }  # fmt: skip
    text = "\n".join(render_health(h))
    assert "bad virt-pci messages: 1 (absent BAR 1)" in text and "MMIO_READ on BAR 3" in text
    assert "interrupt messages dropped: 2 (irq buffer too small: 2), coalesced: 5" in text
    assert "needs reset: queue 0: head 99 ≥ 64; frames dropped: 3 (no rx buffers: 3)" in text
    assert "rx_frames 7" in text
    h["device"] = None
    assert "device:" not in "\n".join(render_health(h))
