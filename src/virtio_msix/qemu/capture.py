"""Record a real Linux guest probing QEMU 7.2's virtio-net-pci, in our trace format.

Debian's 6.1 kernel (or, with ``kernel="6.12"``, bookworm-backports' 6.12, fetched by
qemu/backports.py) boots under TCG with its virtio modules in a busybox initramfs; QEMU's own
trace events (``memory_region_ops_read/write``, which name the region and give offset, size and
value) are converted: config cycles (MMCONFIG on q35, ports 0xCF8/0xCFC on both machines) of
our slot become ``cfg`` records; the virtio-pci regions become ``common``/``isr``/``device``/
``notify``, the MSI-X BAR ``msix-table``/``msix-pba``, the legacy I/O BAR ``legacy``.

Each record carries ``phase``: ``enumeration`` (the kernel's PCI scan at boot), ``probe`` (from
the virtio_pci driver's first access until the DRIVER_OK write, inclusive), ``run``, and with
``teardown`` set ``teardown`` (``rmmod virtio_net`` then ``rmmod virtio_pci``: the removal path).
The boundaries are markers the init script makes: a one-byte sysfs read of config offset 0x3F,
which no driver performs, before virtio_pci loads and again before the first rmmod; the markers
themselves are dropped.

The device is QEMU's own ``-device`` string (``device_string``: the capture adds netdev=n0,
addr=0x3 and ioeventfd=off and refuses other values for them). ``--netdev tap`` runs QEMU inside
a private network namespace (``unshare --net``) holding a TAP (multi-queue for queues > 1) with
the host side at 10.0.2.2, QEMU user networking's gateway address, so the guest script is the
same for both. The trace's first record is the configuration: ``{"space": "meta", "device",
"netdev", "machine", "smp", "kernel", "kernel_version", "teardown", "qemu"}``; readers skip it
(its space is not a register space) or take the configuration from it (``trace.trace_meta``).

6.12: Debian builds virtio, virtio_ring and virtio_pci into the kernel (only failover,
net_failover and virtio_net are modules, ``.ko.xz``), so virtio_pci binds the device at boot,
before any driver for the virtio device exists. The init script unbinds it through sysfs, loads
the modules, makes the marker and binds it again, so that the probe phase is again
virtio_pci_probe straight through to virtnet_probe (as 6.1's load order gives); at the end the
device is unbound through sysfs (6.12 does not reset it at poweroff), recorded in ``run`` — or,
with ``teardown``, after ``rmmod virtio_net`` in the ``teardown`` phase (virtio_pci, built in,
cannot be unloaded: the unbind is its removal).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host.phases import PhaseTagger
from ..trace.recorder import write_jsonl
from ..virtio.devspec import PROPERTY, SpecError, split_opts
from ..virtio.devspec import parse_netdev as parse_netdev_spec
from .debian import (
    MODULES,
    DebianKernel,
    PrerequisiteMissing,
    build_initramfs,
    fetch_kernel,
    require,
)

KERNELS = ("6.1", "6.12")
# virtio_net's dependencies first (modinfo -F depends on Debian's 6.12 build).
MODULES_612 = (
    "net/core/failover.ko.xz",
    "drivers/net/net_failover.ko.xz",
    "drivers/net/virtio_net.ko.xz",
)

SLOT = 3  # -device ...,addr=0x3: the same devfn on q35 and pc
MARKER_OFFSET = 0x3F
GUEST_IP = "10.0.2.15"
HOST_IP = "10.0.2.2"  # QEMU user networking's gateway answers ping

# The guest's init script, in parts: {load} brings the driver up (6.1: insmod in load order, the
# marker just before virtio_pci; 6.12: see the module docstring), {teardown} removes it (empty
# without --teardown), {final} is what 6.12 needs before poweroff.
INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dev=0000:00:{slot:02x}.0
marker() {{
  dd if=/sys/bus/pci/devices/$dev/config of=/dev/null bs=1 skip={marker} count=1 || echo VMSIX-MARKER-FAILED
}}
{load}
echo VMSIX-INTERRUPTS-BEFORE
cat /proc/interrupts
ip link set eth0 up
ip addr add {guest_ip}/24 dev eth0
ping -c 3 -W 3 {host_ip} && echo VMSIX-PING-OK
echo VMSIX-INTERRUPTS-AFTER
cat /proc/interrupts
echo VMSIX-DMESG
dmesg | grep -i -e virtio -e failover
{teardown}{final}echo VMSIX-DONE
poweroff -f
"""

LOAD_61 = """for m in /modules/*.ko; do
  case $m in
    *-virtio_pci.ko) marker ;;
  esac
  insmod $m || echo "VMSIX insmod $m failed"
done"""

LOAD_612 = """drv=/sys/bus/pci/drivers/virtio-pci
echo $dev > $drv/unbind || echo VMSIX-UNBIND-FAILED
for m in /modules/*.ko; do
  insmod $m || echo "VMSIX insmod $m failed"
done
marker
echo $dev > $drv/bind || echo VMSIX-BIND-FAILED"""

# --teardown: the second marker starts the ``teardown`` phase; virtio_net's removal
# (virtnet_remove), then virtio_pci's (virtio_pci_remove, pci_disable_device).
TEARDOWN_61 = """echo VMSIX-TEARDOWN
marker
rmmod virtio_net && rmmod virtio_pci && echo VMSIX-TEARDOWN-OK
dmesg | grep -i -e virtio | tail -n 5
"""
# 6.12 builds virtio_pci in: it cannot be unloaded, so its removal is the sysfs unbind
# (virtio_pci_remove through the driver core), after virtio_net is unloaded.
TEARDOWN_612 = """echo VMSIX-TEARDOWN
marker
rmmod virtio_net && echo $dev > $drv/unbind && echo VMSIX-TEARDOWN-OK
"""
# 6.12 does not reset the device at poweroff: unbind it so the run ends as 6.1's does.
FINAL_612 = """echo $dev > $drv/unbind || echo VMSIX-UNBIND-FAILED
"""


def init_script(kernel_version: str, teardown: bool) -> str:
    """The guest's /init for a capture."""
    if kernel_version == "6.12":
        load, down, final = LOAD_612, TEARDOWN_612 if teardown else "", "" if teardown else FINAL_612
    else:
        load, down, final = LOAD_61, TEARDOWN_61 if teardown else "", ""
    return INIT.format(slot=SLOT, marker=MARKER_OFFSET, guest_ip=GUEST_IP, host_ip=HOST_IP,
                       load=load, teardown=down, final=final)  # fmt: skip


_OPS = re.compile(
    r"memory_region_ops_(read|write) cpu -?\d+ mr 0x[0-9a-f]+ addr 0x([0-9a-f]+) "
    r"value 0x([0-9a-f]+) size (\d+) name '([^']*)'"
)
# virtio_queue_notify names the queue behind a vq pointer; virtio_notify (traced only once
# QEMU decided the driver wants the notification) then says which queue the device signalled.
_QUEUE_NOTIFY = re.compile(r"virtio_queue_notify vdev 0x[0-9a-f]+ n (\d+) vq (0x[0-9a-f]+)")
_USED_NOTIFY = re.compile(r"virtio_notify vdev 0x[0-9a-f]+ vq (0x[0-9a-f]+)")

REGION_SPACES = (
    ("virtio-pci-common", "common"),
    ("virtio-pci-isr", "isr"),
    ("virtio-pci-device", "device"),
    ("virtio-pci-notify", "notify"),
    ("msix-table", "msix-table"),
)


def convert(lines: Iterable[str], slot: int = SLOT) -> Iterator[dict[str, Any]]:
    """QEMU trace-log lines → access records of our device, in order, with phases."""
    devfn = slot << 3
    cf8 = 0
    # The probe starts at the guest's marker read (not at the first common-config access, so
    # that the driver's own config-space reads before it count as its probe).
    tagger = PhaseTagger()
    markers = 0
    vq_index: dict[str, int] = {}
    for line in lines:
        m = _OPS.search(line)
        if m is None:
            q = _QUEUE_NOTIFY.search(line)
            if q is not None:
                vq_index[q.group(2)] = int(q.group(1))
                continue
            u = _USED_NOTIFY.search(line)
            if u is not None and u.group(1) in vq_index:
                yield {
                    "space": "event",
                    "kind": "queue-notify",
                    "queue": vq_index[u.group(1)],
                    "phase": tagger.phase,
                }
            continue
        op = "r" if m.group(1) == "read" else "w"
        addr, value, size, name = (
            int(m.group(2), 16),
            int(m.group(3), 16),
            int(m.group(4)),
            m.group(5),
        )
        # The trace gives absolute guest-physical (or port) addresses. Every window below is
        # aligned to at least its own size, so the offset inside it is the address's low bits:
        # MMCONFIG at 0xB0000000 (256 MiB), virtio structures each in a 4 KiB page of a 16 KiB
        # BAR, the MSI-X table at the start of a 4 KiB BAR with the PBA at +0x800, the legacy
        # I/O BAR 32 bytes.
        rec: dict[str, Any] | None = None
        if name == "pcie-mmcfg-mmio":
            rel = addr & 0x0FFFFFFF
            if rel >> 20 == 0 and (rel >> 12) & 0xFF == devfn:
                rec = {
                    "space": "cfg",
                    "op": op,
                    "offset": rel & 0xFFF,
                    "size": size,
                    "value": value,
                }
        elif name == "pci-conf-idx":
            if op == "w" and size == 4:
                cf8 = value
        elif name == "pci-conf-data":
            if cf8 >> 31 and (cf8 >> 16) & 0xFF == 0 and (cf8 >> 8) & 0xFF == devfn:
                offset = (cf8 & 0xFC) + (addr & 3)
                rec = {"space": "cfg", "op": op, "offset": offset, "size": size, "value": value}
        elif name == "virtio-pci":
            rec = {"space": "legacy", "op": op, "offset": addr & 0x1F, "size": size, "value": value}
        elif name == "msix-pba":
            rec = {
                "space": "msix-pba",
                "op": op,
                "offset": addr & 0x7FF,
                "size": size,
                "value": value,
            }
        else:
            for prefix, space in REGION_SPACES:
                if name.startswith(prefix):
                    rec = {
                        "space": space,
                        "op": op,
                        "offset": addr & 0xFFF,
                        "size": size,
                        "value": value,
                    }
                    break
        if rec is None:
            continue
        if rec["space"] == "cfg" and op == "r" and size == 1 and rec["offset"] == MARKER_OFFSET:
            # The first marker starts the probe, the second (--teardown) the removal.
            markers += 1
            if markers <= 2:
                tagger.phase = "probe" if markers == 1 else "teardown"
                continue
        tagger(rec)
        yield rec


# -- configuration ---------------------------------------------------------------------------
DRIVER = "virtio-net-pci"
NETDEV_ID = "n0"
TAP_NAME = "vmsixq0"
# Properties the capture fixes, and why: the converter finds our device at slot 3 and the
# netdev by its id; ioeventfd=off, or QEMU serves notify writes from an eventfd before any
# trace point.
FIXED_PROPS = {"netdev": NETDEV_ID, "addr": f"{SLOT:#x}", "ioeventfd": "off"}
FIXED_WHY = {
    "netdev": "the device's peer is the netdev it creates from --netdev",
    "addr": "the converter finds the device at slot 3",
    "ioeventfd": "notify writes must reach QEMU's trace",
}
_ON, _OFF = ("on", "yes", "true", "y"), ("off", "no", "false", "n")


def _props(text: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    """QEMU's ``driver,key=value,...`` → (driver, [(key, value)]), read by devspec's
    ``split_opts`` (QEMU's rules: ``,,`` is a literal comma, nothing is stripped)."""
    opts = split_opts(text)
    head = opts[0][0] if opts and opts[0][1] is None else ""
    props = []
    for key, value in opts[1:] if head else opts:
        if value is None:
            raise ValueError(f"{what} {text!r}: property {key!r} needs a value (key=value)")
        props.append((key, value))
    return head, props


def _same_addr(value: str) -> bool:
    # QEMU's addr is slot[.function], hex with or without 0x.
    slot, _, fn = value.lower().removeprefix("0x").partition(".")
    try:
        return int(slot, 16) == SLOT and int(fn or "0", 16) == 0
    except ValueError:
        return False


def device_string(
    device: str | None = None, vectors: int | None = None, disable_legacy: bool = False
) -> str:
    """The full ``-device`` string given to QEMU: ``virtio-net-pci,netdev=n0,addr=0x3,
    ioeventfd=off`` then the user's properties (``device``, QEMU's own syntax, with or without
    the leading driver name), then the shorthands. A fixed property set to anything else, or a
    shorthand contradicting the string, is refused."""
    text = device or DRIVER
    if not text.split(",", 1)[0].strip() or "=" in text.split(",", 1)[0]:
        text = f"{DRIVER},{text}"  # properties only
    driver, props = _props(text, "--device")
    if driver != DRIVER:
        raise ValueError(f"--device {text!r}: the capture records {DRIVER}, not {driver!r}")
    seen: dict[str, str] = {}
    user: list[str] = []
    for key, value in props:
        if key in seen:
            if seen[key] != value:
                raise ValueError(f"--device: {key} given twice ({seen[key]!r}, {value!r})")
            continue
        seen[key] = value
        if key not in PROPERTY:  # QEMU would refuse it only after booting: say it now, its way
            raise ValueError(f"Property '{DRIVER}.{key}' not found")
        fixed = FIXED_PROPS.get(key)
        if fixed is None:
            user.append(f"{key}={value.replace(',', ',,')}")  # QEMU's escape, as it was given
            continue
        if key == "addr":
            same = _same_addr(value)
        elif key == "ioeventfd":
            same = value.lower() in _OFF
        else:
            same = value == fixed
        if not same:
            raise ValueError(f"--device: {key}={value} is not possible: capture-qemu sets "
                             f"{key}={fixed} itself ({FIXED_WHY[key]})")  # fmt: skip
    for key, value, given in (("vectors", str(vectors), vectors is not None),
                              ("disable-legacy", "on", disable_legacy)):  # fmt: skip
        if not given:
            continue
        if key in seen:
            agree = (seen[key].lower() in _ON) if key == "disable-legacy" else (
                _int_or_none(seen[key]) == vectors)
            if not agree:
                raise ValueError(f"--device has {key}={seen[key]}, the shorthand says {value}")
            continue
        user.append(f"{key}={value}")
    fixed = ",".join(f"{k}={v}" for k, v in FIXED_PROPS.items())
    return ",".join([DRIVER, fixed, *user])


def _int_or_none(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


@dataclass(frozen=True)
class Netdev:
    """``--netdev user`` or ``--netdev tap[,queues=N,vnet_hdr=on|off]``."""

    kind: str = "user"
    queues: int = 1
    vnet_hdr: bool = True  # QEMU's tap default where the host's tun supports it (Linux does)

    def __str__(self) -> str:
        if self.kind == "user":
            return "user"
        return f"tap,queues={self.queues},vnet_hdr={'on' if self.vnet_hdr else 'off'}"

    def qemu_arg(self) -> str:
        if self.kind == "user":
            return f"user,id={NETDEV_ID}"
        return (f"tap,id={NETDEV_ID},ifname={TAP_NAME},script=no,downscript=no,"
                f"queues={self.queues},vnet_hdr={'on' if self.vnet_hdr else 'off'}")  # fmt: skip


# QEMU takes queues up to its own MAX_TAP_QUEUES (1024, devspec checks that); the capture opens
# the TAP's queues itself, and the host's tun opens at most 256 (Linux MAX_TAP_QUEUES, tun.c).
MAX_TAP_QUEUES = 256
# Netdev properties the capture sets itself (ifname, script and downscript: its own TAP).
NETDEV_OWN = ("id", "ifname", "script", "downscript")


def parse_netdev(text: str) -> Netdev:
    """``--netdev user`` or ``tap[,queues=N][,vnet_hdr=on|off]``, read by devspec's parser (the
    one ``sim`` and ``boot`` use), then held to what a capture can run: QEMU's own netdevs (not
    our responder), the capture's own id and TAP, and the host tun's queue limit."""
    try:
        spec = parse_netdev_spec(text)
    except SpecError as e:
        raise ValueError(f"--netdev {text!r}: {e}") from None
    if spec.kind not in ("user", "tap"):
        raise ValueError(f"--netdev {text!r}: user or tap (the capture runs QEMU's netdevs)")
    for key, _ in split_opts(text)[1:]:
        if key in NETDEV_OWN:
            raise ValueError(f"--netdev {text!r}: {key} is set by capture-qemu itself")
    if spec.kind == "user":
        return Netdev()
    if spec.queues > MAX_TAP_QUEUES:
        raise ValueError(f"--netdev tap: queues={spec.queues}: the host's tun opens at most "
                         f"{MAX_TAP_QUEUES}")  # fmt: skip
    return Netdev("tap", spec.queues, spec.vnet_hdr)


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("QEMU emulator version ").strip()


def qemu_command(
    kernel: DebianKernel,
    initrd: Path,
    workdir: Path,
    machine: str = "q35",
    vectors: int | None = None,
    disable_legacy: bool = False,
    smp: int = 1,
    device: str | None = None,
    netdev: Netdev | None = None,
) -> list[str]:
    qemu = require("qemu-system-x86_64", "qemu-system-x86")
    netdev = netdev or Netdev()
    events = workdir / "events"
    events.write_text(
        "memory_region_ops_read\nmemory_region_ops_write\nvirtio_queue_notify\nvirtio_notify\n"
    )
    return [
        qemu,
        "-M", machine,
        "-accel", "tcg",
        "-m", "256",
        "-smp", str(smp),
        "-nodefaults",
        "-display", "none",
        "-no-reboot",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
        "-serial", f"file:{workdir / 'console.txt'}",
        "-netdev", netdev.qemu_arg(),
        "-device", device_string(device, vectors, disable_legacy),
        "-trace", f"events={events}",
        "-D", str(workdir / "trace.log"),
    ]  # fmt: skip


# Inside the private namespace: the TAP (multi-queue when QEMU opens several queues: the flag
# must match at every open), the host's address on it (QEMU user networking's gateway address,
# so the guest script is the same), then QEMU in its place.
NETNS_SETUP = """set -e
ip link set lo up
ip tuntap add dev {tap} mode tap{mq}
ip addr add {host_ip}/24 dev {tap}
ip link set {tap} up
exec "$@"
"""


def tap_missing() -> str | None:
    """Why a TAP in a private network namespace cannot be made here, or None."""
    import os
    import shutil

    if os.geteuid() != 0:
        return "--netdev tap needs root (a private network namespace and a TAP)"
    for prog, pkg in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(prog) is None:
            return f"--netdev tap needs {prog} ({pkg})"
    if not os.path.exists("/dev/net/tun"):
        return "--netdev tap needs /dev/net/tun"
    return None


def in_netns(cmd: list[str], netdev: Netdev) -> list[str]:
    """``cmd`` run inside a new network namespace holding the TAP (the host's are untouched)."""
    why = tap_missing()
    if why:
        raise PrerequisiteMissing(why)
    setup = NETNS_SETUP.format(tap=TAP_NAME, host_ip=HOST_IP,
                               mq=" multi_queue" if netdev.queues > 1 else "")  # fmt: skip
    return [require("unshare", "util-linux"), "--net", "sh", "-c", setup, "sh", *cmd]


def capture(
    out: str | Path,
    machine: str = "q35",
    vectors: int | None = None,
    disable_legacy: bool = False,
    timeout: float = 300.0,
    progress: bool = True,
    kernel_version: str = "6.1",
    smp: int = 1,
    device: str | None = None,
    netdev: str | Netdev = "user",
    teardown: bool = False,
) -> dict[str, Any]:
    """Boot, record, convert; writes OUT (JSON lines, the configuration first as a ``meta``
    record) and OUT's console next to it. Returns the metadata with the outcome."""
    out = Path(out)
    if kernel_version not in KERNELS:
        raise ValueError(f"kernel {kernel_version!r}: choose one of {', '.join(KERNELS)}")
    if machine not in ("q35", "pc"):
        raise ValueError(f"machine {machine!r}: q35 or pc")
    nd = netdev if isinstance(netdev, Netdev) else parse_netdev(netdev)
    device_arg = device_string(device, vectors, disable_legacy)  # refuses before booting
    if nd.kind == "tap" and (why := tap_missing()):
        raise PrerequisiteMissing(why)
    if kernel_version == "6.12":
        from .backports import fetch_image

        kernel, modules = fetch_image(), MODULES_612
    else:
        kernel, modules = fetch_kernel(), MODULES
    with tempfile.TemporaryDirectory(prefix="vmsix-capture-") as tmp:
        work = Path(tmp)
        init = init_script(kernel_version, teardown)
        initrd = build_initramfs(kernel, init, work / "initramfs.cpio", modules)
        cmd = qemu_command(kernel, initrd, work, machine, smp=smp, device=device_arg, netdev=nd)
        qemu = qemu_version(cmd[0])
        if nd.kind == "tap":
            cmd = in_netns(cmd, nd)
        if progress:
            # Progress to stderr: stdout carries the metadata (JSON) alone.
            print(f"capture-qemu: booting {kernel.version} on QEMU {machine} (TCG), "
                  f"-device {device_arg} -netdev {nd.qemu_arg()}...",
                  file=sys.stderr, flush=True)  # fmt: skip
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"QEMU did not power off within {timeout:.0f} s") from None
        elapsed = time.monotonic() - t0
        console = (work / "console.txt").read_text(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(
                f"qemu-system-x86_64 exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
            )
        with open(work / "trace.log", errors="replace") as f:
            records = list(convert(f))
    config = {
        "space": "meta",
        "device": device_arg,
        "netdev": str(nd),
        "machine": machine,
        "smp": smp,
        "kernel": kernel.package,
        "kernel_version": kernel_version,
        "teardown": teardown,
        "qemu": qemu,
    }
    write_jsonl([config, *records], out)
    out.with_suffix(".console.txt").write_text(console)
    probe_error = re.search(r"probe of \S+ failed with error (-?\d+)", console)
    meta = {
        **{k: v for k, v in config.items() if k != "space"},
        "vectors": vectors,
        "disable_legacy": disable_legacy,
        "records": len(records),
        "seconds": round(elapsed, 1),
        "ping_ok": "VMSIX-PING-OK" in console,
        "probe_error": int(probe_error.group(1)) if probe_error else None,
        "modules": list(modules),
    }
    if teardown:
        meta["teardown_ok"] = "VMSIX-TEARDOWN-OK" in console
    return meta
