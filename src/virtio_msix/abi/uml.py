"""What User-Mode Linux's virt-pci (arch/um/drivers/virt-pci.c) puts on the wire."""

from __future__ import annotations

# um_pci_compose_msi_msg: every MSI message has this address; the data is the Linux IRQ.
UML_MSI_ADDRESS = 0xA0000
