"""Counting this process's open descriptors, to check that a run leaks none."""

from __future__ import annotations

import os


def open_fds() -> set[str]:
    """This process's open descriptors (the listing's own is closed before readlink)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{fd} {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return out
