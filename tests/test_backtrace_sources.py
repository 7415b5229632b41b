"""The file:line each sim backtrace frame names is where Linux defines that function, checked
against the kernel source the UML build unpacked (Debian's linux-source-6.1 and -6.12), so a
reader who opens it lands on the function."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from virtio_msix.guest.backtrace import SOURCES, SOURCES_612
from virtio_msix.host.env import cache_dir


def source_tree(version: str) -> Path:
    root = cache_dir() / "uml" / f"linux-source-{version}"
    if not (root / "Makefile").is_file():
        pytest.skip(f"linux-source-{version} is not unpacked in {root.parent} "
                    "(python -m virtio_msix.uml.kernel --build --kernel all unpacks it)")  # fmt: skip
    return root


def definition_lines(text: str, name: str) -> set[int]:
    """Lines (1-based) that name ``name`` at the start of a function definition: the name
    followed by '(' on a line starting at column 0, and a '{' before any ';'."""
    lines = text.splitlines()
    head = re.compile(r"^(?:[A-Za-z_].*[\s*])?" + re.escape(name) + r"\s*\(")
    found = set()
    for i, line in enumerate(lines):
        if not head.match(line) or line.startswith(("#", "EXPORT_SYMBOL")):
            continue
        for follow in lines[i : i + 12]:
            if "{" in follow:
                found.add(i + 1)
                break
            if follow.rstrip().endswith(";"):
                break
    return found


@pytest.mark.parametrize("version,table", [("6.1", SOURCES), ("6.12", SOURCES_612)])
def test_every_frame_points_at_its_definition(version, table):
    root = source_tree(version)
    wrong = []
    for name, where in table.items():
        path, line = where.rsplit(":", 1)
        file = root / path
        if not file.is_file():
            wrong.append(f"{name}: {path} does not exist")
            continue
        lines = definition_lines(file.read_text(errors="replace"), name)
        if int(line) not in lines:
            wrong.append(f"{name}: {where}, defined at {sorted(lines) or 'no line'}")
    assert not wrong, "\n".join(wrong)
