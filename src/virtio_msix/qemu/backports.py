"""Debian's Linux 6.12 packages (bookworm-backports), fetched into the cache, not installed.

Debian 12 carries 6.12 in bookworm-backports: ``linux-source-6.12`` (what User-Mode Linux 6.12
is built from) and ``linux-image-6.12.*-amd64`` (the x86 kernel with its modules, for
capture-qemu). The machine's own apt sources stay as they are — adding backports there would
let ``apt-get upgrade`` replace its QEMU 7.2 — so apt runs with a private state under the cache:
a sources list with a single bookworm-backports line (same mirror as the machine's bookworm
line), its own package lists and archive cache. ``apt-get download`` fetches the ``.deb`` files
and ``dpkg -x`` unpacks them below the cache; nothing is installed.

Layout (``cache_dir()/debian-6.12``)::

    apt/sources.list, apt/lists/, apt/cache/   the private apt state
    debs/*.deb                                 the downloaded packages
    source/usr/src/linux-source-6.12.tar.xz    linux-source-6.12, unpacked with dpkg -x
    image/boot/vmlinuz-*, image/lib/modules/*  the kernel image package, unpacked likewise
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .debian import DebianKernel, PrerequisiteMissing, cache_dir, require

SUITE = "bookworm-backports"
SOURCE_PACKAGE = "linux-source-6.12"
# The metapackage whose dependency names the current 6.12 image package in backports
# (linux-image-6.12.<n>+deb12-amd64; older uploads were named ...+bpo-amd64).
IMAGE_METAPACKAGE = "linux-image-amd64"
IMAGE_PATTERN = re.compile(r"^linux-image-6\.12\.[0-9]+\+(?:bpo|deb12)-amd64$")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
APT_TIMEOUT = 900.0  # seconds for one apt-get call (260 MB of packages on a slow line)


def root_dir() -> Path:
    return cache_dir() / "debian-6.12"


def mirror_from_sources(texts: list[str]) -> str:
    """The URI the machine uses for Debian's ``bookworm`` suite, from sources.list texts in
    either format (one-line ``deb URI SUITE ...`` or deb822 ``URIs:`` / ``Suites:`` stanzas);
    deb.debian.org when none names it. Security and third-party repositories are skipped."""
    for text in texts:
        for line in text.splitlines():
            # one-line format; "[opt=val ...]" may hold spaces, so it goes first
            words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == "bookworm":
                return words[1].rstrip("/")
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.lstrip().startswith("#") or ":" not in line:
                    continue
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and "bookworm" in fields.get(
                "suites", ""
            ).split():
                uris = fields.get("uris", "").split()
                if uris:
                    return uris[0].rstrip("/")
    return DEFAULT_MIRROR


def _machine_sources() -> list[str]:
    texts = []
    for p in APT_SOURCES:
        files = sorted(p.glob("*.list")) + sorted(p.glob("*.sources")) if p.is_dir() else [p]
        for f in files:
            try:
                texts.append(f.read_text(errors="replace"))
            except OSError:
                continue
    return texts


def apt_options() -> list[str]:
    """apt-get/apt-cache options for the private state (the machine's sources and lists are
    never read nor written)."""
    apt = root_dir() / "apt"
    opts = [
        "-o", f"Dir::Etc::sourcelist={apt / 'sources.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        # apt drops to the _apt user to download, who cannot write into a root-owned cache
        opts += ["-o", "APT::Sandbox::User=root"]
    return opts


def _apt(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd[:1] + apt_options() + cmd[1:], cwd=cwd, capture_output=True,
                              text=True, timeout=APT_TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise PrerequisiteMissing(
            f"{' '.join(cmd)} took more than {APT_TIMEOUT:.0f} s (is the mirror reachable?)"
        ) from None


@contextmanager
def _locked() -> Iterator[None]:
    """One fetch at a time per cache (two test processes may ask at once)."""
    root_dir().mkdir(parents=True, exist_ok=True)
    with open(root_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def apt_update() -> None:
    """Create the private state (a bookworm-backports line on the machine's mirror) and fetch
    its package lists, once."""
    require("apt-get", "apt")
    apt = root_dir() / "apt"
    for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    line = f"deb {mirror_from_sources(_machine_sources())} {SUITE} main\n"
    sources = apt / "sources.list"
    if sources.is_file() and sources.read_text() == line and any((apt / "lists").glob("*Packages*")):
        return
    sources.write_text(line)
    r = _apt(["apt-get", "-q", "update"])
    if r.returncode or not any((apt / "lists").glob("*Packages*")):
        raise PrerequisiteMissing(
            f"apt-get update for {SUITE} failed: {(r.stdout + r.stderr).strip()[-400:]}"
        )


def image_package_name() -> str:
    """linux-image-6.12.N+deb12-amd64: what backports' linux-image-amd64 depends on."""
    r = _apt(["apt-cache", "depends", IMAGE_METAPACKAGE])
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            name = line.split(":", 1)[1].strip()
            if IMAGE_PATTERN.match(name):
                return name
    raise PrerequisiteMissing(
        f"{SUITE}'s {IMAGE_METAPACKAGE} depends on no linux-image-6.12.*-amd64 "
        f"(apt-cache said: {(r.stdout + r.stderr).strip()[-300:]})"
    )


def _download(package: str, glob: str) -> Path:
    debs = root_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(glob))
    if not have:
        apt_update()
        r = _apt(["apt-get", "-q", "download", package], cwd=debs)
        have = sorted(debs.glob(glob))
        if r.returncode or not have:
            raise PrerequisiteMissing(
                f"apt-get download {package} failed: {(r.stdout + r.stderr).strip()[-400:]}"
            )
    return have[-1]


def _unpack(deb: Path, dest: Path) -> Path:
    """``dpkg -x`` into ``dest`` once; a marker naming the package marks it complete, so a
    newer package (or an interrupted unpack) is unpacked afresh."""
    marker = dest / ".virtio-msix-unpacked"
    if marker.is_file() and marker.read_text().strip() == deb.name:
        return dest
    require("dpkg", "dpkg")
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    dest.mkdir(parents=True)
    r = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if r.returncode:
        raise PrerequisiteMissing(f"dpkg -x {deb.name} failed: {r.stderr.strip()[-300:]}")
    marker.write_text(deb.name + "\n")
    return dest


def fetch_source() -> Path:
    """linux-source-6.12's tarball (``.../usr/src/linux-source-6.12.tar.xz``), fetched once."""
    with _locked():
        deb = _download(SOURCE_PACKAGE, f"{SOURCE_PACKAGE}_*_all.deb")
        tree = _unpack(deb, root_dir() / "source")
    tarball = tree / "usr" / "src" / f"{SOURCE_PACKAGE}.tar.xz"
    if not tarball.is_file():
        raise PrerequisiteMissing(f"{deb.name} holds no usr/src/{tarball.name}")
    return tarball


def fetch_image() -> DebianKernel:
    """Debian's 6.12 x86 kernel and its modules (``.ko.xz``), fetched once."""
    with _locked():
        have = sorted((root_dir() / "debs").glob("linux-image-6.12.*-amd64_*_amd64.deb"))
        if have:
            deb = have[-1]
        else:
            apt_update()
            name = image_package_name()
            deb = _download(name, f"{name}_*_amd64.deb")
        tree = _unpack(deb, root_dir() / "image")
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise PrerequisiteMissing(f"{deb.name} holds no boot/vmlinuz-*")
    version = vmlinuz[-1].name.removeprefix("vmlinuz-")
    return DebianKernel(
        version=version,
        package=deb.name,
        vmlinuz=vmlinuz[-1],
        modules=tree / "lib" / "modules" / version / "kernel",
    )


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m virtio_msix.qemu.backports",
                                description="fetch Debian's 6.12 packages into the cache")  # fmt: skip
    p.add_argument("what", nargs="*", metavar="source|image", help="default: both")
    args = p.parse_args(argv)
    args.what = args.what or ["source", "image"]
    if set(args.what) - {"source", "image"}:
        p.error("give source and/or image")
    try:
        if "source" in args.what:
            print(f"linux-source-6.12: {fetch_source()}")
        if "image" in args.what:
            k = fetch_image()
            print(f"linux-image 6.12: {k.vmlinuz} ({k.package})")
    except PrerequisiteMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
