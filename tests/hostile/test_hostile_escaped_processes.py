"""Issue 8, review round: a process the kernel starts that leaves its session (setsid) does
not outlive the boot — whether its parent exits first (it is orphaned to us: we are a child
subreaper while a kernel runs) or is still running when the session ends."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from virtio_msix.uml import procs
from virtio_msix.uml.boot import BootOptions, BootSession


def alive(pid: int) -> bool:
    state = procs.process_table().get(pid)
    return state is not None and state[1] != "Z"


@pytest.mark.parametrize("parent_exits", [True, False])
def test_a_process_that_left_the_kernels_session_is_killed_and_reaped(tmp_path, parent_exits):
    pidfile = tmp_path / "escaped.pid"
    escape = f'setsid sh -c "echo \\$\\$ > {pidfile}; exec sleep 60" &'
    tail = "sleep 0.3; exit 0" if parent_exits else "exec sleep 60"
    opts = BootOptions(timeout=2, kernel_command=["sh", "-c", f"{escape} {tail}", "--"])
    res = BootSession(opts).run()
    assert res.error is not None  # no vhost-user peer: the run times out or ends early
    pid = int(Path(pidfile).read_text())
    try:
        assert not alive(pid), f"process {pid} outlived the session"
        # Reaped, not left a zombie of ours.
        assert pid not in procs.process_table()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_subreaper_leaves_processes_it_found_alone(tmp_path):
    import subprocess

    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sub = procs.Subreaper()
        late = subprocess.Popen(["sleep", "60"])
        left = sub.kill_escaped(set(), {late.pid})
        sub.close()
        assert left == []
        assert mine.poll() is None  # there before: not ours to kill
        assert late.wait(timeout=10) == -signal.SIGKILL
    finally:
        mine.kill()
        mine.wait()
