"""``--device``/``--netdev`` on every command, and the old flags as shorthands for them.

``--device 'virtio-net-pci,mq=on,vectors=6'`` and ``--netdev tap,queues=2`` are QEMU's own
``-device``/``-netdev`` (virtio/devspec.py parses them). The older flags stay: ``--vectors N``
is ``vectors=N``, ``--queue-pairs N`` is ``mq=on`` with an N-queue peer, ``--disable-legacy`` is
``disable-legacy=on``, boot's ``--net tap|responder`` is the netdev's type. A flag that says
something else than the description is one error line naming both.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..virtio.devspec import (
    PROPERTY,
    DeviceSpec,
    NetdevSpec,
    SpecError,
    parse_device,
    parse_netdev,
)

DEVICE_HELP = (
    "the device in QEMU's -device syntax, e.g. 'virtio-net-pci,mq=on,vectors=6,host_mtu=9000' "
    "(QEMU 7.2's virtio-net-pci properties; `--device help` lists them)"
)
NETDEV_HELP = (
    "the NIC's peer in QEMU's -netdev syntax: user | tap[,queues=N][,vnet_hdr=on|off] | "
    "responder[,queues=N] (boot's ARP/ICMP answerer; user means it on boot); it "
    "decides the offloads offered (a vnet-header TAP keeps checksum/TSO/UFO/ECN) and the queue "
    "pairs (queues=N) (default user)"
)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="STRING", default=None, help=DEVICE_HELP)
    p.add_argument("--netdev", metavar="STRING", default=None, help=NETDEV_HELP)


def property_help() -> str:
    """``--device help``: the property table, as QEMU's ``-device virtio-net-pci,help``."""
    lines = ["virtio-net-pci options (QEMU 7.2; 'effect': what the model does with it):"]
    for p in PROPERTY.values():
        # 0 and 1 equal False and True: only a bool property's default reads on/off.
        if p.default is None:
            default: Any = "-"
        elif p.kind == "bool":
            default = "on" if p.default else "off"
        elif p.kind == "uint32" and p.default == 0xFFFFFFFF:
            default = "unset"
        else:
            default = p.default
        effect = {"model": "", "none": " [accepted, no effect]",
                  "refuse-on": " [only the default is modelled]"}[p.effect]  # fmt: skip
        lines.append(f"  {p.name}=<{p.kind}> (default: {default}) - {p.sets}{effect}")
    return "\n".join(lines)


def spec_from_args(args: argparse.Namespace, net_flag: str | None = None) -> DeviceSpec:
    """The DeviceSpec ``--device``/``--netdev`` and the old flags describe together.
    SpecError (one line) for a description QEMU refuses or a flag that contradicts it."""
    device_text: str = getattr(args, "device", None) or "virtio-net-pci"
    netdev_text: str | None = getattr(args, "netdev", None)
    netdev = parse_netdev(netdev_text) if netdev_text else NetdevSpec()
    if net_flag is not None:  # boot's --net responder|tap
        if netdev_text and netdev.kind not in (net_flag, "user" if net_flag == "responder" else ""):
            raise SpecError(f"--net {net_flag} conflicts with --netdev {netdev_text}")
        if not netdev_text:
            netdev = NetdevSpec(kind=net_flag, vnet_hdr=net_flag == "tap")
    spec = parse_device(device_text, netdev)
    extra: dict[str, Any] = {}
    vectors = getattr(args, "vectors", None)
    if vectors is not None:
        if spec.given("vectors") and spec.get("vectors") != vectors:
            raise SpecError(
                f"--vectors {vectors} conflicts with vectors={spec.get('vectors')} in --device"
            )
        extra["vectors"] = str(vectors)
    pairs = getattr(args, "queue_pairs", 1) or 1
    if pairs != 1:
        if netdev_text and netdev.queues not in (1, pairs):
            raise SpecError(
                f"--queue-pairs {pairs} conflicts with queues={netdev.queues} in --netdev"
            )
        if spec.given("mq") and not spec.get("mq"):
            raise SpecError(f"--queue-pairs {pairs} conflicts with mq=off in --device")
        spec.netdev.queues = pairs
        if spec.netdev.kind == "user":
            # QEMU's user netdev has one queue; our own peer (boot's responder, offered as user)
            # takes any number, so the description stays one that parses again.
            spec.netdev.kind = "responder"
        extra["mq"] = "on"
    if getattr(args, "disable_legacy", False):
        if spec.given("disable-legacy") and spec.get("disable-legacy") != "on":
            raise SpecError(
                f"--disable-legacy conflicts with disable-legacy={spec.get('disable-legacy')} in --device"
            )
        extra["disable-legacy"] = "on"
    if extra:
        text = ",".join([device_text] + [f"{k}={v}" for k, v in extra.items() if not spec.given(k)])
        spec = parse_device(text, spec.netdev)
    return spec


def wants_help(args: argparse.Namespace) -> bool:
    return getattr(args, "device", None) in ("help", "virtio-net-pci,help", "?")


def command_spec(
    args: argparse.Namespace, command: str, net_flag: str | None = None
) -> DeviceSpec | int:
    """The device a command's ``--device``/``--netdev`` and shorthand flags describe, with
    QEMU's warnings shown on stderr; or the exit status when there is nothing to run:
    0 after ``--device help`` printed the property table, 2 after one error line."""
    from ..cliargs import fail

    if wants_help(args):
        print(property_help())
        return 0
    try:
        spec = spec_from_args(args, net_flag=net_flag)
    except SpecError as e:
        return fail(f"{command}: {e}")
    for w in spec.warnings:
        print(f"virtio-msix: {w}", file=sys.stderr)
    return spec


def meta_record(spec: DeviceSpec, **extra: Any) -> dict[str, Any]:
    """A trace's first record naming its device (capture-qemu's format), so that ``replay``
    of a sim or boot trace needs no flags."""
    return {"space": "meta", "device": spec.text, "netdev": spec.netdev.text, **extra}
