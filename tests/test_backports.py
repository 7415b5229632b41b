"""Debian's 6.12 packages from bookworm-backports land in the cache through a private apt state:
the machine's apt sources, package lists and installed packages are left as they were."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from virtio_msix.qemu import backports
from virtio_msix.qemu.debian import PrerequisiteMissing


def test_mirror_one_line_format_with_options():
    text = (
        "# deb http://old.example/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://mirror.example/debian/ "
        "bookworm main contrib\n"
    )
    assert backports.mirror_from_sources([text]) == "http://mirror.example/debian"


def test_mirror_deb822_format():
    text = (
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src deb\n# a comment\nURIs: http://ftp.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert backports.mirror_from_sources([text]) == "http://ftp.example/debian"


def test_mirror_default_when_no_bookworm_line():
    assert backports.mirror_from_sources(["deb https://x.example/apt stable main\n"]) == (
        backports.DEFAULT_MIRROR
    )


def _machine_apt_fingerprint() -> str:
    """Everything of the machine's apt state this must not touch."""
    h = hashlib.sha256()
    for top in (Path("/etc/apt"), Path("/var/lib/apt/lists")):
        for f in sorted(top.rglob("*")):
            if f.is_file() and f.name != "lock":
                h.update(str(f).encode() + f.read_bytes()[:65536])
    return h.hexdigest()


@pytest.fixture(scope="module")
def fetched():
    before = _machine_apt_fingerprint()
    try:
        source, image = backports.fetch_source(), backports.fetch_image()
    except PrerequisiteMissing as e:
        pytest.fail(f"Debian's 6.12 packages cannot be fetched here: {e}", pytrace=False)
    return source, image, before


def test_source_and_image_in_the_cache(fetched):
    source, image, _ = fetched
    root = backports.root_dir()
    assert source.is_relative_to(root) and source.name == "linux-source-6.12.tar.xz"
    assert source.stat().st_size > 100_000_000
    assert image.vmlinuz.is_relative_to(root) and image.version.startswith("6.12.")
    assert image.version.endswith("-amd64")
    # 6.12's network modules come compressed; virtio and virtio_pci are built in
    assert (image.modules / "drivers/net/virtio_net.ko.xz").is_file()
    assert (image.modules / "drivers/net/net_failover.ko.xz").is_file()
    assert not list(image.modules.rglob("virtio_pci.ko*"))


def test_machine_apt_state_untouched(fetched):
    _, _, before = fetched
    assert _machine_apt_fingerprint() == before
    # the private state knows backports; the machine's does not, and installs no 6.12
    private = subprocess.run(["apt-cache", *backports.apt_options(), "policy", "linux-source-6.12"],
                             capture_output=True, text=True).stdout  # fmt: skip
    assert "bookworm-backports" in private
    machine = subprocess.run(["apt-cache", "policy", "linux-source-6.12"], capture_output=True,
                             text=True).stdout  # fmt: skip
    assert "bookworm-backports" not in machine
    status = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Status}\\n", "linux-*6.12*"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert "install ok installed" not in status


def test_fetch_again_uses_the_cache(fetched):
    source, image, _ = fetched
    mtime = source.stat().st_mtime_ns, image.vmlinuz.stat().st_mtime_ns
    assert backports.fetch_source() == source and backports.fetch_image() == image
    assert (source.stat().st_mtime_ns, image.vmlinuz.stat().st_mtime_ns) == mtime
