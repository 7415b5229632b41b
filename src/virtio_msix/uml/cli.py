"""``virtio-msix boot``: command line and the views of a real kernel's run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import cliargs
from ..abi.msix import entry_field
from ..guest.errnos import errname
from ..host.devmodule import device_module
from ..host.devspec import add_device_arguments, command_spec
from ..host.env import PrerequisiteMissing
from ..host.views import render_event_vectors, render_msix_table
from ..trace.pcapng import FrameTap, PcapngWriter
from ..trace.text import table
from ..virtio.net import VirtioNet, feature_names
from . import kernel as uml_kernel
from .boot import BootError, BootInterrupted, BootOptions, BootResult, BootSession, run_boot


def health(res: BootResult) -> dict[str, Any]:
    """What went wrong without ending the run, and what ended it: bad virt-pci messages by
    kind (with the last ones' text), interrupt messages dropped (by reason) or coalesced,
    vhost-user problems, and the device's own health when it reports one."""
    s = res.host.stats if res.host is not None else None
    device_health = getattr(res.device, "health", None)
    return {
        "bad_messages": {
            "count": s.bad_messages if s else 0,
            "by_kind": dict(s.bad_by_kind) if s else {},
            "last": list(res.host.errors) if res.host is not None else [],
        },
        "irq_messages": {
            "dropped": s.irq_dropped if s else 0,
            "dropped_by_reason": dict(s.irq_dropped_by_reason) if s else {},
            "coalesced": s.irq_coalesced if s else 0,
            "pending": len(res.host.pending_irqs) if res.host is not None else 0,
        },
        "vhost_user": res.vhost.summary() if res.vhost is not None else None,
        "device": device_health() if callable(device_health) else None,
        "event_loop": dict(res.loop),
    }


def render_health(h: dict[str, Any]) -> list[str]:
    out = ["Health"]
    bad = h["bad_messages"]
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(bad["by_kind"].items()))
    out.append(f"  bad virt-pci messages: {bad['count']}" + (f" ({kinds})" if kinds else ""))
    out.extend(f"    {e}" for e in bad["last"])
    irq = h["irq_messages"]
    reasons = ", ".join(f"{k}: {n}" for k, n in sorted(irq["dropped_by_reason"].items()))
    out.append(f"  interrupt messages dropped: {irq['dropped']}" + (f" ({reasons})" if reasons
               else "") + f", coalesced: {irq['coalesced']}")  # fmt: skip
    vu = h["vhost_user"]
    if vu is not None:
        out.append(f"  vhost-user: {vu['messages']} messages, {vu['errors']} errors, "
                   f"{vu['unused_fds_closed']} unused descriptors closed, "
                   f"{vu['calls_coalesced']} calls coalesced, "
                   f"{vu['kicks_on_stopped_rings']} kicks on stopped rings")  # fmt: skip
        out.extend(f"    {e}" for e in vu["last_errors"])
        out.append(f"  guest memory: {vu.get('memory_regions_mapped', 0)} regions mapped so far "
                   "(a sealed memfd); any other read and written with pread/pwrite")  # fmt: skip
        out.extend(f"    not mapped: {e}" for e in vu.get("memory_not_mapped", []))
    loop = h.get("event_loop") or {}
    if loop:
        out.append(f"  event loop: {loop.get('passes', 0)} passes, {loop.get('kicks', 0)} kicks, "
                   f"TAP watched in {loop.get('tap_watched', 0)}")  # fmt: skip
    dev = h["device"]
    if dev is not None:
        dropped = ", ".join(f"{k}: {n}" for k, n in sorted(dev.get("dropped", {}).items()))
        out.append(f"  device: needs reset: {dev.get('needs_reset') or 'no'}; frames dropped: "
                   f"{sum(dev.get('dropped', {}).values())}" + (f" ({dropped})" if dropped
                   else ""))  # fmt: skip
        counters = ", ".join(f"{k} {n}" for k, n in sorted(dev.get("counters", {}).items()))
        if counters:
            out.append(f"    {counters}")
        out.extend(f"    error: {e}" for e in dev.get("errors", [])[-5:])
    return out


def to_json(res: BootResult) -> dict[str, Any]:
    return {
        "kernel": res.options.kernel,
        "error": res.error,
        "finished": res.finished,
        "script_status": res.script_status,
        "panic": res.panic,
        "console_tail": res.console_tail if not res.finished else [],
        "times_s": res.times,
        "msix_enabled": res.snapshot.get("msix_enabled"),
        "msix_function_masked": res.snapshot.get("function_masked"),
        "msix_table": res.snapshot.get("table", []),
        "event_vectors": res.snapshot.get("event_vectors", []),
        "msix_after_teardown": res.after_teardown,
        "device_features": res.snapshot.get("device_features"),
        "driver_features": res.snapshot.get("driver_features"),
        "device_status": res.snapshot.get("device_status"),
        "probe_errors": res.probe_errors(),
        "interrupts_before": res.interrupts("before"),
        "interrupts_after": res.interrupts("after"),
        "ping": res.ping(),
        "virt_pci": res.host.summary() if res.host else None,
        "health": health(res),
        "cut": res.cut,
    }


def render_features(res: BootResult) -> list[str]:
    """What the device offered and the real driver accepted (virtio 1.2 §3.1.1), its status,
    and any driver probe the kernel reported failed."""
    snap = res.snapshot
    if "device_features" not in snap:
        return []
    net = isinstance(res.device.device, VirtioNet)
    acked = snap["driver_features"]
    out = ["Features (when the guest script ended)" if res.finished else "Features",
           f"  device offers   : {snap['device_features']:#018x}",
           f"  driver features : {acked:#018x}"
           + ("  " + " ".join(feature_names(acked)) if net and acked else ""),
           f"  device status   : {snap['device_status']:#04x}"]  # fmt: skip
    for e in res.probe_errors():
        out.append(f"  DRIVER PROBE FAILED: {e['device']}: {errname(e['error'])}")
        # the driver's own reason: its last lines about that device before the failure
        said = [ln.strip() for ln in res.console.splitlines()
                if f" {e['device']}: " in ln and "probe of" not in ln]  # fmt: skip
        out.extend(f"    kernel: {ln}" for ln in said[-2:])
    out.append("")
    return out


def render(res: BootResult) -> str:
    out: list[str] = []
    dev = res.device
    out.append(f"== {dev.device.name} [{dev.config_word(0):04x}:{dev.config_word(2):04x}] driven by the real "
               f"Linux {res.options.kernel} kernel (User-Mode Linux, virt-pci)")  # fmt: skip
    t = res.times
    if "init" in t:
        out.append(f"  kernel start → /init: {t['init']:.2f} s"
                   + (f", script done at {t['done']:.2f} s" if "done" in t else ""))  # fmt: skip
    out.append("")
    snap = res.snapshot
    if not res.finished:
        out.append("THE RUN DID NOT FINISH: what follows is our device as the kernel left it")
        out.append("")
        if not res.recorder.records:
            out.append("(the kernel never accessed our device)")
            out.append("")
    out.extend(render_features(res))
    at = "when the guest script ended" if res.finished else "when the kernel went away"
    out.append(f"MSI-X table as the kernel filled it (our device's table, {at})")
    rows = snap.get("table", [])
    if dev.msix is not None:
        written = table_entries_written(res.recorder.records)
        out.append(f"  MSI-X capability: {len(rows)} vectors; MSI-X "
                   f"{'enabled' if snap['msix_enabled'] else 'disabled'}, function mask "
                   f"{'set' if snap['function_masked'] else 'clear'}; entries the kernel wrote: "
                   + (", ".join(map(str, written)) if written else "none"))  # fmt: skip
        out.append(render_msix_table(rows, sent=True))
    else:
        out.append("  (no MSI-X capability: vectors=0, the device uses INTx)")
    out.append("")
    out.append(f"Event → vector (msix_config, queue_msix_vector, {at})")
    out.append(render_event_vectors(snap.get("event_vectors", [])))
    for when in ("before", "after"):
        rows_i = [
            r
            for r in res.interrupts(when)
            if "virtio" in r["name"] and "virtio-uml" not in r["name"]
        ]
        if not rows_i:
            continue
        out.append("")
        label = "before the ping" if when == "before" else "after the ping"
        out.append(f"Guest /proc/interrupts {label} (virtio lines)")
        out.append(table([[r["irq"] + ":", *map(str, r["counts"]), r["chip"], r["hwirq"], r["name"]]
                          for r in rows_i],
                         ["IRQ", *[f"CPU{i}" for i in range(len(rows_i[0]["counts"]))], "chip",
                          "hwirq", "name"]))  # fmt: skip
    p = res.ping()
    if p["sent"]:
        out.append("")
        rtt = p.get("rtt_ms")
        out.append(f"ping {p['received']}/{p['sent']} replies through our device"
                   + (f", rtt avg {rtt['avg']:.3f} ms" if rtt else ""))  # fmt: skip
    if res.host is not None:
        s = res.host.stats
        out.append("")
        out.append(f"virt-pci messages over the whole run: {s.cfg_reads} config reads, "
                   f"{s.cfg_writes} config writes, "
                   f"{s.mmio_reads} BAR reads, {s.mmio_writes} BAR writes; sent {s.msi_sent} MSI, "
                   f"{s.int_sent} INT")  # fmt: skip
    out.append("")
    out.extend(render_health(health(res)))
    if res.after_teardown:
        t = res.after_teardown
        out.append("")
        out.append(f"After the guest unbound the device (the driver's remove): every entry masked: "
                   f"{t['all_masked']}, MSI-X enabled: {t['msix_enabled']}")  # fmt: skip
        if t["msix_enabled"]:
            out.append(
                f"  (Linux {res.options.kernel}'s virt-pci detaches a function's config space "
                "before removing it,"
                " um_pci_virtio_remove;\n   so the kernel's MSI-X disable, a config write, never"
                " reaches the device, while BAR writes such as the masks still do)"
            )
    if res.backtraces:
        out.append("")
        out.append("Backtraces from the real kernel (gdb)")
        out.extend(res.backtraces)
    if res.cut:
        out.append("")
        out.append("Not kept (bounded memory; --trace-json still has every record): "
                   + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in res.cut.items()))  # fmt: skip
    if res.error:
        out.append("")
        out.append(f"error: {res.error}")
        if res.console_tail and not res.finished:
            out.append(
                "  the kernel's last console lines" + (" up to its panic:" if res.panic else ":")
            )
            out.extend("  | " + ln for ln in res.console_tail)
    return "\n".join(out)


def _run_with_pcap(opts: BootOptions, path: str) -> BootResult:
    """boot --pcap: the device's backend, wrapped, writes every frame both ways. A TAP then
    has no vnet header (QEMU's vnet_hdr=off): the capture shows the frames on the wire, never
    a 64 KiB segment with a virtio-net header in front."""
    session = BootSession(dataclasses.replace(opts, tap_vnet_hdr=False))
    pcap = PcapngWriter(open(path, "wb"))
    try:
        session.device.device.backend = FrameTap(session.device.device.backend, pcap)
        res = session.run()
    finally:
        try:
            pcap.close()
        except OSError as e:  # a write failed (a full disk): the capture is not whole
            raise BootError(f"--pcap {path}: {e}") from None
    return res


def table_entries_written(records: list[dict[str, Any]]) -> list[int]:
    """MSI-X table entries the kernel wrote (address, data or vector control), in order."""
    return sorted({entry_field(r["offset"])[0] for r in records
                   if r.get("space") == "msix-table" and r.get("op") == "w"})  # fmt: skip


def cmd_boot(args: argparse.Namespace) -> int:
    script = None
    if args.cmd:
        cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
        # In a subshell: the script runs as the guest's init, which an `exit` would end (and
        # the kernel panics when init dies); the subshell's status is CMD's. The `:` keeps an
        # empty CMD (or a comment) a valid subshell.
        script = "(\n:\n" + " ".join(cmd) + "\n)\n"
    files = dict(args.add or [])
    spec = None
    if args.device_module is not None:
        # The module builds its own device: virtio-net's description would be ignored.
        given = [flag for flag, v in (("--device", args.device), ("--netdev", args.netdev),
                                      ("--net", args.net)) if v is not None]  # fmt: skip
        if given:
            verb = "describes" if len(given) == 1 else "describe"
            return cliargs.fail(f"boot: {' and '.join(given)} {verb} the virtio-net device; "
                                "--device-module brings its own (give one or the other)")  # fmt: skip
    if args.device_module is None:
        spec = command_spec(args, "boot", net_flag=args.net)
        if isinstance(spec, int):
            return spec
        if spec.disable_modern:
            return cliargs.fail("boot: disable-modern=on: UML's virt-pci has no I/O space, so a "
                                "legacy-only device cannot be used (sim, show and replay take "
                                "it)")  # fmt: skip
    net = "tap" if spec is not None and spec.netdev.kind == "tap" else "responder"
    opts = BootOptions(
        files=files,
        vectors=args.vectors,
        queue_pairs=args.queue_pairs,
        disable_legacy=args.disable_legacy,
        net=net,
        tap_vnet_hdr=spec.netdev.vnet_hdr if spec is not None and net == "tap" else True,
        spec=spec,
        timeout=args.timeout,
        backtraces=args.backtraces,
        trace_json=args.trace_json,
        # With --json, stdout is the JSON document alone: the console goes to stderr.
        console=None if args.quiet else sys.stderr if args.json else sys.stdout,
        kernel=args.kernel,
    )
    if script is not None:
        opts.script = script
    if args.device_module is not None:
        if args.pcap:
            return cliargs.fail("boot: --pcap records virtio-net frames; it cannot be used "
                                "with --device-module")  # fmt: skip
        opts.device = args.device_module()
    try:
        res = run_boot(opts) if not args.pcap else _run_with_pcap(opts, args.pcap)
    except (PrerequisiteMissing, BootError) as e:
        print(f"virtio-msix boot: error: {e}", file=sys.stderr)
        return 1
    except BootInterrupted as e:
        print(f"virtio-msix boot: {e}; the kernel and every process it started were stopped",
              file=sys.stderr)  # fmt: skip
        return 128 + e.signum
    if args.json:
        print(json.dumps(to_json(res), indent=2))
    else:
        print()
        print(render(res))
    # A driver that refused our device (its probe failed) fails the run as sim's does.
    if res.error or res.probe_errors():
        return 1
    if script is not None and res.script_status:
        # `boot -- CMD` as `ssh host CMD`: the command's own status, so that it can be a check.
        print(f"virtio-msix boot: the guest command exited with status {res.script_status}",
              file=sys.stderr)  # fmt: skip
        return res.script_status
    return 0


def guest_file(spec: str) -> tuple[str, Path]:
    """``--add FILE[:PATH]``: a host file that exists, and the absolute guest path it goes to."""
    host, _, guest = spec.partition(":")
    if not Path(host).is_file():
        raise argparse.ArgumentTypeError(f"{host!r}: no such file")
    guest = guest or "/" + os.path.basename(host)
    if not guest.startswith("/") or ".." in Path(guest).parts:
        raise argparse.ArgumentTypeError(f"{guest!r}: the guest path must be absolute, without ..")
    return guest, Path(host)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "boot",
        help="the real Linux 6.1 or 6.12 kernel (UML) drives our virtio-net device",
        description="Boot the real Linux 6.1 (or --kernel 6.12) kernel as User-Mode Linux; its "
        "virt-pci driver "
        "sends every config and BAR access of its PCI bus to our Python device over vhost-user, "
        "and our device's interrupts go back as MSI (or INTx) messages. Shows the kernel "
        "console, runs a guest script (or CMD), powers off, and prints the MSI-X table as the "
        "kernel filled it, the event → vector map and the guest's interrupt counts. "
        "Architecture: docs/DESIGN.md.",
    )
    p.add_argument("--kernel", choices=tuple(uml_kernel.VERSIONS), default=uml_kernel.DEFAULT_VERSION,
                   help="which kernel: 6.1 (Debian 12, default) or 6.12 (Debian's bookworm-backports "
                        "source, fetched into the cache and built there on first use)")  # fmt: skip
    p.add_argument("--vectors", type=cliargs.vectors, default=None, metavar="N",
                   help="MSI-X table size, 0..2048 (default 2*queue-pairs+2; 0 = no MSI-X, "
                        "INTx)")  # fmt: skip
    p.add_argument("--queue-pairs", type=cliargs.queue_pairs, default=1, metavar="N",
                   help="virtio-net queue pairs the device offers, 1..511 (default 1)")  # fmt: skip
    p.add_argument("--disable-legacy", action="store_true",
                   help="modern-only device (0x1041) instead of QEMU's transitional default")  # fmt: skip
    p.add_argument("--net", choices=("responder", "tap"), default=None,
                   help="where guest packets go: an ARP/ICMP responder at 10.0.2.2 (guest 10.0.2.15), "
                        "or a TAP whose host side is 172.30.77.1 (guest 172.30.77.15); the same as "
                        "--netdev user / --netdev tap (default responder)")  # fmt: skip
    add_device_arguments(p)
    p.add_argument("--backtraces", action="store_true",
                   help="run the kernel under gdb: backtraces at MSI-X entry fills and unmasks")  # fmt: skip
    p.add_argument("--add", action="append", metavar="FILE[:PATH]", type=guest_file,
                   help="copy a host file into the guest's root (default path: /NAME); "
                        "repeatable, e.g. --add ./fpcheck -- /fpcheck")  # fmt: skip
    p.add_argument("--trace-json", metavar="FILE", type=cliargs.output_file,
                   help="write every register access (JSON lines, docs/DESIGN.md format)")  # fmt: skip
    p.add_argument("--pcap", metavar="FILE", type=cliargs.output_file,
                   help="write every frame the guest sent and received through our device as "
                        "pcapng, with inbound/outbound direction flags (tshark/Wireshark)")  # fmt: skip
    p.add_argument("--device-module", metavar="FILE", type=device_module, default=None,
                   help="put the device a Python file's make_device() returns (a VirtioDevice, "
                        "e.g. examples/rng.py) on the kernel's PCI bus instead of virtio-net; "
                        "the kernel's own driver probes it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the views as JSON")
    p.add_argument("--quiet", action="store_true", help="do not show the kernel console")
    p.add_argument("--timeout", type=cliargs.seconds, default=120.0, metavar="SECONDS",
                   help="stop the kernel if the guest has not finished after this many "
                        "seconds (default 120)")  # fmt: skip
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD: run CMD in the guest instead")
    p.set_defaults(func=cmd_boot)
