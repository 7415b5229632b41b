"""PCI configuration-space registers of a type-0 function, described once as data.

Each row: name, offset, size, access, writable mask, write-1-to-clear mask. ``access`` is one of
``ro`` (read-only), ``rw`` (the bits in ``wmask`` are writable), ``rw1c`` (the bits in ``w1c``
clear when written with 1), ``bar`` (a base address register, masks come from its size).
Offsets and meanings: PCI Local Bus 3.0 §6.1 / PCIe base 6.0 §7.5.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..abi.msix import (  # noqa: F401  (the entry layout; re-exported)
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_LOWER_ADDR,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_UPPER_ADDR,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
)


@dataclass(frozen=True)
class Reg:
    name: str
    offset: int
    size: int
    access: str
    wmask: int = 0
    w1c: int = 0


# COMMAND bits.
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400

# STATUS bits.
PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_STATUS_ERRORS = (
    0xF900  # parity, sig/rec target abort, rec master abort, sig SERR, detected parity
)

PCI_CAP_ID_MSIX = 0x11
PCI_CAP_ID_VNDR = 0x09

TYPE0_HEADER: tuple[Reg, ...] = (
    Reg("vendor_id", 0x00, 2, "ro"),
    Reg("device_id", 0x02, 2, "ro"),
    # Writable COMMAND bits are the ones QEMU's pci_init_wmask allows: IO, MEM, MASTER, SERR,
    # INTX_DISABLE (parity response is not implemented, so its bit reads 0).
    Reg(
        "command",
        0x04,
        2,
        "rw",
        wmask=PCI_COMMAND_IO
        | PCI_COMMAND_MEMORY
        | PCI_COMMAND_MASTER
        | PCI_COMMAND_SERR
        | PCI_COMMAND_INTX_DISABLE,
    ),
    Reg("status", 0x06, 2, "rw1c", w1c=PCI_STATUS_ERRORS),
    Reg("revision_id", 0x08, 1, "ro"),
    Reg("class_code", 0x09, 3, "ro"),
    Reg("cache_line_size", 0x0C, 1, "rw", wmask=0xFF),
    Reg("latency_timer", 0x0D, 1, "ro"),
    Reg("header_type", 0x0E, 1, "ro"),
    Reg("bist", 0x0F, 1, "ro"),
    Reg("bar0", 0x10, 4, "bar"),
    Reg("bar1", 0x14, 4, "bar"),
    Reg("bar2", 0x18, 4, "bar"),
    Reg("bar3", 0x1C, 4, "bar"),
    Reg("bar4", 0x20, 4, "bar"),
    Reg("bar5", 0x24, 4, "bar"),
    Reg("cardbus_cis", 0x28, 4, "ro"),
    Reg("subsystem_vendor_id", 0x2C, 2, "ro"),
    Reg("subsystem_id", 0x2E, 2, "ro"),
    Reg("rom_address", 0x30, 4, "bar"),
    Reg("capabilities_pointer", 0x34, 1, "ro"),
    Reg("reserved", 0x35, 7, "ro"),
    Reg("interrupt_line", 0x3C, 1, "rw", wmask=0xFF),
    Reg("interrupt_pin", 0x3D, 1, "ro"),
    Reg("min_gnt", 0x3E, 1, "ro"),
    Reg("max_lat", 0x3F, 1, "ro"),
)

HEADER = {r.name: r for r in TYPE0_HEADER}
PCI_CONFIG_HEADER_SIZE = 0x40
PCI_CONFIG_SPACE_SIZE = 0x100
PCIE_CONFIG_SPACE_SIZE = 0x1000


def bar_offset(index: int) -> int:
    return HEADER[f"bar{index}"].offset


# MSI-X capability (PCI Local Bus 3.0 §6.8.2): message control, table and PBA offset/BIR.
MSIX_CAP: tuple[Reg, ...] = (
    Reg("cap_id", 0x0, 1, "ro"),
    Reg("cap_next", 0x1, 1, "ro"),
    # Only MSI-X Enable (bit 15) and Function Mask (bit 14) are writable; table size is RO.
    Reg("message_control", 0x2, 2, "rw", wmask=0xC000),
    Reg("table_offset_bir", 0x4, 4, "ro"),
    Reg("pba_offset_bir", 0x8, 4, "ro"),
)
MSIX = {r.name: r for r in MSIX_CAP}
MSIX_CAP_LEN = 12
PCI_MSIX_FLAGS_ENABLE = 0x8000
PCI_MSIX_FLAGS_MASKALL = 0x4000
PCI_MSIX_FLAGS_QSIZE = 0x07FF

# One MSI-X table entry (PCI 3.0 §6.8.2.6-9).
MSIX_ENTRY: tuple[Reg, ...] = (
    Reg("msg_addr_lo", PCI_MSIX_ENTRY_LOWER_ADDR, 4, "rw", wmask=0xFFFFFFFF),
    Reg("msg_addr_hi", PCI_MSIX_ENTRY_UPPER_ADDR, 4, "rw", wmask=0xFFFFFFFF),
    Reg("msg_data", PCI_MSIX_ENTRY_DATA, 4, "rw", wmask=0xFFFFFFFF),
    Reg("vector_control", PCI_MSIX_ENTRY_VECTOR_CTRL, 4, "rw", wmask=0xFFFFFFFF),
)
MSIX_ENTRY_FIELDS = {r.name: r for r in MSIX_ENTRY}
