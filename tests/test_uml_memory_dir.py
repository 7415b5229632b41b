"""Where UML's physical memory file goes (uml.kernel.memory_dir) and that the reaper removes
every directory it was given. No kernel needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml import procs


def test_memory_dir_is_a_new_directory_on_a_tmpfs_when_there_is_one(tmp_path):
    got = uml_kernel.memory_dir(128, tmp_path)
    try:
        if uml_kernel._tmpfs_mount("/dev/shm") is None:
            pytest.skip("/dev/shm is not a tmpfs on this machine")
        opts = uml_kernel._tmpfs_mount("/dev/shm")
        if "noexec" in opts.split(","):
            assert got == tmp_path  # UML's PROT_EXEC check would fail there
            return
        assert got.parent == Path("/dev/shm") and got.name.startswith("virtio-msix-mem-")
        assert got.is_dir() and not any(got.iterdir())
        assert oct(got.stat().st_mode & 0o777) == oct(0o700)  # private, as mkdtemp makes it
    finally:
        if got != tmp_path:
            os.rmdir(got)


def test_memory_dir_falls_back_when_no_tmpfs_has_room(tmp_path, monkeypatch):
    monkeypatch.setattr(uml_kernel, "MEMORY_TMPFS", (str(tmp_path / "absent"),))
    fallback = tmp_path / "run"
    assert uml_kernel.memory_dir(128, fallback) == fallback and fallback.is_dir()
    # A tmpfs too small for the guest's memory twice over is passed over too.
    if uml_kernel._tmpfs_mount("/dev/shm") is not None:
        monkeypatch.setattr(uml_kernel, "MEMORY_TMPFS", ("/dev/shm",))
        st = os.statvfs("/dev/shm")
        too_big = (st.f_bavail * st.f_frsize >> 20) + 1
        assert uml_kernel.memory_dir(too_big, fallback) == fallback


@pytest.mark.parametrize("path", ["/", "/dev/shm", "/proc"])
def test_tmpfs_mount_agrees_with_statfs(path):
    # coreutils' stat reads the file system type with statfs(2), not /proc/self/mounts
    fstype = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    assert (uml_kernel._tmpfs_mount(path) is not None) == (fstype == "tmpfs"), fstype


def test_tmpfs_mount_of_a_path_that_is_no_mount_point():
    assert uml_kernel._tmpfs_mount("/no/such/mount") is None


def test_reaper_removes_every_directory_once_the_session_is_gone(tmp_path):
    dirs = [tmp_path / "work", tmp_path / "mem dir"]  # a space is part of a name
    for d in dirs:
        (d / "sub").mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               start_new_session=True)  # fmt: skip
    reaper = procs.Reaper()
    try:
        reaper.arm(sleeper.pid, *dirs)
        reaper.close()  # as when we die: it kills the session, then removes the directories
        sleeper.wait(timeout=15)
        deadline = time.monotonic() + 15
        while any(d.exists() for d in dirs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(d.exists() for d in dirs)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_reaper_refuses_a_name_it_could_not_pass_on(tmp_path):
    reaper = procs.Reaper()
    try:
        with pytest.raises(ValueError, match="NUL or newline"):
            reaper.arm(os.getpid(), tmp_path / "a\nb")
    finally:
        reaper.close()
