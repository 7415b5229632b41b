"""The User-Mode Linux kernel and its root file system, built by the project into a cache.

The kernel is Debian's ``linux-source-6.1`` (``/usr/src/linux-source-6.1.tar.xz``, from the
package of that name) configured with ``make ARCH=um defconfig`` plus the committed fragment
``uml.config`` (PCI over virtio, virtio-pci, virtio-net, debug info for gdb). The build lives in
``~/.cache/virtio-msix/uml/linux-source-6.1``; a stamp holding the fragment's hash marks a
finished build, so later runs reuse it and a changed fragment rebuilds incrementally.

The root file system is a directory exported with hostfs: busybox-static's ``/bin/busybox``,
applet links and an ``/init`` written for each boot.

``python -m virtio_msix.uml.kernel --build`` builds (or checks) the kernel; CI calls it before the
tests so that a build failure is reported as such, not as a test failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..qemu.debian import PrerequisiteMissing, cache_dir, require

SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_PACKAGE = "linux-source-6.1"
FRAGMENT = Path(__file__).with_name("uml.config")
# Patches to the UML platform code only (each file says why); applied in name order.
PATCHES = sorted(Path(__file__).with_name("patches").glob("*.patch"))
TREE_NAME = "linux-source-6.1"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh mount umount cat echo sleep ip ping poweroff ls grep head tail awk sed seq true dd "
    "nc wc ifconfig route uname dmesg mkdir ln date"
).split()


def uml_dir() -> Path:
    return cache_dir() / "uml"


def tree_dir() -> Path:
    return uml_dir() / TREE_NAME


def fragment_hash() -> str:
    """Fingerprint of what the build depends on besides the source package: the config
    fragment and the patches."""
    h = hashlib.sha256(FRAGMENT.read_bytes())
    for p in PATCHES:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def kernel_path() -> Path:
    return tree_dir() / "linux"


def stamp_path() -> Path:
    return tree_dir() / ".virtio-msix-fragment"


def is_built() -> bool:
    stamp = stamp_path()
    return (
        kernel_path().is_file() and stamp.is_file() and stamp.read_text().strip() == fragment_hash()
    )


def _check_prerequisites() -> None:
    if not SOURCE_TARBALL.is_file():
        raise PrerequisiteMissing(
            f"{SOURCE_TARBALL} not found: install the Debian package {SOURCE_PACKAGE} "
            "(scripts/setup --system does)"
        )
    for program, package in (
        ("make", "make"),
        ("gcc", "build-essential"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("xz", "xz-utils"),
    ):
        require(program, package)


def _run(cmd: list[str], cwd: Path, log, progress: bool, label: str) -> None:
    """Run a build step, its output to the log, with a one-line progress display."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    units = 0
    for line in proc.stdout:
        log.write(line)
        if line.lstrip().startswith(("CC ", "AS ", "LD ", "AR ", "HOSTCC ")):
            units += 1
        if progress and sys.stderr.isatty():
            sys.stderr.write(f"\r  {label}: {units} units, {time.monotonic() - start:4.0f} s")
            sys.stderr.flush()
    rc = proc.wait()
    if progress:
        end = "\n" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{end}  {label}: done in {time.monotonic() - start:.0f} s\n")
    if rc:
        raise RuntimeError(f"{label} failed (exit {rc}); see {log.name}")


def build(progress: bool = True, jobs: int | None = None) -> Path:
    """Build the UML kernel if the cache lacks it; returns the path of the ``linux`` binary."""
    if is_built():
        return kernel_path()
    _check_prerequisites()
    top = uml_dir()
    top.mkdir(parents=True, exist_ok=True)
    tree = tree_dir()
    jobs = jobs or os.cpu_count() or 2
    with open(top / "build.log", "a") as log:
        if progress:
            sys.stderr.write(f"virtio-msix: building User-Mode Linux 6.1 into {tree}\n")
        if not (tree / "Makefile").is_file():
            _run(["tar", "-xf", str(SOURCE_TARBALL)], top, log, progress, "unpack linux-source-6.1")
        for patch in PATCHES:
            _apply_patch(tree, patch, log)
        frag = tree / "virtio-msix.config"
        shutil.copyfile(FRAGMENT, frag)
        _run(["make", "ARCH=um", "defconfig"], tree, log, progress, "defconfig")
        _run(
            ["scripts/kconfig/merge_config.sh", "-m", ".config", str(frag)],
            tree,
            log,
            progress,
            "merge uml.config",
        )
        _run(["make", "ARCH=um", "olddefconfig"], tree, log, progress, "olddefconfig")
        _check_config(tree / ".config")
        _run(["make", "ARCH=um", f"-j{jobs}", "linux"], tree, log, progress, "make linux")
    stamp_path().write_text(fragment_hash() + "\n")
    return kernel_path()


def _apply_patch(tree: Path, patch: Path, log) -> None:
    require("patch", "patch")
    reverse = subprocess.run(["patch", "-p1", "-R", "--dry-run", "-s", "-i", str(patch)],
                             cwd=tree, capture_output=True)  # fmt: skip
    if reverse.returncode == 0:
        return  # already applied
    out = subprocess.run(["patch", "-p1", "--forward", "-i", str(patch)], cwd=tree,
                         capture_output=True, text=True)  # fmt: skip
    log.write(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"patch {patch.name} does not apply: {out.stdout}{out.stderr}")


def _check_config(config: Path) -> None:
    """Every ``=y`` of the fragment must have survived olddefconfig (a dependency missing would
    silently drop it and give a kernel without our PCI bus)."""
    have = set(config.read_text().splitlines())
    lost = [
        line
        for line in FRAGMENT.read_text().splitlines()
        if line.endswith("=y") and line not in have
    ]
    if lost:
        raise RuntimeError(f"kernel config lost options of uml.config: {', '.join(lost)}")


def make_rootfs(root: Path, init_script: str) -> Path:
    """A hostfs root: busybox with its applets and ``/init`` running ``init_script``."""
    if not BUSYBOX.is_file():
        raise PrerequisiteMissing(f"{BUSYBOX} not found: install the Debian package busybox-static")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    init = root / "init"
    init.write_text(init_script)
    init.chmod(0o755)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m virtio_msix.uml.kernel")
    p.add_argument("--build", action="store_true", help="build the kernel if not cached")
    p.add_argument("--path", action="store_true", help="print the kernel binary's path")
    args = p.parse_args(argv)
    try:
        if args.build:
            path = build()
            print(f"UML kernel: {path} (fragment {fragment_hash()})")
        if args.path:
            print(kernel_path())
    except PrerequisiteMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
