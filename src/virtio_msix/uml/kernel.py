"""The User-Mode Linux kernels and their root file system, built by the project into a cache.

Two kernels, by version (``--kernel``; 6.1 is the default everywhere):

- 6.1: Debian's ``linux-source-6.1`` (``/usr/src/linux-source-6.1.tar.xz``, from the package of
  that name, installed by scripts/setup --system);
- 6.12: Debian's ``linux-source-6.12`` from bookworm-backports, fetched into the cache by
  qemu/backports.py (never installed on the machine).

Each is configured with ``make ARCH=um defconfig`` plus the committed fragment ``uml.config``
(PCI over virtio, virtio-pci, virtio-net, debug info for gdb) and patched with its own
``patches/<version>/*.patch``. A build lives in ``~/.cache/virtio-msix/uml/linux-source-<version>``;
a stamp per tree holding the fragment's and the patches' hash marks a finished build, so later
runs reuse it and a changed fragment rebuilds incrementally.

The root file system is a directory exported with hostfs: busybox-static's ``/bin/busybox``,
applet links and an ``/init`` written for each boot.

``python -m virtio_msix.uml.kernel --build [--kernel 6.1|6.12|all]`` builds (or checks) the
kernels; CI calls it with ``--kernel all`` before the tests so that a build failure is reported
as such, not as a test failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host.env import PrerequisiteMissing, cache_dir, require
from .procs import die_with_parent, kill_session

FRAGMENT = Path(__file__).with_name("uml.config")
PATCH_DIR = Path(__file__).with_name("patches")


@dataclass(frozen=True)
class KernelVersion:
    """One kernel the project builds as User-Mode Linux."""

    name: str  # "6.1"
    source_package: str  # Debian's package holding /usr/src/<package>.tar.xz

    @property
    def tree_name(self) -> str:
        return self.source_package

    @property
    def patches(self) -> list[Path]:
        """Patches to the UML platform code only (each file says why); applied in name order."""
        return sorted((PATCH_DIR / self.name).glob("*.patch"))

    def source_tarball(self, fetch: bool = False) -> Path:
        """Where the source tarball is; with ``fetch``, 6.12's is downloaded first if missing."""
        if self.name == "6.1":
            return Path(f"/usr/src/{self.source_package}.tar.xz")
        from ..qemu import backports

        if fetch:
            return backports.fetch_source()
        return backports.root_dir() / "source" / "usr" / "src" / f"{self.source_package}.tar.xz"


VERSIONS = {v.name: v for v in (KernelVersion("6.1", "linux-source-6.1"),
                                KernelVersion("6.12", "linux-source-6.12"))}  # fmt: skip
DEFAULT_VERSION = "6.1"


def kernel_version(name: str = DEFAULT_VERSION) -> KernelVersion:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ValueError(f"kernel {name!r}: choose one of {', '.join(VERSIONS)}") from None


# 6.1's, under the names this module had before it knew two versions.
SOURCE_TARBALL = VERSIONS["6.1"].source_tarball()
SOURCE_PACKAGE = VERSIONS["6.1"].source_package
PATCHES = VERSIONS["6.1"].patches
TREE_NAME = VERSIONS["6.1"].tree_name
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh mount umount cat echo sleep ip ping poweroff ls grep head tail awk sed seq true dd "
    "nc wc ifconfig route uname dmesg mkdir ln date"
).split()


# -- the FP save area, sized from the host (patches/uml-host-xstate-size.patch says why) ------
# 6.1's own HOST_FP_SIZE in bytes: the area is never made smaller than the kernel was written for.
FP_AREA_FLOOR = 2696
# 6.1's default kernel stack (CONFIG_KERNEL_STACK_ORDER=2), known good with the floor's area.
BASE_STACK_ORDER = 2
PAGE_SIZE = 4096
# How many FP areas can sit on one kernel stack at once (thread_info.aux_fp_regs plus nested
# signal frames' struct uml_pt_regs): each byte the area grows costs this many stack bytes.
FP_COPIES_ON_STACK = 4
MAX_STACK_ORDER = 10  # arch/um/Kconfig: range 2 10 if 64BIT

PTRACE_TRACEME = 0
PTRACE_GETREGSET = 0x4204
NT_X86_XSTATE = 0x202
XSTATE_PROBE_BYTES = 64 * 1024


@dataclass(frozen=True)
class FpPlan:
    """The host's XSAVE size and what the kernel is built with for it."""

    host_xstate_bytes: int | None  # what PTRACE_GETREGSET NT_X86_XSTATE reports; None: no XSAVE
    area_bytes: int  # CONFIG_UML_HOST_XSTATE_SIZE
    stack_order: int  # CONFIG_KERNEL_STACK_ORDER

    def config_lines(self) -> list[str]:
        return [
            f"CONFIG_UML_HOST_XSTATE_SIZE={self.area_bytes}",
            f"CONFIG_KERNEL_STACK_ORDER={self.stack_order}",
        ]


def fp_plan(host_xstate_bytes: int | None) -> FpPlan:
    """The FP area and stack order for a host whose XSAVE area is ``host_xstate_bytes``.

    The area holds the host's whole XSAVE image (PTRACE_SETREGSET accepts nothing shorter), rounded
    up to 64 bytes, never below 6.1's 2696. The stack keeps 6.1's margin: what 16 KiB left beside
    four areas of 2696 bytes is left beside four of the new size."""
    area = FP_AREA_FLOOR
    if host_xstate_bytes is not None and host_xstate_bytes > area:
        area = -(-host_xstate_bytes // 64) * 64
    need = (PAGE_SIZE << BASE_STACK_ORDER) + FP_COPIES_ON_STACK * (area - FP_AREA_FLOOR)
    order = BASE_STACK_ORDER
    while (PAGE_SIZE << order) < need:
        order += 1
    if order > MAX_STACK_ORDER:
        raise RuntimeError(f"host XSAVE area of {host_xstate_bytes} bytes needs a kernel stack "
                           f"of order {order}, more than UML allows ({MAX_STACK_ORDER})")  # fmt: skip
    return FpPlan(host_xstate_bytes, area, order)


def host_xstate_bytes() -> int | None:
    """The size of this host's XSAVE area as ptrace moves it (NT_X86_XSTATE): a traced child is
    asked for its FP state with a 64 KiB buffer and the host shortens the length to its own size.
    None when the host has no XSAVE regset (UML then uses the legacy FXSAVE calls)."""
    if platform.machine() != "x86_64":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    pid = os.fork()
    if pid == 0:  # the child: stop for the parent to look at, then go
        try:
            libc.ptrace(PTRACE_TRACEME, 0, None, None)
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise RuntimeError(f"XSAVE probe: the traced child did not stop (status {status:#x})")
        buf = ctypes.create_string_buffer(XSTATE_PROBE_BYTES)

        class Iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), XSTATE_PROBE_BYTES)
        if libc.ptrace(PTRACE_GETREGSET, pid, ctypes.c_void_p(NT_X86_XSTATE),
                       ctypes.byref(iov)) < 0:  # fmt: skip
            err = ctypes.get_errno()
            if err in (errno.ENODEV, errno.EIO, errno.EINVAL):
                return None
            raise RuntimeError(f"XSAVE probe: PTRACE_GETREGSET failed: {os.strerror(err)}")
        return int(iov.len)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


_PLAN: FpPlan | None = None


def host_fp_plan() -> FpPlan:
    """This host's plan (probed once per process). ``VIRTIO_MSIX_UML_XSTATE_BYTES`` overrides the
    probe, to build a kernel for another host (e.g. 11008 for an AMX host) into another cache."""
    global _PLAN
    if _PLAN is None:
        forced = os.environ.get("VIRTIO_MSIX_UML_XSTATE_BYTES")
        if forced:
            try:
                size = int(forced, 0)
            except ValueError:
                raise PrerequisiteMissing(
                    f"VIRTIO_MSIX_UML_XSTATE_BYTES={forced!r}: give a size in bytes") from None
            _PLAN = fp_plan(size)
        else:
            _PLAN = fp_plan(host_xstate_bytes())
    return _PLAN


def uml_dir() -> Path:
    return cache_dir() / "uml"


def tree_dir(version: str = DEFAULT_VERSION) -> Path:
    return uml_dir() / kernel_version(version).tree_name


def config_fragment() -> str:
    """uml.config plus the lines sized from this host (the FP area and the stack order)."""
    plan = host_fp_plan()
    return (FRAGMENT.read_text() + "# sized from this host's XSAVE area "
            f"({plan.host_xstate_bytes} bytes; patches/uml-host-xstate-size.patch)\n"
            + "\n".join(plan.config_lines()) + "\n")  # fmt: skip


def fragment_hash(version: str = DEFAULT_VERSION) -> str:
    """Fingerprint of what the build depends on besides the source package: the config
    fragment with this host's FP sizing, and the version's patches. A cache built on a host
    whose XSAVE area needs another size does not match, so it is rebuilt. (6.1's hash is what
    it was before there were two versions, so existing caches stay valid.)"""
    h = hashlib.sha256(config_fragment().encode())
    for p in kernel_version(version).patches:
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def kernel_path(version: str = DEFAULT_VERSION) -> Path:
    return tree_dir(version) / "linux"


def stamp_path(version: str = DEFAULT_VERSION) -> Path:
    return tree_dir(version) / ".virtio-msix-fragment"


def is_built(version: str = DEFAULT_VERSION) -> bool:
    stamp = stamp_path(version)
    return (
        kernel_path(version).is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == fragment_hash(version)
    )


def _check_prerequisites(kv: KernelVersion) -> Path:
    """The source tarball (6.12's fetched from bookworm-backports if missing) and the tools."""
    tarball = kv.source_tarball(fetch=True)
    if not tarball.is_file():
        raise PrerequisiteMissing(
            f"{tarball} not found: install the Debian package {kv.source_package} "
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
    return tarball


def _run(cmd: list[str], cwd: Path, log, progress: bool, label: str) -> None:
    """Run a build step, its output to the log, with a one-line progress display."""
    start = time.monotonic()
    # Its own session, killed with us: an interrupted command must not leave make writing into
    # the tree the next build will use.
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True, preexec_fn=die_with_parent(),
    )  # fmt: skip
    assert proc.stdout is not None
    units = 0
    try:
        for line in proc.stdout:
            log.write(line)
            if line.lstrip().startswith(("CC ", "AS ", "LD ", "AR ", "HOSTCC ")):
                units += 1
            if progress and sys.stderr.isatty():
                sys.stderr.write(f"\r  {label}: {units} units, {time.monotonic() - start:4.0f} s")
                sys.stderr.flush()
    except BaseException:
        kill_session(proc.pid)
        proc.wait()
        raise
    rc = proc.wait()
    if progress:
        end = "\n" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{end}  {label}: done in {time.monotonic() - start:.0f} s\n")
    if rc:
        raise RuntimeError(f"{label} failed (exit {rc}); see {log.name}")


def build(progress: bool = True, jobs: int | None = None, version: str = DEFAULT_VERSION,
          steps: BuildSteps | None = None) -> Path:
    """Build the UML kernel of ``version`` if the cache lacks it; returns the path of its
    ``linux`` binary.

    Safe when several commands start it at once: one builds while the others wait on a lock
    (``build.lock`` in the cache), then find the kernel built. The build runs in a staging
    directory renamed into place only when it is complete and stamped, so an interrupted build
    never leaves a tree that looks finished (the next build resumes in the staging directory).
    ``steps`` replaces the build steps (tests of this machinery only)."""
    kv = kernel_version(version)
    if is_built(version):
        return kernel_path(version)
    tarball = _check_prerequisites(kv)
    top = uml_dir()
    top.mkdir(parents=True, exist_ok=True)
    with _build_lock(top, progress):
        if is_built(version):  # built by the command that held the lock while we waited
            return kernel_path(version)
        staging = _staging_tree(top, version)
        run_steps = steps or functools.partial(_build_steps, kv=kv, tarball=tarball)
        run_steps(top, staging, progress, jobs or os.cpu_count() or 2)
        (staging / stamp_path(version).name).write_text(fragment_hash(version) + "\n")
        # Kbuild's in-tree paths are relative, so the renamed tree stays incremental.
        os.rename(staging, tree_dir(version))
    return kernel_path(version)


# (top, tree, progress, jobs): unpack, configure and build the kernel in ``tree``.
BuildSteps = Callable[[Path, Path, bool, int], None]
STAGING_SUFFIX = ".building"
LOCK_NAME = "build.lock"
UNPACKED = ".virtio-msix-unpacked"


@contextlib.contextmanager
def _build_lock(top: Path, progress: bool) -> Iterator[None]:
    """An exclusive flock on the cache's lock file; released by the kernel if we die."""
    with open(top / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                sys.stderr.write(f"virtio-msix: another command is building the kernel in {top};"
                                 " waiting for it\n")  # fmt: skip
                sys.stderr.flush()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _staging_tree(top: Path, version: str = DEFAULT_VERSION) -> Path:
    """The directory the build runs in, never the published tree: an interrupted staging tree
    is resumed; otherwise an unfinished or outdated published tree is moved here (Kbuild
    rebuilds it incrementally), unstamped first so that it cannot look finished."""
    final = tree_dir(version)
    staging = top / (final.name + STAGING_SUFFIX)
    stamp = stamp_path(version).name
    if final.exists():
        if staging.exists():
            shutil.rmtree(final)
        else:
            (final / stamp).unlink(missing_ok=True)
            if (final / "Makefile").is_file():  # unpacked by a build before the marker existed
                (final / UNPACKED).touch()
            os.rename(final, staging)
    staging.mkdir(exist_ok=True)
    (staging / stamp).unlink(missing_ok=True)
    return staging


def _build_steps(top: Path, tree: Path, progress: bool, jobs: int, *, kv: KernelVersion,
                 tarball: Path) -> None:  # fmt: skip
    """Unpack the kernel source into ``tree``, patch, configure and build ``linux``."""
    with open(top / "build.log", "a") as log:
        if progress:
            sys.stderr.write(f"virtio-msix: building User-Mode Linux {kv.name} into "
                             f"{tree_dir(kv.name)}\n")  # fmt: skip
        if not (tree / UNPACKED).is_file():
            _unpack(tree, log, progress, tarball, kv)
            (tree / APPLIED).write_text("[]\n")  # pristine: nothing applied
        sync_patches(tree, kv.patches, tarball, log, progress)
        frag = tree / "virtio-msix.config"
        frag.write_text(config_fragment())
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


def _unpack(tree: Path, log, progress: bool, tarball: Path, kv: KernelVersion) -> None:
    """Unpack the source into ``tree`` (again, if an earlier unpack was interrupted); a marker
    says it completed."""
    _run(["tar", "-xf", str(tarball), "--strip-components=1"], tree, log, progress,
         f"unpack {kv.source_package}")  # fmt: skip
    (tree / UNPACKED).touch()


# What the tree's sources have applied: one entry per patch (name, SHA-256 of its text, the
# files it changes), in order. Written after the patches applied; absent in a tree patched by
# a version of this code from before the record existed.
APPLIED = ".virtio-msix-patches.json"


def patched_files(text: str) -> list[str]:
    """The files a unified diff changes, relative to the tree (its "+++ b/..." lines)."""
    out = []
    for line in text.splitlines():
        if line.startswith("+++ ") and not line.startswith("+++ /dev/null"):
            path = line[4:].split("\t")[0].strip()
            out.append(path.split("/", 1)[1] if "/" in path else path)
    return sorted(set(out))


def _patch_record(patches: list[Path]) -> list[dict[str, Any]]:
    return [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
             "files": patched_files(p.read_text())} for p in patches]  # fmt: skip


def sync_patches(tree: Path, patches: list[Path], tarball: Path, log, progress: bool) -> None:
    """Make the tree's sources the source package plus exactly ``patches``. A rebuild is
    incremental (the tree of an outdated build is reused), so a patch changed or dropped since
    the last build must not stay applied: the files the applied patches changed are restored
    from the source package first (with a new mtime, so that make recompiles them), and every
    patch is applied to pristine files. A tree without a record (patched before the record
    existed) has its wanted patches' files restored the same way."""
    want = _patch_record(patches)
    record = tree / APPLIED
    try:
        have = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        have = None
    if have == want:
        return
    files = sorted({f for r in (want if have is None else have + want) for f in r["files"]})
    record.unlink(missing_ok=True)  # from here on the tree's patch state is unknown
    if have != [] and files:
        _restore_sources(tree, tarball, files, log, progress)
    for patch in patches:
        _apply_patch(tree, patch, log)
    record.write_text(json.dumps(want, indent=1) + "\n")


def _restore_sources(tree: Path, tarball: Path, files: list[str], log, progress: bool) -> None:
    """Extract ``files`` from the source package over the tree, as they are there."""
    lister = subprocess.Popen(["tar", "-tf", str(tarball)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    assert lister.stdout is not None
    first = lister.stdout.readline().strip()
    lister.kill()
    lister.wait()
    top = first.split("/", 1)[0]
    if not top:
        raise RuntimeError(f"{tarball}: cannot list the source package")
    _run(["tar", "-xf", str(tarball), "--strip-components=1", "--touch",
          *(f"{top}/{f}" for f in files)], tree, log, progress,
         f"restore {len(files)} patched files")  # fmt: skip


def _apply_patch(tree: Path, patch: Path, log) -> None:
    require("patch", "patch")
    out = subprocess.run(["patch", "-p1", "--forward", "-i", str(patch)], cwd=tree,
                         capture_output=True, text=True)  # fmt: skip
    log.write(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"patch {patch.name} does not apply: {out.stdout}{out.stderr}")


def _check_config(config: Path) -> None:
    """Every ``=y`` of the fragment and the host-sized values must have survived olddefconfig (a
    dependency missing would silently drop one: a kernel without our PCI bus, or an FP area
    too small for this host)."""
    have = set(config.read_text().splitlines())
    lost = [
        line
        for line in config_fragment().splitlines()
        if line.startswith("CONFIG_") and not line.endswith("=n") and line not in have
    ]
    if lost:
        raise RuntimeError(f"kernel config lost options of uml.config: {', '.join(lost)}")


# Where UML's physical memory file goes (its TMPDIR), before the run's own directory.
MEMORY_TMPFS = ("/dev/shm",)


def _tmpfs_mount(path: str) -> str | None:
    """The options of ``path`` if it is a tmpfs mount point (the last mount there wins)."""
    found = None
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    for line in mounts.splitlines():
        f = line.split()
        if len(f) >= 4 and f[1] == path:
            found = f[3] if f[2] == "tmpfs" else None
    return found


def memory_dir(memory_mb: int, fallback: Path) -> Path:
    """A new private directory for UML's TMPDIR, where it creates (and at once unlinks) the
    file that is its physical memory and, over vhost-user, our device's view of guest memory.

    On a tmpfs when one has room and allows PROT_EXEC mappings (UML checks that), else
    ``fallback``: on a disk file system the host writes the guest's dirty pages back to the
    disk for nothing, and each of our DMA writes into that memory is a journalled file write
    (pwrite of 8 bytes: 5.8 µs on ext4, 2.2 µs on tmpfs, measured here). UML's own
    documentation asks for a tmpfs TMPDIR. The caller removes the directory."""
    for cand in MEMORY_TMPFS:
        opts = _tmpfs_mount(cand)
        if opts is None or "noexec" in opts.split(","):
            continue
        try:
            st = os.statvfs(cand)
            # tmpfs charges only the pages the guest touches; room for all of them twice over
            if st.f_bavail * st.f_frsize < 2 * memory_mb << 20:
                continue
            return Path(tempfile.mkdtemp(prefix="virtio-msix-mem-", dir=cand))
        except OSError:
            continue
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def make_rootfs(root: Path, init_script: str, files: dict[str, Path] | None = None) -> Path:
    """A hostfs root: busybox with its applets, ``/init`` running ``init_script``, and ``files``
    (guest path → host file) copied in."""
    if not BUSYBOX.is_file():
        raise PrerequisiteMissing(f"{BUSYBOX} not found: install the Debian package busybox-static")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for guest_path, host_file in (files or {}).items():
        rel = Path(guest_path.lstrip("/"))
        if not rel.parts or ".." in rel.parts:
            raise ValueError(f"guest path {guest_path!r}: give an absolute path inside the guest")
        if not Path(host_file).is_file():
            raise PrerequisiteMissing(f"{host_file}: no such file to copy into the guest")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host_file, root / rel)
    init = root / "init"
    init.write_text(init_script)
    init.chmod(0o755)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m virtio_msix.uml.kernel")
    p.add_argument("--build", action="store_true", help="build the kernel if not cached")
    p.add_argument("--path", action="store_true", help="print the kernel binary's path")
    p.add_argument("--kernel", choices=(*VERSIONS, "all"), default=DEFAULT_VERSION,
                   help=f"which kernel (default {DEFAULT_VERSION}; all: every one, as CI does)")  # fmt: skip
    args = p.parse_args(argv)
    versions = list(VERSIONS) if args.kernel == "all" else [args.kernel]
    try:
        for v in versions:
            if args.build:
                path = build(version=v)
                print(f"UML kernel {v}: {path} (fragment {fragment_hash(v)})")
            if args.path:
                print(kernel_path(v))
    except PrerequisiteMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
