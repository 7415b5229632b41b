"""The interrupt seam between a PCI function and whatever delivers its interrupts.

In simulation the sink is the modelled local APIC; under UML it sends VIRTIO_PCIDEV_OP_MSI /
OP_INT messages to the real kernel.
"""

from __future__ import annotations

from typing import Protocol


class InterruptSink(Protocol):
    def msi(self, address: int, data: int) -> None:
        """A 32-bit memory write of ``data`` to ``address`` (an MSI/MSI-X message)."""

    def set_intx(self, level: bool) -> None:
        """The level of the function's INTx pin (asserted = True)."""


class NullSink:
    """Drops everything; counts what it saw (useful for tests and `show`)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int]] = []
        self.intx_level = False

    def msi(self, address: int, data: int) -> None:
        self.messages.append((address, data))

    def set_intx(self, level: bool) -> None:
        self.intx_level = level
