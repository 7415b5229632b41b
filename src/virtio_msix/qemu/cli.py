"""``virtio-msix capture-qemu``."""

from __future__ import annotations

import argparse
import json
import sys

from .debian import PrerequisiteMissing


def cmd_capture(args: argparse.Namespace) -> int:
    from .capture import capture

    try:
        meta = capture(args.out, args.machine, args.vectors, args.disable_legacy, args.timeout)
    except (PrerequisiteMissing, RuntimeError) as e:
        print(f"virtio-msix capture-qemu: {e}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=2))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture-qemu", help="record a real Linux guest probing QEMU 7.2's virtio-net-pci"
    )
    p.add_argument("out", help="output trace (JSON lines); the console goes to OUT.console.txt")
    p.add_argument("--machine", choices=("q35", "pc"), default="q35")
    p.add_argument("--vectors", type=int, default=None, help="MSI-X vectors (QEMU's default: 4)")
    p.add_argument("--disable-legacy", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_capture)
