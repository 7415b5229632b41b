"""One MSI-X table entry (PCI Local Bus 3.0 §6.8.2.6; uapi linux/pci_regs.h PCI_MSIX_ENTRY_*):
four dwords, the message address low and high, the message data, the vector control."""

from __future__ import annotations

PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_LOWER_ADDR = 0x0
PCI_MSIX_ENTRY_UPPER_ADDR = 0x4
PCI_MSIX_ENTRY_DATA = 0x8
PCI_MSIX_ENTRY_VECTOR_CTRL = 0xC
PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1

FIELD_NAMES = {
    PCI_MSIX_ENTRY_LOWER_ADDR: "addr_lo",
    PCI_MSIX_ENTRY_UPPER_ADDR: "addr_hi",
    PCI_MSIX_ENTRY_DATA: "data",
    PCI_MSIX_ENTRY_VECTOR_CTRL: "ctrl",
}


def entry_field(offset: int) -> tuple[int, int]:
    """(entry, field offset within it) of a table offset."""
    return divmod(offset, PCI_MSIX_ENTRY_SIZE)
