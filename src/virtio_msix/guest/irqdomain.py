"""kernel/irq/irqdomain.c and msi.c: activating an interrupt in its domain (the x86 vector
domain picks a vector, the MSI domain composes the message and has the chip write it),
re-targeting it, and deactivating it. The chip's callbacks (IrqDesc.irq_chip) reach the
hardware; this module knows no PCI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..irq.x86 import MANAGED_IRQ_SHUTDOWN_VECTOR, MsiMessage
from .irqdesc import IrqDesc

if TYPE_CHECKING:
    from .kernel import Kernel


def irq_domain_activate_irq(k: Kernel, desc: IrqDesc, reserve: bool) -> int:
    if desc.activated:
        return 0
    ret = __irq_domain_activate_irq(k, desc, reserve)
    if not ret:
        desc.activated = True
    return ret


def __irq_domain_activate_irq(k: Kernel, desc: IrqDesc, reserve: bool) -> int:
    # Parent first: the x86 vector domain picks the vector (none while reserving).
    if not reserve:
        ret = k.assign_vector(desc)
        if ret:
            return ret  # the parent failed: the entry's message is not written
    if desc.msix_entry is not None:
        msi_domain_activate(k, desc, reserve)
    return 0


def msi_domain_activate(k: Kernel, desc: IrqDesc, reserve: bool) -> None:
    msg = k.compose_msi_msg(desc, reserve)
    irq_chip_write_msi_msg(k, desc, msg)


def irq_chip_write_msi_msg(k: Kernel, desc: IrqDesc, msg: MsiMessage) -> None:
    chip = desc.irq_chip
    if chip is not None and chip.irq_write_msi_msg is not None:
        chip.irq_write_msi_msg(k, desc, msg)


def msi_domain_set_affinity(k: Kernel, desc: IrqDesc, mask: frozenset[int] | None = None) -> int:
    """The MSI chip's irq_set_affinity. x86: msi_set_affinity (arch/x86/kernel/apic/msi.c);
    elsewhere the message is written again where it is."""
    if k.x86 is None:
        irq_chip_write_msi_msg(k, desc, k.compose_msi_msg(desc))
        return 0
    return msi_set_affinity(k, desc, mask if mask is not None else k.cpu_online_mask)


def msi_set_affinity(k: Kernel, desc: IrqDesc, mask: frozenset[int]) -> int:
    """x86 without interrupt remapping: the vector domain picks the new (cpu, vector)
    (apic_set_affinity: none while the current CPU is in the mask), then the message is
    written. Linux 6.1 writes it at once when the interrupt cannot use reservation mode, the
    vector or the destination stays, the old vector was the shutdown vector, or the interrupt
    has not started; otherwise in two steps from the CPU handling it: first the new vector on
    the old CPU, then the new CPU, so that the address/data pair is never half-updated."""
    old_cpu, old_vector = desc.cpu, desc.vector
    ret = k.assign_vector_locked(desc, mask & k.cpu_online_mask)
    if ret < 0:
        return ret
    assert k.x86 is not None and desc.vector is not None
    new = k.compose_msi_msg(desc)
    if (
        not desc.can_reserve
        or desc.vector == old_vector
        or old_vector == MANAGED_IRQ_SHUTDOWN_VECTOR
        or not desc.started
        or k.x86.dest_id(desc.cpu) == k.x86.dest_id(old_cpu)
        or old_cpu != k.this_cpu  # the paranoia check: not on the old CPU, write at once
    ):
        irq_chip_write_msi_msg(k, desc, new)
        return ret
    irq_chip_write_msi_msg(k, desc, k.x86.compose(old_cpu, desc.vector))
    irq_chip_write_msi_msg(k, desc, new)
    return ret


def irq_domain_deactivate_irq(k: Kernel, desc: IrqDesc) -> None:
    if not desc.activated:
        return
    desc.activated = False
    if desc.msix_entry is not None:
        msi_domain_deactivate(k, desc)
    k.release_vector(desc)


def msi_domain_deactivate(k: Kernel, desc: IrqDesc) -> None:
    """kernel/irq/msi.c: a deactivated entry gets an all-zero message."""
    irq_chip_write_msi_msg(k, desc, MsiMessage(0, 0))
