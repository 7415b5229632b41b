"""Every wire layout and constant, described once, as data (DESIGN.md layer 0). The device,
the driver model, the host protocols and the trace decoders all read them;
tests/test_abi_oracle.py holds them against the Linux uapi headers, compiled with the host gcc.

- ``pci.regs``   (src/virtio_msix/pci/regs.py): the type-0 header, MSI-X capability and entry.
- ``virtio.regs`` (src/virtio_msix/virtio/regs.py): virtio-pci capabilities, common config,
  legacy registers, ISR bits, PCI ids.
- ``abi.virtio``: device status bits, transport feature bits, NO_VECTOR.
- ``abi.ring``: the split virtqueue layout (descriptor, avail and used rings, event idx).
- ``abi.uml``: what UML's virt-pci puts on the wire (its MSI address).
"""
