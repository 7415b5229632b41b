"""The modelled machine the Linux driver path runs on: CPU accessors to the PCI bus, guest RAM
with a page allocator, the IRQ descriptor table, the interrupt controller of the chosen
architecture, and a kernel log.

The model reaches the device only through ``PciBus`` — config cycles and MMIO/port accesses by
address — exactly as a CPU would.
"""

from __future__ import annotations

from collections.abc import Callable

from ..abi.uml import UML_MSI_ADDRESS
from ..irq.x86 import (
    BOOT_USED_VECTORS,
    BOOT_USED_VECTORS_612,
    MANAGED_IRQ_SHUTDOWN_VECTOR,
    MsiMessage,
    X86Interrupts,
)
from ..pci.bus import PciBus
from ..virtio.memory import GuestMemory
from . import backtrace
from .errnos import ENOSPC
from .irqcore import handle_edge_irq
from .irqdesc import IrqAction, IrqChip, IrqDesc  # noqa: F401  (named here for importers)

PAGE_SIZE = 4096
LOG_LINES = 4096
UM_MAX_MSI_VECTORS = 32  # arch/um/drivers/virt-pci.c: MAX_MSI_VECTORS, for the whole bus
# The Linux versions the model follows; where they differ, functions look at ``k.version``.
KERNEL_VERSIONS = ("6.1", "6.12")
DEFAULT_KERNEL_VERSION = "6.1"


class PageAllocator:
    """Guest RAM for the driver model: physically contiguous runs handed out lowest first after
    a base, and a free list per (size class, alignment) so that buffers given back (an RX page
    consumed, a TX skb completed) are reused, as the kernel's page and slab allocators reuse
    them: the RAM a run uses is bounded by what is outstanding, not by how long it runs."""

    SIZE_CLASS = 64  # sizes are rounded up to this, so frames of similar size share a list

    def __init__(self, memory: GuestMemory, base: int) -> None:
        self.memory = memory
        self.next = base
        self.allocated = 0  # bytes in use now
        self.peak = 0
        self._live: dict[int, tuple[int, int]] = {}  # address → (size class, align)
        self._free: dict[tuple[int, int], list[int]] = {}

    def alloc(self, size: int, align: int = PAGE_SIZE) -> int:
        # Page-aligned runs (rings) keep their exact size: the addresses the probe writes to
        # the device stay what they were before buffers were pooled.
        rounded = size if align >= PAGE_SIZE else -(-size // self.SIZE_CLASS) * self.SIZE_CLASS
        pool = self._free.get((rounded, align))
        if pool:
            addr = pool.pop()
        else:
            addr = (self.next + align - 1) & ~(align - 1)
            if addr + rounded > self.memory.size:
                raise MemoryError(f"guest RAM exhausted allocating {size} bytes")
            self.next = addr + rounded
        self._live[addr] = (rounded, align)
        self.allocated += rounded
        self.peak = max(self.peak, self.allocated)
        return addr

    def free(self, addr: int) -> None:
        """Give a run back (kfree/put_page); freeing what is not allocated is a model bug."""
        rounded, align = self._live.pop(addr)
        self.allocated -= rounded
        self._free.setdefault((rounded, align), []).append(addr)


# lib/iomap.c: pci_iomap of an I/O BAR gives PIO_OFFSET + port; cookies below PIO_RESERVED
# are ports.
PIO_OFFSET = 0x10000
PIO_RESERVED = 0x40000


class Kernel:
    """State shared by every modelled kernel function (passed as ``k``)."""

    def __init__(
        self,
        bus: PciBus,
        memory: GuestMemory,
        cpus: int = 1,
        arch: str = "x86",
        backtraces: bool = False,
        version: str = DEFAULT_KERNEL_VERSION,
    ) -> None:
        if arch not in ("x86", "um"):
            raise ValueError("arch must be x86 or um")
        if version not in KERNEL_VERSIONS:
            raise ValueError(f"kernel version must be one of {', '.join(KERNEL_VERSIONS)}")
        self.version = version
        if cpus < 1:
            raise ValueError("at least one CPU")
        self.bus = bus
        self.memory = memory
        self.cpus = cpus
        self.arch = arch
        self.pages = PageAllocator(
            memory, base=0x0100_0000 if memory.size > 0x0200_0000 else PAGE_SIZE * 16
        )
        self.x86 = None
        if arch == "x86":
            new = version == "6.12"
            self.x86 = X86Interrupts(cpus, physical_only=new,
                                     boot_used=BOOT_USED_VECTORS_612 if new else BOOT_USED_VECTORS)  # fmt: skip
        self.irqs: dict[int, IrqDesc] = {}
        # x86: 0-23 are the IO-APIC's GSIs; dynamically allocated interrupts start after them.
        # UML: its fixed interrupts (timer, console, sigio...) come first.
        # x86: the first irq after the legacy/IO-APIC range (captured: 24). UML: NR_IRQS is 128 and
        # the first 64 are its signal irqs (UM_LAST_SIGNAL_IRQ); the real kernel's virt-pci got 64.
        self.first_dynamic_irq = 24 if arch == "x86" else 64
        self.log: list[str] = []
        self.log_dropped = 0
        self.want_backtraces = backtraces
        self.backtraces: list[tuple[backtrace.Backtrace, list[dict]]] = []
        self.in_interrupt = 0
        self.irqs_disabled = False
        self.pending_msi: list[tuple[int, int]] = []
        self.intx_level = False
        self.intx_irq = 0
        # Called after each handler run with (desc, start, end), monotonic ns: timelines.
        self.irq_hook: Callable[[IrqDesc, int, int], None] | None = None
        self.um_msi_used: dict[int, int] = {}  # irq → bit of virt-pci's MSI bitmap (UML)

    # -- log ----------------------------------------------------------------------------------
    def printk(self, msg: str) -> None:
        # Bounded like the kernel's ring buffer: a guest that makes the model complain on every
        # packet must not grow it without end.
        if len(self.log) >= LOG_LINES:
            del self.log[: LOG_LINES // 2]
            self.log_dropped += LOG_LINES // 2
        self.log.append(msg)

    # -- port and memory accessors (the CPU's loads and stores) -------------------------------
    # An interrupt the device raises during an access is taken once the access completes, as
    # a CPU takes it at the next instruction boundary (never inside the device's own code).
    def readb(self, addr: int) -> int:
        v = self.bus.mmio_read(addr, 1)
        self.take_interrupts()
        return v

    def readw(self, addr: int) -> int:
        v = self.bus.mmio_read(addr, 2)
        self.take_interrupts()
        return v

    def readl(self, addr: int) -> int:
        v = self.bus.mmio_read(addr, 4)
        self.take_interrupts()
        return v

    def writeb(self, value: int, addr: int) -> None:
        self.bus.mmio_write(addr, 1, value)
        self.take_interrupts()

    def writew(self, value: int, addr: int) -> None:
        self.bus.mmio_write(addr, 2, value)
        self.take_interrupts()

    def writel(self, value: int, addr: int) -> None:
        self.bus.mmio_write(addr, 4, value)
        self.take_interrupts()

    def iowrite16(self, value: int, cookie: int) -> None:
        """lib/iomap.c iowrite16: a cookie pci_iomap made for an I/O BAR (PIO_OFFSET + port,
        below PIO_RESERVED) is a port write, any other an MMIO store."""
        if PIO_OFFSET <= cookie < PIO_RESERVED:
            self.bus.io_write(cookie - PIO_OFFSET, 2, value)
            self.take_interrupts()
        else:
            self.writew(value, cookie)

    # -- the device's interrupt sink ---------------------------------------------------------------
    def msi(self, address: int, data: int) -> None:
        self.pending_msi.append((address, data))

    def set_intx(self, level: bool) -> None:
        self.intx_level = level

    def take_interrupts(self) -> None:
        if self.in_interrupt or self.irqs_disabled:
            return
        for _ in range(10000):
            if self.pending_msi:
                address, data = self.pending_msi.pop(0)
                self.deliver_msi(address, data)
            elif (
                self.intx_level and self.intx_irq in self.irqs and self.irqs[self.intx_irq].actions
            ):
                desc = self.irqs[self.intx_irq]
                before = sum(desc.counts)
                self.handle_irq(desc)
                if self.intx_level and sum(desc.counts) > before + 1000:
                    break
                if self.intx_level:
                    # Nobody cleared the line (no handler claimed it): a real kernel would
                    # disable the IRQ as "nobody cared"; stop here.
                    self.printk(f"irq {desc.irq}: nobody cared")
                    break
            else:
                return

    # -- interrupts -----------------------------------------------------------------------------
    def irq_alloc_desc(self, chip: str, hwirq: int, trigger: str = "edge") -> IrqDesc:
        # The lowest free number from the first dynamic one, as irq_alloc_descs finds it.
        irq = self.first_dynamic_irq
        while irq in self.irqs:
            irq += 1
        desc = IrqDesc(irq, chip, hwirq, trigger, counts=[0] * self.cpus)
        self.irqs[irq] = desc
        return desc

    def irq_free_desc(self, desc: IrqDesc) -> None:
        self.irqs.pop(desc.irq, None)
        self.um_msi_used.pop(desc.irq, None)

    def um_msi_alloc(self, desc: IrqDesc) -> bool:
        """A bit of virt-pci's MSI bitmap for ``desc`` (the lowest free), or False if full."""
        free = set(range(UM_MAX_MSI_VECTORS)) - set(self.um_msi_used.values())
        if not free:
            return False
        self.um_msi_used[desc.irq] = min(free)
        return True

    def legacy_irq(self, irq: int) -> IrqDesc:
        desc = self.irqs.get(irq)
        if desc is None:
            desc = IrqDesc(irq, "IO-APIC", irq, "fasteoi", counts=[0] * self.cpus)
            self.irqs[irq] = desc
        return desc

    def compose_msi_msg(self, desc: IrqDesc, reserve: bool = False) -> MsiMessage:
        """irq_chip_compose_msi_msg for the architecture's MSI parent domain."""
        if self.arch == "um":
            return MsiMessage(UML_MSI_ADDRESS, desc.irq)
        assert self.x86 is not None
        if reserve:
            # Reservation mode: no vector yet; park the entry on the shutdown vector of the
            # first online CPU (arch/x86/kernel/apic/vector.c, x86_vector_activate).
            return self.x86.compose(0, MANAGED_IRQ_SHUTDOWN_VECTOR)
        assert desc.vector is not None
        return self.x86.compose(desc.cpu, desc.vector)

    def assign_vector(self, desc: IrqDesc) -> int:
        """x86_vector_activate → assign_irq_vector_any_locked: 0, or -ENOSPC when no CPU has a
        free vector (arch/x86/kernel/apic/vector.c)."""
        if self.x86 is None or desc.vector is not None:
            return 0
        got = self.x86.vectors.alloc()
        if got is None:
            self.printk(f"irq {desc.irq}: no free vector on any CPU (-ENOSPC)")
            return -ENOSPC
        desc.cpu, desc.vector = got
        self.x86.apics[desc.cpu].handlers[desc.vector] = lambda d=desc: self.handle_irq(d)
        return 0

    def release_vector(self, desc: IrqDesc) -> None:
        if self.x86 is None or desc.vector is None:
            return
        self.x86.apics[desc.cpu].handlers.pop(desc.vector, None)
        self.x86.vectors.free(desc.cpu, desc.vector)
        desc.vector = None

    def handle_irq(self, desc: IrqDesc) -> None:
        """The generic flow handler: count, run the actions (handle_edge_irq/fasteoi)."""
        handle_edge_irq(self, desc)

    def deliver_msi(self, address: int, data: int) -> None:
        """A message from the device: the APIC model on x86, the IRQ number itself on UML."""
        if self.x86 is not None:
            self.x86.msi(address, data)
            return
        desc = self.irqs.get(data) if address == UML_MSI_ADDRESS else None
        if desc is None:
            self.printk(f"spurious MSI address {address:#x} data {data:#x}")
            return
        self.handle_irq(desc)

    def record_backtrace(self, title: str) -> None:
        if self.want_backtraces:
            self.backtraces.append((backtrace.capture(title, skip=2, version=self.version), []))
