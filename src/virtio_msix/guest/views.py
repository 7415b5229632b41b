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
