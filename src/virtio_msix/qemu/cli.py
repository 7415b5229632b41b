"""``virtio-msix capture-qemu``."""

from __future__ import annotations

import argparse
import json

from .. import cliargs
from .debian import PrerequisiteMissing


def cmd_capture(args: argparse.Namespace) -> int:
    from ..host.devspec import property_help, wants_help
    from .capture import capture

    if wants_help(args):
        print(property_help())
        return 0
    if args.out is None:
        return cliargs.fail("capture-qemu: the output trace file is required")

    try:
        meta = capture(args.out, args.machine, args.vectors, args.disable_legacy, args.timeout,
                       kernel_version=args.kernel, smp=args.smp, device=args.device,
                       netdev=args.netdev, teardown=args.teardown)  # fmt: skip
    except (PrerequisiteMissing, RuntimeError, ValueError) as e:
        return cliargs.fail(f"capture-qemu: {e}")
    print(json.dumps(meta, indent=2))
    return 0


def _netdev(text: str) -> str:
    from .capture import parse_netdev

    try:
        return str(parse_netdev(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str) -> str:
    from ..host.devspec import wants_help
    from .capture import device_string

    if wants_help(argparse.Namespace(device=text)):
        return text

    try:
        device_string(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture-qemu",
        help="record a real Linux guest probing QEMU 7.2's virtio-net-pci",
        description="Boot Debian's Linux 6.1 (or --kernel 6.12, bookworm-backports' image, "
        "fetched into the cache) under QEMU 7.2 (TCG) with a virtio-net-pci "
        "device, record every config and BAR access from QEMU's trace events, and write them "
        "in our trace format (docs/DESIGN.md 'Access trace format').",
    )
    p.add_argument("out", type=cliargs.output_file, nargs="?",  # not needed for --device help
                   help="output trace (JSON lines); the console goes to OUT.console.txt")  # fmt: skip
    p.add_argument("--kernel", choices=("6.1", "6.12"), default="6.1",
                   help="Debian's 6.1 (default) or 6.12 kernel image")  # fmt: skip
    p.add_argument("--machine", choices=("q35", "pc"), default="q35",
                   help="QEMU machine: q35 (PCIe, MMCONFIG) or pc (i440FX, port I/O config "
                        "cycles) (default q35)")  # fmt: skip
    p.add_argument("--vectors", type=cliargs.vectors, default=None, metavar="N",
                   help="MSI-X table size, 0..2048 (QEMU's default: 4)")  # fmt: skip
    p.add_argument("--smp", type=cliargs.cpus, default=1, metavar="N",
                   help="guest CPUs (default 1)")  # fmt: skip
    p.add_argument("--device", type=_device, default=None, metavar="STRING",
                   help="QEMU's -device string for the virtio-net-pci, e.g. "
                        "'virtio-net-pci,mq=on,vectors=6' (the capture adds netdev=n0, "
                        "addr=0x3, ioeventfd=off)")  # fmt: skip
    p.add_argument("--netdev", type=_netdev, default="user", metavar="user|tap[,queues=N,vnet_hdr=on|off]",
                   help="the device's peer: QEMU user networking (default) or a TAP (multi-queue "
                        "with queues=N) in a private network namespace (needs root)")  # fmt: skip
    p.add_argument("--teardown", action="store_true",
                   help="after the ping, unload virtio_net then virtio_pci (6.12: unbind it), "
                        "recorded as the 'teardown' phase")  # fmt: skip
    p.add_argument("--disable-legacy", action="store_true",
                   help="modern-only device (disable-legacy=on, device ID 0x1041)")  # fmt: skip
    p.add_argument("--timeout", type=cliargs.seconds, default=300.0, metavar="SECONDS",
                   help="give up if QEMU has not powered off after this many seconds "
                        "(default 300)")  # fmt: skip
    p.set_defaults(func=cmd_capture)
