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
from .napi import irq_exit

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
    """kernel/irq/manage.c: the affinity set before (irq_default_affinity: every CPU),
    restricted to online CPUs. On x86 MSI the vector just assigned is on one of them, so
    nothing moves and the same message is written again (R2)."""
    mask = k.cpu_online_mask
    if desc.affinity is not None and desc.affinity & mask:
        mask = desc.affinity & mask
    irq_do_set_affinity(k, desc, mask)


def irq_do_set_affinity(k: Kernel, desc: IrqDesc, mask: frozenset[int] | None = None) -> int:
    if desc.msix_entry is None:
        return 0
    ret = msi_domain_set_affinity(k, desc, mask)
    if ret >= 0 and mask is not None:
        desc.affinity = mask
    return ret


def irq_set_affinity_hint(k: Kernel, desc: IrqDesc, cpus: frozenset[int] | set[int] | None) -> None:
    """irq_set_affinity_hint → __irq_apply_affinity_hint: remember the hint, and (a mask)
    set the affinity. An MSI without interrupt remapping cannot move from process context on
    x86 (no IRQD_MOVE_PCNTXT): the move is left pending with the mask and done by the next
    interrupt (kernel/irq/migration.c); a deactivated one only records the mask."""
    desc.affinity_hint = None if cpus is None else frozenset(cpus)
    if cpus is None or k.arch != "x86" or desc.msix_entry is None:
        return
    if not desc.activated:
        desc.affinity = frozenset(cpus)  # irq_set_affinity_deactivated
        return
    desc.move_pending = True
    desc.pending_mask = frozenset(cpus)


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
    mask = desc.pending_mask
    if mask is not None and mask & k.cpu_online_mask:
        if irq_do_set_affinity(k, desc, mask) == -EBUSY:
            # the previous move is not cleaned up yet: try again at the next interrupt
            desc.move_pending = True
            return
    desc.pending_mask = None


def handle_edge_irq(k: Kernel, desc: IrqDesc, cpu: int | None = None, vector: int | None = None) -> None:
    """Count the interrupt on the CPU that took it (``cpu``; the interrupt's own CPU if not
    given), then the ack (apic_ack_edge): complete a finished move (free the old vector), do a
    pending one; then run the actions. The model runs on that CPU meanwhile (``k.this_cpu``).
    Leaving, irq_exit runs the softirq work the actions raised (NAPI polls: guest/napi.py)."""
    cpu = desc.cpu if cpu is None else cpu
    counts = desc.counts
    cpu_index = cpu if cpu < len(counts) else 0
    counts[cpu_index] += 1
    start = time.monotonic_ns() if k.irq_hook is not None else 0
    saved_cpu, k.this_cpu = k.this_cpu, cpu
    k.in_interrupt += 1
    try:
        if desc.msix_entry is not None:
            # (the flags tested here first are the ones both functions return at once without)
            if desc.move_in_progress and k.x86 is not None and vector is not None:
                k.irq_complete_move(desc, cpu, vector)
            if desc.move_pending:
                irq_move_irq(k, desc)
        actions = desc.actions
        if len(actions) == 1:
            actions[0].handler(desc)  # the usual line: no copy of a one-entry list
        else:
            for action in list(actions):
                action.handler(desc)
    finally:
        k.in_interrupt -= 1
        if k.irq_hook is not None:
            k.irq_hook(desc, start, time.monotonic_ns())
        if k.poll_list[cpu_index] and not k.softirq_count[cpu_index]:
            irq_exit(k, cpu_index)  # the NAPI polls the handler scheduled, on this CPU
        k.this_cpu = saved_cpu
