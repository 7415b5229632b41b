"""The ``virtio-msix`` command. Each host package contributes its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from . import __version__

# Modules that provide ``add_parsers(subparsers)``; each subcommand sets ``func`` on its parser
# and returns an exit status from it.
COMMAND_MODULES = (
    "virtio_msix.guest.cli",  # sim
    "virtio_msix.devcli",  # show, replay
    "virtio_msix.qemu.cli",  # capture-qemu
    "virtio_msix.uml.cli",  # boot
)


class OneLineErrors(argparse.ArgumentParser):
    """An argument error is one line and exit status 2 (argparse prints the whole usage above
    it, 8 lines for sim, where the mistake gets lost); --help has the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="virtio-msix",
        description="virtio-over-PCI with MSI-X: device model, Linux driver model, real kernel.",
        epilog="With no command, runs `sim`. The architecture: docs/DESIGN.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that host is not built yet
                continue
            raise
        module.add_parsers(sub)
    from .completion import add_parsers as add_completion

    add_completion(sub, parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command modules are still being imported
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # No subcommand: the main job, `sim`, with whatever options were given
    # (docs/DESIGN.md "What a user sees"): `virtio-msix --cpus 2` is `virtio-msix sim --cpus 2`.
    if "sim" in _choices(parser) and (
        not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"))
    ):
        argv = ["sim", *argv]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


if __name__ == "__main__":
    sys.exit(main())
