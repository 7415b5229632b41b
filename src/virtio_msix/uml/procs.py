"""No process a boot starts outlives it.

The UML kernel is not one process: it forks a host process per guest address space (ptraced by
the kernel) and helper threads; under ``--backtraces`` it is gdb's inferior, in a process group
of its own. What they all share is the session: the kernel (or gdb) is started as a session
leader (``start_new_session``), and neither UML (whose own ``setsid()`` fails on a session or
group leader) nor gdb starts another. A session's id is not reused while any process is in it,
so "every process whose session is the kernel's" names exactly that tree.

A process of that tree may still leave the session (``setsid``, as a guest-started daemon
could): while a kernel runs we are a child subreaper (``PR_SET_CHILD_SUBREAPER``), so such a
process, once orphaned, becomes our child instead of init's, and ``Subreaper.kill_escaped``
kills and reaps every descendant we did not have before the kernel started.

Three layers stop them:
- ``kill_session`` on every exit path of the boot (normal, error, SIGINT/SIGTERM);
- ``PR_SET_PDEATHSIG`` (SIGKILL) on the process we start, for a parent that dies without
  running any code (SIGKILL); it does not reach the kernel's own children, hence
- a ``Reaper``: a tiny process in its own session holding the read end of a pipe whose write end
  only we hold. When we die by any means the pipe closes and the reaper kills the session and
  removes the run's directory.

The kernel build's steps (``kernel._run``: make and its compilers) get the first two.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
# Bound on killing a session (processes can fork between a scan and the kill; rescans until
# none is left, but never for longer than this).
KILL_DEADLINE_S = 10.0


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the /proc/PID/stat fields after the command name) of every process; the name may
    itself hold spaces and parentheses, so the fields start after its last ")"."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), stat[stat.rfind(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid``."""
    return [pid for pid, fields in proc_stats()
            if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid]  # fmt: skip


def kill_session(sid: int, deadline_s: float = KILL_DEADLINE_S) -> list[int]:
    """SIGKILL every process of session ``sid`` until none is left (or the deadline passes);
    returns the pids still alive then (empty on success)."""
    end = time.monotonic() + deadline_s
    while True:
        pids = session_pids(sid)
        if not pids or time.monotonic() > end:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


_libc = ctypes.CDLL(None, use_errno=True)


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid → (parent pid, state letter)."""
    return {pid: (int(fields[1]), fields[0]) for pid, fields in proc_stats() if len(fields) > 1}


def descendants(root: int, skip: set[int] | frozenset[int] = frozenset(),
                table: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:  # fmt: skip
    """The processes below ``root`` (children, theirs, ...) → state letter, leaving out the
    subtrees of the pids in ``skip``; from ``table`` (``process_table()``) if given."""
    if table is None:
        table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, str] = {}
    todo = [p for p in children.get(root, []) if p not in skip]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out[pid] = table[pid][1]
        todo.extend(p for p in children.get(pid, []) if p not in skip)
    return out


class Subreaper:
    """While open, this process is a child subreaper: whatever the kernel's tree orphans (a
    process that left its session included) becomes our child. ``kill_escaped`` kills and
    reaps every descendant that was not there when it opened (``keep``: our own helpers)."""

    def __init__(self) -> None:
        old = ctypes.c_int(0)
        _libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0)
        self._old = old.value
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.before = frozenset(descendants(os.getpid()))  # not ours to kill

    def kill_escaped(self, keep: set[int], waited_by_others: set[int],
                     deadline_s: float = KILL_DEADLINE_S) -> list[int]:  # fmt: skip
        """SIGKILL every new descendant (not below ``before`` or ``keep``) until none is left,
        reaping those that became our children (not ``waited_by_others``: a Popen's own);
        returns the pids still alive at the deadline."""
        me, skip = os.getpid(), set(self.before) | keep
        end = time.monotonic() + deadline_s
        while True:
            found = descendants(me, frozenset(skip))
            for pid, state in found.items():
                if state != "Z":
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            table = process_table()  # after the kills: who is our child now
            for pid in found:
                if pid not in waited_by_others and table.get(pid, (0, ""))[0] == me:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
            table = process_table()
            left = descendants(me, frozenset(skip), table)
            alive = [p for p, st in left.items() if st != "Z" and p not in waited_by_others]
            # A process killed above may become a zombie only after the waitpid: one that is
            # our child is waited for on the next round, not left behind (seen: a test found
            # the escaped process still a zombie of ours after the boot had returned).
            ours = [p for p, st in left.items() if st == "Z" and p not in waited_by_others
                    and table[p][0] == me]  # fmt: skip
            if (not alive and not ours) or time.monotonic() > end:
                return alive
            time.sleep(0.01)

    def close(self) -> None:
        _libc.prctl(PR_SET_CHILD_SUBREAPER, self._old, 0, 0, 0)


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when we die (and dies at once if we already
    died between the fork and the prctl)."""
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


REAPER = r"""
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
line = b""
while not line.endswith(b"\n"):
    chunk = os.read(0, 64)
    if not chunk:
        sys.exit(0)
    line += chunk
sid, _, dirs = line.decode().rstrip("\n").partition(" ")
while os.read(0, 64):
    pass
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    alive = []
    for e in os.listdir("/proc"):
        try:
            st = open(f"/proc/{e}/stat").read() if e.isdigit() else ""
        except OSError:
            continue
        f = st[st.rfind(")") + 2 :].split()
        if len(f) > 3 and f[0] != "Z" and f[3] == sid:
            alive.append(int(e))
    if not alive:
        break
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.01)
for d in dirs.split("\0"):
    if d:
        shutil.rmtree(d, ignore_errors=True)
"""


class Reaper:
    """Kills a session and removes a directory when this process dies, however it dies."""

    def __init__(self) -> None:
        r, self._w = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", REAPER, str(KILL_DEADLINE_S)], stdin=r,
                                         stdout=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        finally:
            os.close(r)
        # Our end must not leak into the kernel (it would keep the pipe open after we die).
        os.set_inheritable(self._w, False)

    def arm(self, sid: int, *dirs: Path) -> None:
        """Watch session ``sid`` and directories ``dirs`` (removed once it is dead) from now
        on. The directories go NUL-separated: a path holds no NUL, nor here a newline."""
        if any("\0" in str(d) or "\n" in str(d) for d in dirs):
            raise ValueError(f"a directory name with NUL or newline: {dirs!r}")
        os.write(self._w, f"{sid} {chr(0).join(map(str, dirs))}\n".encode())

    def close(self) -> None:
        """We are done (after stopping everything ourselves): let the reaper check and exit."""
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        try:
            self.proc.wait(timeout=KILL_DEADLINE_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class BootInterrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; everything was stopped. Exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class Signals:
    """While active, SIGINT/SIGTERM/SIGHUP raise ``BootInterrupted`` once; after that (and
    while ``deferred``) they are only noted, so that a second signal cannot cut the cleanup
    short. Handlers can only be installed from the main thread; elsewhere this does nothing."""

    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.got: int | None = None
        self._armed = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for s in self.WATCHED:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handler(self, signum: int, frame: object) -> None:
        if self.got is None:
            self.got = signum
        if self._armed:
            self._armed = False
            raise BootInterrupted(signum)

    def hold(self) -> None:
        """From now on signals are only noted (the cleanup runs to its end)."""
        self._armed = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Note signals in this block (a process started and not yet recorded must not be
        lost), raise after it."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = armed
        if armed and self.got is not None:
            self._armed = False
            raise BootInterrupted(self.got)
