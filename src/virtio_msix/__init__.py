"""virtio-msix: the virtio-over-PCI transport with MSI-X, device side and driver side."""

__version__ = "0.1.0"
