"""drivers/pci: config accessors, firmware BAR assignment, pci_enable_device, pci_set_master,
capability walks, and PCI MSI-X (drivers/pci/msi) with the MSI irq-domain glue
(kernel/irq/msi.c) — as Linux 6.1 does them, access for access."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..pci.regs import (
    HEADER,
    MSIX,
    PCI_CAP_ID_MSIX,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_COMMAND_SERR,
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_LOWER_ADDR,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_UPPER_ADDR,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_FLAGS_QSIZE,
    PCI_STATUS_CAP_LIST,
    bar_offset,
)
from .errnos import EINVAL, ENOMEM, ENOSPC, ERANGE
from .irqdesc import IrqChip, IrqDesc
from .irqdomain import irq_domain_activate_irq, irq_domain_deactivate_irq
from .kernel import Kernel

PCI_VENDOR_ID = HEADER["vendor_id"].offset
PCI_STATUS = HEADER["status"].offset
PCI_COMMAND = HEADER["command"].offset
PCI_CAPABILITY_LIST = HEADER["capabilities_pointer"].offset
PCI_INTERRUPT_PIN = HEADER["interrupt_pin"].offset
PCI_LATENCY_TIMER = HEADER["latency_timer"].offset
PCI_MSIX_FLAGS = MSIX["message_control"].offset
PCI_MSIX_TABLE = MSIX["table_offset_bir"].offset
PCI_FIND_CAP_TTL = 48
PCI_IRQ_LEGACY, PCI_IRQ_MSI, PCI_IRQ_MSIX, PCI_IRQ_AFFINITY = 1, 2, 4, 8


@dataclass
class Resource:
    start: int
    size: int
    io: bool

    @property
    def short(self) -> str:
        return f"{self.start:#x}+{self.size:#x}"


@dataclass
class MsiDesc:
    """struct msi_desc for one MSI-X entry."""

    msi_index: int
    msix_ctrl: int
    irq: IrqDesc | None = None


@dataclass
class PciDev:
    """struct pci_dev: what the PCI core cached about a function at enumeration."""

    slot: int
    func: int
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    revision: int
    irq: int = 0  # INTx interrupt, 0 = none
    pin: int = 0
    resources: dict[int, Resource] = field(default_factory=dict)
    msix_cap: int = 0
    msix_enabled: bool = False
    msix_base: int = 0
    msi_descs: list[MsiDesc] = field(default_factory=list)
    is_busmaster: bool = False
    enabled: bool = False
    saved_config_space: list[int] = field(default_factory=list)  # pci_save_state (6.12)

    @property
    def devfn(self) -> int:
        return self.slot << 3 | self.func

    @property
    def short(self) -> str:
        return f"0000:00:{self.slot:02x}.{self.func}"


# -- config accessors ----------------------------------------------------------------------------
def pci_read_config_byte(k: Kernel, dev: PciDev, where: int) -> int:
    return k.bus.cfg_read(dev.slot, dev.func, where, 1)


def pci_read_config_word(k: Kernel, dev: PciDev, where: int) -> int:
    return k.bus.cfg_read(dev.slot, dev.func, where, 2)


def pci_read_config_dword(k: Kernel, dev: PciDev, where: int) -> int:
    return k.bus.cfg_read(dev.slot, dev.func, where, 4)


def pci_write_config_byte(k: Kernel, dev: PciDev, where: int, val: int) -> None:
    k.bus.cfg_write(dev.slot, dev.func, where, 1, val)


def pci_write_config_word(k: Kernel, dev: PciDev, where: int, val: int) -> None:
    k.bus.cfg_write(dev.slot, dev.func, where, 2, val)


def pci_write_config_dword(k: Kernel, dev: PciDev, where: int, val: int) -> None:
    k.bus.cfg_write(dev.slot, dev.func, where, 4, val)


# -- firmware and enumeration (not compared with the real kernel: BIOS + boot-time scan) ----------
class Firmware:
    """Assigns BAR addresses and turns decode on, as SeaBIOS does before Linux starts; then the
    boot-time scan that fills struct pci_dev."""

    def __init__(
        self,
        mem32_base: int = 0xFE000000,
        mem64_base: int = 0x3800_0000_0000,
        io_base: int = 0xC000,
        arch: str = "x86",
    ) -> None:
        self.arch = arch
        if arch == "um":
            # UML has no firmware: Linux assigns from virt-pci's one window, memory
            # 0xf0000000-0xffffffff (64-bit BARs too); there is no I/O port space, so I/O BARs
            # stay unassigned and decode stays off until pci_enable_device.
            mem32_base = mem64_base = 0xF0000000
        self.mem32 = mem32_base
        self.mem64 = mem64_base if arch == "x86" else mem32_base
        self.io = io_base

    def _take(self, which: str, size: int) -> int:
        base = getattr(self, which)
        addr = (base + size - 1) & ~(size - 1)
        setattr(self, which, addr + size)
        return addr

    def scan(self, k: Kernel, intx_irq: int = 23) -> list[PciDev]:
        devs = []
        for slot in range(32):
            ids = k.bus.cfg_read(slot, 0, 0, 4)
            if ids == 0xFFFFFFFF:
                continue
            dev = PciDev(
                slot, 0, ids & 0xFFFF, ids >> 16,
                k.bus.cfg_read(slot, 0, 0x2C, 2), k.bus.cfg_read(slot, 0, 0x2E, 2),
                k.bus.cfg_read(slot, 0, 0x08, 1),
            )  # fmt: skip
            index = 0
            while index < 6:
                off = bar_offset(index)
                orig = k.bus.cfg_read(slot, 0, off, 4)
                k.bus.cfg_write(slot, 0, off, 4, 0xFFFFFFFF)
                mask = k.bus.cfg_read(slot, 0, off, 4)
                is64 = not orig & 1 and (orig >> 1) & 3 == 2
                if is64:
                    k.bus.cfg_write(slot, 0, off + 4, 4, 0xFFFFFFFF)
                    mask |= k.bus.cfg_read(slot, 0, off + 4, 4) << 32
                if mask in (0, 0xFFFFFFFF) and not is64:
                    k.bus.cfg_write(slot, 0, off, 4, orig)
                    index += 1
                    continue
                if orig & 1 and self.arch == "um":
                    k.bus.cfg_write(slot, 0, off, 4, orig)
                    index += 1
                    continue
                if orig & 1:
                    size = (~(mask & ~0x3) & 0xFFFF) + 1
                    addr = self._take("io", size)
                elif is64:
                    size = (~(mask & ~0xF) & (2**64 - 1)) + 1
                    addr = self._take("mem64" if self.arch == "x86" else "mem32", size)
                else:
                    size = (~(mask & ~0xF) & 0xFFFFFFFF) + 1
                    addr = self._take("mem32", size)
                k.bus.cfg_write(slot, 0, off, 4, (addr & 0xFFFFFFFF) | (orig & 0xF))
                if is64:
                    k.bus.cfg_write(slot, 0, off + 4, 4, addr >> 32)
                dev.resources[index] = Resource(addr, size, bool(orig & 1))
                index += 2 if is64 else 1
            if self.arch == "x86":
                # SeaBIOS leaves I/O and memory decode and SERR# on (the captured guest read 0x103).
                cmd = k.bus.cfg_read(slot, 0, PCI_COMMAND, 2)
                k.bus.cfg_write(
                    slot,
                    0,
                    PCI_COMMAND,
                    2,
                    cmd | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_SERR,
                )
            dev.pin = k.bus.cfg_read(slot, 0, PCI_INTERRUPT_PIN, 1)
            if dev.pin:
                dev.irq = intx_irq
                k.bus.cfg_write(slot, 0, HEADER["interrupt_line"].offset, 1, intx_irq)
            dev.msix_cap = _firmware_find_cap(k, slot, PCI_CAP_ID_MSIX)
            devs.append(dev)
        return devs


def _firmware_find_cap(k: Kernel, slot: int, cap_id: int) -> int:
    if not k.bus.cfg_read(slot, 0, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST:
        return 0
    pos = k.bus.cfg_read(slot, 0, PCI_CAPABILITY_LIST, 1)
    for _ in range(PCI_FIND_CAP_TTL):
        if pos < 0x40:
            return 0
        if k.bus.cfg_read(slot, 0, pos, 1) == cap_id:
            return pos
        pos = k.bus.cfg_read(slot, 0, pos + 1, 1)
    return 0


# -- enable, bus master, INTx --------------------------------------------------------------------
def pci_enable_device(k: Kernel, dev: PciDev) -> int:
    # pci_enable_resources: turn on decode for the resources the device has.
    cmd = pci_read_config_word(k, dev, PCI_COMMAND)
    old = cmd
    for res in dev.resources.values():
        cmd |= PCI_COMMAND_IO if res.io else PCI_COMMAND_MEMORY
    if cmd != old:
        pci_write_config_word(k, dev, PCI_COMMAND, cmd)
    # do_pci_enable_device: make sure INTx is not disabled while no MSI is in use.
    pin = pci_read_config_byte(k, dev, PCI_INTERRUPT_PIN)
    if pin:
        cmd = pci_read_config_word(k, dev, PCI_COMMAND)
        if cmd & PCI_COMMAND_INTX_DISABLE:
            pci_write_config_word(k, dev, PCI_COMMAND, cmd & ~PCI_COMMAND_INTX_DISABLE)
    dev.enabled = True
    return 0


def pci_set_master(k: Kernel, dev: PciDev) -> None:
    cmd = pci_read_config_word(k, dev, PCI_COMMAND)
    if not cmd & PCI_COMMAND_MASTER:
        pci_write_config_word(k, dev, PCI_COMMAND, cmd | PCI_COMMAND_MASTER)
    dev.is_busmaster = True
    if k.arch == "x86":
        pcibios_set_master(k, dev)


def pcibios_set_master(k: Kernel, dev: PciDev) -> None:
    """arch/x86/pci/common.c: raise a latency timer below 16 to 64."""
    lat = pci_read_config_byte(k, dev, PCI_LATENCY_TIMER)
    if lat < 16:
        pci_write_config_byte(k, dev, PCI_LATENCY_TIMER, 64)


def pci_clear_master(k: Kernel, dev: PciDev) -> None:
    cmd = pci_read_config_word(k, dev, PCI_COMMAND)
    if cmd & PCI_COMMAND_MASTER:
        pci_write_config_word(k, dev, PCI_COMMAND, cmd & ~PCI_COMMAND_MASTER)
    dev.is_busmaster = False


def pci_intx(k: Kernel, dev: PciDev, enable: bool) -> None:
    cmd = pci_read_config_word(k, dev, PCI_COMMAND)
    new = cmd & ~PCI_COMMAND_INTX_DISABLE if enable else cmd | PCI_COMMAND_INTX_DISABLE
    if new != cmd:
        pci_write_config_word(k, dev, PCI_COMMAND, new)


# -- capability walks (drivers/pci/pci.c) ----------------------------------------------------------
def __pci_find_next_cap_ttl(k: Kernel, dev: PciDev, pos: int, cap: int) -> int:
    pos = pci_read_config_byte(k, dev, pos)
    for _ in range(PCI_FIND_CAP_TTL):
        if pos < 0x40:
            break
        pos &= ~3
        ent = pci_read_config_word(k, dev, pos)
        cap_id = ent & 0xFF
        if cap_id == 0xFF:
            break
        if cap_id == cap:
            return pos
        pos = ent >> 8
    return 0


def pci_find_capability(k: Kernel, dev: PciDev, cap: int) -> int:
    status = pci_read_config_word(k, dev, PCI_STATUS)
    if not status & PCI_STATUS_CAP_LIST:
        return 0
    return __pci_find_next_cap_ttl(k, dev, PCI_CAPABILITY_LIST, cap)


PCI_CAP_ID_PCIX = 0x07


def pci_save_state(k: Kernel, dev: PciDev) -> None:
    """The header's 16 dwords, then pci_save_pcix_state's capability lookup. The PCIe, LTR, DPC,
    AER, PTM and VC parts use what enumeration cached (none for a conventional function like
    QEMU's virtio-net-pci), so they touch nothing."""
    dev.saved_config_space = [pci_read_config_dword(k, dev, 4 * i) for i in range(16)]
    pci_find_capability(k, dev, PCI_CAP_ID_PCIX)


def pci_bus_add_device(k: Kernel, dev: PciDev) -> None:
    """drivers/pci/bus.c, before device_attach. 6.12 saves the config space there "for error
    recoverability" (24 config reads before any driver runs: seen in the 6.12 captures under
    QEMU and under UML); 6.1 does not."""
    if k.version != "6.1":
        pci_save_state(k, dev)


def pci_find_next_capability(k: Kernel, dev: PciDev, pos: int, cap: int) -> int:
    return __pci_find_next_cap_ttl(k, dev, pos + 1, cap)


# -- MSI-X ------------------------------------------------------------------------------------------
def pci_msix_vec_count(k: Kernel, dev: PciDev) -> int:
    if not dev.msix_cap:
        return -EINVAL
    control = pci_read_config_word(k, dev, dev.msix_cap + PCI_MSIX_FLAGS)
    return (control & PCI_MSIX_FLAGS_QSIZE) + 1


def pci_msix_clear_and_set_ctrl(k: Kernel, dev: PciDev, clear: int, set_: int) -> None:
    ctrl = pci_read_config_word(k, dev, dev.msix_cap + PCI_MSIX_FLAGS)
    ctrl = (ctrl & ~clear) | set_
    pci_write_config_word(k, dev, dev.msix_cap + PCI_MSIX_FLAGS, ctrl)


def pci_alloc_irq_vectors_affinity(
    k: Kernel, dev: PciDev, min_vecs: int, max_vecs: int, flags: int, affd: object = None
) -> int:
    nvecs = -ENOSPC
    if flags & PCI_IRQ_MSIX:
        nvecs = __pci_enable_msix_range(k, dev, None, min_vecs, max_vecs, affd, flags)
        if nvecs > 0:
            return nvecs
    if flags & PCI_IRQ_LEGACY and min_vecs == 1 and dev.irq:
        pci_intx(k, dev, True)
        return 1
    return nvecs


def __pci_enable_msix_range(
    k: Kernel, dev: PciDev, entries: object, minvec: int, maxvec: int, affd: object, flags: int
) -> int:
    if maxvec < minvec:
        return -ERANGE
    if dev.msix_enabled:
        return -EINVAL
    nvec = maxvec
    while True:
        rc = __pci_enable_msix(k, dev, entries, nvec, affd, flags)
        if rc == 0:
            return nvec
        if rc < 0:
            return rc
        if rc < minvec:
            return -ENOSPC
        nvec = rc


def __pci_enable_msix(
    k: Kernel, dev: PciDev, entries: object, nvec: int, affd: object, flags: int
) -> int:
    nr_entries = pci_msix_vec_count(k, dev)
    if nr_entries < 0:
        return nr_entries
    if nvec > nr_entries:
        return nr_entries
    return msix_capability_init(k, dev, entries, nvec, affd)


def msix_capability_init(k: Kernel, dev: PciDev, entries: object, nvec: int, affd: object) -> int:
    # Enable with everything masked before touching the table (some devices need it).
    pci_msix_clear_and_set_ctrl(k, dev, 0, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE)
    dev.msix_enabled = True
    control = pci_read_config_word(k, dev, dev.msix_cap + PCI_MSIX_FLAGS)
    tsize = (control & PCI_MSIX_FLAGS_QSIZE) + 1
    base = msix_map_region(k, dev)
    if base is None:
        dev.msix_enabled = False
        pci_msix_clear_and_set_ctrl(k, dev, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE, 0)
        return -ENOMEM
    dev.msix_base = base
    ret = msix_setup_interrupts(k, dev, base, nvec)
    if ret:
        dev.msix_enabled = False
        pci_msix_clear_and_set_ctrl(k, dev, PCI_MSIX_FLAGS_MASKALL | PCI_MSIX_FLAGS_ENABLE, 0)
        return ret
    pci_intx(k, dev, False)  # pci_intx_for_msi
    msix_mask_all(k, base, tsize)
    pci_msix_clear_and_set_ctrl(k, dev, PCI_MSIX_FLAGS_MASKALL, 0)
    return 0


def msix_map_region(k: Kernel, dev: PciDev) -> int | None:
    table_offset = pci_read_config_dword(k, dev, dev.msix_cap + PCI_MSIX_TABLE)
    bir = table_offset & 7
    res = dev.resources.get(bir)
    if res is None:
        return None
    return res.start + (table_offset & ~7)


def msix_setup_interrupts(k: Kernel, dev: PciDev, base: int, nvec: int) -> int:
    vec_count = pci_msix_vec_count(k, dev)
    for i in range(nvec):
        can_mask = i < vec_count
        ctrl = (
            k.readl(base + i * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL) if can_mask else 0
        )
        dev.msi_descs.append(MsiDesc(i, ctrl))
    ret = pci_msi_setup_msi_irqs(k, dev, nvec)
    if ret:
        free_msi_irqs(k, dev)
    return ret


def msix_mask_all(k: Kernel, base: int, tsize: int) -> None:
    for i in range(tsize):
        k.writel(
            PCI_MSIX_ENTRY_CTRL_MASKBIT, base + i * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        )


def pci_msi_setup_msi_irqs(k: Kernel, dev: PciDev, nvec: int) -> int:
    return msi_domain_alloc_irqs(k, dev, nvec)


def msi_domain_alloc_irqs(k: Kernel, dev: PciDev, nvec: int) -> int:
    return __msi_domain_alloc_irqs(k, dev, nvec)


def __msi_domain_alloc_irqs(k: Kernel, dev: PciDev, nvec: int) -> int:
    # x86 has reservation mode (GENERIC_IRQ_RESERVATION_MODE): the entry is activated early
    # with a placeholder message and activated for real at request_irq. UML activates early
    # with its final message.
    reserve = k.arch == "x86"
    allocated = 0
    for desc in dev.msi_descs:
        if desc.irq is not None:
            continue
        chip = "PCI-MSIX" if k.arch == "x86" else "UM-MSI"
        irq = k.irq_alloc_desc(chip, (dev.devfn << 11) | desc.msi_index)
        if k.arch == "um" and not k.um_msi_alloc(irq):
            # um_pci_inner_domain_alloc: virt-pci's bitmap of MAX_MSI_VECTORS for the whole
            # bus is full (-ENOSPC); msi_handle_pci_fail reports how many did succeed, and
            # __pci_enable_msix_range turns fewer than the minimum into -ENOSPC.
            k.irq_free_desc(irq)
            return allocated or -ENOSPC
        allocated += 1
        irq.msi_index = desc.msi_index
        irq.msix_entry = (dev, desc)
        irq.irq_chip = PCI_MSIX_CHIP
        desc.irq = irq
        if reserve:
            k.reserve_irq_vector(irq)  # x86_vector_alloc_irqs: non-managed, reserve only
        irq_domain_activate_irq(k, irq, reserve)
        if reserve:
            irq.activated = False  # msi_init_virq: a reservation is not an activation
    return 0


def pci_msi_domain_write_msg(k: Kernel, desc: IrqDesc, msg) -> None:
    k.record_backtrace("msix table entry fill")
    __pci_write_msi_msg(k, desc, msg)


def __pci_write_msi_msg(k: Kernel, desc: IrqDesc, msg) -> None:
    dev, mdesc = desc.msix_entry
    base = dev.msix_base + mdesc.msi_index * PCI_MSIX_ENTRY_SIZE
    unmasked = not mdesc.msix_ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT
    # The PCI spec wants the entry masked while its message changes.
    if unmasked:
        k.writel(mdesc.msix_ctrl | PCI_MSIX_ENTRY_CTRL_MASKBIT, base + PCI_MSIX_ENTRY_VECTOR_CTRL)
    k.writel(msg.address_lo, base + PCI_MSIX_ENTRY_LOWER_ADDR)
    k.writel(msg.address_hi, base + PCI_MSIX_ENTRY_UPPER_ADDR)
    k.writel(msg.data, base + PCI_MSIX_ENTRY_DATA)
    if unmasked:
        k.writel(mdesc.msix_ctrl, base + PCI_MSIX_ENTRY_VECTOR_CTRL)
    k.readl(base + PCI_MSIX_ENTRY_DATA)  # make sure the writes reached the device
    desc.message = msg


def pci_msix_write_vector_ctrl(k: Kernel, dev: PciDev, mdesc: MsiDesc, ctrl: int) -> None:
    k.writel(
        ctrl, dev.msix_base + mdesc.msi_index * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
    )


def pci_msix_mask(k: Kernel, dev: PciDev, mdesc: MsiDesc) -> None:
    """Set the entry's mask bit, then flush the posted write by reading the table's first
    register (the msi_desc's mask_base is the table start), as drivers/pci/msi/msi.c does."""
    mdesc.msix_ctrl |= PCI_MSIX_ENTRY_CTRL_MASKBIT
    pci_msix_write_vector_ctrl(k, dev, mdesc, mdesc.msix_ctrl)
    k.readl(dev.msix_base)


def pci_msi_mask_irq(k: Kernel, desc: IrqDesc) -> None:
    dev, mdesc = desc.msix_entry
    pci_msix_mask(k, dev, mdesc)


def pci_msi_unmask_irq(k: Kernel, desc: IrqDesc) -> None:
    k.record_backtrace("msix table entry unmask")
    dev, mdesc = desc.msix_entry
    mdesc.msix_ctrl &= ~PCI_MSIX_ENTRY_CTRL_MASKBIT
    pci_msix_write_vector_ctrl(k, dev, mdesc, mdesc.msix_ctrl)


def pci_irq_vector(k: Kernel, dev: PciDev, nr: int) -> int:
    if dev.msix_enabled:
        if nr >= len(dev.msi_descs) or dev.msi_descs[nr].irq is None:
            return -EINVAL
        return dev.msi_descs[nr].irq.irq
    return dev.irq if nr == 0 else -EINVAL


def free_msi_irqs(k: Kernel, dev: PciDev) -> None:
    for mdesc in dev.msi_descs:
        if mdesc.irq is not None:
            irq_domain_deactivate_irq(k, mdesc.irq)
            k.irq_free_desc(mdesc.irq)
    dev.msi_descs.clear()


def pci_free_irq_vectors(k: Kernel, dev: PciDev) -> None:
    pci_disable_msix(k, dev)


def pci_disable_msix(k: Kernel, dev: PciDev) -> None:
    if not dev.msix_enabled:
        return
    pci_msix_shutdown(k, dev)
    free_msi_irqs(k, dev)


def pci_msix_shutdown(k: Kernel, dev: PciDev) -> None:
    """Hand the device back with every allocated entry masked (each mask flushed by a table
    read), then MSI-X Enable cleared and INTx enabled again (pci_intx_for_msi)."""
    for mdesc in dev.msi_descs:
        pci_msix_mask(k, dev, mdesc)
    pci_msix_clear_and_set_ctrl(k, dev, PCI_MSIX_FLAGS_ENABLE, 0)
    pci_intx(k, dev, True)
    dev.msix_enabled = False


# -- removal (drivers/pci/pci.c) -------------------------------------------------------------------
def pci_device_is_present(k: Kernel, dev: PciDev) -> bool:
    """pci_bus_read_dev_vendor_id: one dword read of Vendor/Device ID; all ones (or a CRS
    value) means the function is gone."""
    v = pci_read_config_dword(k, dev, PCI_VENDOR_ID)
    return v not in (0xFFFFFFFF, 0x00000000, 0x0000FFFF, 0xFFFF0000) and (v & 0xFFFF) != 0x0001


def pci_disable_device(k: Kernel, dev: PciDev) -> None:
    """do_pci_disable_device: only Bus Master is cleared (decode stays on; pcibios_disable_device
    makes no config access for an MSI-X device on x86)."""
    pci_clear_master(k, dev)
    dev.enabled = False


# The PCI-MSI chip (drivers/pci/msi/irqdomain.c pci_msi_domain_chip): how the interrupt core
# and the MSI domain reach an MSI-X entry.
PCI_MSIX_CHIP = IrqChip(
    "PCI-MSIX",
    irq_mask=pci_msi_mask_irq,
    irq_unmask=pci_msi_unmask_irq,
    irq_write_msi_msg=pci_msi_domain_write_msg,
)

