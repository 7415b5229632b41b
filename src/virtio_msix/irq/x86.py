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
# Vectors Linux keeps for itself at the top (LOCAL_TIMER_VECTOR 0xEC and up) and the one it
# parks "reserved" MSI messages on until a real vector is assigned.
FIRST_SYSTEM_VECTOR = 0xEC
MANAGED_IRQ_SHUTDOWN_VECTOR = 0xEF
# On the captured Debian guest (QEMU q35, one CPU) the legacy IO-APIC interrupts held 0x20-0x25
# when virtio_pci loaded: its first three MSI-X vectors were 0x26, 0x27, 0x28.
BOOT_USED_VECTORS = tuple(range(0x20, 0x26))
# The same guest with Debian's 6.12 (captured): 0x20-0x24, its first three were 0x25, 0x26, 0x27.
BOOT_USED_VECTORS_612 = tuple(range(0x20, 0x25))


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


class VectorAllocator:
    """Linux's x86 vector matrix, as far as a device can see it: a new interrupt goes to the
    online CPU with the most free vectors (lowest number on a tie), on its lowest free vector."""

    def __init__(self, cpus: int, boot_used: tuple[int, ...] = BOOT_USED_VECTORS) -> None:
        self.cpus = cpus
        self.used: list[set[int]] = [set() for _ in range(cpus)]
        self.used[0].update(boot_used)

    def free_count(self, cpu: int) -> int:
        return FIRST_SYSTEM_VECTOR - FIRST_EXTERNAL_VECTOR - len(self.used[cpu])

    def alloc(self) -> tuple[int, int] | None:
        """A (cpu, vector), or None when every CPU is full: Linux's irq_matrix_alloc then
        returns -ENOSPC, request_irq fails with it, and a driver may fall back."""
        cpu = max(range(self.cpus), key=lambda c: (self.free_count(c), -c))
        for v in range(FIRST_EXTERNAL_VECTOR, FIRST_SYSTEM_VECTOR):
            if v not in self.used[cpu]:
                self.used[cpu].add(v)
                return cpu, v
        return None

    def free(self, cpu: int, vector: int) -> None:
        self.used[cpu].discard(vector)


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

    def __init__(
        self, cpus: int, physical_only: bool = False, boot_used: tuple[int, ...] = BOOT_USED_VECTORS
    ) -> None:
        self.cpus = cpus
        # flat logical mode up to 8 CPUs, else physical flat (6.12: always physical flat)
        self.logical = cpus <= 8 and not physical_only
        self.apics = [LocalApic(c) for c in range(cpus)]
        self.vectors = VectorAllocator(cpus, boot_used)
        # The last messages received (a debugging aid; older ones go, so long runs stay flat).
        self.log: deque[tuple[int, int, DecodedMsi]] = deque(maxlen=256)
        self.received = 0
        self.dropped = 0

    def dest_id(self, cpu: int) -> int:
        return 1 << cpu if self.logical else cpu

    def compose(self, cpu: int, vector: int) -> MsiMessage:
        return compose_msi(self.dest_id(cpu), vector, self.logical)

    def targets(self, msg: DecodedMsi) -> list[LocalApic]:
        if msg.logical:
            return [a for a in self.apics if msg.dest & a.logical_id()][:1]
        return [a for a in self.apics if a.cpu == msg.dest]

    def msi(self, address: int, data: int) -> None:
        decoded = decode_msi(address, data)
        self.log.append((address, data, decoded))
        self.received += 1
        if not decoded.valid:
            self.dropped += 1
            return
        targets = self.targets(decoded)
        if not targets:
            self.dropped += 1
            return
        targets[0].accept(decoded.vector)
