"""Side by side: the real Linux 6.1 under UML driving our device, against QEMU 7.2 (TCG) driving
its own virtio-net-pci with Debian's 6.1 kernel — what a user runs here instead.

    sudo .venv/bin/python bench/side_by_side.py [--rounds 3] [--mib 16] [--bulk-mib 64]
                                                [--no-bulk] [--no-qemu] [--out bench/results.md]

Everything runs inside a private network namespace (the script re-executes itself under
``unshare --net``): the TAPs, their host addresses and the host-side sinks exist only there, so
the host's own network is untouched and no traffic leaves the namespace.

Each round runs, interleaved (A B A B …): UML with no device (the floor for boot), UML + our
device on a TAP, QEMU TCG + virtio-net-pci on a TAP (QEMU's default ``tap`` netdev, vnet header
and offloads as QEMU negotiates them). The same busybox workload runs in both guests:
``ping -c 20 -i 0.2`` to the host side of the TAP, ``dd | nc`` of --mib MiB to a host sink
(guest → host), and ``nc -l`` receiving --mib MiB from a host sender (host → guest; timed from
connect to the guest's close); then the same two transfers of --bulk-mib MiB with 64 KiB writes
and reads (``bench/guest/tcpbulk.c``, built static here and put into both guests), because
busybox nc copies 1 KiB per system call and so measures the guests' system calls (ptrace round
trips under UML) more than the NIC. The host checks the MD5 of what each guest sent and the
guests report the bytes they received. CPU is sampled at both ends of each transfer: for UML our device
(the event loop's thread) and the kernel (the UML process group); for QEMU its vCPU thread
(guest kernel) and its other threads (device model + VMM). Medians, min–max and per-round ratios
go to --out (Markdown) and the same data as JSON next to it. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtio_msix.qemu import debian
from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import MARK, TAP_GUEST_IP, BootOptions, BootSession

G2H_PORT = 5001
H2G_PORT = 5002
QEMU_TAP = "vmsixq0"
QEMU_HOST_IP = "172.30.78.1"
QEMU_GUEST_IP = "172.30.78.15"
CLK_TCK = os.sysconf("SC_CLK_TCK")
INNER_ENV = "VIRTIO_MSIX_BENCH_NETNS"

WORKLOAD = """\
ip link set eth0 up; ip addr add $GUEST_IP/24 dev eth0; ip link set lo up
echo {mark} ping; ping -c {pings} -i 0.2 $HOST_IP; echo {mark} end
dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc $HOST_IP {g2h}
echo {mark} h2g; nc -l -p {h2g} | wc -c; echo {mark} end
echo {mark} syscalls; busybox time dd if=/dev/zero of=/dev/null bs=1 count={syscall_bytes} 2>&1; echo {mark} end
"""
# The guest's own cost of a system call, which bounds what nc's transfers can reach whatever the
# NIC does: dd copying one byte at a time makes two per byte (read, write); busybox's `time`
# (called through busybox: neither guest links that applet) gives the wall time to 10 ms.
SYSCALL_BYTES = 20000
# The same transfers with 64 KiB reads and writes (bench/guest/tcpbulk.c, built static and put
# into both guests): busybox nc copies 1 KiB at a time, 32 768 system calls per 16 MiB, which
# under UML are ptrace round trips; this pair measures the NIC path with TSO-sized frames.
WORKLOAD_BULK = """\
tcpbulk send $HOST_IP {g2h} {nbytes}
echo {mark} h2gbulk; tcpbulk recv {h2g}; echo {mark} end
"""
BULK_SRC = Path(__file__).with_name("guest") / "tcpbulk.c"
BULK_CHUNK = 65536

# The boot marker is /init's first command in all three guests (UML's boot.py does the same):
# boot → /init is the kernel's time to start init.
QEMU_INIT = """#!/bin/sh
echo {mark} init
export PATH=/bin GUEST_IP={guest_ip} HOST_IP={host_ip}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in /modules/*.ko; do insmod $m; done
{script}
echo {mark} done
poweroff -f
"""


# -- CPU sampling ---------------------------------------------------------------------------------
def _proc_stat(path: str) -> list[str] | None:
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    # comm may hold spaces: the fields after it start after the last ')'.
    return [raw[: raw.index("(")].strip(), raw[raw.index("(") + 1 : raw.rindex(")")]] + raw[
        raw.rindex(")") + 2 :
    ].split()


def group_cpu(pgid: int) -> float:
    """CPU seconds of every live process in process group ``pgid`` (plus the leader's reaped
    children)."""
    total = 0
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        f = _proc_stat(f"/proc/{ent}/stat")
        if f is None or int(f[4]) != pgid:  # field 5 of proc(5): pgrp
            continue
        total += int(f[13]) + int(f[14])
        if int(ent) == pgid:
            total += int(f[15]) + int(f[16])
    return total / CLK_TCK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of process ``pid``."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        f = _proc_stat(f"/proc/{pid}/task/{tid}/stat")
        if f is not None:
            out[f[1]] = out.get(f[1], 0.0) + (int(f[13]) + int(f[14])) / CLK_TCK
    return out


# -- host-side traffic ------------------------------------------------------------------------------
class Traffic(threading.Thread):
    """The host's side of the workload: a sink for guest → host, then a sender for host → guest.
    ``cpu()`` is sampled when each transfer starts and ends."""

    def __init__(self, guest_ip: str, nbytes: int, cpu: Callable[[], dict[str, float]],
                 deadline: float, bulk_nbytes: int = 0) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.guest_ip, self.nbytes, self.cpu, self.deadline = guest_ip, nbytes, cpu, deadline
        self.bulk_nbytes = bulk_nbytes  # 0: no tcpbulk transfers
        self.result: dict[str, Any] = {}
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("0.0.0.0", G2H_PORT))
        self.srv.listen(1)

    def run(self) -> None:
        try:
            self._g2h("g2h")
            self._h2g("h2g", self.nbytes)
            if self.bulk_nbytes:
                self._g2h("g2h_bulk")
                self._h2g("h2g_bulk", self.bulk_nbytes)
        except OSError as e:
            self.result["error"] = str(e)
        finally:
            self.srv.close()

    def _g2h(self, key: str) -> None:
        self.srv.settimeout(max(1.0, self.deadline - time.monotonic()))
        conn, _ = self.srv.accept()
        total, t0, c0 = 0, 0.0, {}
        h = hashlib.md5()
        with conn:
            conn.settimeout(60)
            while data := conn.recv(1 << 18):
                if not total:
                    t0, c0 = time.monotonic(), self.cpu()
                total += len(data)
                h.update(data)
        t1, c1 = time.monotonic(), self.cpu()
        self.result[key] = {"bytes": total, "seconds": t1 - t0, "md5": h.hexdigest(),
                              "cpu": {k: c1[k] - c0.get(k, 0.0) for k in c1}}  # fmt: skip

    def _h2g(self, key: str, nbytes: int) -> None:
        payload = os.urandom(1 << 20) * (nbytes >> 20)
        while True:
            if time.monotonic() > self.deadline:
                raise OSError("host → guest: the guest never listened")
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((self.guest_ip, H2G_PORT))
                break
            except OSError:
                s.close()
                time.sleep(0.1)
        with s:
            s.settimeout(60)
            t0, c0 = time.monotonic(), self.cpu()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):  # the guest's nc closes once it has read everything
                pass
            t1, c1 = time.monotonic(), self.cpu()
        self.result[key] = {"bytes": len(payload), "seconds": t1 - t0,
                              "cpu": {k: c1[k] - c0.get(k, 0.0) for k in c1}}  # fmt: skip


def parse_ping(text: str) -> dict[str, float]:
    m = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+)", text)
    if not m:
        return {}
    return {"min": float(m.group(1)), "avg": float(m.group(2)), "max": float(m.group(3))}


def parse_syscall_us(text: str) -> float | None:
    """µs per system call from the ``syscalls`` section: busybox time's ``real 0m 1.23s`` over
    dd's two calls per byte; None when dd did not copy every byte (its "N+0 records out")."""
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", text)
    if not m or f"{SYSCALL_BYTES}+0 records out" not in text:
        return None
    return (int(m.group(1)) * 60 + float(m.group(2))) * 1e6 / (2 * SYSCALL_BYTES)


def section(console: str, name: str) -> str:
    m = re.search(rf"{MARK} {name}\n(.*?){MARK} end", console, re.S)
    return m.group(1) if m else ""


def workload(args: argparse.Namespace) -> str:
    text = WORKLOAD.format(mark=MARK, pings=args.pings, blocks=args.mib * 16, g2h=G2H_PORT,
                           h2g=H2G_PORT, syscall_bytes=SYSCALL_BYTES)  # fmt: skip
    if args.bulk is not None:
        text += WORKLOAD_BULK.format(mark=MARK, g2h=G2H_PORT, h2g=H2G_PORT,
                                     nbytes=args.bulk_mib << 20)  # fmt: skip
    return text


def bulk_nbytes(args: argparse.Namespace) -> int:
    return args.bulk_mib << 20 if args.bulk is not None else 0


def build_bulk(work: Path) -> Path | None:
    """bench/guest/tcpbulk.c built static (gcc and libc6-dev, which the kernel build needs
    anyway); None, with the reason printed, where it cannot be built."""
    gcc = shutil.which("gcc")
    out = work / "tcpbulk"
    if gcc is None:
        print("bench: no gcc: the 64 KiB-write transfers are not measured", file=sys.stderr)
        return None
    r = subprocess.run([gcc, "-static", "-O2", "-o", str(out), str(BULK_SRC)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        print(f"bench: tcpbulk.c does not build ({r.stderr.strip()[-300:]}): the 64 KiB-write "
              "transfers are not measured", file=sys.stderr)  # fmt: skip
        return None
    return out


def bulk_md5(nbytes: int) -> str:
    """What tcpbulk sends: its 64 KiB block (byte i = i % 251) repeated to ``nbytes``."""
    block = bytes(i % 251 for i in range(BULK_CHUNK))
    h = hashlib.md5()
    for off in range(0, nbytes, BULK_CHUNK):
        h.update(block[: min(BULK_CHUNK, nbytes - off)])
    return h.hexdigest()


# -- the three systems ------------------------------------------------------------------------------
def uml_floor() -> dict[str, Any]:
    """UML with no vhost-user device: boot → /init."""
    linux = uml_kernel.build(progress=True)
    work = Path(tempfile.mkdtemp(prefix="vmsix-bench-"))
    memdir: Path | None = None
    try:
        root = uml_kernel.make_rootfs(work / "root", f"#!/bin/sh\necho {MARK} init\npoweroff -f\n")
        cmd = [str(linux), "mem=128M", "root=/dev/root", "rootfstype=hostfs",
               f"rootflags={root}", "rw", "init=/init", "con0=null,fd:1", "con=null", "ssl=null"]  # fmt: skip
        memdir = uml_kernel.memory_dir(128, work)  # where boot.py puts UML's memory too
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=work, start_new_session=True,
                                env=dict(os.environ, TMPDIR=str(memdir)))  # fmt: skip
        assert proc.stdout is not None
        t_init = None
        for line in proc.stdout:
            if line.startswith(f"{MARK} init".encode()):
                t_init = time.monotonic() - t0
                break
        try:
            proc.wait(timeout=30)
        finally:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            proc.wait()
        return {"boot_s": t_init}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if memdir is not None:
            shutil.rmtree(memdir, ignore_errors=True)


def uml_device(args: argparse.Namespace) -> dict[str, Any]:
    features: list[int] = []
    files = {"/bin/tcpbulk": args.bulk} if args.bulk is not None else {}
    session = BootSession(BootOptions(net="tap", timeout=300, script=workload(args),
                                      tap_vnet_hdr=not args.no_vnet_hdr, files=files))  # fmt: skip
    main = threading.main_thread().ident
    assert main is not None
    dev_clock = time.pthread_getcpuclockid(main)

    def cpu() -> dict[str, float]:
        proc = session.proc
        # The negotiated features, while the driver is bound (the device is reset at the end).
        features.append(session.device.device.driver_features)
        return {"device": time.clock_gettime(dev_clock),
                "kernel": group_cpu(proc.pid) if proc is not None else 0.0}  # fmt: skip

    traffic = Traffic(TAP_GUEST_IP, args.mib << 20, cpu, time.monotonic() + 300,
                      bulk_nbytes=bulk_nbytes(args))  # fmt: skip
    traffic.start()
    res = session.run()
    traffic.join(timeout=30)
    if res.error:
        raise RuntimeError(f"UML: {res.error}")
    out: dict[str, Any] = {"boot_s": res.times.get("init"), "ping": parse_ping(res.sections.get("ping", "")),
                           **traffic.result}  # fmt: skip
    out["h2g_guest_bytes"] = _int(res.sections.get("h2g", ""))
    out["h2g_bulk_guest_bytes"] = _int(res.sections.get("h2gbulk", ""))
    out["syscall_us"] = parse_syscall_us(res.sections.get("syscalls", ""))
    out["loop"] = res.loop
    vnet = getattr(session.netdev, "vnet_hdr", False)
    out["device"] = {"features": f"{max(features, default=0):#x}",
                     "offered": f"{session.device.device.host_features:#x}", "vnet_hdr": vnet,
                     **session.device.device.counters()}  # fmt: skip
    return out


def _int(text: str) -> int | None:
    m = re.search(r"(\d+)", text)
    return int(m.group(1)) if m else None


def qemu_initrd(work: Path, args: argparse.Namespace) -> tuple[Path, debian.DebianKernel]:
    kern = _debian_kernel()
    init = QEMU_INIT.format(mark=MARK, guest_ip=QEMU_GUEST_IP, host_ip=QEMU_HOST_IP,
                            script=workload(args))  # fmt: skip
    initrd = debian.build_initramfs(kern, init, work / "initramfs.cpio")
    # A second cpio archive appended (the kernel unpacks them in turn): the applets the capture's
    # initramfs does not link.
    extra = [(f"bin/{a}", 0o120777, b"busybox") for a in ("nc", "wc")]
    if args.bulk is not None:
        extra.append(("bin/tcpbulk", 0o100755, args.bulk.read_bytes()))
    with open(initrd, "ab") as f:
        f.write(debian._cpio_newc(extra))
    return initrd, kern


def _debian_kernel() -> debian.DebianKernel:
    """Debian's kernel from the cache; when VIRTIO_MSIX_CACHE points elsewhere and lacks it, the
    default cache's copy is used rather than downloading a second one."""
    default = Path(os.path.expanduser("~/.cache/virtio-msix"))
    if not (debian.cache_dir() / "debian-kernel").is_dir() and (default / "debian-kernel").is_dir():
        saved = os.environ.get("VIRTIO_MSIX_CACHE")
        os.environ["VIRTIO_MSIX_CACHE"] = str(default)
        try:
            return debian.fetch_kernel()
        finally:
            if saved is None:
                del os.environ["VIRTIO_MSIX_CACHE"]
            else:
                os.environ["VIRTIO_MSIX_CACHE"] = saved
    return debian.fetch_kernel()


def qemu_run(args: argparse.Namespace, initrd: Path, kern: debian.DebianKernel) -> dict[str, Any]:
    qemu = debian.require("qemu-system-x86_64", "qemu-system-x86")
    cmd = [qemu, "-M", "q35", "-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults",
           "-display", "none", "-no-reboot", "-name", "bench,debug-threads=on", "-kernel", str(kern.vmlinuz), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 quiet", "-serial", "stdio",
           "-netdev", f"tap,id=n0,ifname={QEMU_TAP},script=no,downscript=no",
           "-device", "virtio-net-pci,netdev=n0"]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def cpu() -> dict[str, float]:
        threads = thread_cpu(proc.pid)
        vcpu = sum(v for k, v in threads.items() if "CPU" in k)
        return {"device": sum(threads.values()) - vcpu, "kernel": vcpu}

    traffic = Traffic(QEMU_GUEST_IP, args.mib << 20, cpu, time.monotonic() + 600,
                      bulk_nbytes=bulk_nbytes(args))  # fmt: skip
    traffic.start()
    lines: list[str] = []
    t_init = None
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if t_init is None and line.startswith(f"{MARK} init"):
                t_init = time.monotonic() - t0
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    traffic.join(timeout=30)
    console = "\n".join(lines) + "\n"
    if f"{MARK} done" not in console:
        raise RuntimeError("QEMU: the guest did not finish:\n" + "\n".join(lines[-20:]))
    return {"boot_s": t_init, "ping": parse_ping(section(console, "ping")), **traffic.result,
            "h2g_guest_bytes": _int(section(console, "h2g")),
            "h2g_bulk_guest_bytes": _int(section(console, "h2gbulk")),
            "syscall_us": parse_syscall_us(section(console, "syscalls"))}  # fmt: skip


# -- figures --------------------------------------------------------------------------------------
def metrics(r: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {"boot_ms": r["boot_s"] * 1000 if r.get("boot_s") else None}
    lat = r.get("loop", {}).get("kick_to_call_us[ping]")
    if lat:
        out["ping_device_us"] = lat["median"]
    write = r.get("loop", {}).get("call_write_us[ping]")
    if write:
        out["ping_call_write_us"] = write["median"]
    for k in ("min", "avg", "max"):
        out[f"ping_{k}_ms"] = r.get("ping", {}).get(k)
    out["syscall_us"] = r.get("syscall_us")
    for d in ("g2h", "h2g", "g2h_bulk", "h2g_bulk"):
        t = r.get(d)
        if not t or not t["seconds"]:
            continue
        mb = t["bytes"] / 1e6
        out[f"{d}_MBps"] = mb / t["seconds"]
        out[f"{d}_device_ms_per_MB"] = t["cpu"]["device"] * 1000 / mb
        out[f"{d}_kernel_ms_per_MB"] = t["cpu"]["kernel"] * 1000 / mb
        # The guest kernel's share of the transfer's wall time: near 100 % it is the guest, not
        # the NIC, that sets the pace (UML runs one CPU: its process group's CPU is serial).
        out[f"{d}_kernel_busy_pct"] = t["cpu"]["kernel"] * 100 / t["seconds"]
    return out


ROWS = (
    ("boot_ms", "boot → /init (ms)"),
    ("ping_min_ms", "ping min (ms)"),
    ("ping_avg_ms", "ping avg (ms)"),
    ("ping_max_ms", "ping max (ms)"),
    ("ping_device_us", "device time per ping round trip (kick drained → irq call), median (µs)"),
    ("ping_call_write_us", "of which the irq call's eventfd write (the host waking UML), median (µs)"),
    ("g2h_MBps", "TCP guest → host (MB/s)"),
    ("h2g_MBps", "TCP host → guest (MB/s)"),
    ("g2h_bulk_MBps", "TCP guest → host, 64 KiB writes (MB/s)"),
    ("h2g_bulk_MBps", "TCP host → guest, 64 KiB reads (MB/s)"),
    ("g2h_kernel_busy_pct", "guest kernel busy during g→h (% of its wall time)"),
    ("h2g_kernel_busy_pct", "guest kernel busy during h→g (% of its wall time)"),
    ("g2h_bulk_kernel_busy_pct", "guest kernel busy during g→h, 64 KiB writes (%)"),
    ("h2g_bulk_kernel_busy_pct", "guest kernel busy during h→g, 64 KiB reads (%)"),
    ("syscall_us", "guest system call, 1-byte read or write (µs)"),
    ("g2h_device_ms_per_MB", "CPU per MB g→h: device/VMM (ms)"),
    ("g2h_kernel_ms_per_MB", "CPU per MB g→h: guest kernel (ms)"),
    ("h2g_device_ms_per_MB", "CPU per MB h→g: device/VMM (ms)"),
    ("h2g_kernel_ms_per_MB", "CPU per MB h→g: guest kernel (ms)"),
    ("g2h_bulk_device_ms_per_MB", "CPU per MB g→h, 64 KiB writes: device/VMM (ms)"),
    ("g2h_bulk_kernel_ms_per_MB", "CPU per MB g→h, 64 KiB writes: guest kernel (ms)"),
    ("h2g_bulk_device_ms_per_MB", "CPU per MB h→g, 64 KiB reads: device/VMM (ms)"),
    ("h2g_bulk_kernel_ms_per_MB", "CPU per MB h→g, 64 KiB reads: guest kernel (ms)"),
)


def _fmt(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _stat(vals: list[float | None]) -> tuple[float | None, str]:
    vs = [v for v in vals if v is not None]
    if not vs:
        return None, "–"
    return statistics.median(vs), f"{_fmt(statistics.median(vs))} ({_fmt(min(vs))}–{_fmt(max(vs))})"


CEILINGS = (("g2h", "g→h"), ("h2g", "h→g"), ("g2h_bulk", "g→h 64 KiB"), ("h2g_bulk", "h→g 64 KiB"))


def ceilings(m: list[dict[str, dict[str, float | None]]]) -> list[str]:
    """What UML could reach if our device took no time: its kernel's CPU per MB alone (UML runs
    one CPU, so that CPU is serial with the transfer), against QEMU's median throughput."""
    parts = []
    for d, name in CEILINGS:
        k = _stat([x["uml"].get(f"{d}_kernel_ms_per_MB") for x in m])[0]
        q = _stat([x["qemu"].get(f"{d}_MBps") for x in m])[0]
        if k:
            cap = 1000 / k
            parts.append(f"{name} {_fmt(cap)} MB/s" + (f" = {cap / q:.1f}× QEMU" if q else ""))
    if not parts:
        return []
    return ["", "Guest-bound ceiling (UML's kernel CPU per MB alone, as if our device took no "
            "time): " + "; ".join(parts) + "."]


def report(rounds: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = [{k: metrics(r[k]) if r.get(k) else {} for k in ("floor", "uml", "qemu")} for r in rounds]
    lines = [
        f"# virtio-msix vs QEMU 7.2 TCG, side by side ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"{platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {len(rounds)} interleaved rounds, {args.mib} MiB each way "
        f"with busybox nc (1 KiB copies) and {args.bulk_mib} MiB with 64 KiB writes, "
        f"ping -c {args.pings} -i 0.2; private network namespace. Median (min–max); ratio = UML "
        "median / QEMU median, per round in brackets.",
        "",
        "| metric | UML, no device | UML + our device (TAP) | QEMU TCG virtio-net (TAP) | ratio | per round |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, title in ROWS:
        floor = _stat([x["floor"].get(key) for x in m])[1] if key == "boot_ms" else ""
        u_med, u = _stat([x["uml"].get(key) for x in m])
        q_med, q = _stat([x["qemu"].get(key) for x in m])
        ratio = f"{u_med / q_med:.3f}" if u_med is not None and q_med else "–"
        per = []
        for x in m:
            a, b = x["uml"].get(key), x["qemu"].get(key)
            per.append(f"{a / b:.2f}" if a is not None and b else "–")
        lines.append(f"| {title} | {floor} | {u} | {q} | {ratio} | {' '.join(per)} |")
    fl = _stat([x["floor"].get("boot_ms") for x in m])[0]
    ub = _stat([x["uml"].get("boot_ms") for x in m])[0]
    if fl and ub:
        lines += ["", f"Boot with the device / boot with no device: {ub / fl:.3f}."]
    lines += ceilings(m)
    n, nb = args.mib << 20, bulk_nbytes(args)
    want = {"g2h": hashlib.md5(bytes(n)).hexdigest(), "g2h_bulk": bulk_md5(nb)}

    def complete(r: dict[str, Any]) -> bool:
        """Every transfer of the round arrived whole: byte counts both ways, and what the
        host received hashes to what the guest sent (zeros from dd; tcpbulk's pattern)."""
        keys = ["g2h"] + (["g2h_bulk"] if args.bulk is not None else [])
        ok = all(r.get(k, {}).get("md5") == want[k] for k in keys)
        ok = ok and r.get("h2g_guest_bytes") == n
        return ok and (args.bulk is None or r.get("h2g_bulk_guest_bytes") == nb)

    intact = [complete(r["uml"]) for r in rounds if r.get("uml")]
    q_intact = [complete(r["qemu"]) for r in rounds if r.get("qemu")]
    dev = rounds[-1].get("uml", {}).get("device", {})
    lines += [
        "",
        f"Transfers complete (byte counts both ways, host-side MD5 of what the guest sent) in "
        f"{sum(intact)}/{len(intact)} UML rounds and {sum(q_intact)}/{len(q_intact)} QEMU rounds; "
        f"negotiated features {dev.get('features')}, vnet header {dev.get('vnet_hdr')}.",
        "",
        "Device/VMM CPU: for UML our device process (its event-loop thread); for QEMU every "
        "QEMU thread but the vCPU (main loop, virtio-net, TAP). Guest kernel: the UML process "
        "group / QEMU's vCPU thread (TCG).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=16, help="MiB sent each way (default 16)")
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--no-qemu", action="store_true", help="UML only (for profiling the device)")
    p.add_argument("--no-vnet-hdr", action="store_true",
                   help="our device's TAP without vnet header (no offloads, as vnet_hdr=off)")  # fmt: skip
    p.add_argument("--bulk-mib", type=int, default=64,
                   help="MiB each way with 64 KiB writes (default 64: at UML's rate 16 MiB is "
                        "a few clock ticks of kernel CPU)")  # fmt: skip
    p.add_argument("--no-bulk", action="store_true",
                   help="only busybox nc's 1 KiB copies, not bench/guest/tcpbulk.c's 64 KiB")  # fmt: skip
    p.add_argument("--out", default=str(Path(__file__).with_name("results.md")))
    args = p.parse_args()
    if args.rounds < 1 or args.mib < 1:
        p.error("--rounds and --mib must be at least 1")
    if os.environ.get(INNER_ENV) != "1":
        if os.geteuid() != 0:
            p.error("needs root (a private network namespace and TAPs)")
        unshare = debian.require("unshare", "util-linux")
        env = dict(os.environ, **{INNER_ENV: "1"})
        return subprocess.call([unshare, "--net", sys.executable, *sys.argv], env=env)
    ip = debian.require("ip", "iproute2")
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    uml_kernel.build(progress=True)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vmsix-bench-") as tmp:
        args.bulk = None if args.no_bulk else build_bulk(Path(tmp))
        initrd = kern = None
        if not args.no_qemu:
            initrd, kern = qemu_initrd(Path(tmp), args)
            for a in (["tuntap", "add", QEMU_TAP, "mode", "tap"],
                      ["addr", "add", f"{QEMU_HOST_IP}/24", "dev", QEMU_TAP],
                      ["link", "set", QEMU_TAP, "up"]):  # fmt: skip
                subprocess.run([ip, *a], check=True)
        for n in range(args.rounds):
            r: dict[str, Any] = {"floor": uml_floor(), "uml": uml_device(args)}
            print(f"round {n + 1}: UML {json.dumps(metrics(r['uml']))}", flush=True)
            if initrd is not None and kern is not None:
                r["qemu"] = qemu_run(args, initrd, kern)
                print(f"round {n + 1}: QEMU {json.dumps(metrics(r['qemu']))}", flush=True)
            rounds.append(r)
    text = report(rounds, args)
    out = Path(args.out)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rounds": rounds,
         "metrics": [{k: metrics(r[k]) for k in r} for r in rounds]}, indent=1) + "\n")  # fmt: skip
    print(text)
    print(f"written to {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
