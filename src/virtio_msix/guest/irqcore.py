"""kernel/irq: request_irq and its startup path, free_irq, the edge flow handler with the
deferred affinity move. Names and call structure follow Linux 6.1 so that backtraces taken from
the model's stack read like the kernel's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errnos import EBUSY, EINVAL, ENODEV, ENOENT, ENOMEM, ENOSPC
from .irqdesc import IrqAction, IrqDesc
from .irqdomain import irq_domain_activate_irq, irq_domain_deactivate_irq, msi_domain_set_affinity

if TYPE_CHECKING:
    from .kernel import Kernel

IRQF_SHARED = 0x80
__all__ = ["EBUSY", "EINVAL", "ENODEV", "ENOENT", "ENOMEM", "ENOSPC"]  # re-exported


def request_irq(
    k: Kernel, irq: int, handler: Callable[[IrqDesc], bool], flags: int, name: str, dev_id: Any
) -> int:
    return request_threaded_irq(k, irq, handler, None, flags, name, dev_id)


def request_threaded_irq(
    k: Kernel, irq: int, handler: Callable, thread_fn: Any, irqflags: int, devname: str, dev_id: Any
) -> int:
    desc = k.irqs.get(irq)
    if desc is None:
        return -EINVAL
    action = IrqAction(devname, handler, dev_id, bool(irqflags & IRQF_SHARED))
    return __setup_irq(k, irq, desc, action)


def __setup_irq(k: Kernel, irq: int, desc: IrqDesc, new: IrqAction) -> int:
    if desc.actions:
        # A second handler only on a line every user shares (IRQF_SHARED).
        if not (new.shared and all(a.shared for a in desc.actions)):
            return -EBUSY
        desc.actions.append(new)
        return 0
    desc.actions.append(new)
    ret = irq_activate(k, desc)
    if ret:
        desc.actions.remove(new)
        return ret
    irq_startup(k, desc)
    return 0


def irq_activate(k: Kernel, desc: IrqDesc) -> int:
    return irq_domain_activate_irq(k, desc, reserve=False)


def irq_startup(k: Kernel, desc: IrqDesc) -> None:
    # The x86 PCI/MSI chip has IRQCHIP_AFFINITY_PRE_STARTUP: affinity first, then startup.
    if k.arch == "x86":
        irq_setup_affinity(k, desc)
    __irq_startup(k, desc)
    desc.started = True


def __irq_startup(k: Kernel, desc: IrqDesc) -> None:
    irq_enable(k, desc)


def irq_enable(k: Kernel, desc: IrqDesc) -> None:
    unmask_irq(k, desc)


def unmask_irq(k: Kernel, desc: IrqDesc) -> None:
    chip = desc.irq_chip
    if chip is not None and chip.irq_unmask is not None:
        chip.irq_unmask(k, desc)
    desc.masked = False


def mask_irq(k: Kernel, desc: IrqDesc) -> None:
    chip = desc.irq_chip
    if chip is not None and chip.irq_mask is not None:
        chip.irq_mask(k, desc)
    desc.masked = True


def irq_setup_affinity(k: Kernel, desc: IrqDesc) -> None:
    """Apply the default affinity: on x86 MSI this rewrites the same message (R2)."""
    irq_do_set_affinity(k, desc)


def irq_do_set_affinity(k: Kernel, desc: IrqDesc) -> None:
    if desc.msix_entry is not None:
        msi_domain_set_affinity(k, desc)


def irq_set_affinity_hint(k: Kernel, desc: IrqDesc, cpus: object) -> None:
    """An MSI without interrupt remapping cannot move from process context on x86: the move
    is left pending and done by the next interrupt (kernel/irq/migration.c)."""
    if k.arch == "x86" and cpus is not None and desc.msix_entry is not None:
        desc.move_pending = True


def free_irq(k: Kernel, irq: int, dev_id: Any) -> None:
    desc = k.irqs.get(irq)
    if desc is None:
        return
    for a in list(desc.actions):
        if a.dev_id is dev_id:
            desc.actions.remove(a)
            break
    if not desc.actions:
        # irq_shutdown: mask; then the domain deactivates (the message is cleared on x86).
        mask_irq(k, desc)
        desc.started = False
        irq_domain_deactivate_irq(k, desc)


def irq_move_irq(k: Kernel, desc: IrqDesc) -> None:
    if not desc.move_pending:
        return
    masked = desc.masked
    if not masked:
        mask_irq(k, desc)
    irq_move_masked_irq(k, desc)
    if not masked:
        unmask_irq(k, desc)


def irq_move_masked_irq(k: Kernel, desc: IrqDesc) -> None:
    desc.move_pending = False
    irq_do_set_affinity(k, desc)


def handle_edge_irq(k: Kernel, desc: IrqDesc) -> None:
    """Count the interrupt, do a pending affinity move in the ack (apic_ack_edge), run the
    actions."""
    desc.counts[desc.cpu if desc.cpu < len(desc.counts) else 0] += 1
    start = time.monotonic_ns() if k.irq_hook is not None else 0
    k.in_interrupt += 1
    try:
        if desc.msix_entry is not None:
            irq_move_irq(k, desc)
        for action in list(desc.actions):
            action.handler(desc)
    finally:
        k.in_interrupt -= 1
        if k.irq_hook is not None:
            k.irq_hook(desc, start, time.monotonic_ns())
