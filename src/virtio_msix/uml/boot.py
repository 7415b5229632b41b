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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..pci.sink import NullSink
from ..trace import Recorder
from ..virtio import make_virtio_net_pci
from ..virtio.backends import ResponderBackend, TapBackend
from ..virtio.memory import GuestMemoryError
from ..virtio.pci import VirtioPciDevice
from ..virtio.queue import VirtqueueError
from ..virtio.regs import COMMON
from . import kernel as uml_kernel
from .pcidev import CMD_QUEUE, IRQ_QUEUE, UML_MSI_ADDRESS, UmlInterruptSink, VirtPciHost
from .vhost_user import VIRTIO_F_VERSION_1, VhostUserBackend, VhostUserError

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

DEFAULT_SCRIPT = f"""\
echo {MARK} interrupts-before; cat /proc/interrupts; echo {MARK} end
ip link set eth0 up
ip addr add $GUEST_IP/24 dev eth0
echo {MARK} ping; ping -c 3 -W 2 $HOST_IP; echo {MARK} end
echo {MARK} interrupts-after; cat /proc/interrupts; echo {MARK} end
"""

INIT_TEMPLATE = """\
#!/bin/sh
export PATH=/bin GUEST_IP={guest_ip} HOST_IP={host_ip}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo {mark} init $(cat /proc/uptime)
{script}
echo {mark} done
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
    loop: dict[str, Any] = field(default_factory=dict)  # the event loop's counters (EventLoopStats)

    def interrupts(self, when: str) -> list[dict[str, Any]]:
        return parse_proc_interrupts(self.sections.get(f"interrupts-{when}", ""))

    def ping(self) -> dict[str, Any]:
        return parse_ping(self.sections.get("ping", ""))


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


def queue_names(queue_pairs: int) -> list[str]:
    """virtio_net's virtqueue names (virtnet_find_vqs): input.N, output.N, then control."""
    return [f"{k}.{i}" for i in range(queue_pairs) for k in ("input", "output")] + ["control"]


def device_views(device: VirtioPciDevice, queue_pairs: int) -> dict[str, Any]:
    """Our MSI-X table and the event → vector map, as the kernel has programmed them."""
    msix = device.msix
    table = msix.table_rows() if msix is not None else []
    for row in table:
        row["decoded"] = f"UML irq {row['data']}" if row["address"] == UML_MSI_ADDRESS else "-"
    return {
        "msix_enabled": bool(msix and msix.enabled),
        "function_masked": bool(msix and msix.function_masked),
        "table": table,
        "event_vectors": device.event_vectors(queue_names(queue_pairs)),
    }


def kernel_cmdline(sock: Path, root: Path, memory_mb: int) -> list[str]:
    return [
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
        entry, field = divmod(r["offset"], 16)
        if field == 12:
            current = None
            if not r["value"] & 1:
                unmasks.append(f"entry {entry}: vector control <- {r['value']:#x} (unmasked)")
            continue
        if current is None or current["entry"] != entry or field in current["fields"]:
            current = {"entry": entry, "fields": {}}
            fills.append("")
        current["fields"][field] = r["value"] if r["size"] == 4 else r["value"] & 0xFFFFFFFF
        if r["size"] == 8:
            current["fields"][field + 4] = r["value"] >> 32
        f = current["fields"]
        parts = [f"addr_lo {f[0]:#010x}" if 0 in f else "", f"addr_hi {f[4]:#x}" if 4 in f else "",
                 f"data {f[8]:#x}" if 8 in f else ""]  # fmt: skip
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


def phase_tagger(recorder: Recorder) -> None:
    """Tag records: 'enumeration' before the first common-config access, 'probe' up to the
    DRIVER_OK write, 'run' after (the same phases as the simulator's trace)."""
    state = {"phase": "enumeration"}
    status = COMMON["device_status"].offset

    def tag(rec: dict[str, Any]) -> None:
        if state["phase"] == "enumeration" and rec.get("space") == "common":
            state["phase"] = "probe"
        rec["phase"] = state["phase"]
        if (state["phase"] == "probe" and rec.get("space") == "common" and rec.get("op") == "w"
                and rec.get("offset") == status and rec.get("value", 0) & 0x4):  # fmt: skip
            state["phase"] = "run"

    recorder.subscribe(tag)


@dataclass
class EventLoopStats:
    """How the event loop spent its passes: a pass that finds nothing to do is a wasted
    wake-up, and a loop that spins shows as passes far beyond the events it served."""

    passes: int = 0
    tap_watched: int = 0  # passes that selected on the TAP (the device could take a frame)
    kicks: int = 0
    # Microseconds from a wake-up (a kick drained, or the TAP readable) to writing the irq call
    # it caused, per script section ("" outside one): the device's own share of a round trip
    # (ping: once for the request's TX, once for the reply's RX). Bounded per section.
    kick_to_call_us: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passes": self.passes, "tap_watched": self.tap_watched,
                               "kicks": self.kicks}  # fmt: skip
        for sect, v in self.kick_to_call_us.items():
            if v:
                s = sorted(v)
                out[f"kick_to_call_us[{sect or '-'}]"] = {"n": len(s), "median": s[len(s) // 2],
                                                          "max": s[-1]}  # fmt: skip
        return out


LATENCY_SAMPLES = 100_000  # per section


class BootSession:
    """One kernel, one device, one event loop."""

    def __init__(self, opts: BootOptions) -> None:
        self.opts = opts
        self.recorder = Recorder()
        phase_tagger(self.recorder)
        if opts.net == "tap":
            self.netdev: Any = _tap_with_host_address(TAP_HOST_IP, opts.tap_vnet_hdr)
            self.guest_ip, self.host_ip = TAP_GUEST_IP, TAP_HOST_IP
        elif opts.net == "responder":
            self.netdev = ResponderBackend(host_ip=HOST_IP)
            self.guest_ip, self.host_ip = GUEST_IP, HOST_IP
        else:
            raise ValueError(f"unknown --net {opts.net!r} (responder or tap)")
        self.vhost: VhostUserBackend | None = None
        self.host: VirtPciHost | None = None
        # The device exists before the kernel connects, so that its state is inspectable
        # whatever happens; memory and the sink are bound when the connection comes.
        self.sink_proxy = _SinkProxy()
        self.device = make_virtio_net_pci(
            vectors=opts.vectors,
            queue_pairs=opts.queue_pairs,
            disable_legacy=opts.disable_legacy,
            sink=self.sink_proxy,
            recorder=self.recorder,
            backend=self.netdev,
        )
        self.console: list[str] = []
        self._partial = ""
        self.sections: dict[str, str] = {}
        self._section: str | None = None
        self.times: dict[str, float] = {}
        self.snapshot: dict[str, Any] = {}
        self._out_fd: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.backtraces: list[str] = []
        self._deadline: float | None = None
        self.loop = EventLoopStats()
        self._kick_ns = 0  # when the oldest kick not yet answered by an irq call was drained

    # -- console -----------------------------------------------------------------------------
    def _console_data(self, data: bytes) -> None:
        text = self._partial + data.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self._console_line(line.rstrip("\r"))

    def _console_line(self, line: str) -> None:
        self.console.append(line)
        if line.startswith(MARK):
            word = line[len(MARK) :].split()
            tag = word[0] if word else ""
            if tag == "init" and "init" not in self.times:
                self.times["init"] = time.monotonic() - self.times["start"]
            elif tag == "done":
                self.times["done"] = time.monotonic() - self.times["start"]
                self.snapshot = device_views(self.device, self.opts.queue_pairs)
            elif tag == "end":
                self._section = None
            elif tag:
                self._section = tag
                self.sections.setdefault(tag, "")
            return
        if self._section is not None:
            self.sections[self._section] += line + "\n"
        if self.opts.console is not None:
            self.opts.console.write(line + "\n")
            self.opts.console.flush()

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> BootResult:
        opts = self.opts
        result = BootResult(opts, self.device, self.recorder)
        linux = uml_kernel.build(progress=True) if opts.kernel_command is None else None
        work = Path(tempfile.mkdtemp(prefix="virtio-msix-uml-"))
        proc: subprocess.Popen[bytes] | None = None
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock_path = work / "pci.sock"
            srv.bind(str(sock_path))
            srv.listen(1)
            root = uml_kernel.make_rootfs(
                work / "root",
                INIT_TEMPLATE.format(
                    mark=MARK, script=opts.script, guest_ip=self.guest_ip, host_ip=self.host_ip
                ),
                files=opts.files,
            )
            cmd = ([str(linux), *kernel_cmdline(sock_path, root, opts.memory_mb)]
                   if opts.kernel_command is None else [*opts.kernel_command, str(sock_path)])  # fmt: skip
            gdb_log = work / "gdb.log"
            if opts.backtraces or opts.gdb_init:
                gdb = uml_kernel.require("gdb", "gdb")
                script = work / "breakpoints.gdb"
                script.write_text(gdb_script(gdb_log, opts.backtraces, opts.gdb_init))
                cmd = [gdb, "-nx", "-batch", "-x", str(script), "--args", *cmd]
            env = dict(os.environ, TMPDIR=str(work))
            self.times["start"] = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=env, cwd=work,
                                    start_new_session=True)  # fmt: skip
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
            if proc is not None:
                result.exit_code = self._stop(proc)
                proc.stdout.close() if proc.stdout else None  # the console pipe's descriptor
                _kill_group(proc.pid)  # what the kernel left in its group when it exited
            srv.close()
            if self.vhost is not None:
                self.vhost.close()
            close = getattr(self.netdev, "close", None)
            if close:
                close()
            if opts.backtraces and (work / "gdb.log").is_file():
                hits = parse_gdb_log((work / "gdb.log").read_text(errors="replace"))
                self.backtraces = pair_backtraces(hits, self.recorder.records)
            shutil.rmtree(work, ignore_errors=True)
        if self._partial:
            self._console_line(self._partial)
        result.console = "\n".join(self.console)
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

    def _stop(self, proc: subprocess.Popen[bytes]) -> int | None:
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

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
        net = self.device.device
        rx_ready = getattr(net, "rx_ready", None)
        stdout_open = True
        while True:
            self.loop.passes += 1
            now = time.monotonic()
            if now > deadline:
                return f"timeout: the guest did not finish within {self.opts.timeout:.0f} s"
            rl: list[Any] = [srv] if conn is None else [conn]
            if stdout_open:
                rl.append(out_fd)
            kicks: dict[int, int] = {}
            if self.vhost is not None:
                for i, vr in enumerate(self.vhost.vrings):
                    if vr.kick_fd >= 0:
                        kicks[vr.kick_fd] = i
                        rl.append(vr.kick_fd)
            # The TAP is watched only while the device can take a frame: before DRIVER_OK, or
            # with no receive buffers posted, a readable TAP would wake every pass for nothing
            # (the loop spun). The guest's RX kick, when it posts buffers, wakes us instead, and
            # _service() then pulls what waits.
            if tap_fd is not None and (rx_ready is None or rx_ready()):
                rl.append(tap_fd)
                self.loop.tap_watched += 1
            if not stdout_open and proc.poll() is not None:
                if "done" in self.times:
                    return None
                return self._death_reason(proc, VhostUserError("no connection"))
            ready, _, _ = select.select(rl, [], [], 0.05)
            for r in ready:
                if r is srv:
                    srv.setblocking(False)  # a connection that went away must not block us
                    try:
                        conn, _ = srv.accept()
                    except (BlockingIOError, ConnectionAbortedError):
                        continue
                    self._connect(conn)
                elif r is conn:
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
                elif r == out_fd:
                    stdout_open = self._drain(out_fd)
                elif r in kicks:
                    assert self.vhost is not None
                    self.vhost.drain_kick(kicks[r])
                    self.loop.kicks += 1
                    if not self._kick_ns:
                        self._kick_ns = time.perf_counter_ns()
                elif r == tap_fd and not self._kick_ns:
                    self._kick_ns = time.perf_counter_ns()  # a frame for the guest
            self._service()

    @staticmethod
    def _death_reason(proc: subprocess.Popen[bytes], e: Exception) -> str:
        try:
            rc = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        how = ("still running" if rc is None else
               f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}")  # fmt: skip
        return f"the kernel went away before the guest script finished ({how}; vhost-user: {e})"

    def _drain(self, fd: int) -> bool:
        """Take what the console has (bounded: a guest printing without pause must not keep
        the loop from its deadline); False once it is closed."""
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
        return True

    def _service(self) -> None:
        """Serve the cmd queue, let the device deliver, flush interrupts, signal the kernel."""
        host, vhost = self.host, self.vhost
        if host is None or vhost is None:
            return
        # Console first: a marker the guest printed must be seen before the accesses it made
        # after printing it (the views are snapshotted at the "done" marker).
        if self._out_fd is not None:
            self._drain(self._out_fd)
        try:
            host.process_cmds()
            self.device.poll()
            host.flush_irqs()
        except VirtqueueError as e:
            raise VhostUserError(f"virt-pci ring: {e}") from None
        except GuestMemoryError as e:  # the device's own rings report theirs (NEEDS_RESET)
            raise VhostUserError(f"device DMA: {e}") from None
        if host.signal_cmd:
            host.signal_cmd = False
            vhost.signal(CMD_QUEUE)
        if host.signal_irq:
            host.signal_irq = False
            vhost.signal(IRQ_QUEUE)
            if self._kick_ns:
                samples = self.loop.kick_to_call_us.setdefault(self._section or "", [])
                if len(samples) < LATENCY_SAMPLES:
                    samples.append((time.perf_counter_ns() - self._kick_ns) / 1000)
        self._kick_ns = 0


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def console_to(stream: TextIO | None) -> TextIO | None:
    return stream if stream is not None else sys.stdout
