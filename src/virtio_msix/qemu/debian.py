"""Debian's x86 kernel package and a busybox initramfs, fetched and built into the cache.

Nothing is installed into /boot: the package is downloaded with ``apt-get download`` and
unpacked with ``dpkg-deb`` under the cache directory.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Host-environment helpers live in host/env.py; named here too for existing importers.
from ..host.env import PrerequisiteMissing, cache_dir, require  # noqa: F401

# Load order: each module after what it depends on (modinfo -F depends on Debian's 6.1 build).
# virtio_net before virtio_pci, so that the device is probed straight through to virtnet_probe
# from virtio_pci_probe, as in the seed's backtraces.
MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
)
BUSYBOX_APPLETS = (
    "sh mount cat echo sleep insmod rmmod dmesg ip ping poweroff dd ls grep head awk sed seq true"
    .split()
)


@dataclass
class DebianKernel:
    version: str  # e.g. 6.1.0-56-amd64
    package: str  # e.g. linux-image-6.1.0-56-amd64 (6.1.192-2)
    vmlinuz: Path
    modules: Path  # .../lib/modules/VERSION/kernel


def kernel_package_name() -> str:
    require("apt-cache", "apt")
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-6.1" in line:
            return line.split(":", 1)[1].strip()
    raise PrerequisiteMissing(
        "apt-cache knows no linux-image-6.1.0-*-amd64 (run apt-get update on a Debian bookworm machine)"
    )


def fetch_kernel() -> DebianKernel:
    """Download and unpack Debian's 6.1 kernel package into the cache (once)."""
    root = cache_dir() / "debian-kernel"
    root.mkdir(parents=True, exist_ok=True)
    debs = sorted(root.glob("linux-image-6.1.0-*-amd64_*.deb"))
    if not debs:
        require("apt-get", "apt")
        name = kernel_package_name()
        r = subprocess.run(["apt-get", "download", name], cwd=root, capture_output=True, text=True)
        debs = sorted(root.glob("linux-image-6.1.0-*-amd64_*.deb"))
        if not debs:
            raise PrerequisiteMissing(f"apt-get download {name} failed: {r.stderr.strip()[-300:]}")
    deb = debs[-1]
    unpacked = root / deb.stem
    if not (unpacked / ".done").exists():
        require("dpkg-deb", "dpkg")
        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "tar",
                "x",
                "-C",
                str(unpacked),
                "--wildcards",
                "./boot/vmlinuz*",
                "./lib/modules/*/kernel/*",
            ],
            stdin=tar.stdout,
            check=True,
        )
        tar.wait()
        (unpacked / ".done").touch()
    vmlinuz = next((unpacked / "boot").glob("vmlinuz-*"))
    version = vmlinuz.name.removeprefix("vmlinuz-")
    return DebianKernel(
        version=version,
        package=deb.name,
        vmlinuz=vmlinuz,
        modules=unpacked / "lib" / "modules" / version / "kernel",
    )


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio "newc" archive of (path, mode, data); symlinks carry their target as data."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        out += hdr.encode() + namez
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(
    kernel: DebianKernel, init_script: str, dest: Path, modules: tuple[str, ...] = MODULES
) -> Path:
    """busybox-static, ``modules`` in load order, and ``/init``. Compressed modules (6.12's
    ``.ko.xz``) go in decompressed: busybox's insmod hands the kernel the bytes it reads."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise PrerequisiteMissing(
            "/bin/busybox not found: install the Debian package busybox-static"
        )
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "proc", "sys", "dev", "modules"):
        entries.append((d, 0o040755, b""))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    for applet in BUSYBOX_APPLETS:
        entries.append((f"bin/{applet}", 0o120777, b"busybox"))
    for i, rel in enumerate(modules):
        src = kernel.modules / rel
        if not src.exists():
            raise PrerequisiteMissing(f"{src} missing from {kernel.package}")
        data, name = src.read_bytes(), src.name
        if name.endswith(".xz"):
            data, name = lzma.decompress(data), name.removesuffix(".xz")
        entries.append((f"modules/{i:02d}-{name}", 0o100644, data))
    entries.append(("init", 0o100755, init_script.encode()))
    dest.write_bytes(_cpio_newc(entries))
    return dest
