"""Device-side commands: ``show`` (an lspci -vv-like view) and ``replay`` (trace vs model)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from .pci.regs import MSIX, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL, PCI_MSIX_FLAGS_QSIZE
from .trace import SPACES, load_jsonl
from .virtio import VirtioPciDevice, make_virtio_net_pci
from .virtio.memory import SparseMemory
from .virtio.regs import CAP, CFG_TYPE_NAMES, NOTIFY_OFF_MULTIPLIER


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


def apply_record(
    dev: VirtioPciDevice, regions: dict[str, tuple[int, int]], rec: dict
) -> int | None:
    """Apply one access record; returns the value read for a read, None for a write/skip."""
    space, op = rec.get("space"), rec.get("op")
    if space == "event" and rec.get("kind") == "queue-notify":
        # The recorded device signalled a used buffer (traffic the trace does not carry):
        # re-apply that decision so ISR and interrupts follow the recording.
        queue = rec.get("queue")
        if isinstance(queue, int) and 0 <= queue < len(dev.device.queues):
            dev.notify_queue(queue)
        return None
    if space not in SPACES or op not in ("r", "w") or "via" in rec:
        return None
    offset, size = int(rec["offset"]), int(rec["size"])
    if space == "cfg":
        if op == "r":
            return dev.cfg_read(offset, size)
        dev.cfg_write(offset, size, int(rec["value"]))
        return None
    if space not in regions:
        return 0 if op == "r" else None
    bar, base = regions[space]
    if op == "r":
        return dev.bar_read(bar, base + offset, size)
    dev.bar_write(bar, base + offset, size, int(rec["value"]))
    return None


def replay_records(
    records: list[dict[str, Any]],
    vectors: int | None = None,
    queue_pairs: int = 1,
    disable_legacy: bool = False,
    device: VirtioPciDevice | None = None,
) -> list[Mismatch]:
    """Apply every write in order and compare every read with its recorded value.

    Guest RAM is unknown to a register trace, so the device sees zeroed memory: rings read
    empty and no buffers are consumed.
    """
    dev = device or make_virtio_net_pci(
        vectors=vectors,
        queue_pairs=queue_pairs,
        disable_legacy=disable_legacy,
        memory=SparseMemory(),
    )
    regions = region_map(dev)
    out = []
    for index, rec in enumerate(records):
        try:
            got = apply_record(dev, regions, rec)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"record {index}: malformed access record {rec!r}: {e}") from None
        if got is None or rec.get("op") != "r":
            continue
        expected = int(rec["value"])
        if got != expected:
            out.append(
                Mismatch(index, rec["space"], int(rec["offset"]), int(rec["size"]), expected, got)
            )
    return out


def count_reads(records: list[dict[str, Any]]) -> int:
    return sum(
        1 for r in records if r.get("space") in SPACES and r.get("op") == "r" and "via" not in r
    )


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        records = load_jsonl(args.trace)
    except (OSError, ValueError) as e:
        print(f"virtio-msix replay: {e}", file=sys.stderr)
        return 2
    try:
        mismatches = replay_records(records, args.vectors, args.queue_pairs, args.disable_legacy)
    except ValueError as e:
        print(f"virtio-msix replay: {e}", file=sys.stderr)
        return 2
    reads = count_reads(records)
    if args.json:
        bad = {m.index: m for m in mismatches}
        dev_values = {m.index: m.got for m in mismatches}
        for index, rec in enumerate(records):
            if rec.get("space") in SPACES and rec.get("op") == "r" and "via" not in rec:
                exp = int(rec["value"])
                print(
                    json.dumps(
                        {
                            "index": index,
                            "space": rec["space"],
                            "offset": rec["offset"],
                            "size": rec["size"],
                            "expected": exp,
                            "got": dev_values.get(index, exp),
                            "match": index not in bad,
                        }
                    )
                )
    else:
        for m in mismatches:
            print(
                f"#{m.index} {m.space}+{m.offset:#x}/{m.size}: "
                f"trace {m.expected:#x}, model {m.got:#x}"
            )
    print(f"{reads - len(mismatches)} reads matched, {len(mismatches)} mismatched")
    return 1 if mismatches else 0


# -- show ------------------------------------------------------------------------------------------
def describe(dev: VirtioPciDevice) -> dict[str, Any]:
    """The device's PCI face, decoded, as a driver would read it (no side effects)."""
    cfg = dev.config
    word = dev.config_word
    info: dict[str, Any] = {
        "vendor_id": word(0),
        "device_id": word(2),
        "revision": cfg[8],
        "class": int.from_bytes(cfg[9:12], "little"),
        "subsystem_vendor_id": word(0x2C),
        "subsystem_id": word(0x2E),
        "interrupt_pin": cfg[0x3D],
        "command": word(4),
        "status": word(6),
        "bars": [],
        "capabilities": [],
    }
    for bar in dev.bars:
        if bar is None:
            continue
        info["bars"].append(
            {
                "index": bar.index,
                "kind": "rom"
                if bar.index == 6
                else "io"
                if bar.is_io
                else "mem64"
                if bar.is_64
                else "mem32",
                "prefetchable": bar.prefetchable,
                "size": bar.size,
                "address": dev.bar_address(bar.index),
                "regions": [
                    {"name": r.name, "offset": r.offset, "size": r.size}
                    for r in bar.regions.regions
                ],
            }
        )
    for pos, cap_id, _length in dev.capabilities():
        entry: dict[str, Any] = {"offset": pos, "id": cap_id, "next": cfg[pos + 1]}
        if cap_id == 0x11:
            ctrl = word(pos + MSIX["message_control"].offset)
            table = dev.config_long(pos + MSIX["table_offset_bir"].offset)
            pba = dev.config_long(pos + MSIX["pba_offset_bir"].offset)
            entry.update(
                kind="MSI-X",
                table_size=(ctrl & PCI_MSIX_FLAGS_QSIZE) + 1,
                enable=bool(ctrl & PCI_MSIX_FLAGS_ENABLE),
                function_mask=bool(ctrl & PCI_MSIX_FLAGS_MASKALL),
                table_bir=table & 7,
                table_offset=table & ~7,
                pba_bir=pba & 7,
                pba_offset=pba & ~7,
            )
        elif cap_id == 0x09:
            cfg_type = cfg[pos + CAP["cfg_type"].offset]
            entry.update(
                kind=f"virtio {CFG_TYPE_NAMES.get(cfg_type, '?')}",
                cfg_type=cfg_type,
                cap_len=cfg[pos + CAP["cap_len"].offset],
                bar=cfg[pos + CAP["bar"].offset],
                bar_offset=dev.config_long(pos + CAP["offset"].offset),
                length=dev.config_long(pos + CAP["length"].offset),
            )
            if cfg_type == 2:
                entry["notify_off_multiplier"] = dev.config_long(pos + NOTIFY_OFF_MULTIPLIER.offset)
        info["capabilities"].append(entry)
    if dev.msix is not None:
        info["msix_table"] = [asdict(e) for e in dev.msix.entries]
    info["virtio"] = {
        "device": dev.device.name,
        "device_id": dev.device.device_id,
        "host_features": dev.device.host_features,
        "num_queues": len(dev.device.queues),
        "queue_max_sizes": [q.max_size for q in dev.device.queues],
        "config_len": dev.device.config_len,
    }
    return info


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


def cmd_show(args: argparse.Namespace) -> int:
    dev = make_virtio_net_pci(
        vectors=args.vectors, queue_pairs=args.queue_pairs, disable_legacy=args.disable_legacy
    )
    info = describe(dev)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(render_show(info))
    return 0


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vectors",
        type=int,
        default=None,
        help="MSI-X table size (default 2*pairs+2; 0 = no MSI-X)",
    )
    p.add_argument("--queue-pairs", type=int, default=1, help="virtio-net queue pairs (default 1)")
    p.add_argument(
        "--disable-legacy", action="store_true", help="modern-only device (0x1041, rev 1)"
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="an lspci -vv-like view of the device model")
    add_device_options(p)
    p.add_argument("--json", action="store_true", help="print the decoded view as JSON")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("replay", help="apply a recorded access trace to the device model")
    p.add_argument("trace", help="JSON-lines access trace (DESIGN.md format)")
    add_device_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per read")
    p.set_defaults(func=cmd_replay)
