"""``virtio-msix sim``: the Linux 6.1 driver model probes the device model, passes traffic,
and shows the result: capabilities, features, the MSI-X table, the event → vector map,
/proc/interrupts, and (with --backtraces) the kernel-style backtrace of every table fill and
unmask."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .. import cliargs
from ..abi.virtio import status_names
from ..cliargs import fail
from ..host.devspec import add_device_arguments, command_spec, meta_record
from ..host.views import render_event_vectors, render_msix_table
from ..trace import Recorder
from ..trace.pcapng import PcapngWriter
from ..trace.recorder import JsonlWriter
from ..trace.text import table
from ..trace.timeline import TimelineWriter
from ..virtio.net import feature_names
from .errnos import errname
from .kernel import DEFAULT_KERNEL_VERSION, KERNEL_VERSIONS
from .sim import SimOptions, SimResult, run_sim
from .views import render_vector_placement


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def head(self, text: str) -> str:
        return self(text, "1;36")

    def good(self, text: str) -> str:
        return self(text, "32")

    def bad(self, text: str) -> str:
        return self(text, "31")

    def dim(self, text: str) -> str:
        return self(text, "2")


def health_lines(health: dict[str, Any], s: Style | None = None) -> list[str]:
    """The device's health() as a few lines, non-zero items only."""
    s = s or Style(False)
    out = []
    counters = [f"{k} {v}" for k, v in health["counters"].items() if v]
    if counters:
        out.append("  counters : " + ", ".join(counters))
    dropped = [f"{k} {v}" for k, v in health["dropped"].items() if v]
    if dropped:
        out.append(s.bad("  dropped  : " + ", ".join(dropped)))
    if health["needs_reset"]:
        out.append(s.bad(f"  DEVICE_NEEDS_RESET: {health['needs_reset']}"))
    for e in health["errors"]:
        out.append(s.bad(f"  error    : {e}"))
    return out


def render(res: SimResult, s: Style) -> str:
    o = res.options
    out: list[str] = []
    dev = res.pci_dev
    out.append(s.head(f"== virtio-net on 0000:00:{dev.slot:02x}.0 [{dev.vendor:04x}:{dev.device:04x}]"
                      f" probed by the Linux {o.kernel} model ({o.arch}, {o.cpus} CPU{'s' if o.cpus > 1 else ''})"))  # fmt: skip
    if res.vp.ops.is_legacy:
        out.append("   legacy virtio-pci (virtio_pci_legacy.c): registers in BAR0's I/O ports, "
                   "no VERSION_1")  # fmt: skip
    out.append("")
    out.append(s.head("Capabilities (as the driver's walks find them)"))
    rows = []
    for c in res.capabilities:
        if c["id"] == 0x11:
            rows.append([f"{c['offset']:#04x}", "MSI-X", f"BAR{c['table_bir']}",
                         f"table {c['table_offset']:#x}, PBA {c['pba_offset']:#x}", f"{c['table_size']} entries"])  # fmt: skip
        else:
            rows.append([f"{c['offset']:#04x}", c["kind"], f"BAR{c['bar']}",
                         f"offset {c['bar_offset']:#x}", f"length {c['length']:#x}"])  # fmt: skip
    out.append(table(rows, ["cap", "type", "bar", "where", "size"]))
    out.append("")
    vp = res.vp
    out.append(s.head("Features"))
    out.append(f"  device offers : {vp.device_features:#018x}")
    out.append(f"  negotiated    : {vp.features:#018x}  " + " ".join(feature_names(vp.features)))
    out.append("")
    out.append(s.head("vp_find_vqs ladder"))
    for step in vp.ladder:
        out.append("  " + (s.good(step) if step.endswith("ok") else s.bad(step)))
    if res.probe_rc:
        out.append(s.bad(f"  probe failed: {errname(res.probe_rc)}"))
        out.extend(f"    kernel: {line}" for line in res.kernel.log[-2:])
    out.append("")
    out.append(s.head("MSI-X table after probe"))
    if res.table_after_probe:
        out.append(render_msix_table(res.table_after_probe))
    else:
        out.append(s.dim("  (no MSI-X capability: the device has vectors=0)"))
    out.append("")
    out.append(s.head("Event → vector (msix_config, queue_msix_vector)"))
    out.append(render_event_vectors(res.event_vectors))
    out.append("")
    if res.net is not None and not res.probe_rc:
        moved = f"{res.net.tx_packets} packets sent, {res.net.rx_packets} received"
        out.append(s.head(f"/proc/interrupts after the traffic ({moved})"))
    else:
        out.append(s.head("/proc/interrupts (no traffic: the driver did not probe)"))
    rows = [[f"{r['irq']}:", *[str(c) for c in r["counts"]], r["chip"], r["hwirq"], r["name"]]
            for r in (res.interrupts or res.interrupts_after_probe)]  # fmt: skip
    out.append(table(rows, ["IRQ", *[f"CPU{c}" for c in range(o.cpus)], "chip", "hwirq", "name"]))
    if res.vector_placement:
        out.append("")
        # The MSI-X table above is the probe's; the lazy affinity moves at the first interrupts
        # come after it, so the placement says when it was taken.
        out.append(s.head("Vector placement at the end of the run (x86 vector matrix; the "
                          "affinity moves included) and XPS"))  # fmt: skip
        out.append(render_vector_placement(res.vector_placement))
    if res.net is not None:
        out.append(f"  traffic: {res.net.tx_packets} sent, {res.net.tx_completed} completed, "
                   f"{res.net.rx_packets} received through the loopback backend")  # fmt: skip
        if res.net.rx_oom or res.net.tx_dropped:
            out.append(s.bad(f"  guest RAM ran out: {res.net.rx_oom} RX refills cut short, "
                             f"{res.net.tx_dropped} frames dropped before TX"))  # fmt: skip
    health = health_lines(res.device.health(), s)
    if health:
        out.append("")
        out.append(s.head("Device health"))
        out.extend(health)
    if res.masked_demo:
        m = res.masked_demo
        out.append("")
        out.append(s.head("Masked entry during traffic"))
        out.append(f"  entry {m['entry']} (irq {m['irq']}) masked; a packet arrives: "
                   f"pending bit {'set' if m['pending_while_masked'] else 'clear'}, "
                   f"{m['interrupts_while_masked']} interrupts while masked")  # fmt: skip
        out.append(f"  unmasked: {m['interrupts_after_unmask']} interrupt delivered, "
                   f"pending bit {'set' if m['pending_after_unmask'] else 'clear'}")  # fmt: skip
    if o.teardown and res.teardown_steps:
        out.append("")
        out.append(s.head("Removal (phase 'teardown')"))
        for st in res.teardown_steps:
            out.append(f"  {st['step']:<18} {st['calls']:<42} {st['accesses']} accesses")
        cmd = res.command_after_teardown or 0
        st = res.status_after_teardown or 0
        out.append(f"  then: device status {st:#x} ({status_names(st)}), "
                   f"Bus Master {'on' if cmd & 0x4 else 'off'}, "
                   f"INTx {'disabled' if cmd & 0x400 else 'enabled'}")  # fmt: skip
    if (
        o.teardown
        and res.table_after_teardown is not None
        and res.msix_enabled_after_teardown is not None
    ):
        out.append("")
        masked = all(r["entry_masked"] for r in res.table_after_teardown)
        out.append(s.head("After the removal") + f": every entry masked: {masked}, "
                   f"MSI-X enabled: {res.msix_enabled_after_teardown}")  # fmt: skip
    if o.backtraces:
        out.append("")
        out.append(s.head("Backtraces (from the model's call stack)"))
        for bt, _ in res.kernel.backtraces:
            out.append(bt.format())
            out.append("")
    return "\n".join(out)


def to_json(res: SimResult) -> dict[str, Any]:
    options = dict(vars(res.options))
    spec = options.pop("spec", None)
    if spec is not None:
        options["device"], options["netdev"] = spec.text, spec.netdev.text
        # the device as built, not the shorthand flags (None when --device said it instead)
        options["vectors"], options["queue_pairs"] = spec.vectors, spec.queue_pairs
        options["disable_legacy"] = spec.disable_legacy
    return {
        "options": options,
        "probe_rc": res.probe_rc,
        "transport": "legacy" if res.vp.ops.is_legacy else "modern",
        "probe_error": errname(res.probe_rc) if res.probe_rc else None,
        "device_features": res.vp.device_features,
        "features": res.vp.features,
        "feature_names": feature_names(res.vp.features),
        "ladder": res.vp.ladder,
        "capabilities": res.capabilities,
        "msix_table": res.table_after_probe,
        "event_vectors": [{"event": e, "vector": v} for e, v in res.event_vectors],
        "interrupts": res.interrupts or res.interrupts_after_probe,
        "vector_placement_after_probe": res.vector_placement_after_probe,
        "vector_placement": res.vector_placement,
        "masked_demo": res.masked_demo,
        "table_after_teardown": res.table_after_teardown,
        "msix_enabled_after_teardown": res.msix_enabled_after_teardown,
        "teardown": {
            "steps": res.teardown_steps,
            "status_after": res.status_after_teardown,
            "command_after": res.command_after_teardown,
        },
        "traffic": None
        if res.net is None
        else {
            "tx": res.net.tx_packets,
            "tx_completed": res.net.tx_completed,
            "rx": res.net.rx_packets,
            "tx_dropped": res.net.tx_dropped,
            "rx_refills_short": res.net.rx_oom,
        },
        "health": res.device.health(),
        "backtraces": [bt.format() for bt, _ in res.kernel.backtraces],
    }


def cmd_sim(args: argparse.Namespace) -> int:
    spec = command_spec(args, "sim")
    if isinstance(spec, int):
        return spec
    opts = SimOptions(
        vectors=args.vectors,
        queue_pairs=args.queue_pairs,
        cpus=args.cpus,
        arch=args.arch,
        packets=args.packets,
        disable_legacy=args.disable_legacy,
        backtraces=args.backtraces,
        refuse_vectors_from=args.refuse_vectors_from,
        refuse_config_vector=args.refuse_config_vector,
        mask_during_traffic=args.mask_during_traffic,
        kernel=args.kernel,
        spec=spec,
    )
    # The views need no records: they are streamed to the files asked for, never all kept,
    # so that memory stays flat for any --packets.
    recorder = Recorder(enabled=False)
    outputs: list[tuple[str, Any]] = []  # (the file asked for, its writer)
    capture = irq_hook = None
    try:
        if args.trace_json:
            jsonl = JsonlWriter(open(args.trace_json, "w", encoding="utf-8"))
            outputs.append((args.trace_json, jsonl))
            jsonl(meta_record(spec, smp=args.cpus, kernel_version=args.kernel, source="sim"))
            recorder.subscribe(jsonl)
        if args.timeline:
            tl = TimelineWriter(open(args.timeline, "w", encoding="utf-8"), recorder.t0)
            outputs.append((args.timeline, tl))
            recorder.subscribe(tl.record)
            irq_hook = lambda desc, start, end: tl.handler(desc.irq, desc.name, start, end)  # noqa: E731
        if args.pcap:
            pcap = PcapngWriter(open(args.pcap, "wb"))
            outputs.append((args.pcap, pcap))
            capture = pcap.frame
        res = run_sim(opts, recorder, capture=capture, irq_hook=irq_hook)
    except OSError as e:  # writing an output file during the run
        close_outputs(outputs)
        name = next((p for p, w in outputs if getattr(w, "out", None) is not None), "output")
        return fail(f"sim: {e.filename or name}: {e.strerror or e}")
    except ValueError as e:
        close_outputs(outputs)
        return fail(f"sim: {e}")
    problem = close_outputs(outputs)  # the last buffered bytes can still fail (a full disk)
    if problem is not None:
        return fail(f"sim: {problem}")
    if args.json:
        print(json.dumps(to_json(res), indent=2, default=str))
    else:
        color = {"auto": sys.stdout.isatty(), "always": True, "never": False}[args.color]
        print(render(res, Style(color)))
    for path, _writer in outputs:  # on stderr: standard output is the report (or its JSON)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)
    return 0 if res.probe_rc == 0 else 1


def close_outputs(outputs: list[tuple[str, Any]]) -> str | None:
    """Close every output file; the first error closing one (a write that failed: a full
    disk), as ``PATH: reason``, if any."""
    first = None
    for path, out in outputs:
        try:
            out.close()
        except OSError as e:
            first = first or f"{path}: {e.strerror or e}"
    return first


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim",
        help="probe the device with the Linux 6.1 (or 6.12) driver model (the main job)",
        description="The Linux 6.1 driver model, or 6.12's with --kernel 6.12 (PCI probe, feature negotiation, vp_find_vqs "
        "with its MSI-X ladder, request_irq, DRIVER_OK) probes the device model, passes "
        "traffic through a loopback backend and removes the driver; shows capabilities, "
        "features, the MSI-X table, the event → vector map and /proc/interrupts. "
        "Architecture: docs/DESIGN.md.",
    )
    p.add_argument("--vectors", type=cliargs.vectors, default=None, metavar="N",
                   help="device MSI-X table size, 0..2048 (default 2*queue-pairs+2; "
                        "2: the shared-vector rung; 0: no MSI-X, INTx)")  # fmt: skip
    p.add_argument("--queue-pairs", type=cliargs.queue_pairs, default=1, metavar="N",
                   help="virtio-net queue pairs the device offers, 1..511 (default 1)")  # fmt: skip
    p.add_argument("--cpus", type=cliargs.cpus, default=1, metavar="N",
                   help="CPUs of the modelled machine, 1..255, each a local APIC with 201 "
                        "device vectors (6.1; the boot interrupts spread over the CPUs as "
                        "Linux places them) (default 1)")  # fmt: skip
    p.add_argument(
        "--arch",
        choices=("x86", "um"),
        default="x86",
        help="MSI flavour: x86 local APIC messages, or User-Mode Linux's (default x86)",
    )
    p.add_argument("--kernel", choices=KERNEL_VERSIONS, default=DEFAULT_KERNEL_VERSION,
                   help="the Linux version the driver model follows where they differ: 6.1 "
                        "(Debian 12, default) or 6.12 (x86: physical-mode MSI messages, the "
                        "SHARED_SLOW rung) (default 6.1)")  # fmt: skip
    p.add_argument("--packets", type=cliargs.count, default=8, metavar="N",
                   help="frames sent (and received back) through the loopback backend "
                        "(default 8)")  # fmt: skip
    p.add_argument("--disable-legacy", action="store_true",
                   help="modern-only device (device ID 0x1041, revision 1) instead of QEMU's "
                        "transitional default")  # fmt: skip
    add_device_arguments(p)
    p.add_argument(
        "--backtraces", action="store_true", help="a backtrace at each table fill and unmask"
    )
    p.add_argument("--trace-json", metavar="FILE", type=cliargs.output_file,
                   help="write every access and interrupt as JSON lines "
                        "(docs/DESIGN.md 'Access trace format')")  # fmt: skip
    p.add_argument("--pcap", metavar="FILE", type=cliargs.output_file,
                   help="write every frame the driver sent and received as pcapng, with "
                        "inbound/outbound direction flags (tshark/Wireshark read it)")  # fmt: skip
    p.add_argument("--timeline", metavar="FILE", type=cliargs.output_file,
                   help="write a Chrome trace-event JSON timeline (Perfetto, chrome://tracing): "
                        "register accesses, MSI-X writes, MSI messages and interrupt handler "
                        "runs on a time axis")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the final state as one JSON document")
    p.add_argument("--refuse-vectors-from", type=cliargs.count, metavar="N",
                   help="fault: the device refuses to map vectors ≥ N (reads back NO_VECTOR)")  # fmt: skip
    p.add_argument(
        "--refuse-config-vector",
        action="store_true",
        help="fault: msix_config reads back NO_VECTOR",
    )
    p.add_argument(
        "--mask-during-traffic", action="store_true", help="mask input.0 while a packet arrives"
    )
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the headings and the ladder (auto: when stdout is a terminal)")  # fmt: skip
    p.set_defaults(func=cmd_sim)
