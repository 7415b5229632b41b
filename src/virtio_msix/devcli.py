"""Device-side commands: ``show`` (an lspci -vv-like view) and ``replay`` (trace vs model)."""

from __future__ import annotations

import argparse
import json
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cliargs
from .cliargs import fail
from .host.devspec import (
    add_device_arguments,
    command_spec,
    property_help,
    spec_from_args,
    wants_help,
)
from .pci.function import CFG_LE, PciFunction
from .trace import EVENT_SPACES, SPACES, load_jsonl_lines, trace_meta
from .virtio import VirtioPciDevice, make_virtio_net_pci
from .virtio.describe import describe
from .virtio.devspec import DeviceSpec, parse_device
from .virtio.memory import SparseMemory


@dataclass
class Mismatch:
    index: int  # position of the record in the trace
    space: str
    offset: int
    size: int
    expected: int
    got: int


def region_map(dev: VirtioPciDevice) -> dict[str, tuple[int, int]]:
    """Trace space name → (BAR index, region start inside that BAR)."""
    out: dict[str, tuple[int, int]] = {}
    for bar in dev.bars:
        if bar is None:
            continue
        for region in bar.regions.regions:
            out.setdefault(region.name, (bar.index, region.offset))
    return out


def region_sizes(dev: VirtioPciDevice) -> dict[str, int]:
    """Trace space name → the structure's size (config space included)."""
    sizes = {"cfg": len(dev.config)}
    for bar in dev.bars:
        if bar is None:
            continue
        for region in bar.regions.regions:
            sizes.setdefault(region.name, region.size)
    return sizes


def is_access(rec: dict[str, Any]) -> bool:
    """A register access replay applies (not an event, not a PCI_CFG-window access: that one
    was made by the device on the driver's behalf and its cfg write is in the trace too)."""
    return rec.get("space") not in EVENT_SPACES and "via" not in rec


def check_record(rec: dict[str, Any], sizes: dict[str, int]) -> str | None:
    """Why ``rec`` cannot be applied to this device, or None if it can (or is not an access)."""
    if not is_access(rec):
        return None
    space, op = rec.get("space"), rec.get("op")
    if space not in SPACES:
        return f"unknown space {space!r}"
    if op not in ("r", "w"):
        return f"unknown op {op!r} (r or w)"
    for key in ("offset", "size", "value"):
        if key not in rec:
            return f"no {key!r}"
        if not isinstance(rec[key], int) or isinstance(rec[key], bool):
            return f"{key} {rec[key]!r} is not an integer"
    offset, size, value = rec["offset"], rec["size"], rec["value"]
    # PCI config cycles carry at most a dword; MMIO and port accesses up to a quadword.
    if size not in ((1, 2, 4) if space == "cfg" else (1, 2, 4, 8)):
        return f"size {size} is not an access size of {space}"
    if space not in sizes:
        return f"this device has no {space} structure"
    if offset < 0 or offset + size > sizes[space]:
        return f"offset {offset:#x}+{size} is outside {space} ({sizes[space]:#x} bytes)"
    if not 0 <= value < 1 << (8 * size):
        return f"value {value:#x} does not fit {size} bytes"
    return None


def check_records(
    records: list[dict[str, Any]], sizes: dict[str, int], lines: list[int] | None = None
) -> list[str]:
    """A description of every record that cannot be applied (empty: all can)."""
    bad = []
    for index, rec in enumerate(records):
        why = check_record(rec, sizes)
        if why:
            where = f"line {lines[index]}" if lines else f"record {index}"
            bad.append(f"{where}: {why}")
    return bad


def apply_record(
    dev: VirtioPciDevice, regions: dict[str, tuple[int, int]], rec: dict
) -> int | None:
    """Apply one checked record; returns the value read for a read, None otherwise."""
    space, op = rec.get("space"), rec.get("op")
    if space == "event" and rec.get("kind") == "queue-notify":
        # The recorded device signalled a used buffer (traffic the trace does not carry):
        # re-apply that decision so ISR and interrupts follow the recording.
        queue = rec.get("queue")
        if isinstance(queue, int) and 0 <= queue < len(dev.device.queues):
            dev.notify_queue(queue)
        return None
    if not is_access(rec):
        return None
    offset, size = rec["offset"], rec["size"]
    if space == "cfg":
        if op == "r":
            return dev.cfg_read(offset, size)
        dev.cfg_write(offset, size, rec["value"])
        return None
    bar, base = regions[space]
    if op == "r":
        return dev.bar_read(bar, base + offset, size)
    dev.bar_write(bar, base + offset, size, rec["value"])
    return None


def replay_records(
    records: list[dict[str, Any]],
    vectors: int | None = None,
    queue_pairs: int = 1,
    disable_legacy: bool = False,
    device: VirtioPciDevice | None = None,
    lines: list[int] | None = None,
    spec: DeviceSpec | None = None,
) -> list[Mismatch]:
    """Apply every write in order and compare every read with its recorded value.

    Every record is checked first: one that cannot be applied to this device (unknown space or
    op, a size no bus access has, an offset past the structure, a missing or non-integer field)
    is a ValueError naming it, never a silent skip or a match. Guest RAM is unknown to a
    register trace, so the device sees zeroed memory: rings read empty. ``spec``: the
    device a ``--device``/``--netdev`` describes, instead of the shorthand arguments; with
    neither, the device the trace's meta record names (QEMU's default without one).
    """
    if (
        device is None
        and spec is None
        and (vectors, queue_pairs, disable_legacy) == (None, 1, False)
    ):
        spec = spec_for_records(records)  # no device given: the trace's meta record, if any
    dev = device or make_virtio_net_pci(
        vectors=vectors,
        queue_pairs=queue_pairs,
        disable_legacy=disable_legacy,
        memory=SparseMemory(),
        spec=spec,
    )
    ops, bad = compile_records(records, dev, lines)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(
            f"{len(bad)} record{'s' if len(bad) > 1 else ''} cannot be applied: "
            + "; ".join(bad[:3])
            + more
        )
    out = []
    cfg_read, cfg_write, bar_read, bar_write = dev.cfg_read, dev.cfg_write, dev.bar_read, dev.bar_write
    config = dev.config if isinstance(dev, PciFunction) else b""
    for index, kind, bar, offset, size, value in ops:
        if kind == _CONFIG_BYTES:
            got = bar(config, offset)[0]
        elif kind == _DIRECT_CFG_READ:
            got = bar(offset, size)
        elif kind == _DIRECT_READ:
            got = bar(offset, size) & ((1 << (8 * size)) - 1)
        elif kind == _DIRECT_WRITE:
            bar(offset, size, value)
            continue
        elif kind == _BAR_READ:
            got = bar_read(bar, offset, size)
        elif kind == _BAR_WRITE:
            bar_write(bar, offset, size, value)
            continue
        elif kind == _CFG_READ:
            got = cfg_read(offset, size)
        elif kind == _CFG_WRITE:
            cfg_write(offset, size, value)
            continue
        else:  # _QUEUE_NOTIFY, as apply_record
            queues = dev.device.queues
            if 0 <= value < len(queues):
                dev.notify_queue(value)
            continue
        if got != value:
            rec = records[index]
            out.append(Mismatch(index, rec["space"], rec["offset"], size, value, got))
    return out


# What compile_records turns each record into: (record index, kind, BAR, offset, size, value).
# _DIRECT_*: BAR is the region's handler itself, called with the offset inside the region.
_CFG_READ, _CFG_WRITE, _BAR_READ, _BAR_WRITE, _QUEUE_NOTIFY, _DIRECT_READ, _DIRECT_WRITE = range(7)
_DIRECT_CFG_READ = 7
# BAR is the unpack_from of the access's size: a config read no hook watches is the function's
# config bytes, as PciFunction._cfg_read returns them (PciFunction.cfg_read_is_plain).
_CONFIG_BYTES = 8
_SIZES_CFG = (1, 2, 4)
_EVENT_SPACES = frozenset(EVENT_SPACES)
_ACCESS_FIELDS = operator.itemgetter("op", "offset", "size", "value")
_SIZES_BAR = (1, 2, 4, 8)


def compile_records(
    records: list[dict[str, Any]], dev: VirtioPciDevice, lines: list[int] | None = None
) -> tuple[list[tuple[int, int, Any, int, int, int]], list[str]]:
    """Check every record (``check_record``) and turn each one replay applies into a tuple
    (record index, kind, BAR, offset inside the BAR, size, value) — what ``apply_record``
    would do, decided once — so that the replay loop does no lookups. Returns the operations
    and a description of every record that cannot be applied (as ``check_records``)."""
    sizes = region_sizes(dev)
    regions = region_map(dev)
    # With nothing recording the device's accesses and the function's own BAR path (not a
    # wrapper's), an access that is one handler call (RegionMap.lookup) calls that handler
    # directly: what PciFunction.bar_read/bar_write would do, without the layers between.
    direct = (
        isinstance(dev, PciFunction)
        and type(dev).bar_read is PciFunction.bar_read
        and type(dev).bar_write is PciFunction.bar_write
        and not dev.recorder.active
    )
    direct_cfg = direct and type(dev).cfg_read is PciFunction.cfg_read  # its _cfg_read, untraced
    ops: list[tuple[int, int, Any, int, int, int]] = []
    bad: list[str] = []
    # A trace repeats the same few registers: (space, op, offset, size) → (kind, target,
    # offset, largest value), decided once per compile; later records check only their value.
    seen: dict[tuple[str, str, int, int], tuple[int, Any, int, int]] = {}
    append = ops.append
    for index, rec in enumerate(records):
        space = rec.get("space")
        if space in _EVENT_SPACES or "via" in rec:
            if space == "event" and rec.get("kind") == "queue-notify":
                queue = rec.get("queue")
                if type(queue) is int:  # noqa: E721 — bool is not a queue index
                    append((index, _QUEUE_NOTIFY, 0, 0, 0, queue))
                elif isinstance(queue, int):
                    append((index, _QUEUE_NOTIFY, 0, 0, 0, int(queue)))
            continue
        try:
            op, offset, size, value = _ACCESS_FIELDS(rec)  # the four gets below, in one call
        except KeyError:
            op, offset = rec.get("op"), rec.get("offset")
            size, value = rec.get("size"), rec.get("value")
        exact = (
            type(offset) is int and type(size) is int and type(value) is int  # noqa: E721
            and type(space) is str and type(op) is str  # noqa: E721
        )  # fmt: skip
        if exact:
            hit = seen.get((space, op, offset, size))  # type: ignore[arg-type]
            if hit is not None and 0 <= value <= hit[3]:  # type: ignore[operator]
                append((index, hit[0], hit[1], hit[2], size, value))  # type: ignore[arg-type]
                continue
        # The common case checked inline; anything else gets check_record's full verdict.
        limit = sizes.get(space) if space in SPACES else None  # type: ignore[arg-type]
        if not (
            exact
            and limit is not None
            and (op == "r" or op == "w")
            and size in (_SIZES_CFG if space == "cfg" else _SIZES_BAR)
            and 0 <= offset and offset + size <= limit  # type: ignore[operator]
            and 0 <= value < 1 << (8 * size)  # type: ignore[operator]
        ):  # fmt: skip
            why = check_record(rec, sizes)
            if why:
                where = f"line {lines[index]}" if lines else f"record {index}"
                bad.append(f"{where}: {why}")
                continue
            offset, size, value = int(offset), int(size), int(value)  # type: ignore[arg-type]
        target: Any
        if space == "cfg":
            plain = op == "r" and direct_cfg and dev.cfg_read_is_plain(offset, size)  # type: ignore
            if plain:
                kind, target, at = _CONFIG_BYTES, CFG_LE[size].unpack_from, offset
            elif op == "r" and direct_cfg:
                kind, target, at = _DIRECT_CFG_READ, dev._cfg_read, offset
            else:
                kind, target, at = (_CFG_READ if op == "r" else _CFG_WRITE), 0, offset
        else:
            bar, base = regions[space]  # type: ignore[index]
            b = dev.bars[bar] if direct else None
            region, rel, one_call = b.regions.lookup(base + offset, size) if b else (None, 0, False)
            if region is not None and one_call:
                if op == "r":
                    kind, target, at = _DIRECT_READ, region.read_fn, rel
                else:
                    kind, target, at = _DIRECT_WRITE, region.write_fn, rel
            else:
                kind, target, at = (_BAR_READ if op == "r" else _BAR_WRITE), bar, base + offset
        ops.append((index, kind, target, at, size, value))
        if exact:
            seen[(space, op, offset, size)] = (kind, target, at, (1 << (8 * size)) - 1)  # type: ignore[index]
    return ops, bad


def spec_for_records(records: list[dict[str, Any]]) -> DeviceSpec | None:
    """The device the trace's meta line describes (SpecError if QEMU would refuse it)."""
    meta = trace_meta(records)
    if meta is None or not isinstance(meta.get("device"), str):
        return None
    netdev = meta.get("netdev")
    return parse_device(meta["device"], netdev if isinstance(netdev, str) else None)


def meta_json_for(path: str) -> dict[str, Any] | None:
    """An old capture's ``NAME.meta.json`` beside ``NAME.jsonl`` (vectors, disable_legacy),
    or None. Its text may start with capture-qemu's progress line before the JSON."""
    if not path.endswith(".jsonl"):
        return None
    try:
        text = open(path[: -len(".jsonl")] + ".meta.json", encoding="utf-8").read()
        meta = json.loads(text[text.index("{") :])
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def replay_spec(args: argparse.Namespace, records: list[dict[str, Any]]) -> tuple[DeviceSpec, str]:
    """Which device a replay builds, and from where: the command line when it describes one,
    else the trace's meta line, else an old capture's NAME.meta.json, else QEMU's default."""
    given = (
        args.device or args.netdev or args.vectors is not None or args.queue_pairs != 1
        or args.disable_legacy
    )  # fmt: skip
    if given:
        return spec_from_args(args), "command line"
    spec = spec_for_records(records)
    if spec is not None:
        return spec, "the trace's meta record"
    meta = meta_json_for(args.trace) if args.trace != "-" else None
    if meta is not None:
        ns = argparse.Namespace(
            device=None, netdev=None, queue_pairs=1,
            vectors=meta.get("vectors") if isinstance(meta.get("vectors"), int) else None,
            disable_legacy=meta.get("disable_legacy") is True,
        )  # fmt: skip
        return spec_from_args(ns), f"{Path(args.trace).stem}.meta.json"
    return spec_from_args(args), "QEMU's default: the trace names no device"


def count_reads(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if is_access(r) and r.get("op") == "r")


def cmd_replay(args: argparse.Namespace) -> int:
    if wants_help(args):
        print(property_help())
        return 0
    if args.trace is None:
        return fail("replay: a trace file is required (- reads standard input)")
    name = "<stdin>" if args.trace == "-" else args.trace
    try:
        numbered = load_jsonl_lines(sys.stdin if args.trace == "-" else args.trace)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return fail(f"replay: {e}")
    records = [rec for _, rec in numbered]
    if not records:
        return fail(f"replay: {name}: empty trace (no records)")
    if not any(is_access(r) for r in records):
        return fail(f"replay: {name}: no register accesses to replay")
    try:
        spec, source = replay_spec(args, records)
        for w in spec.warnings:
            print(f"virtio-msix: {w}", file=sys.stderr)
        mismatches = replay_records(records, spec=spec, lines=[n for n, _ in numbered])
    except ValueError as e:
        return fail(f"replay: {name}: {e}")
    reads = count_reads(records)
    if args.json:
        got = {m.index: m.got for m in mismatches}
        for index, rec in enumerate(records):
            if is_access(rec) and rec["op"] == "r":
                print(
                    json.dumps(
                        {
                            "kind": "read",
                            "index": index,
                            "space": rec["space"],
                            "offset": rec["offset"],
                            "size": rec["size"],
                            "expected": rec["value"],
                            "got": got.get(index, rec["value"]),
                            "match": index not in got,
                        }
                    )
                )
        print(
            json.dumps(
                {
                    "kind": "summary",
                    # as capture-qemu counts them: the meta record is not one
                    "records": sum(1 for r in records if r.get("space") != "meta"),
                    "reads": reads,
                    "matched": reads - len(mismatches),
                    "mismatched": len(mismatches),
                    "device": spec.text,
                    "netdev": spec.netdev.text,
                    "device_from": source,
                }
            )
        )
    else:
        # Which device the reads are judged against, and where that came from (a flag
        # replaces the trace's own description wholly, as on every command).
        print(f"device: {spec.text} (netdev {spec.netdev.text}; from {source})")
        line_of = [n for n, _ in numbered]
        for m in mismatches:
            print(
                f"line {line_of[m.index]}: {m.space}+{m.offset:#x}/{m.size}: "
                f"trace {m.expected:#x}, model {m.got:#x}"
            )
        print(f"{reads - len(mismatches)} reads matched, {len(mismatches)} mismatched")
    return 1 if mismatches else 0


# -- show ------------------------------------------------------------------------------------------
def render_show(info: dict[str, Any]) -> str:
    lines = [
        f"00:03.0 Class {info['class']:06x}: Device {info['vendor_id']:04x}:{info['device_id']:04x}"
        f" (rev {info['revision']:02x})",
        f"\tSubsystem: Device {info['subsystem_vendor_id']:04x}:{info['subsystem_id']:04x}",
        f"\tControl: {info['command']:#06x}  Status: {info['status']:#06x}",
        f"\tInterrupt: pin {'ABCD'[info['interrupt_pin'] - 1] if info['interrupt_pin'] else '-'}",
    ]
    for bar in info["bars"]:
        where = "unassigned" if bar["address"] is None else f"at {bar['address']:#x}"
        name = "Expansion ROM" if bar["kind"] == "rom" else f"Region {bar['index']}"
        kind = {
            "io": "I/O ports",
            "mem32": "Memory (32-bit)",
            "mem64": "Memory (64-bit)",
            "rom": "",
        }[bar["kind"]]
        pref = ", prefetchable" if bar["prefetchable"] else ""
        lines.append(f"\t{name}: {kind}{pref} {where} [size={_size(bar['size'])}]")
        for r in bar["regions"]:
            lines.append(f"\t\t{r['name']:<10} +{r['offset']:#06x} len {r['size']:#x}")
    lines.append("\tCapabilities:")
    for cap in info["capabilities"]:
        if cap["id"] == 0x11:
            lines.append(
                f"\t[{cap['offset']:02x}] MSI-X: Enable{'+' if cap['enable'] else '-'} "
                f"Count={cap['table_size']} Masked{'+' if cap['function_mask'] else '-'}"
            )
            lines.append(
                f"\t\tVector table: BAR={cap['table_bir']} offset={cap['table_offset']:08x}"
            )
            lines.append(f"\t\tPBA: BAR={cap['pba_bir']} offset={cap['pba_offset']:08x}")
        elif cap["id"] == 0x09:
            extra = (
                f" multiplier={cap['notify_off_multiplier']}"
                if "notify_off_multiplier" in cap
                else ""
            )
            lines.append(
                f"\t[{cap['offset']:02x}] Vendor Specific: VirtIO: {cap['kind'][7:]:<8} "
                f"BAR={cap['bar']} offset={cap['bar_offset']:08x} size={cap['length']:08x}{extra}"
            )
    if "msix_table" in info:
        lines.append("\tMSI-X table:")
        lines.append("\t\tentry  address             data        ctrl      masked  pending")
        for e in info["msix_table"]:
            lines.append(
                f"\t\t{e['index']:<6} {e['address']:#018x}  {e['data']:#010x}  {e['vector_control']:#010x}"
                f"  {'yes' if e['effectively_masked'] else 'no':<7} {'yes' if e['pending'] else 'no'}"
            )
    v = info["virtio"]
    lines.append(
        f"\tvirtio: {v['device']} (id {v['device_id']}), {v['num_queues']} queues "
        f"{v['queue_max_sizes']}, config {v['config_len']} bytes, features {v['host_features']:#018x}"
    )
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, div in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


def with_firmware(dev: VirtioPciDevice, slot: int = 3) -> VirtioPciDevice:
    """Put the device on a bus and let the firmware model assign its BARs and turn decode on,
    as a booted machine's ``lspci -xxx`` shows it (an unassigned 32-bit BAR reads 0, which
    lspci cannot tell from an absent one)."""
    from .guest.kernel import Kernel
    from .guest.pci import Firmware
    from .pci.bus import PciBus
    from .virtio.memory import SparseMemory

    bus = PciBus()
    bus.attach(slot, dev)
    Firmware().scan(Kernel(bus, SparseMemory()))
    return dev


def hexdump(dev: VirtioPciDevice, slot: int = 3) -> str:
    """Config space as ``lspci -xxx`` prints it (the 256 bytes of a conventional PCI function:
    the device has no PCI Express capability, so no extended space), read without side effects.
    pciutils' ``lspci -F FILE`` takes this format back: a ``bus:dev.fn`` line, then rows of
    ``offset: 16 hex bytes``."""
    cfg = bytes(dev.config[:256])
    lines = [f"00:{slot:02x}.0 Class {int.from_bytes(cfg[9:12], 'little'):06x}: "
             f"Device {dev.config_word(0):04x}:{dev.config_word(2):04x}"]  # fmt: skip
    for row in range(0, len(cfg), 16):
        lines.append(f"{row:02x}: " + " ".join(f"{b:02x}" for b in cfg[row : row + 16]))
    return "\n".join(lines) + "\n"


def cmd_show(args: argparse.Namespace) -> int:
    spec = command_spec(args, "show")
    if isinstance(spec, int):
        return spec
    dev = make_virtio_net_pci(spec=spec)
    if args.hexdump:
        print(hexdump(with_firmware(dev)))
        return 0
    info = describe(dev)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(render_show(info))
    return 0


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vectors",
        type=cliargs.vectors,
        default=None,
        metavar="N",
        help="MSI-X table size, 0..2048 (default 2*queue-pairs+2; 0 = no MSI-X capability)",
    )
    p.add_argument(
        "--queue-pairs",
        type=cliargs.queue_pairs,
        default=1,
        metavar="N",
        help="virtio-net queue pairs, 1..511 (default 1; more than 1 offers VIRTIO_NET_F_MQ)",
    )
    p.add_argument(
        "--disable-legacy",
        action="store_true",
        help="modern-only device (device ID 0x1041, revision 1) instead of QEMU's transitional "
        "default (0x1000 with a legacy I/O BAR)",
    )
    add_device_arguments(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="an lspci -vv-like view of the device model",
        description="Print the device model's PCI face as a driver would read it: header, "
        "BARs and the structures in them, capabilities, the MSI-X table and PBA.",
    )
    add_device_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the decoded view as JSON")
    out.add_argument(
        "--hexdump",
        action="store_true",
        help="print config space in `lspci -xxx` format, after a firmware-style BAR assignment; "
        "pciutils' `lspci -F FILE -vvv` decodes it",
    )
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "replay",
        help="apply a recorded access trace to the device model",
        description="Apply every write of a recorded access trace to the device model, in "
        "order, and compare every read with the recorded value. A record replay cannot apply "
        "(unknown space or op, bad size, offset past its structure, missing or non-integer "
        "field) is an error. Format: docs/DESIGN.md, 'Access trace format'. Exit status: 0 all "
        "reads matched, 1 some differ, 2 bad input.",
    )
    p.add_argument(
        "trace",
        type=cliargs.input_file,
        nargs="?",  # not needed for --device help
        help="JSON-lines access trace, as sim/boot --trace-json and capture-qemu write it; "
        "- reads standard input",
    )
    add_device_options(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line: each read ({"kind": "read", ...}), then '
        '{"kind": "summary", ...}',
    )
    p.set_defaults(func=cmd_replay)
