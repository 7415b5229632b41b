"""The kernel build into the cache is safe when two commands start it at once, and an
interrupted build never leaves a tree that looks finished.

These tests exercise the lock and the staging/rename machinery of ``uml.kernel.build()`` with
the build steps replaced by a stand-in that writes a tiny fake tree (a ``linux`` file), in a
cache pointed at a temporary directory by ``VIRTIO_MSIX_CACHE``. This is the one place a stand-in
is used: the real build takes 6+ minutes and the shared cache must not be disturbed; the real
steps are covered by CI's ``python -m virtio_msix.uml.kernel --build`` and by every boot test.
The concurrent builders are real processes holding a real flock.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtio_msix.uml import kernel as uml_kernel

# A builder process: build() with steps that log their start, wait for a "go" file (bounded),
# then write a fake kernel; prints the returned path.
BUILDER = """
import os, sys, time
from pathlib import Path
from virtio_msix.uml import kernel
log, go = Path(sys.argv[1]), Path(sys.argv[2])

def steps(top, tree, progress, jobs):
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {tree}\\n")
    (tree / "linux").write_text("fake kernel")
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go never came")
        time.sleep(0.02)
    with open(log, "a") as f:
        f.write(f"end {os.getpid()}\\n")

print(kernel.build(progress=True, steps=steps), flush=True)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    monkeypatch.setenv("VIRTIO_MSIX_CACHE", str(c))
    return c


def _builder(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(tmp_path / "steps.log"), str(tmp_path / "go")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(pred, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def _stderr_line(proc: subprocess.Popen[str], needle: str, limit: float = 30.0) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + limit
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            line = proc.stderr.readline()
            seen += line
            if needle in line:
                return line
            if not line:
                break
    raise AssertionError(f"no {needle!r} on stderr; got {seen!r}")


def _log(tmp_path: Path) -> list[str]:
    p = tmp_path / "steps.log"
    return p.read_text().splitlines() if p.exists() else []


def test_two_builds_at_once_build_once(cache, tmp_path):
    a = _builder(tmp_path)
    _wait_for(lambda: any(ln.startswith("start") for ln in _log(tmp_path)), "A starts building")
    b = _builder(tmp_path)
    # B finds the lock held and says so, while A is still inside its steps.
    assert "another command is building" in _stderr_line(b, "waiting")
    assert not uml_kernel.is_built() and not uml_kernel.tree_dir().exists()
    (tmp_path / "go").touch()
    out_a, _ = a.communicate(timeout=60)
    out_b, _ = b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0
    assert out_a.strip() == out_b.strip() == str(uml_kernel.kernel_path())
    log = _log(tmp_path)
    assert [ln.split()[0] for ln in log] == ["start", "end"], log  # the steps ran once
    assert log[0].endswith(uml_kernel.TREE_NAME + uml_kernel.STAGING_SUFFIX)  # not in place
    assert uml_kernel.is_built()
    assert not (cache / "uml" / (uml_kernel.TREE_NAME + uml_kernel.STAGING_SUFFIX)).exists()


def test_killed_build_leaves_no_finished_looking_tree_and_resumes(cache, tmp_path):
    a = _builder(tmp_path)
    # A has written its kernel binary, but has not finished its steps: kill it there.
    _wait_for(lambda: any(ln.startswith("start") for ln in _log(tmp_path)), "A starts building")
    staging = Path(_log(tmp_path)[0].split()[2])
    _wait_for(lambda: (staging / "linux").is_file(), "A writes its kernel")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    assert not uml_kernel.is_built()
    assert not uml_kernel.tree_dir().exists()
    assert not uml_kernel.kernel_path().exists()
    # The lock died with A; the next build resumes in A's staging tree and publishes it.
    resumed: list[Path] = []

    def steps(top, tree, progress, jobs):
        resumed.append(tree)
        assert (tree / "linux").read_text() == "fake kernel"  # A's work is still there
        (tree / "linux").write_text("finished kernel")

    path = uml_kernel.build(progress=False, steps=steps)
    assert resumed == [staging]
    assert path == uml_kernel.kernel_path() and path.read_text() == "finished kernel"
    assert uml_kernel.is_built() and not staging.exists()


def test_failed_build_is_not_published(cache):
    def failing(top, tree, progress, jobs):
        (tree / "linux").write_text("half a kernel")
        raise RuntimeError("make linux failed")

    with pytest.raises(RuntimeError, match="make linux failed"):
        uml_kernel.build(progress=False, steps=failing)
    assert not uml_kernel.is_built() and not uml_kernel.tree_dir().exists()


def test_outdated_tree_is_rebuilt_out_of_place(cache):
    """A published tree whose stamp no longer matches (the fragment changed) is moved to the
    staging directory, unstamped, and rebuilt there: while it builds, nothing at the published
    path looks finished; the old objects are reused."""
    tree = uml_kernel.tree_dir()
    tree.mkdir(parents=True)
    (tree / "linux").write_text("old kernel")
    (tree / "Makefile").write_text("")
    (tree / "old.o").write_text("object")
    uml_kernel.stamp_path().write_text("0123456789abcdef\n")
    assert not uml_kernel.is_built()
    seen: dict[str, object] = {}

    def steps(top, t, progress, jobs):
        seen["published_exists"] = tree.exists()
        seen["reused"] = (t / "old.o").is_file()
        seen["stamped"] = (t / uml_kernel.stamp_path().name).exists()
        seen["unpacked"] = (t / uml_kernel.UNPACKED).is_file()
        (t / "linux").write_text("new kernel")

    uml_kernel.build(progress=False, steps=steps)
    assert seen == {"published_exists": False, "reused": True, "stamped": False, "unpacked": True}
    assert uml_kernel.is_built() and uml_kernel.kernel_path().read_text() == "new kernel"
    assert uml_kernel.stamp_path().read_text().strip() == uml_kernel.fragment_hash()


def test_built_cache_is_used_without_the_lock(cache):
    """A finished build is returned at once even while another command holds the lock."""
    import fcntl

    uml_kernel.build(progress=False, steps=lambda top, t, p, j: (t / "linux").write_text("k"))
    assert uml_kernel.is_built()  # else the build below would wait for our own lock forever
    with open(cache / "uml" / uml_kernel.LOCK_NAME) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert uml_kernel.build(progress=False, steps=None) == uml_kernel.kernel_path()
    assert os.path.exists(uml_kernel.kernel_path())


INTERRUPTED_BUILDER = """
import sys
from virtio_msix.uml import kernel

def steps(top, tree, progress, jobs):
    with open(top / "build.log", "a") as log:
        # A stand-in for make -j: a process with a child of its own.
        kernel._run(["sh", "-c", "sleep 300 & wait"], tree, log, False, "make")

kernel.build(progress=False, steps=steps)
"""


def test_interrupted_build_stops_its_build_processes(cache, tmp_path):
    """Ctrl-C during a build: the build step's whole process tree stops with it (make left
    running would write into the tree the next build uses), and nothing is published."""
    p = subprocess.Popen([sys.executable, "-c", INTERRUPTED_BUILDER], stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    sleepers: list[int] = []

    def started() -> bool:
        sleepers[:] = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                       if _cmdline(pid) == "sleep 300" and _ancestor(pid, p.pid)]  # fmt: skip
        return bool(sleepers)

    try:
        _wait_for(started, "the step starts")
        assert len(sleepers) == 1
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert p.returncode != 0 and "KeyboardInterrupt" in err
        _wait_for(lambda: _state(sleepers[0]) in ("gone", "Z"), "the build's processes stop",
                  limit=10)  # fmt: skip
        assert not uml_kernel.is_built() and not uml_kernel.tree_dir().exists()
    finally:  # a failing test leaves nothing behind either
        for pid in [p.pid, *sleepers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()


def _stat(pid: int) -> list[str]:
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return s[s.rfind(")") + 2 :].split()


def _state(pid: int) -> str:
    f = _stat(pid)
    return f[0] if f else "gone"


def _ancestor(pid: int, ancestor: int) -> bool:
    while pid > 1:
        f = _stat(pid)
        if not f:
            return False
        pid = int(f[1])
        if pid == ancestor:
            return True
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
