"""The views of a probed machine that every simulated run shows: the MSI-X table with each
message decoded for the architecture, and an /proc/interrupts-like table."""

from __future__ import annotations

from typing import Any

from ..host.views import msix_table
from ..irq.x86 import BOOT_IRQ_NAMES
from ..virtio.pci import VirtioPciDevice
from .kernel import Kernel


def table_view(k: Kernel, device: VirtioPciDevice) -> list[dict[str, Any]]:
    return msix_table(device, k.arch)


def interrupts_view(k: Kernel) -> list[dict[str, Any]]:
    rows = []
    for irq in sorted(k.irqs):
        d = k.irqs[irq]
        if not d.actions:
            continue
        chip = {"PCI-MSIX": "PCI-MSI", "IO-APIC": "IO-APIC", "UM-MSI": "UM virtio PCIe MSI",
                "dummy": "dummy"}[d.chip]  # fmt: skip
        kind = (
            f"{d.hwirq}-{d.trigger}"
            if k.arch == "x86"
            else (str(d.hwirq) if d.chip == "UM-MSI" else "")
        )
        rows.append({"irq": irq, "counts": list(d.counts), "chip": chip, "hwirq": kind, "name": d.name,
                     "vector": d.vector, "cpu": d.cpu})  # fmt: skip
    return rows


def vector_placement_view(k: Kernel) -> dict[str, Any]:
    """x86: the vector matrix per CPU (available count, each allocated vector and the
    interrupt on it, a move in progress) and the XPS map; {} elsewhere."""
    if k.x86 is None:
        return {}
    owners: dict[tuple[int, int], str] = {}
    for irq, d in k.irqs.items():
        name = d.name or BOOT_IRQ_NAMES.get(irq, "")
        if d.vector is not None:
            owners[(d.cpu, d.vector)] = f"irq {irq} {name}".rstrip()
        if d.move_in_progress and d.prev_vector is not None:
            owners[(d.prev_cpu, d.prev_vector)] = f"irq {irq} {name} (moving away)"
    m = k.x86.vectors
    cpus = []
    for cpu, cm in enumerate(m.maps):
        cpus.append({
            "cpu": cpu,
            "available": cm.available,
            "allocated": cm.allocated,
            "vectors": [{"vector": v, "irq": owners.get((cpu, v), "?")}
                        for v in sorted(cm.alloc_map)],
        })  # fmt: skip
    irqs = []
    for irq in sorted(k.irqs):
        d = k.irqs[irq]
        if d.msix_entry is None or d.vector is None:
            continue
        irqs.append({
            "irq": irq,
            "name": d.name,
            "cpu": d.cpu,
            "vector": d.vector,
            "affinity_hint": sorted(d.affinity_hint) if d.affinity_hint is not None else None,
            "move_pending": sorted(d.pending_mask) if d.move_pending and d.pending_mask else None,
        })  # fmt: skip
    return {
        "destination_mode": "logical (flat)" if k.x86.logical else "physical",
        "reserved": m.global_reserved,
        "cpus": cpus,
        "irqs": irqs,
        "xps": {q: sorted(c) for q, c in sorted(k.xps.items())},
    }


def render_vector_placement(view: dict[str, Any]) -> str:
    """The vector matrix per CPU, each MSI-X interrupt's place and hint, and XPS, as text."""
    if not view:
        return "  (no x86 vector matrix: --arch um)"
    lines = [f"  destination mode {view['destination_mode']}; "
             f"{view['reserved']} vector(s) reserved, not yet assigned"]  # fmt: skip
    idle: list[dict[str, Any]] = []  # consecutive CPUs holding nothing: one line for them

    def flush() -> None:
        if idle:
            cpus = _cpus([c["cpu"] for c in idle])
            lines.append(f"  CPU {cpus}: {idle[0]['available']:3} free each | -")
            idle.clear()

    for c in view["cpus"]:
        if not c["vectors"] and (not idle or idle[-1]["available"] == c["available"]):
            idle.append(c)
            continue
        flush()
        if not c["vectors"]:
            idle.append(c)
            continue
        used = ", ".join(f"{v['vector']:#04x} {v['irq']}" for v in c["vectors"])
        lines.append(f"  CPU{c['cpu']}: {c['available']:3} free | {used}")
    flush()
    for r in view["irqs"]:
        hint = "-" if r["affinity_hint"] is None else _cpus(r["affinity_hint"])
        pending = f", move pending to CPU {_cpus(r['move_pending'])}" if r["move_pending"] else ""
        lines.append(f"  irq {r['irq']} {r['name']}: CPU{r['cpu']} vector {r['vector']:#04x}, "
                     f"affinity hint {hint}{pending}")  # fmt: skip
    for q, cpus in view["xps"].items():
        lines.append(f"  XPS {q}: CPU {_cpus(cpus)}")
    return "\n".join(lines)


def _cpus(cpus: list[int]) -> str:
    """0-3,5 style, as /proc/irq/*/affinity_hint's list form."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)
