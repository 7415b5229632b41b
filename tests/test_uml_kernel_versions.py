"""uml/kernel.py knows two kernels: 6.1 (the default) and 6.12, each in its own tree of the
cache with its own patches and stamp."""

from __future__ import annotations

import subprocess
import sys

import pytest

from virtio_msix.uml import kernel as uml_kernel


def test_versions_and_default():
    assert set(uml_kernel.VERSIONS) == {"6.1", "6.12"}
    assert uml_kernel.DEFAULT_VERSION == "6.1"
    assert uml_kernel.tree_dir() == uml_kernel.tree_dir("6.1")
    assert uml_kernel.tree_dir("6.12").name == "linux-source-6.12"
    assert uml_kernel.tree_dir("6.12").parent == uml_kernel.tree_dir().parent
    assert uml_kernel.stamp_path("6.12") != uml_kernel.stamp_path("6.1")
    with pytest.raises(ValueError, match="choose one of 6.1, 6.12"):
        uml_kernel.tree_dir("5.10")


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_each_version_has_its_patches_with_a_header_saying_why(version):
    patches = uml_kernel.kernel_version(version).patches
    # 6.12 has virt-pci's reply wait as a boot parameter (virt_pci.max_delay_us); 6.1 patches it.
    expected = {"6.1": ["uml-host-xstate-size.patch", "uml-sealed-memfd.patch",
                        "virt-pci-intx-chip.patch", "virt-pci-reply-wait.patch"],
                "6.12": ["uml-host-xstate-size.patch", "uml-sealed-memfd.patch",
                         "virt-pci-intx-chip.patch"]}  # fmt: skip
    assert [p.name for p in patches] == expected[version]
    for p in patches:
        text = p.read_text()
        assert text.startswith(f"virtio-msix patch to Debian's linux-source-{version},")
        header = text[: text.index("--- a/")]
        assert "Why" in header or "needed" in header or "never gives it" in header


def test_stamps_differ_per_version():
    """Each tree's stamp covers its own patches: a change to 6.12's does not rebuild 6.1."""
    assert uml_kernel.fragment_hash("6.1") != uml_kernel.fragment_hash("6.12")
    assert uml_kernel.PATCHES == uml_kernel.kernel_version("6.1").patches


def test_612_source_comes_from_the_cache_not_the_machine():
    tarball = uml_kernel.kernel_version("6.12").source_tarball()
    assert str(tarball).startswith(str(uml_kernel.cache_dir()))
    assert uml_kernel.kernel_version("6.1").source_tarball() == uml_kernel.SOURCE_TARBALL


def test_cli_refuses_an_unknown_kernel():
    out = subprocess.run([sys.executable, "-m", "virtio_msix.uml.kernel", "--path", "--kernel",
                          "4.19"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_cli_paths_of_all_kernels():
    out = subprocess.run([sys.executable, "-m", "virtio_msix.uml.kernel", "--path", "--kernel",
                          "all"], capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.split() == [str(uml_kernel.kernel_path("6.1")),
                                  str(uml_kernel.kernel_path("6.12"))]  # fmt: skip
