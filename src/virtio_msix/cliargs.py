"""Argument types shared by every ``virtio-msix`` command, so that a bad value gets the same
one-line answer (argparse's usage line and ``error: ...``, exit status 2) wherever it is given.

Each function is an argparse ``type=``: it returns the converted value or raises
``argparse.ArgumentTypeError`` with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# PCI Local Bus 3.0 §6.8.2.3: Table Size is an 11-bit field holding N-1.
MSIX_MAX_VECTORS = 2048
# QEMU 7.2 virtio_net_device_realize: 2 * queue pairs + 1 (control) must fit VIRTIO_QUEUE_MAX
# (1024) queues, so at most 511 pairs.
MAX_QUEUE_PAIRS = 511
# The x86 model has one local APIC per CPU; beyond 8 CPUs Linux uses physical destination mode,
# whose 8-bit destination ID (without interrupt remapping) addresses APIC IDs 0..254.
MAX_CPUS = 255


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def int_range(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """An integer in ``lo..hi`` (``hi`` None: no upper bound); decimal or 0x-prefixed."""

    def check(text: str) -> int:
        value = _int(text)
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f"≥ {lo}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: {what or 'value'} {bound}")
        return value

    return check


vectors = int_range(0, MSIX_MAX_VECTORS, "MSI-X table size")
queue_pairs = int_range(1, MAX_QUEUE_PAIRS, "queue pairs")
cpus = int_range(1, MAX_CPUS, "CPUs")
count = int_range(0, None, "count")


def seconds(text: str) -> float:
    """A positive duration in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def output_file(text: str) -> str:
    """A path we can create or overwrite; checked when the arguments are parsed, so that a run
    is not thrown away at its end because its output cannot be written."""
    problem = output_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def output_problem(path: str) -> str | None:
    """Why ``path`` cannot be written, or None."""
    if path == "-":
        # Not standard output: that carries the command's own report (or its --json).
        return "-: give a file name (standard output carries the report)"
    if os.path.isdir(path):
        return f"{path}: is a directory"
    if os.path.exists(path):
        return None if os.access(path, os.W_OK) else f"{path}: not writable"
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        return f"{path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: directory {parent} is not writable"
    return None


def input_file(text: str) -> str:
    """A readable file, or ``-`` for stdin."""
    if text == "-":
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return text


COMMANDS = ("sim", "show", "replay", "capture-qemu", "boot", "completion")


def fail(message: str) -> int:
    """One line on stderr in argparse's own form, ``virtio-msix COMMAND: error: ...`` for a
    message that starts with its command (``"boot: ..."``), as an argument error of that
    command reads; the exit status for bad input (2)."""
    command, sep, rest = message.partition(": ")
    if sep and command in COMMANDS:
        print(f"virtio-msix {command}: error: {rest}", file=sys.stderr)
    else:
        print(f"virtio-msix: error: {message}", file=sys.stderr)
    return 2
