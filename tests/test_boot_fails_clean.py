"""A boot that fails fails clean (issue 7): the real UML kernel, really booted, made to panic
for real (its init exits; SysRq 'c') or stopped by signals; no process of the run, no directory
of it (nor ``~/.uml``) is left, and ``--json`` is one JSON document on stdout."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtio_msix.qemu.debian import cache_dir
from virtio_msix.uml.boot import BootOptions, BootSession, run_boot
from virtio_msix.uml.procs import session_pids

pytestmark = pytest.mark.uml

CLI = [sys.executable, "-m", "virtio_msix.cli", "boot"]
SYSRQ_CRASH = "echo c > /proc/sysrq-trigger"
READY = "READY-TO-BE-STOPPED"


@pytest.fixture
def env(tmp_path):
    """A HOME of the test's own (so that ``~/.uml`` can be checked), the real kernel cache."""
    home = tmp_path / "home"
    home.mkdir()
    return dict(os.environ, HOME=str(home), VIRTIO_MSIX_CACHE=str(cache_dir()))


# -- a panicking kernel ------------------------------------------------------------------------


def test_init_exiting_panics_and_the_error_names_it(linux):
    res = run_boot(BootOptions(script="exit 1\n", timeout=60))
    assert not res.finished
    assert res.panic == "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
    assert res.error is not None and res.panic in res.error and "did not finish" in res.error
    assert "SIGABRT" in res.error  # how the UML process ended, after its panic
    assert res.console_tail[-1].endswith(res.panic)
    assert "Run /init as init process" in res.console_tail
    # What was observed: the kernel probed with MSI-X before its init ran, and the views say so.
    assert res.snapshot["msix_enabled"] and len(res.snapshot["table"]) == 4
    assert [e["data"] for e in res.snapshot["table"][:3]] == [0x41, 0x42, 0x43]


def test_cli_panic_quiet_names_the_panic_and_prints_no_false_view(linux, env):
    out = subprocess.run([*CLI, "--quiet", "--timeout", "60", "--", SYSRQ_CRASH], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout
    assert "Traceback" not in text + out.stderr
    error = next(ln for ln in text.splitlines() if ln.startswith("error: "))
    assert "the kernel panicked" in error and "the run did not finish" in error
    assert "Kernel panic - not syncing: sysrq triggered crash" in error
    # The last console lines, though --quiet showed no console.
    assert "  | sysrq: Trigger a crash" in text
    assert "THE RUN DID NOT FINISH" in text
    # Seen before: a 4-vector device described as having no MSI-X after a panic.
    assert "no MSI-X capability" not in text
    assert "MSI-X capability: 4 vectors" in text and "when the kernel went away" in text
    assert "entries the kernel wrote: 0, 1, 2, 3" in text
    assert "when the guest script ended" not in text


def test_backtraces_report_the_kernels_fate_not_gdbs(linux):
    res = run_boot(BootOptions(script=SYSRQ_CRASH + "\n", backtraces=True, timeout=90))
    assert res.panic == "Kernel panic - not syncing: sysrq triggered crash"
    assert res.error is not None and res.panic in res.error
    assert res.exit_code == 0  # gdb's own status: not what the error reports
    assert "status 0" not in res.error
    assert "the kernel received SIGABRT" in res.error
    assert len(res.backtraces) == 6  # the probe's fills and unmasks came before the crash


# -- --json ------------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [False, True], ids=["console", "quiet"])
def test_json_is_the_whole_of_stdout(linux, env, quiet):
    args = [*CLI, "--json", *(["--quiet"] if quiet else []), "--timeout", "60"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    views = json.loads(out.stdout)
    assert views["finished"] and views["error"] is None and views["ping"]["received"] == 3
    # The console went to stderr, or nowhere with --quiet.
    assert ("Run /init as init process" in out.stderr) is not quiet
    # Nothing outside the run's directory: UML's umid directory was under it, not ~/.uml.
    assert not (Path(env["HOME"]) / ".uml").exists()


def test_json_of_a_panic(linux, env):
    # (`-- exit 1` no longer ends init: the CLI runs CMD in a subshell; sysrq panics it.)
    out = subprocess.run([*CLI, "--json", "--timeout", "60", "--", SYSRQ_CRASH], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1
    views = json.loads(out.stdout)
    assert views["finished"] is False and views["script_status"] is None
    assert views["panic"].startswith("Kernel panic - not syncing: sysrq triggered crash")
    assert views["console_tail"][-1].endswith(views["panic"])
    assert not (Path(env["HOME"]) / ".uml").exists()


# -- signals and a dying parent ----------------------------------------------------------------


def _proc_table() -> dict[int, dict]:
    table = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            stat = Path(f"/proc/{e}/stat").read_text()
            cmd = Path(f"/proc/{e}/cmdline").read_bytes()
        except OSError:
            continue
        f = stat[stat.rfind(")") + 2 :].split()
        table[int(e)] = {"state": f[0], "ppid": int(f[1]), "sid": int(f[3]), "start": f[19],
                         "cmdline": cmd.replace(b"\0", b" ").decode(errors="replace")}  # fmt: skip
    return table


def _run_processes(boot_pid: int) -> tuple[set[tuple[int, str]], str, int]:
    """Every live process the boot started (its children: the kernel or gdb, and anything in
    their sessions), as (pid, start time); the run's directory; the kernel session's size."""
    table = _proc_table()
    kids = [p for p, i in table.items() if i["ppid"] == boot_pid]
    sids = {table[p]["sid"] for p in kids}
    live = {(p, i["start"]) for p, i in table.items() if i["sid"] in sids and i["state"] != "Z"}
    kernel = next(p for p in kids if "uml_dir=" in table[p]["cmdline"])
    m = re.search(r"uml_dir=(\S+)", table[kernel]["cmdline"])
    assert m is not None
    size = sum(1 for i in table.values() if i["sid"] == table[kernel]["sid"] and i["state"] != "Z")
    return live, m.group(1), size


def _alive(procs: set[tuple[int, str]], work: str) -> list[int]:
    return sorted(p for p, i in _proc_table().items() if i["state"] != "Z"
                  and ((p, i["start"]) in procs or work in i["cmdline"]))  # fmt: skip


def _wait_for_line(stream, needle: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    seen = ""
    while time.monotonic() < deadline:
        if select.select([stream], [], [], 0.2)[0]:
            line = stream.readline()
            if not line:
                break
            seen += line
            if needle in line:
                return
    raise AssertionError(f"never saw {needle!r}; got:\n{seen[-3000:]}")


@pytest.fixture
def started():
    """Boots a test started: whatever a failing test leaves is killed (the boot, then any
    process of its run still alive)."""
    boots: list[tuple[subprocess.Popen[str], set[tuple[int, str]], str]] = []
    yield boots
    for p, procs, work in boots:
        if p.poll() is None:
            p.kill()
        p.communicate()
        for pid in _alive(procs, work):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_running_guest(started, env, *flags: str):
    """A boot whose guest is running a program (so that the kernel has guest processes and
    helpers), with its console on stderr (--json); its processes, run directory and the size
    of the kernel's session."""
    p = subprocess.Popen([*CLI, "--json", *flags, "--timeout", "120", "--",
                          f"echo {READY}; sleep 100"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stderr is not None
    started.append((p, set(), ""))
    _wait_for_line(p.stderr, READY)
    procs, work, size = _run_processes(p.pid)
    started[-1] = (p, procs, work)
    return p, procs, work, size


def _assert_all_gone(procs, work: str, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while _alive(procs, work) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(procs, work), _alive(procs, work)


@pytest.mark.parametrize(
    "sig, times, flags",
    [
        (signal.SIGTERM, 1, ()),
        (signal.SIGINT, 1, ()),
        (signal.SIGTERM, 2, ()),  # seen: a second SIGTERM did not stop them
        (signal.SIGTERM, 1, ("--backtraces",)),  # gdb and its inferior
    ],
    ids=["term", "int", "term-twice", "term-backtraces"],
)
def test_signal_stops_everything_and_exits_128_plus_signal(linux, env, started, sig, times,
                                                           flags):  # fmt: skip
    p, procs, work, kernel_session = _start_running_guest(started, env, *flags)
    assert kernel_session >= 3  # the kernel, its helpers, the guest's processes
    for _ in range(times):
        p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err[-2000:]
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    assert not _alive(procs, work)  # at once, not eventually: the boot waited for them
    assert not Path(work).exists()
    assert not (Path(env["HOME"]) / ".uml").exists()


def _kernel_tmpdir(boot_pid: int) -> str:
    """The TMPDIR the boot gave its kernel: where UML's memory file is (kernel.memory_dir)."""
    table = _proc_table()
    kernel = next(p for p, i in table.items()
                  if i["ppid"] == boot_pid and "uml_dir=" in i["cmdline"])  # fmt: skip
    env = Path(f"/proc/{kernel}/environ").read_bytes().split(b"\0")
    return next(v[7:].decode() for v in env if v.startswith(b"TMPDIR="))


def test_sigkilled_boot_leaves_no_kernel(linux, env, started):
    """The Python process dies without running any code: the kernel (PR_SET_PDEATHSIG) and
    the rest of its session (the reaper) must not outlive it, and the run's directory and
    the kernel's memory directory (on a tmpfs, elsewhere than the run's) go."""
    p, procs, work, kernel_session = _start_running_guest(started, env)
    assert kernel_session >= 3
    memdir = _kernel_tmpdir(p.pid)
    assert Path(memdir).is_dir()
    p.kill()
    p.wait(timeout=10)
    _assert_all_gone(procs, work)
    deadline = time.monotonic() + 15
    while (Path(work).exists() or Path(memdir).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(work).exists()
    assert not Path(memdir).exists()


@pytest.mark.qemu
def test_capture_qemu_metadata_is_the_whole_of_stdout(tmp_path):
    """``capture-qemu`` (a real Debian kernel on the real QEMU): its progress goes to stderr,
    stdout is the metadata document alone."""
    out = subprocess.run([sys.executable, "-m", "virtio_msix.cli", "capture-qemu",
                          str(tmp_path / "cap.jsonl")], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads(out.stdout)
    assert meta["ping_ok"] and meta["records"] > 100
    assert "capture-qemu: booting" in out.stderr


def test_timeout_stops_the_running_kernel(linux):
    session = BootSession(BootOptions(script="sleep 100\n", timeout=5))
    res = session.run()
    assert not res.finished and res.error is not None
    assert res.error.startswith("timeout: the guest did not finish within 5 s")
    assert "still running and virtio-msix stopped it" in res.error
    assert session.proc is not None and session_pids(session.proc.pid) == []
    assert res.console_tail[-1] == "Run /init as init process"
