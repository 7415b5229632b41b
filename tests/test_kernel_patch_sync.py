"""A rebuild reuses the tree of the last build (Kbuild is incremental), so the tree's sources
must end up as the source package plus exactly the current patches: a patch changed or dropped
since must not stay applied (uml.kernel.sync_patches). With a small source package and real
`patch`/`tar`; no kernel is built."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from virtio_msix.uml import kernel as uml_kernel

PRISTINE = {"arch/a.c": "one\ntwo\nthree\n", "arch/b.c": "alpha\nbeta\n", "README": "hi\n"}


def _tarball(tmp_path: Path) -> Path:
    path = tmp_path / "linux-source-9.9.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for name, text in PRISTINE.items():
            data = text.encode()
            info = tarfile.TarInfo(f"linux-source-9.9/{name}")
            info.size, info.mtime = len(data), 1_000_000  # an old mtime, as Debian's has
            tar.addfile(info, io.BytesIO(data))
    return path


def _patch(path: Path, file: str, old: str, new: str) -> Path:
    """A one-line unified diff of ``file``'s pristine text, ``old`` line → ``new``."""
    lines = PRISTINE[file].splitlines()
    i = lines.index(old)
    body = [f"--- a/{file}", f"+++ b/{file}", f"@@ -1,{len(lines)} +1,{len(lines)} @@"]
    body += [(" " + ln) for ln in lines[:i]] + [f"-{old}", f"+{new}"]
    body += [(" " + ln) for ln in lines[i + 1 :]]
    path.write_text("header saying why\n\n" + "\n".join(body) + "\n")
    return path


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "tree"
    t.mkdir()
    tarball = _tarball(tmp_path)
    with tarfile.open(tarball) as tar:
        for m in tar.getmembers():
            m.name = m.name.split("/", 1)[1]
            tar.extract(m, t, filter="data")
    (t / uml_kernel.APPLIED).write_text("[]\n")  # as _build_steps marks a fresh unpack
    return t, tarball


def _sync(t: Path, tarball: Path, patches: list[Path], log_path: Path) -> None:
    with open(log_path, "a") as log:
        uml_kernel.sync_patches(t, patches, tarball, log, progress=False)


def test_patches_apply_once_and_are_recorded(tree, tmp_path):
    t, tarball = tree
    p1 = _patch(tmp_path / "1.patch", "arch/a.c", "two", "TWO")
    _sync(t, tarball, [p1], tmp_path / "log")
    assert (t / "arch/a.c").read_text() == "one\nTWO\nthree\n"
    rec = json.loads((t / uml_kernel.APPLIED).read_text())
    assert [(r["name"], r["files"]) for r in rec] == [("1.patch", ["arch/a.c"])]
    # Nothing changed: nothing is touched (the source package is not even read).
    os.utime(t / "arch/a.c", (1, 1))
    _sync(t, tmp_path / "no-such.tar.xz", [p1], tmp_path / "log")
    assert (t / "arch/a.c").stat().st_mtime == 1


def test_a_changed_patch_replaces_the_old_one_and_a_dropped_one_is_undone(tree, tmp_path):
    t, tarball = tree
    p1 = _patch(tmp_path / "1.patch", "arch/a.c", "two", "TWO")
    p2 = _patch(tmp_path / "2.patch", "arch/b.c", "beta", "BETA")
    _sync(t, tarball, [p1, p2], tmp_path / "log")
    assert (t / "arch/b.c").read_text() == "alpha\nBETA\n"
    before = time.time()
    p1 = _patch(tmp_path / "1.patch", "arch/a.c", "two", "deux")  # changed
    _sync(t, tarball, [p1], tmp_path / "log")  # and 2.patch dropped
    assert (t / "arch/a.c").read_text() == "one\ndeux\nthree\n"  # not TWO, not both
    assert (t / "arch/b.c").read_text() == PRISTINE["arch/b.c"]
    # Restored files are newer than anything built from them, so make recompiles them.
    assert (t / "arch/b.c").stat().st_mtime >= before - 1
    assert (t / "README").stat().st_mtime == 1_000_000  # untouched: not patched
    rec = json.loads((t / uml_kernel.APPLIED).read_text())
    assert [r["name"] for r in rec] == ["1.patch"]


def test_a_tree_patched_before_the_record_existed_is_made_right(tree, tmp_path):
    """Caches built by earlier versions have no record: the wanted patches' files are
    restored and the patches applied again (the old way applied each patch unless its
    reverse applied, so a changed patch failed or stacked)."""
    t, tarball = tree
    old = _patch(tmp_path / "1.patch", "arch/a.c", "two", "TWO")
    _sync(t, tarball, [old], tmp_path / "log")
    (t / uml_kernel.APPLIED).unlink()
    new = _patch(tmp_path / "1.patch", "arch/a.c", "two", "zwei")
    _sync(t, tarball, [new], tmp_path / "log")
    assert (t / "arch/a.c").read_text() == "one\nzwei\nthree\n"


def test_a_patch_that_does_not_apply_is_an_error_and_leaves_no_record(tree, tmp_path):
    t, tarball = tree
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/arch/a.c\n+++ b/arch/a.c\n@@ -1,1 +1,1 @@\n-nothing like it\n+x\n")
    with pytest.raises(RuntimeError, match="does not apply"):
        _sync(t, tarball, [bad], tmp_path / "log")
    assert not (t / uml_kernel.APPLIED).exists()


def test_patched_files_reads_the_new_names():
    text = "x\n--- a/arch/um/x.c\t2026\n+++ b/arch/um/x.c\t2026\n@@\n+++ b/y.h\n+++ /dev/null\n"
    assert uml_kernel.patched_files(text) == ["arch/um/x.c", "y.h"]
