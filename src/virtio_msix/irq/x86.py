"""x86 interrupt delivery as Linux 6.1 programs it: MSI message format, vector allocation,
and a local APIC per CPU that turns a message into a vector and runs what is bound to it.

MSI address (Intel SDM vol. 3 §11.11.1): 0xFEE00000 | destination ID[7:0] << 12 |
redirection hint << 3 | destination mode << 2 (1 = logical). Data: vector[7:0] | delivery
mode << 8 (0 = fixed) | level << 14 | trigger << 15 (0 = edge).
Linux (arch/x86/kernel/apic/apic.c __irq_msi_compose_msg) uses fixed delivery, edge trigger,
no redirection hint, and the destination mode of the APIC driver in use: 6.1 flat logical
(destination = 1 << cpu) for up to 8 CPUs, physical flat (destination = APIC id) beyond; 6.12
has no flat logical driver on 64-bit (arch/x86/kernel/apic/apic_flat_64.c holds only
apic_physflat), so always physical: 0xFEE00000 for CPU0, 0xFEE01000 for CPU1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

X86_MSI_BASE_ADDRESS_LOW = 0xFEE00000
X86_MSI_BASE_MASK = 0xFFF00000
MSI_ADDR_DEST_MODE_LOGICAL = 1 << 2
MSI_ADDR_REDIRECTION_HINT = 1 << 3

FIRST_EXTERNAL_VECTOR = 0x20
# Vectors Linux keeps for itself at the top (LOCAL_TIMER_VECTOR 0xEC and up): the matrix
# allocates from FIRST_EXTERNAL_VECTOR up to, not including, FIRST_SYSTEM_VECTOR.
FIRST_SYSTEM_VECTOR = 0xEC
# The vector a reserved (not yet requested) or shut-down interrupt's message points at.
MANAGED_IRQ_SHUTDOWN_VECTOR = 0xEF
# arch/x86/include/asm/irq_vectors.h (6.1): system vectors inside the allocation range —
# IRQ_MOVE_CLEANUP_VECTOR (= FIRST_EXTERNAL_VECTOR; 6.12 has none, it cleans up from a timer)
# and IA32_SYSCALL_VECTOR (int 0x80, Debian builds IA32_EMULATION) — and the PIC cascade's
# ISA vector, which lapic_assign_system_vectors marks as system too.
IRQ_MOVE_CLEANUP_VECTOR = FIRST_EXTERNAL_VECTOR
IA32_SYSCALL_VECTOR = 0x80
PIC_CASCADE_IR = 2


def isa_irq_vector(irq: int) -> int:
    """ISA_IRQ_VECTOR: the legacy interrupts' fixed vectors, 0x30 + irq."""
    return ((FIRST_EXTERNAL_VECTOR + 16) & ~15) + irq


def system_vectors(version: str = "6.1") -> tuple[int, ...]:
    base = (IA32_SYSCALL_VECTOR, isa_irq_vector(PIC_CASCADE_IR))
    return base if version == "6.12" else (IRQ_MOVE_CLEANUP_VECTOR, *base)


# The interrupts a Debian guest on QEMU q35/pc has activated when virtio_pci loads, read from
# /proc/interrupts in the captures (tests/data/qemu-*.console.txt), in the order they are
# activated: the timer (IRQ 0) before the secondary CPUs start, on CPU0 at its ISA vector
# (vector_configure_legacy keeps an activated legacy vector where it is); then, each on the CPU
# with the most free vectors, ACPI's SCI (subsys_initcall), the i8042 AUX and KBD ports, the
# RTC, and the serial console (when init opens it). The order is the one under which every
# captured /proc/interrupts (2, 3, 4, 8 CPUs) shows each line's count on the CPU the model gives.
BOOT_TIMER_IRQ = 0
BOOT_IRQS = (9, 12, 1, 8, 4)
# Their names in /proc/interrupts.
BOOT_IRQ_NAMES = {0: "timer", 1: "i8042", 4: "ttyS0", 8: "rtc0", 9: "acpi", 12: "i8042"}


@dataclass(frozen=True)
class MsiMessage:
    address: int
    data: int

    @property
    def address_lo(self) -> int:
        return self.address & 0xFFFFFFFF

    @property
    def address_hi(self) -> int:
        return self.address >> 32


def compose_msi(dest: int, vector: int, logical: bool) -> MsiMessage:
    address = X86_MSI_BASE_ADDRESS_LOW | (dest & 0xFF) << 12
    if logical:
        address |= MSI_ADDR_DEST_MODE_LOGICAL
    return MsiMessage(address, vector & 0xFF)


DECODED_MAX = 4096  # distinct MSI messages remembered decoded (X86Interrupts._decode)


@dataclass
class DecodedMsi:
    valid: bool
    dest: int = 0
    logical: bool = False
    vector: int = 0
    delivery_mode: int = 0
    level_triggered: bool = False
    reason: str = ""


def decode_msi(address: int, data: int) -> DecodedMsi:
    if address >> 32 or address & X86_MSI_BASE_MASK != X86_MSI_BASE_ADDRESS_LOW:
        return DecodedMsi(False, reason=f"address {address:#x} is not in the 0xFEExxxxx MSI window")
    return DecodedMsi(
        True,
        dest=(address >> 12) & 0xFF,
        logical=bool(address & MSI_ADDR_DEST_MODE_LOGICAL),
        vector=data & 0xFF,
        delivery_mode=(data >> 8) & 0x7,
        level_triggered=bool(data >> 15 & 1),
    )


@dataclass
class CpuMap:
    """kernel/irq/matrix.c struct cpumap: one CPU's vectors."""

    online: bool = False
    available: int = 0
    allocated: int = 0
    managed: int = 0
    managed_allocated: int = 0
    alloc_map: set[int] = field(default_factory=set)
    managed_map: set[int] = field(default_factory=set)


class VectorMatrix:
    """kernel/irq/matrix.c, the x86 vector matrix: per CPU, which vectors of
    [FIRST_EXTERNAL_VECTOR, FIRST_SYSTEM_VECTOR) are allocated, reserved for managed
    interrupts, or system vectors (the same on every CPU). A new non-managed vector goes to the
    online CPU of the mask with the most available vectors (matrix_find_best_cpu: strictly more
    wins, so the lowest CPU on a tie), at its lowest free vector (matrix_alloc_area)."""

    def __init__(self, cpus: int, version: str = "6.1") -> None:
        self.alloc_start, self.alloc_end = FIRST_EXTERNAL_VECTOR, FIRST_SYSTEM_VECTOR
        self.maps = [CpuMap() for _ in range(cpus)]
        self.system_map: set[int] = set()
        self.global_reserved = 0
        self.version = version

    @property
    def cpus(self) -> int:
        return len(self.maps)

    # -- boot ------------------------------------------------------------------------------
    def irq_matrix_assign_system(self, bit: int) -> None:
        self.system_map.add(bit)

    def irq_matrix_online(self, cpu: int) -> None:
        cm = self.maps[cpu]
        in_alloc = sum(1 for b in self.system_map if self.alloc_start <= b < self.alloc_end)
        cm.available = self.alloc_end - self.alloc_start - cm.managed - in_alloc
        cm.online = True

    def irq_matrix_assign(self, cpu: int, bit: int) -> None:
        """A fixed vector on ``cpu`` (the boot CPU's legacy vectors)."""
        cm = self.maps[cpu]
        if bit in cm.alloc_map or not self.alloc_start <= bit < self.alloc_end:
            return
        cm.alloc_map.add(bit)
        cm.allocated += 1
        cm.available -= 1

    # -- non-managed ---------------------------------------------------------------------------
    def irq_matrix_reserve(self) -> None:
        """Book-keeping only: a reserved interrupt holds no vector on any CPU."""
        self.global_reserved += 1

    def irq_matrix_remove_reserved(self) -> None:
        self.global_reserved -= 1

    def matrix_find_best_cpu(self, mask: frozenset[int] | set[int]) -> int | None:
        best, maxavl = None, 0
        for cpu in sorted(mask):
            cm = self.maps[cpu] if 0 <= cpu < len(self.maps) else None
            if cm is None or not cm.online or cm.available <= maxavl:
                continue
            best, maxavl = cpu, cm.available
        return best

    def _alloc_area(self, cm: CpuMap) -> int | None:
        taken = cm.alloc_map | cm.managed_map | self.system_map
        for bit in range(self.alloc_start, self.alloc_end):
            if bit not in taken:
                return bit
        return None

    def irq_matrix_alloc(
        self, mask: frozenset[int] | set[int], reserved: bool
    ) -> tuple[int, int] | None:
        """(cpu, vector), or None: Linux's -ENOSPC (no online CPU in the mask with room)."""
        cpu = self.matrix_find_best_cpu(mask)
        if cpu is None:
            return None
        cm = self.maps[cpu]
        bit = self._alloc_area(cm)
        if bit is None:
            return None
        cm.alloc_map.add(bit)
        cm.allocated += 1
        cm.available -= 1
        if reserved:
            self.global_reserved -= 1
        return cpu, bit

    def irq_matrix_free(self, cpu: int, bit: int, managed: bool = False) -> None:
        cm = self.maps[cpu]
        if bit not in cm.alloc_map:
            return
        cm.alloc_map.discard(bit)
        cm.allocated -= 1
        if managed:
            cm.managed_allocated -= 1
        else:
            cm.available += 1

    # -- managed (kernel/irq/matrix.c irq_matrix_reserve_managed / alloc_managed) --------------
    def irq_matrix_reserve_managed(self, mask: frozenset[int] | set[int]) -> int:
        """A vector set aside on every CPU of the mask; -ENOSPC (as 0 - 28) if one has none."""
        done: list[tuple[int, int]] = []
        for cpu in sorted(mask):
            cm = self.maps[cpu]
            bit = self._alloc_area(cm)
            if bit is None:
                for c, b in done:
                    self.maps[c].managed_map.discard(b)
                    self.maps[c].managed -= 1
                    self.maps[c].available += 1
                return -28
            cm.managed_map.add(bit)
            cm.managed += 1
            cm.available -= 1
            done.append((cpu, bit))
        return 0

    def irq_matrix_remove_managed(self, mask: frozenset[int] | set[int]) -> None:
        """Give back one managed reservation per CPU of the mask (one not allocated)."""
        for cpu in sorted(mask):
            cm = self.maps[cpu]
            spare = sorted(cm.managed_map - cm.alloc_map)
            if not spare:
                continue
            cm.managed_map.discard(spare[-1])
            cm.managed -= 1
            cm.available += 1

    def matrix_find_best_cpu_managed(self, mask: frozenset[int] | set[int]) -> int | None:
        best, fewest = None, None
        for cpu in sorted(mask):
            cm = self.maps[cpu]
            if not cm.online or (fewest is not None and cm.managed_allocated >= fewest):
                continue
            best, fewest = cpu, cm.managed_allocated
        return best

    def irq_matrix_alloc_managed(self, mask: frozenset[int] | set[int]) -> tuple[int, int] | None:
        """The CPU of the mask with the fewest managed vectors in use, on the lowest of its
        reserved managed vectors not yet allocated."""
        cpu = self.matrix_find_best_cpu_managed(mask)
        if cpu is None:
            return None
        cm = self.maps[cpu]
        free = sorted(cm.managed_map - cm.alloc_map)
        if not free:
            return None
        cm.alloc_map.add(free[0])
        cm.allocated += 1
        cm.managed_allocated += 1
        return cpu, free[0]

    # -- views ---------------------------------------------------------------------------------
    def free_count(self, cpu: int) -> int:
        return self.maps[cpu].available

    @property
    def used(self) -> list[set[int]]:
        """Per CPU, the vectors allocated (boot interrupts included, system vectors not)."""
        return [set(cm.alloc_map) for cm in self.maps]


def x86_boot_vectors(cpus: int, version: str = "6.1") -> tuple[VectorMatrix, list[tuple[int, int, int]]]:
    """The vector matrix as Linux leaves it when a driver loads: system vectors marked
    (lapic_assign_system_vectors), each CPU online, the timer on CPU0 at its ISA vector and the
    other boot interrupts (BOOT_IRQS) on the best CPU in turn. Returns the matrix and
    (irq, cpu, vector) for each boot interrupt."""
    m = VectorMatrix(cpus, version)
    for bit in system_vectors(version):
        m.irq_matrix_assign_system(bit)
    m.irq_matrix_online(0)
    m.irq_matrix_assign(0, isa_irq_vector(BOOT_TIMER_IRQ))
    placed = [(BOOT_TIMER_IRQ, 0, isa_irq_vector(BOOT_TIMER_IRQ))]
    for cpu in range(1, cpus):
        m.irq_matrix_online(cpu)
    everyone = frozenset(range(cpus))
    for irq in BOOT_IRQS:
        got = m.irq_matrix_alloc(everyone, reserved=False)
        if got is None:
            break
        placed.append((irq, *got))
    return m, placed


# Kept for readers of the old names: the vectors CPU0 holds after boot on one CPU.
BOOT_USED_VECTORS = tuple(sorted(x86_boot_vectors(1)[0].used[0]))
BOOT_USED_VECTORS_612 = tuple(sorted(x86_boot_vectors(1, "6.12")[0].used[0]))


@dataclass
class LocalApic:
    """One CPU's local APIC: accepts messages addressed to it and dispatches by vector."""

    cpu: int
    handlers: dict[int, Callable[[], None]] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    spurious: int = 0

    def logical_id(self) -> int:
        return 1 << self.cpu

    def accept(self, vector: int) -> None:
        self.received[vector] = self.received.get(vector, 0) + 1
        handler = self.handlers.get(vector)
        if handler is None:
            self.spurious += 1
            return
        handler()


class X86Interrupts:
    """The APICs of all CPUs, as the device's interrupt sink for MSI messages."""

    def __init__(self, cpus: int, physical_only: bool = False, version: str = "6.1") -> None:
        self.cpus = cpus
        # flat logical mode up to 8 CPUs, else physical flat (6.12: always physical flat)
        self.logical = cpus <= 8 and not physical_only
        self.apics = [LocalApic(c) for c in range(cpus)]
        self.vectors, self.boot_irqs = x86_boot_vectors(cpus, version)
        # The last messages received (a debugging aid; older ones go, so long runs stay flat).
        self.log: deque[tuple[int, int, DecodedMsi]] = deque(maxlen=256)
        self.received = 0
        self.dropped = 0
        self._decoded: dict[tuple[int, int], tuple[DecodedMsi, LocalApic | None]] = {}
        self._orders: dict[int, _ServiceOrders] = {}  # this_cpu → service_key's table

    def dest_id(self, cpu: int) -> int:
        return 1 << cpu if self.logical else cpu

    def compose(self, cpu: int, vector: int) -> MsiMessage:
        return compose_msi(self.dest_id(cpu), vector, self.logical)

    def targets(self, msg: DecodedMsi) -> list[LocalApic]:
        if msg.logical:
            return [a for a in self.apics if msg.dest & a.logical_id()][:1]
        return [a for a in self.apics if a.cpu == msg.dest]

    def _decode(self, address: int, data: int) -> tuple[DecodedMsi, LocalApic | None]:
        """The message decoded and the APIC that takes it (None: none does). The same few
        messages arrive over and over (one per vector the driver programmed), so each is decoded
        once; the APICs and the destination mode are fixed once the machine is built. Bounded:
        a guest programming ever new messages only refills it."""
        hit = self._decoded.get((address, data))
        if hit is None:
            decoded = decode_msi(address, data)
            targets = self.targets(decoded) if decoded.valid else []
            hit = (decoded, targets[0] if targets else None)
            if len(self._decoded) >= DECODED_MAX:
                self._decoded.clear()
            self._decoded[(address, data)] = hit
        return hit

    def service_order(self, address: int, data: int, this_cpu: int = 0) -> tuple[int, int, int]:
        """Sort key for messages that arrived together: those for other CPUs first (they take
        them at once while ``this_cpu`` is still finishing the access that raised them), then
        per CPU the highest vector (priority) first; messages no APIC takes come last."""
        decoded, target = self._decode(address, data)
        if target is None:
            return (2, self.cpus, 0)
        cpu = target.cpu
        return (int(cpu == this_cpu), cpu, -decoded.vector)

    def service_key(self, this_cpu: int = 0) -> Callable[[tuple[int, int]], tuple[int, int, int]]:
        """``service_order`` of an (address, data) pair as a sort key for ``this_cpu``: each
        pair's key is computed once and kept (bounded as ``_decoded``), so sorting the
        messages of a burst calls no Python code."""
        orders = self._orders.get(this_cpu)
        if orders is None:
            orders = self._orders[this_cpu] = _ServiceOrders(self, this_cpu)
        return orders.__getitem__

    def msi(self, address: int, data: int) -> None:
        hit = self._decoded.get((address, data))  # _decode's cache, looked at here first
        decoded, target = hit if hit is not None else self._decode(address, data)
        self.log.append((address, data, decoded))
        self.received += 1
        if target is None:
            self.dropped += 1
            return
        # target.accept(vector), inline: one frame less per interrupt.
        vector = decoded.vector
        received = target.received
        received[vector] = received.get(vector, 0) + 1
        handler = target.handlers.get(vector)
        if handler is None:
            target.spurious += 1
            return
        handler()


class _ServiceOrders(dict):
    """(address, data) → X86Interrupts.service_order(address, data, cpu), filled on first
    use; cleared when DECODED_MAX pairs are held (a guest programming ever new messages)."""

    def __init__(self, x86: X86Interrupts, cpu: int) -> None:
        super().__init__()
        self.x86 = x86
        self.cpu = cpu

    def __missing__(self, msg: tuple[int, int]) -> tuple[int, int, int]:
        if len(self) >= DECODED_MAX:
            self.clear()
        order = self[msg] = self.x86.service_order(msg[0], msg[1], self.cpu)
        return order
