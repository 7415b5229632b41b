"""Record a real Linux guest probing QEMU 7.2's virtio-net-pci, in our trace format.

Debian's 6.1 kernel (or, with ``kernel="6.12"``, bookworm-backports' 6.12, fetched by
qemu/backports.py) boots under TCG with its virtio modules in a busybox initramfs; QEMU's own
trace events (``memory_region_ops_read/write``, which name the region and give offset, size and
value) are converted: config cycles (MMCONFIG on q35, ports 0xCF8/0xCFC on both machines) of
our slot become ``cfg`` records; the virtio-pci regions become ``common``/``isr``/``device``/
``notify``, the MSI-X BAR ``msix-table``/``msix-pba``, the legacy I/O BAR ``legacy``.

Each record carries ``phase``: ``enumeration`` (the kernel's PCI scan at boot), ``probe`` (from
the virtio_pci driver's first access until the DRIVER_OK write, inclusive) or ``run``. The
boundary is a marker the init script makes: a one-byte sysfs read of config offset 0x3F, which
no driver performs; the marker itself is dropped.

6.12: Debian builds virtio, virtio_ring and virtio_pci into the kernel (only failover,
net_failover and virtio_net are modules, ``.ko.xz``), so virtio_pci binds the device at boot,
before any driver for the virtio device exists. The init script unbinds it through sysfs, loads
the modules, makes the marker and binds it again, so that the probe phase is again
virtio_pci_probe straight through to virtnet_probe (as 6.1's load order gives); at the end the
device is unbound through sysfs (6.12 does not reset it at poweroff), recorded in ``run``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..host.phases import PhaseTagger
from ..trace.recorder import write_jsonl
from .debian import MODULES, DebianKernel, build_initramfs, fetch_kernel, require

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

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in /modules/*.ko; do
  case $m in
    *-virtio_pci.ko)
      dd if=/sys/bus/pci/devices/0000:00:{slot:02x}.0/config of=/dev/null bs=1 skip={marker} count=1 || echo VMSIX-MARKER-FAILED ;;
  esac
  insmod $m || echo "VMSIX insmod $m failed"
done
echo VMSIX-INTERRUPTS-BEFORE
cat /proc/interrupts
ip link set eth0 up
ip addr add {guest_ip}/24 dev eth0
ping -c 3 -W 3 {host_ip} && echo VMSIX-PING-OK
echo VMSIX-INTERRUPTS-AFTER
cat /proc/interrupts
echo VMSIX-DONE
poweroff -f
"""

INIT_612 = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
dev=0000:00:{slot:02x}.0
drv=/sys/bus/pci/drivers/virtio-pci
echo $dev > $drv/unbind || echo VMSIX-UNBIND-FAILED
for m in /modules/*.ko; do
  insmod $m || echo "VMSIX insmod $m failed"
done
dd if=/sys/bus/pci/devices/$dev/config of=/dev/null bs=1 skip={marker} count=1 || echo VMSIX-MARKER-FAILED
echo $dev > $drv/bind || echo VMSIX-BIND-FAILED
echo VMSIX-INTERRUPTS-BEFORE
cat /proc/interrupts
ip link set eth0 up
ip addr add {guest_ip}/24 dev eth0
ping -c 3 -W 3 {host_ip} && echo VMSIX-PING-OK
echo VMSIX-INTERRUPTS-AFTER
cat /proc/interrupts
echo $dev > $drv/unbind || echo VMSIX-UNBIND-FAILED
echo VMSIX-DONE
poweroff -f
"""

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
            if tagger.phase == "enumeration":
                tagger.phase = "probe"
                continue
        tagger(rec)
        yield rec


def qemu_command(
    kernel: DebianKernel,
    initrd: Path,
    workdir: Path,
    machine: str = "q35",
    vectors: int | None = None,
    disable_legacy: bool = False,
    smp: int = 1,
) -> list[str]:
    qemu = require("qemu-system-x86_64", "qemu-system-x86")
    # ioeventfd=off: otherwise QEMU serves notify writes from an eventfd before any trace point.
    device = f"virtio-net-pci,netdev=n0,addr={SLOT:#x},ioeventfd=off"
    if vectors is not None:
        device += f",vectors={vectors}"
    if disable_legacy:
        device += ",disable-legacy=on"
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
        "-netdev", "user,id=n0",
        "-device", device,
        "-trace", f"events={events}",
        "-D", str(workdir / "trace.log"),
    ]  # fmt: skip


def capture(
    out: str | Path,
    machine: str = "q35",
    vectors: int | None = None,
    disable_legacy: bool = False,
    timeout: float = 300.0,
    progress: bool = True,
    kernel_version: str = "6.1",
    smp: int = 1,
) -> dict[str, Any]:
    """Boot, record, convert; writes OUT (JSON lines) and OUT's console next to it."""
    out = Path(out)
    if kernel_version not in KERNELS:
        raise ValueError(f"kernel {kernel_version!r}: choose one of {', '.join(KERNELS)}")
    if kernel_version == "6.12":
        from .backports import fetch_image

        kernel, modules, template = fetch_image(), MODULES_612, INIT_612
    else:
        kernel, modules, template = fetch_kernel(), MODULES, INIT
    with tempfile.TemporaryDirectory(prefix="vmsix-capture-") as tmp:
        work = Path(tmp)
        init = template.format(slot=SLOT, marker=MARKER_OFFSET, guest_ip=GUEST_IP,
                               host_ip=HOST_IP)  # fmt: skip
        initrd = build_initramfs(kernel, init, work / "initramfs.cpio", modules)
        cmd = qemu_command(kernel, initrd, work, machine, vectors, disable_legacy, smp)
        if progress:
            # Progress to stderr: stdout carries the metadata (JSON) alone.
            print(f"capture-qemu: booting {kernel.version} on QEMU {machine} (TCG)...",
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
    write_jsonl(records, out)
    out.with_suffix(".console.txt").write_text(console)
    meta = {
        "kernel": kernel.package,
        "machine": machine,
        "vectors": vectors,
        "disable_legacy": disable_legacy,
        "smp": smp,
        "records": len(records),
        "seconds": round(elapsed, 1),
        "ping_ok": "VMSIX-PING-OK" in console,
        "modules": list(modules),
    }
    return meta
