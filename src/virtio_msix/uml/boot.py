"""``virtio-msix boot``: the real Linux 6.1 kernel (User-Mode Linux) drives our device.

One process tree: this Python process listens on a UNIX socket and serves vhost-user; the UML
kernel (a host process) connects to it as ``virtio_uml.device=SOCK:ID``, binds virt-pci to it, and
finds our virtio-net function on its PCI bus. Every config-space and BAR access the real
``virtio_pci`` / PCI-MSI code makes arrives here as a virtio_pcidev message, is applied to the same
device objects the simulator uses, and is recorded; every interrupt the device raises leaves as an
MSI (or INT) message with the data the kernel wrote into our MSI-X table.

The event loop is single-threaded and selects on: the vhost-user socket, the two kick eventfds,
the kernel's console pipe and, with ``--net tap``, the TAP descriptor.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..abi.msix import (
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_LOWER_ADDR,
    PCI_MSIX_ENTRY_UPPER_ADDR,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    entry_field,
)
from ..abi.virtio import VIRTIO_F_VERSION_1
from ..host.backends import ResponderBackend, TapBackend
from ..host.devspec import meta_record
from ..host.phases import PhaseTagger
from ..host.views import default_vectors, device_views, queue_names
from ..pci.sink import NullSink
from ..trace import Recorder
from ..trace.recorder import JsonlWriter
from ..virtio import make_virtio_net_pci
from ..virtio.device import VirtioDevice
from ..virtio.devspec import DeviceSpec
from ..virtio.memory import GuestMemoryError
from ..virtio.pci import VirtioPciDevice
from ..virtio.queue import VirtqueueError
from ..virtio.regs import TRANSITIONAL_DEVICE_IDS
from . import kernel as uml_kernel
from . import procs
from .pcidev import CMD_QUEUE, IRQ_QUEUE, UmlInterruptSink, VirtPciHost
from .vhost_user import VhostUserBackend, VhostUserError

# CONFIG_UML_PCI_OVER_VIRTIO_DEVICE_ID in uml.config: the virtio device id virt-pci binds to.
PCI_OVER_VIRTIO_DEVICE_ID = 1234
# Addresses: with the responder the "host" is an address our backend answers for (QEMU's
# user-network numbers); with a TAP it is the host's side of the TAP, on a subnet of its own.
GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"
TAP_GUEST_IP = "172.30.77.15"
TAP_HOST_IP = "172.30.77.1"
MARK = "@@vmsix"
CONSOLE_READS_PER_PASS = 16  # of 64 KiB each, per pass of the event loop
# What a session keeps of what the kernel prints and does (a guest decides how much that is):
# the console's first lines and its last bytes, each section parsed from markers up to a size,
# the first register-access records (enumeration and probe, what the sim-vs-real comparisons
# read) and the last ones. Everything cut is counted and the result says so.
CONSOLE_HEAD_LINES = 2000
CONSOLE_HEAD_BYTES = 256 << 10
CONSOLE_TAIL_BYTES = 1 << 20
CONSOLE_MAX_LINE = 64 << 10  # a longer run without a newline is split into lines this long
SECTION_MAX_BYTES = 1 << 20
RECORDS_FIRST = 100_000
RECORDS_LAST = 20_000

# For a device of the user's: what the kernel made of it.
DEVICE_SCRIPT = f"""\
echo {MARK} interrupts-before; cat /proc/interrupts; echo {MARK} end
for d in /sys/bus/virtio/devices/*; do echo "${{d##*/}}: device $(cat $d/device)" \
  "driver $(basename $(readlink $d/driver) 2>/dev/null)"; done
echo {MARK} interrupts-after; cat /proc/interrupts; echo {MARK} end
"""

DEFAULT_SCRIPT = f"""\
echo {MARK} interrupts-before; cat /proc/interrupts; echo {MARK} end
ip link set eth0 up
ip addr add $GUEST_IP/24 dev eth0
echo {MARK} ping; ping -c 3 -W 2 $HOST_IP; echo {MARK} end
echo {MARK} interrupts-after; cat /proc/interrupts; echo {MARK} end
"""

INIT_TEMPLATE = """\
#!/bin/sh
# The marker first, before anything forks: "boot → /init" is the kernel's time to start init,
# not the three mounts' (a fork and exec costs UML milliseconds each; measured: 125 ms).
echo {mark} init
export PATH=/bin GUEST_IP={guest_ip} HOST_IP={host_ip}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The script sees the device bound: virt-pci's device and ours on the virtio bus, each with its
# driver (a loaded machine was seen reaching this point before virtio_net had probed). Bounded:
# after 10 s the script runs anyway, and a device without a driver in this kernel shows as such.
n=0
while [ $n -lt 100 ]; do
  set -- /sys/bus/virtio/devices/virtio*
  bound=1; [ $# -ge 2 ] || bound=0
  for d; do [ -e "$d/driver" ] || bound=0; done
  [ $bound = 1 ] && break
  sleep 0.1; n=$((n+1))
done
{script}
echo {mark} done $?
# Take the PCI bus away before powering off: unbinding virt-pci removes our function the normal
# way (virtnet_remove, vp_del_vqs, MSI-X disable). Left to the halt path, virtio_uml's exitcall
# removes it after uml_cleanup() has stopped the kernel's allocator and the kernel idles forever
# (seen with Linux 6.1; a kernel with no vhost-user device halts at once).
for d in /sys/bus/virtio/drivers/virtio-pci/virtio*; do
  [ -e "$d" ] && echo "${{d##*/}}" > /sys/bus/virtio/drivers/virtio-pci/unbind
done
echo {mark} halt
poweroff -f
"""


@dataclass
class BootOptions:
    vectors: int | None = None
    queue_pairs: int = 1
    disable_legacy: bool = False
    # The virtio-net a --device/--netdev describes (virtio/devspec.py); None: the shorthands
    # vectors/queue_pairs/disable_legacy above. ``net``/``tap_vnet_hdr`` follow its netdev.
    spec: DeviceSpec | None = None
    script: str = DEFAULT_SCRIPT
    net: str = "responder"  # or "tap"
    # With --net tap: frames cross the TAP with a virtio-net header and the device offers
    # QEMU's tap offloads (QEMU's vnet_hdr=on default); False is QEMU's vnet_hdr=off.
    tap_vnet_hdr: bool = True
    memory_mb: int = 128
    timeout: float = 120.0
    backtraces: bool = False
    # Host files to put into the guest's root, by guest path (``boot --add FILE[:PATH]``).
    files: dict[str, Path] = field(default_factory=dict)
    # gdb commands run before the kernel starts (the kernel then runs under gdb): tests use
    # them to change a kernel variable and watch the real kernel's reaction.
    gdb_init: str = ""
    console: TextIO | None = None  # live console output (None: quiet)
    verbose: bool = False
    # Run this instead of the UML kernel, with the socket path as its last argument: a stand-in
    # peer for tests that speak vhost-user themselves (tests/hostile/). None: the real kernel.
    kernel_command: list[str] | None = None
    # A device of the user's (the public API: any VirtioDevice) instead of virtio-net; the
    # kernel's own driver for its device id probes it. ``vectors`` defaults to config + one per
    # queue; the default script shows /proc/interrupts and the virtio devices the kernel bound.
    device: VirtioDevice | None = None
    # Which UML kernel (uml/kernel.py VERSIONS): "6.1" (Debian 12) or "6.12" (bookworm-backports).
    kernel: str = uml_kernel.DEFAULT_VERSION
    # Stream every access record to this file (JSON lines) as it is made.
    trace_json: str | Path | None = None
    # More keywords for the virtio-net device (make_virtio_net_pci → VirtioNet), as QEMU's
    # -device properties give them: {"packed": True} is packed=on.
    device_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BootResult:
    options: BootOptions
    device: VirtioPciDevice
    recorder: Recorder
    console: str = ""
    error: str | None = None
    exit_code: int | None = None
    host: VirtPciHost | None = None
    vhost: VhostUserBackend | None = None  # its counters (the session closed it)
    times: dict[str, float] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)
    backtraces: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=dict)  # device views when the script ended
    after_teardown: dict[str, Any] | None = None
    # Did the guest script run to its end? If not, ``snapshot`` is the device as the kernel
    # left it, ``panic`` the kernel's panic (or oops) line if its console printed one, and
    # ``console_tail`` the console lines leading to it (or the last lines).
    finished: bool = False
    # The guest script's exit status (its last command's, as sh gives it); None if it never
    # finished.
    script_status: int | None = None
    panic: str | None = None
    console_tail: list[str] = field(default_factory=list)
    # What the bounds above cut: console lines and bytes, section bytes, access records.
    cut: dict[str, int] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)  # the event loop's counters (EventLoopStats)

    def interrupts(self, when: str) -> list[dict[str, Any]]:
        return parse_proc_interrupts(self.sections.get(f"interrupts-{when}", ""))

    def ping(self) -> dict[str, Any]:
        return parse_ping(self.sections.get("ping", ""))

    def probe_errors(self) -> list[dict[str, Any]]:
        """The kernel's "probe of DEV failed with error -E" lines for virtio devices (drivers
        that refused our device: virtio_net rejects ctrl_vq=off with CTRL_RX still offered)."""
        return [{"device": m.group(1), "error": int(m.group(2))}
                for m in _PROBE_FAILED.finditer(self.console)]  # fmt: skip


_PROBE_FAILED = re.compile(r"probe of (virtio\d+) failed with error (-?\d+)")


def parse_proc_interrupts(text: str) -> list[dict[str, Any]]:
    """Rows of /proc/interrupts: irq, counts per CPU, chip, hwirq and name (UML 6.1's layout)."""
    rows = []
    lines = text.strip().splitlines()
    if not lines:
        return rows
    ncpu = len(lines[0].split())
    for line in lines[1:]:
        parts = line.split()
        if not parts or not parts[0].endswith(":"):
            continue
        irq = parts[0][:-1]
        counts = [int(p) for p in parts[1 : 1 + ncpu] if p.isdigit()]
        rest = parts[1 + len(counts) :]
        rows.append({"irq": irq, "counts": counts, "chip": " ".join(rest[:-2]) if len(rest) > 2 else
                     (rest[0] if rest else ""), "hwirq": rest[-2] if len(rest) > 2 else "",
                     "name": rest[-1] if rest else ""})  # fmt: skip
    return rows


def parse_ping(text: str) -> dict[str, Any]:
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", text)
    rtt = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+)", text)
    out: dict[str, Any] = {"sent": 0, "received": 0}
    if m:
        out["sent"], out["received"] = int(m.group(1)), int(m.group(2))
    if rtt:
        out["rtt_ms"] = {"min": float(rtt.group(1)), "avg": float(rtt.group(2)),
                         "max": float(rtt.group(3))}  # fmt: skip
    return out


def kernel_cmdline(sock: Path, root: Path, memory_mb: int, work: Path | None = None,
                   version: str = uml_kernel.DEFAULT_VERSION) -> list[str]:  # fmt: skip
    """The UML kernel's command line; with ``work``, UML's run directory (``uml_dir``, where
    ``umid``'s pid file and mconsole socket go, else ``~/.uml``) is inside it."""
    own = [f"uml_dir={work}", f"umid={work.name}"] if work is not None else []
    if version != "6.1":
        # virt-pci's wait for our reply (40 ms by default) is a parameter since 6.2; 6.1 gets
        # the same ~2 s from patches/6.1/virt-pci-reply-wait.patch, which says why.
        own.append("virt_pci.max_delay_us=2000000")
    return [
        *own,
        f"mem={memory_mb}M",
        "root=/dev/root",
        "rootfstype=hostfs",
        f"rootflags={root}",
        "rw",
        "init=/init",
        f"virtio_uml.device={sock}:{PCI_OVER_VIRTIO_DEVICE_ID}",
        "con0=null,fd:1",
        "con=null",
        "ssl=null",
    ]


GDB_PREAMBLE = """\
set pagination off
set confirm off
set width 0
set startup-with-shell off
handle SIGSEGV nostop noprint pass
handle SIGUSR1 nostop noprint pass
handle SIGIO nostop noprint pass
handle SIGALRM nostop noprint pass
handle SIGVTALRM nostop noprint pass
handle SIGWINCH nostop noprint pass
handle SIGCHLD nostop noprint pass
handle SIGPIPE nostop noprint pass
handle SIGTERM nostop noprint pass
handle SIGCONT nostop noprint pass
set logging file {log}
set logging overwrite on
set logging redirect on
set logging enabled on
"""
GDB_BACKTRACES = """\
break pci_msi_domain_write_msg
commands
silent
printf "@@bt msix table entry fill\\n"
bt
continue
end
break pci_msi_unmask_irq
commands
silent
printf "@@bt msix unmask\\n"
bt
continue
end
"""


def gdb_script(log: Path, backtraces: bool, init: str) -> str:
    """gdb batch script: quiet signal handling, the backtrace breakpoints, the caller's commands,
    then run the kernel."""
    body = GDB_PREAMBLE.format(log=log) + (GDB_BACKTRACES if backtraces else "")
    if init:
        body += init.rstrip("\n") + "\n"
    return body + "run\nquit\n"


BT_TITLES = {"msix table entry fill": "# msix table entry fill", "msix unmask": "# msix unmask"}


def parse_gdb_log(text: str) -> list[tuple[str, str]]:
    """(kind, backtrace) for each breakpoint hit gdb logged, in order."""
    out = []
    for block in text.split("@@bt ")[1:]:
        kind, _, bt = block.partition("\n")
        lines = [ln for ln in bt.splitlines() if ln.startswith(("#", "    "))]
        out.append((kind.strip(), "\n".join(lines)))
    return out


def table_writes(records: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Our device's side of each fill (address/data writes to one entry) and each unmask (a
    vector-control write clearing the mask bit), in order, as one line each."""
    fills: list[str] = []
    unmasks: list[str] = []
    current: dict[str, Any] | None = None
    for r in records:
        if r.get("space") != "msix-table" or r.get("op") != "w":
            continue
        entry, field = entry_field(r["offset"])
        if field == PCI_MSIX_ENTRY_VECTOR_CTRL:
            current = None
            if not r["value"] & PCI_MSIX_ENTRY_CTRL_MASKBIT:
                unmasks.append(f"entry {entry}: vector control <- {r['value']:#x} (unmasked)")
            continue
        if current is None or current["entry"] != entry or field in current["fields"]:
            current = {"entry": entry, "fields": {}}
            fills.append("")
        current["fields"][field] = r["value"] if r["size"] == 4 else r["value"] & 0xFFFFFFFF
        if r["size"] == 8:
            current["fields"][field + 4] = r["value"] >> 32
        f = current["fields"]
        lo, hi, data = PCI_MSIX_ENTRY_LOWER_ADDR, PCI_MSIX_ENTRY_UPPER_ADDR, PCI_MSIX_ENTRY_DATA
        parts = [f"addr_lo {f[lo]:#010x}" if lo in f else "",
                 f"addr_hi {f[hi]:#x}" if hi in f else "",
                 f"data {f[data]:#x}" if data in f else ""]  # fmt: skip
        fills[-1] = f"entry {entry}: " + ", ".join(p for p in parts if p)
    return fills, unmasks


def pair_backtraces(hits: list[tuple[str, str]], records: list[dict[str, Any]]) -> list[str]:
    """The kernel's backtraces, each followed by what our device received for it (paired in
    order: the n-th fill breakpoint with the n-th entry fill, the n-th unmask likewise)."""
    fills, unmasks = table_writes(records)
    seen = {"msix table entry fill": 0, "msix unmask": 0}
    out = []
    for kind, bt in hits:
        n = seen.get(kind, 0)
        seen[kind] = n + 1
        side = fills if kind == "msix table entry fill" else unmasks
        got = side[n] if n < len(side) else "(nothing reached the device)"
        title = BT_TITLES.get(kind, "# " + kind)
        if "msi_domain_deactivate" in bt:
            title += " (free_irq → msi_domain_deactivate: the entry's message is cleared)"
        out.append(f"{title}\n{bt}\n  → our device received: {got}\n")
    return out


# The first line of a kernel's death on its console (panic() prints the first; an oops or BUG
# may come before the panic it leads to, and is then the better name for what happened).
DEATH_LINES = re.compile(r"(Kernel panic - not syncing: .*|BUG: .*|Oops: .*|"
                         r"general protection fault.*|Segfault with no mm.*)")  # fmt: skip
TAIL_LINES = 12


class BoundedConsole:
    """The console lines of a session: the first CONSOLE_HEAD_LINES (at most CONSOLE_HEAD_BYTES)
    and the lines of the last CONSOLE_TAIL_BYTES; what falls between is counted, not kept."""

    def __init__(self, head_lines: int = CONSOLE_HEAD_LINES,
                 tail_bytes: int = CONSOLE_TAIL_BYTES,
                 head_bytes: int = CONSOLE_HEAD_BYTES) -> None:  # fmt: skip
        self.head: list[str] = []
        self.head_bytes = head_bytes
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.head_lines, self.tail_bytes = head_lines, tail_bytes
        self.tail_size = 0
        self.cut_lines = 0
        self.cut_bytes = 0

    def append(self, line: str) -> None:
        if len(self.head) < self.head_lines and self.head_size + len(line) < self.head_bytes:
            self.head.append(line)
            self.head_size += len(line) + 1
            return
        self.head_lines = 0  # the head is closed: every later line goes to the tail
        self.tail.append(line)
        self.tail_size += len(line) + 1
        while self.tail_size > self.tail_bytes and len(self.tail) > 1:
            old = self.tail.popleft()
            self.tail_size -= len(old) + 1
            self.cut_lines += 1
            self.cut_bytes += len(old) + 1

    def lines(self) -> list[str]:
        return self.head + list(self.tail)

    def text(self) -> str:
        cut = []
        if self.cut_lines:
            cut = [f"[... {self.cut_lines} console lines ({self.cut_bytes} bytes) not kept ...]"]
        return "\n".join(self.head + cut + list(self.tail))


def console_tail(console: list[str]) -> tuple[str | None, list[str]]:
    """(the death line, the console lines leading to it). The death line is the panic line if
    the kernel printed one, else the first oops/BUG line; the lines are those before the first
    of these and it (then the panic line), or the last lines of a console with neither."""
    lines = [ln for ln in console if not ln.startswith(MARK)]
    deaths = [i for i, ln in enumerate(lines) if DEATH_LINES.search(ln)]
    if not deaths:
        return None, lines[-TAIL_LINES:]
    first = deaths[0]
    panic = next((i for i in deaths if "Kernel panic - not syncing" in lines[i]), first)
    tail = lines[max(0, first - TAIL_LINES + 1) : first + 1]
    if panic != first:
        tail += ["...", lines[panic]]
    m = DEATH_LINES.search(lines[panic])
    assert m is not None
    return m.group(0).strip(), tail


def kernel_end(exit_code: int | None, gdb_log: str | None) -> str:
    """How the kernel's process ended. Under gdb the process we waited for is gdb: the kernel's
    end is what gdb logged about its inferior."""
    if gdb_log is not None:
        for pattern, words in (
            # A panicking UML signals its process group (SIGTERM, SIGCONT) and aborts: gdb
            # stops there, then its script quits, killing it.
            (r"received signal (SIG\w+)", "the kernel received {} (seen by gdb, which ended it)"),
            (r"Program terminated with signal (SIG\w+)", "the kernel was killed by {}"),
            (r"\[Inferior \d+ \(process \d+\) exited with code (\d+)\]",
             "the kernel exited with status {}"),
            (r"\[Inferior \d+ \(process \d+\) exited (normally)\]", "the kernel exited {}"),
        ):  # fmt: skip
            m = re.search(pattern, gdb_log)
            if m:
                return words.format(m.group(1))
        return f"gdb's log does not say how the kernel ended; gdb {_status(exit_code)}"
    return f"the kernel process {_status(exit_code)}"


def _status(rc: int | None) -> str:
    if rc is None:
        return "could not be stopped"
    if rc < 0:
        return f"was killed by signal {-rc} ({signal.Signals(-rc).name})"
    return f"exited with status {rc}"


@dataclass
class EventLoopStats:
    """How the event loop spent its passes: a pass that finds nothing to do is a wasted
    wake-up, and a loop that spins shows as passes far beyond the events it served."""

    passes: int = 0
    tap_watched: int = 0  # passes that selected on the TAP (the device could take a frame)
    kicks: int = 0
    poll_passes: int = 0  # passes that polled the cmd queue after a read
    polled: int = 0  # cmd-queue bursts served while polling (each saved a sleep and a wake-up)
    # Microseconds from a wake-up (a kick drained, or the TAP readable) to writing the irq call
    # it caused, per script section ("" outside one): the device's own share of a round trip.
    # A ping is one sample, not two: the host kernel answers inside our TAP write, so the
    # request's TX and the reply's RX are served in the same pass. Bounded per section.
    kick_to_call_us: dict[str, list[float]] = field(default_factory=dict)
    # Of each such sample, the irq call's write itself: the host kernel waking the kernel's
    # process (a signal to UML, often on the other CPU) inside that eventfd write, which our
    # thread waits out although the kernel may already be running. Same bound.
    call_write_us: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passes": self.passes, "tap_watched": self.tap_watched,
                               "kicks": self.kicks, "poll_passes": self.poll_passes,
                               "polled": self.polled}  # fmt: skip
        for name, per_section in (("kick_to_call_us", self.kick_to_call_us),
                                  ("call_write_us", self.call_write_us)):  # fmt: skip
            for sect, v in per_section.items():
                if v:
                    s = sorted(v)
                    out[f"{name}[{sect or '-'}]"] = {"n": len(s), "median": s[len(s) // 2],
                                                     "max": s[-1]}  # fmt: skip
        return out


LATENCY_SAMPLES = 100_000  # per section
# Polling the cmd queue after a read (BootSession._poll_cmds): how long without a new request
# ends it, and the most one pass polls. Measured while polling during boots: the next request
# came 3 / 6.5 / 29 µs after the answer (10th / 50th / 90th percentile), so 50 µs catches most;
# a longer window (200 µs was tried) costs more than it saves when another process holds the
# other CPU: the kernel then shares ours, and a task that never sleeps loses the wake-up
# preference the scheduler gives a sleeper (boots took twice as long).
POLL_IDLE_NS = 50_000
POLL_PASS_NS = 20_000_000


class BootSession:
    """One kernel, one device, one event loop."""

    def __init__(self, opts: BootOptions) -> None:
        self.opts = opts
        # Bounded: a kernel may make legal register accesses for as long as --timeout lets it.
        self.recorder = Recorder(keep_first=RECORDS_FIRST, keep_last=RECORDS_LAST)
        PhaseTagger(self.recorder, probe_on_common=True)
        self.netdev: Any = None
        self.guest_ip, self.host_ip = GUEST_IP, HOST_IP
        if opts.device is None:
            if opts.net == "tap":
                self.netdev = _tap_with_host_address(TAP_HOST_IP, opts.tap_vnet_hdr)
                self.guest_ip, self.host_ip = TAP_GUEST_IP, TAP_HOST_IP
            elif opts.net == "responder":
                self.netdev = ResponderBackend(host_ip=HOST_IP)
            else:
                raise ValueError(f"unknown --net {opts.net!r} (responder or tap)")
        self.vhost: VhostUserBackend | None = None
        self.host: VirtPciHost | None = None
        # The device exists before the kernel connects, so that its state is inspectable
        # whatever happens; memory and the sink are bound when the connection comes.
        self.sink_proxy = _SinkProxy()
        if opts.device is not None:
            vectors = default_vectors(opts.device) if opts.vectors is None else opts.vectors
            legacy = not opts.disable_legacy and opts.device.device_id in TRANSITIONAL_DEVICE_IDS
            self.device = VirtioPciDevice(opts.device, vectors=vectors, disable_legacy=not legacy,
                                          sink=self.sink_proxy, recorder=self.recorder)  # fmt: skip
        else:
            self.device = make_virtio_net_pci(
                spec=opts.spec,
                vectors=opts.vectors,
                queue_pairs=opts.queue_pairs,
                disable_legacy=opts.disable_legacy,
                sink=self.sink_proxy,
                recorder=self.recorder,
                backend=self.netdev,
                **opts.device_options,
            )
        self.queue_names = queue_names(self.device.device)
        self.console = BoundedConsole()
        self._partial = ""
        # Sections as lists of lines (joined at the end: no quadratic re-copying), bounded.
        self._sections: dict[str, list[str]] = {}
        self._section_size: dict[str, int] = {}
        self.sections_cut = 0  # bytes of section lines not kept
        self._section: str | None = None
        self.times: dict[str, float] = {}
        self.script_status: int | None = None
        self.snapshot: dict[str, Any] = {}
        self._out_fd: int | None = None
        # The views are taken at the script's "done" marker, before the power-off removes the
        # driver; the loop reads the console before serving what the guest did after printing,
        # except on a loaded host, where the removal's reset was seen first (the views then
        # showed no vectors). A reset of the running driver reads the console first.
        self.device.before_driver_reset = self._console_before_reset
        self.proc: subprocess.Popen[bytes] | None = None
        self.backtraces: list[str] = []
        self._deadline: float | None = None
        self._went_away: str | None = None
        self.left_alive: list[int] = []
        self._poweroff_wait = 5.0
        self.stopped_by_us = False
        self.loop = EventLoopStats()
        self._kick_ns = 0  # when the oldest kick not yet answered by an irq call was drained

    # -- console -----------------------------------------------------------------------------
    def _console_data(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._console_line(line.rstrip("\r"))
        # A console that never prints a newline must not grow one line without end (nor make
        # each read re-join all of it): a long run becomes lines of CONSOLE_MAX_LINE.
        while len(self._partial) > CONSOLE_MAX_LINE:
            self._console_line(self._partial[:CONSOLE_MAX_LINE])
            self._partial = self._partial[CONSOLE_MAX_LINE:]

    @property
    def sections(self) -> dict[str, str]:
        return {k: "".join(v) for k, v in self._sections.items()}

    def _console_line(self, line: str) -> None:
        self.console.append(line)
        if line.startswith(MARK):
            word = line[len(MARK) :].split()
            tag = word[0] if word else ""
            if tag == "init" and "init" not in self.times:
                self.times["init"] = time.monotonic() - self.times["start"]
            elif tag == "done":
                self.times["done"] = time.monotonic() - self.times["start"]
                if len(word) > 1 and word[1].isdigit():
                    self.script_status = int(word[1])
                self.snapshot = device_views(self.device, self.queue_names, "um")
            elif tag == "end":
                self._section = None
            elif tag:
                self._section = tag
                self._sections.setdefault(tag, [])
                self._section_size.setdefault(tag, 0)
            return
        if self._section is not None:
            size = len(line) + 1
            if self._section_size[self._section] + size > SECTION_MAX_BYTES:
                self.sections_cut += size
            else:
                self._sections[self._section].append(line + "\n")
                self._section_size[self._section] += size
        if self.opts.console is not None:
            self.opts.console.write(line + "\n")
            self.opts.console.flush()

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> BootResult:
        """Boot, serve, stop. Every process started is stopped and the run's directory removed
        on every way out; SIGINT/SIGTERM/SIGHUP end the run with ``BootInterrupted``."""
        trace = None
        if self.opts.trace_json is not None:
            # Streamed as they come: the file has every record, the bound is on memory only.
            trace = open(self.opts.trace_json, "w", encoding="utf-8")  # noqa: SIM115
            if self.opts.spec is not None:
                JsonlWriter(trace)(meta_record(self.opts.spec, kernel_version=self.opts.kernel,
                                               source="boot"))  # fmt: skip
            self.recorder.subscribe(JsonlWriter(trace))
        try:
            with procs.Signals() as sigs:
                # A stand-in peer (tests) needs no kernel.
                linux = (uml_kernel.build(progress=True, version=self.opts.kernel)
                         if self.opts.kernel_command is None else None)  # fmt: skip
                result = self._run_kernel(linux, sigs)
        finally:
            if trace is not None:
                trace.close()
        if sigs.got is not None:
            raise BootInterrupted(sigs.got)
        return result

    def _run_kernel(self, linux: Path | None, sigs: procs.Signals) -> BootResult:
        opts = self.opts
        result = BootResult(opts, self.device, self.recorder)
        work = Path(tempfile.mkdtemp(prefix="virtio-msix-uml-"))
        # UML's memory file on a tmpfs when there is one (kernel.memory_dir says why).
        memdir = uml_kernel.memory_dir(opts.memory_mb, work)
        proc: subprocess.Popen[bytes] | None = None
        reaper: procs.Reaper | None = None
        subreaper: procs.Subreaper | None = None
        gdb_log_text = ""
        under_gdb = bool(opts.backtraces or opts.gdb_init)
        # gdb stops at every breakpoint and writes its log as the kernel exits: on a loaded host
        # that power-off takes seconds longer than the kernel's alone.
        self._poweroff_wait = 20.0 if under_gdb else 5.0
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock_path = work / "pci.sock"
            srv.bind(str(sock_path))
            srv.listen(1)
            root = uml_kernel.make_rootfs(
                work / "root",
                INIT_TEMPLATE.format(
                    mark=MARK, script=self._script(), guest_ip=self.guest_ip, host_ip=self.host_ip
                ),
                files=opts.files,
            )
            cmd = ([str(linux), *kernel_cmdline(sock_path, root, opts.memory_mb, work,
                                                   opts.kernel)]
                   if opts.kernel_command is None else [*opts.kernel_command, str(sock_path)])  # fmt: skip
            gdb_log = work / "gdb.log"
            if under_gdb:
                gdb = uml_kernel.require("gdb", "gdb")
                script = work / "breakpoints.gdb"
                script.write_text(gdb_script(gdb_log, opts.backtraces, opts.gdb_init))
                cmd = [gdb, "-nx", "-batch", "-x", str(script), "--args", *cmd]
            env = dict(os.environ, TMPDIR=str(memdir))
            self.times["start"] = time.monotonic()
            with sigs.deferred():  # the processes must be recorded before a signal can end us
                subreaper = procs.Subreaper()
                reaper = procs.Reaper()
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, cwd=work,
                                        start_new_session=True,
                                        preexec_fn=procs.die_with_parent())  # fmt: skip
                reaper.arm(proc.pid, work, memdir)
            assert proc.stdout is not None
            self.proc = proc
            result.error = self._loop(srv, proc)
        except VhostUserError as e:
            # A dying kernel can show first as a broken call pipe or ring, before the socket
            # closes: if the process is gone, say so.
            try:
                gone = proc is not None and proc.wait(timeout=1) is not None
            except subprocess.TimeoutExpired:
                gone = False
            if gone and proc is not None and "done" not in self.times:
                result.error = self._death_reason(proc, e)
            else:
                result.error = f"vhost-user: {e}"
        finally:
            sigs.hold()
            if proc is not None:
                # Interrupted or timed out: the kernel is not about to power off, do not wait.
                at_once = sigs.got is not None or (result.error or "").startswith("timeout")
                result.exit_code = self._stop(proc, at_once=at_once)
                if subreaper is not None:
                    # Processes that left the kernel's session (setsid) and were orphaned
                    # to us, or still run below it: killed and reaped too.
                    keep = {reaper.proc.pid} if reaper is not None else set()
                    self.left_alive += subreaper.kill_escaped(keep, {proc.pid})
                if self._out_fd is not None:
                    self._drain(self._out_fd)  # the console to its last line
                    self._out_fd = None  # closed below: a later reset must not read its number
                if proc.stdout is not None:
                    proc.stdout.close()
            srv.close()
            if self.vhost is not None:
                self.vhost.close()
            close = getattr(self.netdev, "close", None)
            if close:
                close()
            if under_gdb and (work / "gdb.log").is_file():
                gdb_log_text = (work / "gdb.log").read_text(errors="replace")
            if opts.backtraces:
                hits = parse_gdb_log(gdb_log_text)
                self.backtraces = pair_backtraces(hits, self.recorder.records)
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(memdir, ignore_errors=True)
            if reaper is not None:
                reaper.close()
            if subreaper is not None:
                subreaper.close()
        if self._partial:
            self._console_line(self._partial)
            self._partial = ""
        result.finished = "done" in self.times
        result.script_status = self.script_status
        if not result.finished:
            # What was observed, nothing more: the device as the kernel left it.
            self.snapshot = device_views(self.device, self.queue_names, "um")
            result.panic, result.console_tail = console_tail(self.console.lines())
            if proc is not None:
                result.error = self._fate(result, gdb_log_text if under_gdb else None)
        result.console = self.console.text()
        result.cut = {
            k: v
            for k, v in (
                ("console_lines", self.console.cut_lines),
                ("console_bytes", self.console.cut_bytes),
                ("section_bytes", self.sections_cut),
                ("records", self.recorder.dropped),
            )
            if v
        }
        result.host = self.host
        result.vhost = self.vhost
        result.times = {k: v for k, v in self.times.items() if k != "start"}
        result.sections = self.sections
        result.snapshot = self.snapshot
        result.backtraces = self.backtraces
        result.loop = self.loop.summary()
        if "done" in self.times and self.device.msix is not None:
            result.after_teardown = {
                "all_masked": all(e.masked for e in self.device.msix.entries),
                "msix_enabled": self.device.msix.enabled,
            }
        if result.error is None and "done" not in self.times:
            result.error = "the guest did not finish its script (see the console above)"
        return result

    def _script(self) -> str:
        if self.opts.device is not None and self.opts.script == DEFAULT_SCRIPT:
            return DEVICE_SCRIPT  # the default one brings eth0 up and pings
        return self.opts.script

    def _stop(self, proc: subprocess.Popen[bytes], at_once: bool = False) -> int | None:
        """Let the kernel finish powering off (unless ``at_once``), then kill whatever is left
        of its session: guest processes, UML helpers, gdb and its inferior."""
        if not at_once:
            try:
                proc.wait(timeout=self._poweroff_wait)
            except subprocess.TimeoutExpired:
                pass
        self.stopped_by_us = proc.poll() is None
        self.left_alive = procs.kill_session(proc.pid)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _fate(self, result: BootResult, gdb_log: str | None) -> str:
        """The error of a run that did not finish: the kernel's panic line if it printed one,
        and how its process ended (the kernel's, not gdb's, under ``--backtraces``)."""
        how = kernel_end(result.exit_code, gdb_log)
        if self.stopped_by_us:
            how = "it was still running and virtio-msix stopped it"
        if self.left_alive:
            how += f"; processes {self.left_alive} could not be killed"
        if self._went_away is not None:
            how += f"; vhost-user: {self._went_away}"
        if result.panic is not None:
            return f"the kernel panicked; the run did not finish: {result.panic} ({how})"
        if self._went_away is not None:
            return f"the kernel went away before the guest script finished ({how})"
        if result.error is not None:
            return f"{result.error} (the kernel: {how})"
        return f"the guest did not finish its script ({how})"

    def _connect(self, conn: socket.socket) -> None:
        vhost = VhostUserBackend(conn, features=1 << VIRTIO_F_VERSION_1, num_queues=2)
        host = VirtPciHost(vhost.memory, vhost.vrings[CMD_QUEUE].queue,
                           vhost.vrings[IRQ_QUEUE].queue)  # fmt: skip
        vhost.deadline = self._deadline  # no read or reply may block past --timeout
        self.device.memory = vhost.memory
        self.sink_proxy.target = UmlInterruptSink(host)
        host.attach(self.device)
        self.vhost, self.host = vhost, host

    def _loop(self, srv: socket.socket, proc: subprocess.Popen[bytes]) -> str | None:
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
        self._out_fd = out_fd
        os.set_blocking(out_fd, False)
        deadline = time.monotonic() + self.opts.timeout
        self._deadline = deadline
        conn: socket.socket | None = None
        tap_fd = self.netdev.fileno() if hasattr(self.netdev, "fileno") else None
        # From now on this loop tells the TAP when a read can find something (backends.py).
        hint = tap_fd is not None and hasattr(self.netdev, "readable")
        if hint:
            self.netdev.readable = True
        net = self.device.device
        rx_ready = getattr(net, "rx_ready", None)
        stdout_open = True
        # One epoll set, built again only when what it watches changes: the connection, the
        # console closing, or a vhost-user message (SET_VRING_KICK, GET_VRING_BASE). It is
        # rebuilt whole, not edited: a kick descriptor that vhost-user closed has its file
        # description still open in the peer, and epoll would keep reporting it (under a number
        # that may be reused) until removed, which a closed number no longer can be.
        # Kick descriptors are watched edge-triggered and never read: an eventfd wakes its
        # waiters on every write (eventfd_write), so each kick is one event, and draining it
        # would cost three system calls (a peer can clear O_NONBLOCK on the shared descriptor;
        # drain_kick says why it takes three). The count grows until the set is next rebuilt
        # (emptied then, below); the peer's writes would block at 2^64 - 2 kicks, its own
        # concern.
        ep: select.epoll | None = None
        watch_key: tuple[Any, ...] | None = None
        what: dict[int, Any] = {}  # fd -> srv / conn / "console" / "tap" / a vring index
        tap_watched = False
        try:
            while True:
                self.loop.passes += 1
                now = time.monotonic()
                if now > deadline:
                    return f"timeout: the guest did not finish within {self.opts.timeout:.0f} s"
                key = (conn, stdout_open, self.vhost, self.vhost.messages if self.vhost else 0)
                kicked_before = False
                if key != watch_key:
                    watch_key = key
                    if ep is not None:
                        ep.close()
                    ep, what, tap_watched = select.epoll(), {}, False
                    sock = srv if conn is None else conn
                    ep.register(sock.fileno(), select.EPOLLIN)
                    what[sock.fileno()] = sock
                    if stdout_open:
                        ep.register(out_fd, select.EPOLLIN)
                        what[out_fd] = "console"
                    if self.vhost is not None:
                        for i, vr in enumerate(self.vhost.vrings):
                            if vr.kick_fd >= 0 and vr.kick_fd not in what:
                                # Registered with a count left from earlier kicks, an eventfd
                                # would report a kick at once: emptied first. A kick found
                                # there is served by this pass without waiting (_service
                                # looks at every ring on every pass).
                                if self.vhost.drain_kick(i):
                                    kicked_before = True
                                ep.register(vr.kick_fd, select.EPOLLIN | select.EPOLLET)
                                what[vr.kick_fd] = i
                assert ep is not None
                # The TAP is watched only while the device can take a frame: before DRIVER_OK,
                # or with no receive buffers posted, a readable TAP would wake every pass for
                # nothing (the loop spun). The guest's RX kick, when it posts buffers, wakes us
                # instead, and _service() then pulls what waits.
                if tap_fd is not None:
                    want = rx_ready is None or rx_ready()
                    if want != tap_watched:
                        if want:
                            ep.register(tap_fd, select.EPOLLIN)
                            what[tap_fd] = "tap"
                        else:
                            ep.unregister(tap_fd)
                            del what[tap_fd]
                        tap_watched = want
                    if want:
                        self.loop.tap_watched += 1
                    elif hint:
                        self.netdev.readable = True  # not watched: nothing says it is empty
                if not stdout_open and proc.poll() is not None:
                    if "done" in self.times:
                        return None
                    return self._death_reason(proc, VhostUserError("no connection"))
                # A queue left with work at its per-call bound is served on the next pass at
                # once.
                busy = getattr(self.device.device, "backlog", None) or (
                    self.host is not None and self.host.backlog)
                for fd, _events in ep.poll(0.0 if busy or kicked_before else 0.05):
                    r = what.get(fd)
                    if r is srv:
                        srv.setblocking(False)  # a connection that went away must not block us
                        try:
                            conn, _ = srv.accept()
                        except (BlockingIOError, ConnectionAbortedError):
                            continue
                        self._connect(conn)
                    elif r is conn and conn is not None:
                        assert self.vhost is not None
                        try:
                            self.vhost.handle_one()
                        except VhostUserError as e:
                            if proc.poll() is not None or "closed" in str(e):
                                # The kernel went away (power-off closes the socket too).
                                conn.close()
                                conn = None
                                self._drain(out_fd)
                                if "done" in self.times:
                                    return None
                                return self._death_reason(proc, e)
                            raise
                    elif r == "console":
                        stdout_open = self._drain(out_fd, short_read_ends=True)
                    elif type(r) is int:
                        assert self.vhost is not None
                        self.vhost.kicked(r)
                        self.loop.kicks += 1
                        if not self._kick_ns:
                            self._kick_ns = time.perf_counter_ns()
                    elif r == "tap":
                        if hint:
                            self.netdev.readable = True
                        if not self._kick_ns:
                            self._kick_ns = time.perf_counter_ns()  # a frame for the guest
                self._service()
        finally:
            if ep is not None:
                ep.close()

    def _console_before_reset(self) -> None:
        """What the guest printed before its driver's reset, read before the reset applies:
        a "done" marker there snapshots the device as the driver left it running."""
        if self._out_fd is not None and "done" not in self.times:
            self._drain(self._out_fd)

    def _death_reason(self, proc: subprocess.Popen[bytes], e: Exception) -> str:
        """The kernel closed the connection before the script finished; ``run`` words the
        error once the process has ended and its console is read (``_fate``)."""
        self._went_away = str(e)
        return f"the kernel went away before the guest script finished (vhost-user: {e})"

    def _drain(self, fd: int, short_read_ends: bool = False) -> bool:
        """Take what the console has (bounded: a guest printing without pause must not keep
        the loop from its deadline); False once it is closed. With ``short_read_ends`` a read
        that did not fill its buffer ends it: the pipe held less than that, so it is empty but
        for what came since, which wakes the loop again (the console is watched
        level-triggered) — not one more read per pass to be told EAGAIN."""
        for _ in range(CONSOLE_READS_PER_PASS):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._console_data(data)
            if short_read_ends and len(data) < 65536:
                return True
        return True

    def _service(self) -> None:
        """Serve the cmd queue, let the device deliver, flush interrupts, signal the kernel."""
        host, vhost = self.host, self.vhost
        if host is None or vhost is None:
            return
        # The console is not read here on every pass (a system call per pass, most finding
        # nothing): a marker the guest printed must be seen before the accesses it made after
        # printing it (the views are snapshotted at the "done" marker), and it is, because the
        # kernel writes the console before the guest goes on; so when the accesses wake us the
        # console is readable in the same wait, and the loop read it above. What this pass
        # cannot see is a marker printed after the wait returned, and the accesses after it
        # come a shell command later, past the few system calls between there and here.
        try:
            st = host.stats
            reads = st.cfg_reads + st.mmio_reads
            host.process_cmds()
            if st.cfg_reads + st.mmio_reads != reads:
                self._poll_cmds(host)
            self.device.poll()
            host.flush_irqs()
        except VirtqueueError as e:
            raise VhostUserError(f"virt-pci ring: {e}") from None
        except GuestMemoryError as e:  # the device's own rings report theirs (NEEDS_RESET)
            raise VhostUserError(f"device DMA: {e}") from None
        # The interrupt first: it is what the guest waits for (a ping reply, a TX completion);
        # the cmd call only lets virt-pci recycle posted-write buffers. Writing a call wakes
        # the kernel, which may take this CPU from us before the second one.
        if host.signal_irq:
            host.signal_irq = False
            kick_ns = self._kick_ns
            before = time.perf_counter_ns() if kick_ns else 0
            vhost.signal(IRQ_QUEUE)
            if kick_ns:
                after = time.perf_counter_ns()
                sect = self._section or ""
                samples = self.loop.kick_to_call_us.setdefault(sect, [])
                if len(samples) < LATENCY_SAMPLES:
                    samples.append((after - kick_ns) / 1000)
                    self.loop.call_write_us.setdefault(sect, []).append((after - before) / 1000)
        if host.signal_cmd:
            host.signal_cmd = False
            vhost.signal(CMD_QUEUE)
        self._kick_ns = 0


    def _poll_cmds(self, host: VirtPciHost) -> None:
        """Poll the cmd queue for a while after serving a read (QEMU polls its AioContexts the
        same way, poll-max-ns): virt-pci busy-waits for each read's answer and sends the next
        access microseconds after it (a probe is hundreds of config reads in a row), so the
        next request is served here without a sleep and a wake-up in between (and without a
        call per request: the kernel takes each as a SIGIO). Bounded: ``POLL_IDLE_NS`` with
        nothing new ends it, and a pass polls ``POLL_PASS_NS`` at most, so the console, the
        TAP and the deadline are attended to as before."""
        now = time.perf_counter_ns
        start = idle_from = now()
        st = host.stats
        cmd, mem = host.cmd, host.memory
        # The console before any request that came after it: a marker the guest printed must be
        # read before the accesses it made next (the views are snapshotted at "done"; _service
        # says why the loop's order guarantees it), so console output ends the polling.
        console = select.poll()
        if self._out_fd is not None:
            console.register(self._out_fd, select.POLLIN)
        self.loop.poll_passes += 1
        while True:
            t = now()
            if t - idle_from > POLL_IDLE_NS or t - start > POLL_PASS_NS or host.backlog:
                return
            if not cmd.has_available(mem):
                # Whoever else is runnable on this CPU goes first (on a busy host that may be
                # the kernel itself, whose next request we are waiting for).
                os.sched_yield()
                continue
            if console.poll(0):
                return
            reads = st.cfg_reads + st.mmio_reads
            if host.process_cmds():
                self.loop.polled += 1
                if st.cfg_reads + st.mmio_reads != reads:
                    idle_from = now()  # another read: the kernel is still in a run of them


def _tap_with_host_address(host_ip: str, vnet_hdr: bool = True) -> TapBackend:
    """A TAP whose host side has ``host_ip``/24 and is up, so guest traffic reaches host
    sockets (needs /dev/net/tun and CAP_NET_ADMIN, and iproute2's ``ip``)."""
    try:
        tap = TapBackend(vnet_hdr=vnet_hdr)
    except OSError as e:
        raise BootError(f"--net tap: cannot create a TAP interface: {e}") from None
    ip = uml_kernel.require("ip", "iproute2")
    for args in (
        ["addr", "add", f"{host_ip}/24", "dev", tap.name],
        ["link", "set", tap.name, "up"],
    ):
        out = subprocess.run([ip, *args], capture_output=True, text=True)
        if out.returncode:
            tap.close()
            raise BootError(f"--net tap: ip {' '.join(args)}: {out.stderr.strip()}")
    return tap


BootInterrupted = procs.BootInterrupted


class BootError(RuntimeError):
    """The run cannot start (a missing permission or tool); the message says which."""


class _SinkProxy:
    """Interrupt sink whose target is bound when the kernel connects."""

    def __init__(self) -> None:
        self.target: Any = NullSink()

    def msi(self, address: int, data: int) -> None:
        self.target.msi(address, data)

    def set_intx(self, level: bool) -> None:
        self.target.set_intx(level)


def run_boot(opts: BootOptions) -> BootResult:
    return BootSession(opts).run()

