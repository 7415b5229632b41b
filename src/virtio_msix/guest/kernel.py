"""The modelled machine the Linux driver path runs on: CPU accessors to the PCI bus, guest RAM
with a page allocator, the IRQ descriptor table, the interrupt controller of the chosen
architecture, and a kernel log.

The model reaches the device only through ``PciBus`` — config cycles and MMIO/port accesses by
address — exactly as a CPU would.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..abi.uml import UML_MSI_ADDRESS
from ..irq.x86 import MANAGED_IRQ_SHUTDOWN_VECTOR, MsiMessage, X86Interrupts
from ..pci.bus import PciBus
from ..virtio.memory import GuestMemory
from . import backtrace
from .errnos import EBUSY, ENOSPC
from .irqcore import handle_edge_irq
from .irqdesc import IrqAction, IrqChip, IrqDesc  # noqa: F401  (named here for importers)
from .napi import MAX_SOFTIRQ_RESTART, do_softirq

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
        if self.allocated > self.peak:
            self.peak = self.allocated
        return addr

    def free(self, addr: int) -> None:
        """Give a run back (kfree/put_page); freeing what is not allocated is a model bug."""
        rounded, align = self._live.pop(addr)
        self.allocated -= rounded
        pool = self._free.get((rounded, align))
        if pool is None:
            pool = self._free[(rounded, align)] = []
        pool.append(addr)


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
            self.x86 = X86Interrupts(cpus, physical_only=version == "6.12", version=version)
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
        self._service_keys: dict[int, Callable[[tuple[int, int]], tuple[int, int, int]]] = {}
        self.intx_level = False
        self.intx_irq = 0
        # Called after each handler run with (desc, start, end), monotonic ns: timelines.
        self.irq_hook: Callable[[IrqDesc, int, int], None] | None = None
        self.um_msi_used: dict[int, int] = {}  # irq → bit of virt-pci's MSI bitmap (UML)
        # The CPU the model is running on: the one whose APIC took the interrupt being handled
        # (the boot CPU otherwise); the two-step MSI move is done from it.
        self.this_cpu = 0
        # Interrupts whose old vector waits for the cleanup IPI (per-CPU cleanup_list).
        self.cleanup_list: list[IrqDesc] = []
        # XPS (net/core/dev.c netif_set_xps_queue): tx queue → the CPUs that transmit on it.
        self.xps: dict[str, frozenset[int]] = {}
        # Per CPU: the NAPI polls scheduled (softnet_data.poll_list) and the bottom-half
        # disable count (softirq_count(): softirq running or local_bh_disable); guest/napi.py.
        self.poll_list: list[list] = [[] for _ in range(cpus)]
        self.softirq_count = [0] * cpus
        # Per CPU: ksoftirqd woken for softirq work __do_softirq left (wakeup_softirqd) and not
        # yet done with it; meanwhile irq_exit and local_bh_enable leave NET_RX to it.
        self.ksoftirqd_woken = [False] * cpus
        if self.x86 is not None:
            # The boot-time interrupts (timer, ACPI, i8042, RTC, serial) where Linux put them.
            for irq, cpu, vector in self.x86.boot_irqs:
                desc = self.legacy_irq(irq)
                desc.cpu, desc.vector, desc.activated = cpu, vector, True

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
        else:
            self.bus.mmio_write(cookie, 2, value)  # writew, inline (a kick: every packet)
        self.take_interrupts()

    def ioread8(self, cookie: int) -> int:
        """lib/iomap.c ioread8: a port read for an I/O cookie, else an MMIO load (the ISR
        byte: modern maps it in memory, legacy in BAR0's ports)."""
        if PIO_OFFSET <= cookie < PIO_RESERVED:
            v = self.bus.io_read(cookie - PIO_OFFSET, 1)
            self.take_interrupts()
            return v
        return self.readb(cookie)

    # -- the device's interrupt sink ---------------------------------------------------------------
    def msi(self, address: int, data: int) -> None:
        self.pending_msi.append((address, data))

    def set_intx(self, level: bool) -> None:
        self.intx_level = level

    def take_interrupts(self) -> None:
        if self.in_interrupt or self.irqs_disabled:
            return
        if not self.pending_msi and not self.intx_level and not self.cleanup_list:
            return  # nothing raised (most accesses): what the loop below would find
        try:
            self._take_interrupts()
        finally:
            if self.cleanup_list:
                self.smp_irq_move_cleanup_interrupt()

    def _take_interrupts(self) -> None:
        pending, x86 = self.pending_msi, self.x86
        for _ in range(10000):
            if pending:
                if x86 is not None and len(pending) > 1:
                    # Messages that arrived together wait in the local APICs' IRR; each APIC
                    # serves its highest vector first (Intel SDM vol. 3 §11.8.3): on one CPU
                    # output.0 (0x28) before input.0 (0x27), as captured.
                    key = self._service_keys.get(self.this_cpu)
                    if key is None:  # x86.service_key, asked once per CPU
                        key = self._service_keys[self.this_cpu] = x86.service_key(self.this_cpu)
                    pending.sort(key=key)
                address, data = pending.pop(0)
                if x86 is not None:
                    x86.msi(address, data)  # deliver_msi's x86 case, one frame less
                else:
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

    def ksoftirqd(self) -> None:
        """Softirq work __do_softirq left after MAX_SOFTIRQ_RESTART rounds is ksoftirqd's; the
        model has no scheduler: a caller that lets time pass (the simulator between frames)
        runs it here, as the thread would — each CPU's, bounded the same way."""
        if self.in_interrupt:
            return
        for cpu, plist in enumerate(self.poll_list):
            for _ in range(MAX_SOFTIRQ_RESTART):
                if not plist or self.softirq_count[cpu]:
                    break
                do_softirq(self, cpu)
            # The thread sleeps again only with nothing pending (smpboot's
            # thread_should_run); what a bounded run here leaves, it still owns.
            self.ksoftirqd_woken[cpu] = bool(plist)

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
        """irq_domain_free_irqs: x86_vector_free_irqs gives a reservation back
        (vector_free_reserved_and_managed)."""
        if self.x86 is not None and desc.has_reserved:
            self.x86.vectors.irq_matrix_remove_reserved()
            desc.has_reserved = False
        if self.x86 is not None and desc.is_managed and desc.affinity is not None:
            self.release_vector(desc)
            self.x86.vectors.irq_matrix_remove_managed(desc.affinity)
            desc.is_managed = False
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
            # first online CPU (arch/x86/kernel/apic/vector.c, vector_assign_managed_shutdown).
            return self.x86.compose(min(self.cpu_online_mask), MANAGED_IRQ_SHUTDOWN_VECTOR)
        assert desc.vector is not None
        return self.x86.compose(desc.cpu, desc.vector)

    @property
    def cpu_online_mask(self) -> frozenset[int]:
        return frozenset(range(self.cpus))

    def reserve_irq_vector(self, desc: IrqDesc) -> None:
        """arch/x86/kernel/apic/vector.c reserve_irq_vector: a non-managed MSI gets no vector
        at allocation, only a global reservation (irq_matrix_reserve); its message points at
        the shutdown vector of the first online CPU until request_irq activates it."""
        if self.x86 is None:
            return
        self.x86.vectors.irq_matrix_reserve()
        desc.can_reserve = desc.has_reserved = True

    def reserve_managed_vector(self, desc: IrqDesc, mask: frozenset[int]) -> int:
        """reserve_managed_vector: a managed interrupt (its affinity fixed by the kernel,
        pci_alloc_irq_vectors_affinity with PCI_IRQ_AFFINITY) sets a vector aside on every CPU
        of its mask at allocation; activation takes one of them (activate_managed)."""
        if self.x86 is None:
            return 0
        desc.is_managed, desc.affinity = True, frozenset(mask)
        return self.x86.vectors.irq_matrix_reserve_managed(desc.affinity)

    def assign_vector(self, desc: IrqDesc) -> int:
        """x86_vector_activate → activate_reserved → assign_irq_vector_any_locked: the best CPU
        of the affinity mask (else of every online CPU); 0, or -ENOSPC when none has a free
        vector (arch/x86/kernel/apic/vector.c)."""
        if self.x86 is None or desc.vector is not None:
            return 0
        if desc.is_managed:
            # activate_managed: on the CPU of the mask with fewest managed vectors in use
            managed = self.x86.vectors.irq_matrix_alloc_managed(
                (desc.affinity or self.cpu_online_mask) & self.cpu_online_mask)
            if managed is None:
                self.printk(f"Managed startup irq {desc.irq}, no vector available")
                return -ENOSPC
            self.apic_update_vector(desc, *managed)
            return 0
        for mask in (desc.affinity or self.cpu_online_mask) & self.cpu_online_mask, self.cpu_online_mask:
            got = self.x86.vectors.irq_matrix_alloc(mask, reserved=desc.has_reserved)
            if got is not None:
                break
        else:
            self.printk(f"irq {desc.irq}: no free vector on any CPU (-ENOSPC)")
            return -ENOSPC
        desc.has_reserved = False
        self.apic_update_vector(desc, *got)
        return 0

    def apic_update_vector(self, desc: IrqDesc, cpu: int, vector: int) -> None:
        """The new (cpu, vector) takes the interrupt; a previous vector on an online CPU stays
        allocated (move in progress) until the first interrupt arrives on the new one."""
        assert self.x86 is not None
        desc.prev_vector = None
        if desc.vector is not None and desc.vector != MANAGED_IRQ_SHUTDOWN_VECTOR:
            desc.move_in_progress = True
            desc.prev_cpu, desc.prev_vector = desc.cpu, desc.vector
        desc.cpu, desc.vector = cpu, vector
        # A partial of the flow handler handle_irq runs, not a lambda: no Python frame of its
        # own between the APIC and handle_edge_irq.
        self.x86.apics[cpu].handlers[vector] = partial(handle_edge_irq, self, desc, cpu, vector)

    def assign_vector_locked(self, desc: IrqDesc, dest: frozenset[int]) -> int:
        """apic_set_affinity's non-managed path: nothing moves while the current CPU is in the
        new mask; -EBUSY while a previous move is not cleaned up; else a vector on the best
        CPU of the mask."""
        assert self.x86 is not None
        if desc.vector is not None and desc.cpu in dest:
            return 0
        if desc.move_in_progress or desc.cleanup_pending:
            return -EBUSY
        got = self.x86.vectors.irq_matrix_alloc(dest, reserved=desc.has_reserved)
        if got is None:
            return -ENOSPC
        self.apic_update_vector(desc, *got)
        return 0

    def irq_complete_move(self, desc: IrqDesc, cpu: int, vector: int) -> None:
        """The first interrupt on the new vector: __send_cleanup_vector queues the interrupt
        for cleanup on the old CPU and sends it IRQ_MOVE_CLEANUP_VECTOR, the lowest-priority
        vector: the old vector is freed when that CPU gets to it, after the interrupts already
        pending (take_interrupts runs the cleanups once none is)."""
        if not desc.move_in_progress or (cpu, vector) != (desc.cpu, desc.vector):
            return
        desc.move_in_progress = False
        desc.cleanup_pending = True
        self.cleanup_list.append(desc)

    def smp_irq_move_cleanup_interrupt(self) -> None:
        while self.cleanup_list:
            desc = self.cleanup_list.pop(0)
            if desc.cleanup_pending:
                self.free_moved_vector(desc)

    def free_moved_vector(self, desc: IrqDesc) -> None:
        assert self.x86 is not None
        if desc.prev_vector is not None:
            self.x86.apics[desc.prev_cpu].handlers.pop(desc.prev_vector, None)
            self.x86.vectors.irq_matrix_free(desc.prev_cpu, desc.prev_vector, desc.is_managed)
        desc.prev_vector = None
        desc.move_in_progress = desc.cleanup_pending = False

    def release_vector(self, desc: IrqDesc) -> None:
        """x86_vector_deactivate → clear_irq_vector, then a reservation again (a reservable
        interrupt goes back to the shutdown vector)."""
        if self.x86 is None or desc.vector is None:
            return
        self.x86.apics[desc.cpu].handlers.pop(desc.vector, None)
        self.x86.vectors.irq_matrix_free(desc.cpu, desc.vector, desc.is_managed)
        if desc.move_in_progress or desc.cleanup_pending:
            self.free_moved_vector(desc)
        desc.vector = None
        if desc.can_reserve:
            self.x86.vectors.irq_matrix_reserve()
            desc.has_reserved = True

    def handle_irq(self, desc: IrqDesc, cpu: int | None = None, vector: int | None = None) -> None:
        """The generic flow handler on the CPU whose APIC took it (``cpu``; the interrupt's
        own CPU if not given): count, run the actions (handle_edge_irq/fasteoi)."""
        handle_edge_irq(self, desc, cpu, vector)  # it sets this_cpu while the handler runs

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
