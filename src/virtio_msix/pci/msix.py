"""MSI-X (PCI Local Bus 3.0 §6.8.2): capability, table, PBA, masking and pending bits.

Rules kept (the PCI spec, and QEMU's hw/pci/msix.c where the spec leaves room):
- After a function reset every entry is zero with its mask bit set, and MSI-X is disabled.
- An entry is masked when its vector-control mask bit is set, or the function is masked
  (Function Mask set, or MSI-X not enabled).
- ``notify(v)``: a vector that no event uses is dropped; a masked vector sets its pending bit
  instead of sending; otherwise the message (address, data) is sent.
- When a vector goes from masked to unmasked (entry write or capability write) with its pending
  bit set, the bit is cleared and the message sent (§6.8.2.9 "pending message ... delivered").
- The PBA is read-only; writes are ignored.
- Table and PBA accept 4- and 8-byte accesses (8 = two 4-byte halves); 1- and 2-byte accesses
  read 0 and write nothing, as QEMU's memory core does for them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .region import Region
from .regs import (
    PCI_MSIX_ENTRY_CTRL_MASKBIT,
    PCI_MSIX_ENTRY_DATA,
    PCI_MSIX_ENTRY_LOWER_ADDR,
    PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_UPPER_ADDR,
    PCI_MSIX_ENTRY_VECTOR_CTRL,
    PCI_MSIX_FLAGS_ENABLE,
    PCI_MSIX_FLAGS_MASKALL,
)

MSIX_MAX_VECTORS = 2048  # table size field is 11 bits


def exclusive_bar_layout(nentries: int) -> tuple[int, int, int]:
    """(BAR size, table offset, PBA offset) of a BAR holding only the MSI-X table and PBA, as
    QEMU's msix_init_exclusive_bar places them: a 4 KiB BAR with the table in the lower half
    and the PBA at 0x800 while the table fits there (up to 128 entries); beyond, the PBA right
    after the table (8-byte aligned), the BAR rounded up to a power of two. Measured through
    qtest: 129 entries → PBA 0x810 in 4 KiB; 256 → 0x1000 in 8 KiB; 2048 → 0x8000 in 64 KiB."""
    if not 1 <= nentries <= MSIX_MAX_VECTORS:
        raise ValueError(f"MSI-X table size must be 1..{MSIX_MAX_VECTORS}, got {nentries}")
    bar_size = 0x1000
    pba_offset = bar_size // 2
    pba_size = (nentries + 63) // 64 * 8
    if nentries * PCI_MSIX_ENTRY_SIZE > pba_offset:
        pba_offset = nentries * PCI_MSIX_ENTRY_SIZE
    if pba_offset + pba_size > bar_size:
        bar_size = pba_offset + pba_size
    return 1 << (bar_size - 1).bit_length(), 0, pba_offset


@dataclass
class MsixEntry:
    """A decoded view of one table entry (for displays and tests)."""

    index: int
    address: int
    data: int
    vector_control: int
    masked: bool  # the entry's own mask bit
    effectively_masked: bool  # entry or function masked
    pending: bool
    used: int  # how many events are mapped to it


# One table entry read at once (PCI 3.0 §6.8.2.6: message address low, high, data, vector
# control, each a little-endian dword): the layout regs.py describes, compiled to one struct.
assert (PCI_MSIX_ENTRY_LOWER_ADDR, PCI_MSIX_ENTRY_UPPER_ADDR, PCI_MSIX_ENTRY_DATA) == (0, 4, 8)
_MESSAGE = struct.Struct("<QI")  # address (high dword above low), data
_DWORD = struct.Struct("<I")


def _no_event(kind: str, **fields: Any) -> None:
    pass


class Msix:
    """The MSI-X state of one function. It knows nothing of the function that holds it: the
    function pushes each new Message Control value in (``control_written``), and hands it
    ``send(address, data, vector)`` — the function's MSI path, which owns the Bus Master rule
    and the interrupt sink — ``record_event`` for its trace, and ``intx_off`` (enabling MSI-X
    takes the function off INTx)."""

    def __init__(
        self,
        cap_offset: int,
        nvectors: int,
        bar: int,
        table_offset: int,
        pba_offset: int,
        send: Callable[[int, int, int], None],
        record_event: Callable[..., None] = _no_event,
        intx_off: Callable[[], None] = lambda: None,
    ) -> None:
        if not 1 <= nvectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"MSI-X table size must be 1..{MSIX_MAX_VECTORS}, got {nvectors}")
        self._send_msi = send
        self._record_event = record_event
        self._intx_off = intx_off
        self.control = nvectors - 1  # Message Control as config space holds it
        self.cap = cap_offset
        self.table_size = nvectors
        self.bar = bar
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.pba_size = (nvectors + 63) // 64 * 8
        self.table = bytearray(nvectors * PCI_MSIX_ENTRY_SIZE)
        self.pba = bytearray(self.pba_size)
        self.use_count = [0] * nvectors
        self.sent = [0] * nvectors  # messages delivered per vector (for views)
        self.function_masked = True
        self.reset()

    # -- regions for the BAR -----------------------------------------------------------------
    def table_region(self) -> Region:
        return Region(
            "msix-table",
            self.table_offset,
            len(self.table),
            self._table_read,
            self._table_write,
            valid_min=4,
            valid_max=8,
            impl_max=4,
        )

    def pba_region(self) -> Region:
        return Region(
            "msix-pba",
            self.pba_offset,
            self.pba_size,
            self._pba_read,
            lambda off, size, val: None,
            valid_min=4,
            valid_max=8,
            impl_max=4,
        )

    # -- capability state (Message Control, pushed in by the function) ---------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.control & PCI_MSIX_FLAGS_ENABLE)

    @property
    def mask_all(self) -> bool:
        return bool(self.control & PCI_MSIX_FLAGS_MASKALL)

    def _compute_function_masked(self) -> bool:
        return not self.enabled or self.mask_all

    # -- per-vector state ----------------------------------------------------------------------
    def _ctrl(self, v: int) -> int:
        return _DWORD.unpack_from(self.table, v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL)[0]

    def entry_masked(self, v: int) -> bool:
        return bool(self._ctrl(v) & PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def is_masked(self, v: int, function_masked: bool | None = None) -> bool:
        fm = self.function_masked if function_masked is None else function_masked
        return fm or self.entry_masked(v)

    def pending(self, v: int) -> bool:
        return bool(self.pba[v // 8] >> (v % 8) & 1)

    def _set_pending(self, v: int, on: bool) -> None:
        if on:
            self.pba[v // 8] |= 1 << (v % 8)
        else:
            self.pba[v // 8] &= ~(1 << (v % 8)) & 0xFF

    def message(self, v: int) -> tuple[int, int]:
        return _MESSAGE.unpack_from(self.table, v * PCI_MSIX_ENTRY_SIZE)  # type: ignore[return-value]

    def _dword(self, off: int) -> int:
        return int.from_bytes(self.table[off : off + 4], "little")

    @property
    def entries(self) -> list[MsixEntry]:
        out = []
        for v in range(self.table_size):
            addr, data = self.message(v)
            out.append(
                MsixEntry(
                    v,
                    addr,
                    data,
                    self._ctrl(v),
                    self.entry_masked(v),
                    self.is_masked(v),
                    self.pending(v),
                    self.use_count[v],
                )
            )
        return out

    # -- vector use (which events map to a vector; QEMU's msix_vector_use/unuse) --------------

    def table_rows(self) -> list[dict[str, Any]]:
        """One row per entry for views: message, effective and own mask, pending, messages sent."""
        return [
            {"entry": e.index, "address": e.address, "data": e.data,
             "masked": e.effectively_masked, "entry_masked": e.masked, "pending": e.pending,
             "sent": self.sent[e.index]}
            for e in self.entries
        ]  # fmt: skip

    def vector_use(self, v: int) -> bool:
        if not 0 <= v < self.table_size:
            return False
        self.use_count[v] += 1
        return True

    def vector_unuse(self, v: int) -> None:
        if not 0 <= v < self.table_size or not self.use_count[v]:
            return
        self.use_count[v] -= 1
        if not self.use_count[v]:
            self._set_pending(v, False)

    def unuse_all(self) -> None:
        for v in range(self.table_size):
            self.use_count[v] = 0
            self._set_pending(v, False)

    # -- delivery ----------------------------------------------------------------------------
    def notify(self, v: int) -> None:
        if not 0 <= v < self.table_size or not self.use_count[v]:
            self._record_event("msi-dropped", vector=v, reason="vector not in use")
            return
        at = v * PCI_MSIX_ENTRY_SIZE
        ctrl = _DWORD.unpack_from(self.table, at + PCI_MSIX_ENTRY_VECTOR_CTRL)[0]  # _ctrl(v)
        if self.function_masked or ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT:  # is_masked
            if not self.pending(v):
                self._record_event("msix-pending", vector=v)
            self._set_pending(v, True)
            return
        # _send(v), inline: the message, counted, to the function's MSI path.
        address, data = _MESSAGE.unpack_from(self.table, at)
        self.sent[v] += 1
        self._send_msi(address, data, v)

    def _send(self, v: int) -> None:
        address, data = _MESSAGE.unpack_from(self.table, v * PCI_MSIX_ENTRY_SIZE)  # message(v)
        self.sent[v] += 1
        self._send_msi(address, data, v)

    def _mask_update(self, v: int, was_masked: bool) -> None:
        if self.is_masked(v) == was_masked:
            return
        if not self.is_masked(v) and self.pending(v):
            self._set_pending(v, False)
            self._send(v)

    # -- MMIO handlers -----------------------------------------------------------------------
    def _table_read(self, offset: int, size: int) -> int:
        if size == 4:  # the only size the region hands over (impl_max 4): read in place
            return _DWORD.unpack_from(self.table, offset)[0]
        return int.from_bytes(self.table[offset : offset + size], "little")

    def _table_write(self, offset: int, size: int, value: int) -> None:
        v = offset // PCI_MSIX_ENTRY_SIZE
        ctrl_at = v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL
        # is_masked(v) before and after, inline; _mask_update only when it changed.
        fm, table, maskbit = self.function_masked, self.table, PCI_MSIX_ENTRY_CTRL_MASKBIT
        was_masked = fm or bool(_DWORD.unpack_from(table, ctrl_at)[0] & maskbit)
        table[offset : offset + size] = value.to_bytes(size, "little")
        if was_masked != (fm or bool(_DWORD.unpack_from(table, ctrl_at)[0] & maskbit)):
            self._mask_update(v, was_masked)

    def _pba_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.pba[offset : offset + size], "little")

    # -- capability writes and reset ---------------------------------------------------------
    def control_written(self, value: int) -> None:
        """Config space changed the message control to ``value``: re-evaluate every vector's
        mask."""
        self.control = value
        was = self.function_masked
        self.function_masked = self._compute_function_masked()
        if not self.enabled:
            return
        # Enabling MSI-X takes the function off INTx (QEMU deasserts the pin here too).
        self._intx_off()
        if self.function_masked == was:
            return
        for v in range(self.table_size):
            self._mask_update(v, self.is_masked(v, was))

    def reset(self) -> None:
        """Function-level reset: every entry zero and masked, nothing pending, nothing used."""
        self.table[:] = bytes(len(self.table))
        for v in range(self.table_size):
            self.table[v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL] = (
                PCI_MSIX_ENTRY_CTRL_MASKBIT
            )
        self.pba[:] = bytes(self.pba_size)
        self.use_count = [0] * self.table_size
        self.control = self.table_size - 1  # Enable and Function Mask clear
        self.function_masked = True
