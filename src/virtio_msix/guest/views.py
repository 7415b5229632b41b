"""The views of a probed machine that every simulated run shows: the MSI-X table with each
message decoded for the architecture, and an /proc/interrupts-like table."""

from __future__ import annotations

from typing import Any

from ..host.views import msix_table
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
        name = d.name or {0: "timer", 1: "i8042", 4: "ttyS0", 8: "rtc0", 9: "acpi",
                          12: "i8042"}.get(irq, f"irq{irq}")  # fmt: skip
        if d.vector is not None:
            owners[(d.cpu, d.vector)] = f"{irq} {name}"
        if d.move_in_progress and d.prev_vector is not None:
            owners[(d.prev_cpu, d.prev_vector)] = f"{irq} {name} (moving away)"
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
