"""struct irq_desc / irq_data / irq_chip / irqaction: the data the interrupt core, the irq
domains and the PCI-MSI layer share. The chip's callbacks are how the core reaches the
hardware (mask, unmask, write the MSI message) without knowing which layer owns it, as Linux's
irq_data.chip does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..irq.x86 import MsiMessage

if TYPE_CHECKING:
    from .kernel import Kernel


@dataclass(frozen=True)
class IrqChip:
    """struct irq_chip: the callbacks the core and the irq domains call."""

    name: str
    irq_mask: Callable[[Kernel, IrqDesc], None] | None = None
    irq_unmask: Callable[[Kernel, IrqDesc], None] | None = None
    irq_write_msi_msg: Callable[[Kernel, IrqDesc, MsiMessage], None] | None = None


@dataclass
class IrqAction:
    name: str
    handler: Callable[[IrqDesc], bool]
    dev_id: Any
    shared: bool = False


@dataclass
class IrqDesc:
    """One Linux interrupt (struct irq_desc + its irq_data), as /proc/interrupts shows it."""

    irq: int
    chip: str  # "PCI-MSIX" (shown as PCI-MSI), "IO-APIC", "UML-MSI"...
    hwirq: int
    trigger: str = "edge"
    msi_index: int | None = None
    msix_entry: Any = None  # the MSI-X entry this interrupt programs
    cpu: int = 0
    vector: int | None = None  # x86 vector once activated
    activated: bool = False
    started: bool = False
    masked: bool = True
    move_pending: bool = False
    # x86 vector domain state (struct apic_chip_data): a reservation instead of a vector until
    # request_irq, and a move in progress until the first interrupt on the new vector.
    has_reserved: bool = False
    can_reserve: bool = False
    is_managed: bool = False
    move_in_progress: bool = False
    cleanup_pending: bool = False  # the old vector waits for the cleanup IPI
    prev_cpu: int = 0
    prev_vector: int | None = None
    affinity: frozenset[int] | None = None  # None: irq_default_affinity (every CPU)
    affinity_hint: frozenset[int] | None = None
    pending_mask: frozenset[int] | None = None
    actions: list[IrqAction] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    message: MsiMessage | None = None
    # The chip's callbacks (irq_data.chip): filled in by the layer that owns the interrupt's
    # hardware, e.g. the PCI-MSI layer for an MSI-X entry; None for a line without one.
    irq_chip: IrqChip | None = None

    @property
    def name(self) -> str:
        return ", ".join(a.name for a in self.actions)

    @property
    def short(self) -> str:
        return f"irq{self.irq}"
