"""kernel/irq/irqdomain.c and msi.c: activating an interrupt in its domain (the x86 vector
domain picks a vector, the MSI domain composes the message and has the chip write it),
re-targeting it, and deactivating it. The chip's callbacks (IrqDesc.irq_chip) reach the
hardware; this module knows no PCI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..irq.x86 import MsiMessage
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


def msi_domain_set_affinity(k: Kernel, desc: IrqDesc) -> None:
    # The vector stays where it is (one CPU set); the message is written again.
    msg = k.compose_msi_msg(desc)
    irq_chip_write_msi_msg(k, desc, msg)


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
