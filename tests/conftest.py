"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest

from virtio_msix.qemu.debian import PrerequisiteMissing
from virtio_msix.uml import kernel as uml_kernel


@pytest.fixture(scope="session")
def linux():
    """The real UML kernel, built into the cache if it is not there yet (CI builds it before the
    tests, so a build failure shows as such)."""
    try:
        return uml_kernel.build(progress=True)
    except PrerequisiteMissing as e:
        # Never a silent skip: the real kernel is what these tests are about.
        pytest.fail(f"the UML kernel cannot be built here: {e}", pytrace=False)


@pytest.fixture(scope="session")
def linux612():
    """The real UML 6.12 kernel (bookworm-backports' linux-source-6.12), likewise."""
    try:
        return uml_kernel.build(progress=True, version="6.12")
    except PrerequisiteMissing as e:
        pytest.fail(f"the UML 6.12 kernel cannot be built here: {e}", pytrace=False)
