"""A PCI function (type-0 header): config space, BARs, capabilities, INTx, MSI-X.

Knows nothing of virtio. Config space writes follow per-byte masks built from the register
tables in ``regs.py``: writable bits (``wmask``) and write-1-to-clear bits (``w1cmask``), as
real hardware and QEMU do. Bytes from 0x40 to the end of conventional space that no capability
claims are plain read-write storage, as in QEMU (pci_init_wmask).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..trace import Recorder
from .msix import Msix
from .region import Region, RegionMap
from .regs import (
    HEADER,
    MSIX,
    MSIX_CAP_LEN,
    PCI_CAP_ID_MSIX,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_IO,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_CONFIG_HEADER_SIZE,
    PCI_CONFIG_SPACE_SIZE,
    PCI_STATUS_CAP_LIST,
    PCI_STATUS_INTERRUPT,
    PCIE_CONFIG_SPACE_SIZE,
    TYPE0_HEADER,
    bar_offset,
)
from .sink import InterruptSink, NullSink

PCI_BASE_ADDRESS_SPACE_IO = 0x1
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_ROM_ADDRESS_ENABLE = 0x1
PCI_ROM_SLOT = 6


def _header_masks() -> tuple[bytes, bytes]:
    """(wmask, w1cmask) of a 4 KiB config space holding only the type 0 header's registers."""
    wmask, w1c = bytearray(PCIE_CONFIG_SPACE_SIZE), bytearray(PCIE_CONFIG_SPACE_SIZE)
    for reg in TYPE0_HEADER:
        wmask[reg.offset : reg.offset + reg.size] = reg.wmask.to_bytes(reg.size, "little")
        w1c[reg.offset : reg.offset + reg.size] = reg.w1c.to_bytes(reg.size, "little")
    return bytes(wmask), bytes(w1c)


_HEADER_WMASK, _HEADER_W1CMASK = _header_masks()


@dataclass
class Bar:
    index: int  # 0..5, or 6 for the expansion ROM
    size: int
    is_io: bool = False
    is_64: bool = False
    prefetchable: bool = False
    regions: RegionMap = field(default_factory=lambda: RegionMap(0))

    @property
    def flags(self) -> int:
        if self.index == PCI_ROM_SLOT:
            return 0
        if self.is_io:
            return PCI_BASE_ADDRESS_SPACE_IO
        return (PCI_BASE_ADDRESS_MEM_TYPE_64 if self.is_64 else 0) | (
            PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetchable else 0
        )


ConfigHook = Callable[[int, int], None]
_COMMAND = HEADER["command"].offset
_COMMAND_SIZE = HEADER["command"].size
_U16 = struct.Struct("<H")
# A config access of each size as a little-endian integer, read and written in place.
CFG_LE = {1: struct.Struct("<B"), 2: _U16, 4: struct.Struct("<I")}


class PciFunction:
    """One PCI function. Subclasses (the virtio transport) add BARs, capabilities and hooks."""

    def __init__(
        self,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 1,
        express: bool = False,
        recorder: Recorder | None = None,
        sink: InterruptSink | None = None,
    ) -> None:
        self.recorder = recorder if recorder is not None else Recorder(enabled=False)
        self.sink: InterruptSink = sink if sink is not None else NullSink()
        # Config space is always 4 KiB of storage; a conventional function answers only the first
        # 256 bytes (reads above read all ones, writes are dropped), as on a real bus.
        self.config_size = PCIE_CONFIG_SPACE_SIZE if express else PCI_CONFIG_SPACE_SIZE
        self.config = bytearray(PCIE_CONFIG_SPACE_SIZE)
        # Counts changes of config space that may move a BAR or turn decode on or off (stores
        # through cfg_write, set_config, _set_field): a bus remembers decodes until it changes.
        self.cfg_space_generation = 0
        # The header's masks (TYPE0_HEADER's wmask and w1c), laid out once for every function.
        self.wmask = bytearray(_HEADER_WMASK)
        self.w1cmask = bytearray(_HEADER_W1CMASK)
        self.bars: list[Bar | None] = [None] * 7  # 0..5 and the ROM at index 6
        self.msix: Msix | None = None
        self.irq_level = False
        self._intx_out = False  # the level on the pin (irq_level unless INTX_DISABLE)
        self.msi_dropped = 0  # MSIs not sent because Bus Master was off
        self._caps: list[tuple[int, int, int]] = []  # (offset, id, length), list order
        self._write_hooks: list[tuple[int, int, ConfigHook]] = []
        self._read_hooks: list[tuple[int, int, ConfigHook]] = []
        self._defaults = dict(
            vendor_id=vendor_id,
            device_id=device_id,
            class_code=class_code,
            revision_id=revision,
            subsystem_vendor_id=subsystem_vendor_id,
            subsystem_id=subsystem_id,
            interrupt_pin=interrupt_pin,
        )
        # Device-specific space above the header is plain storage until a capability claims it.
        above = self.config_size - PCI_CONFIG_HEADER_SIZE
        self.wmask[PCI_CONFIG_HEADER_SIZE : self.config_size] = b"\xff" * above
        for name, value in self._defaults.items():
            self._set_field(name, value)

    # -- helpers ------------------------------------------------------------------------------
    def _set_masks(self, offset: int, size: int, wmask: int, w1c: int) -> None:
        self.wmask[offset : offset + size] = wmask.to_bytes(size, "little")
        self.w1cmask[offset : offset + size] = w1c.to_bytes(size, "little")

    def _set_field(self, name: str, value: int) -> None:
        reg = HEADER[name]
        self.cfg_space_generation += 1
        self.config[reg.offset : reg.offset + reg.size] = value.to_bytes(reg.size, "little")

    def config_word(self, offset: int) -> int:
        return int.from_bytes(self.config[offset : offset + 2], "little")

    def config_long(self, offset: int) -> int:
        return int.from_bytes(self.config[offset : offset + 4], "little")

    def set_config(self, offset: int, size: int, value: int) -> None:
        """Device-internal store (no masks, no hooks, not traced)."""
        self.cfg_space_generation += 1
        self.config[offset : offset + size] = value.to_bytes(size, "little")

    @property
    def command(self) -> int:
        return _U16.unpack_from(self.config, _COMMAND)[0]

    @property
    def bus_master(self) -> bool:
        return bool(_U16.unpack_from(self.config, _COMMAND)[0] & PCI_COMMAND_MASTER)

    def record_event(self, kind: str, **fields: Any) -> None:
        self.recorder.event("event", kind=kind, **fields)

    # -- building -----------------------------------------------------------------------------
    def add_bar(
        self,
        index: int,
        size: int,
        is_io: bool = False,
        is_64: bool = False,
        prefetchable: bool = False,
    ) -> Bar:
        """A BAR of ``size`` bytes (a power of two); its address bits are writable, so writing
        all ones reads back the size mask (PCI 3.0 §6.2.5.1)."""
        if size & (size - 1) or size < (4 if is_io else 16):
            raise ValueError(f"BAR size {size:#x} is not a valid power of two")
        bar = Bar(index, size, is_io, is_64, prefetchable, RegionMap(size))
        self.bars[index] = bar
        wmask = ~(size - 1)
        off = bar_offset(index) if index != PCI_ROM_SLOT else HEADER["rom_address"].offset
        if index == PCI_ROM_SLOT:
            wmask |= PCI_ROM_ADDRESS_ENABLE
        if is_64:
            self._set_masks(off, 8, wmask & (2**64 - 1), 0)
        else:
            self._set_masks(off, 4, wmask & 0xFFFFFFFF, 0)
        self.set_config(off, 4, bar.flags)
        return bar

    def add_rom(self, size: int) -> Bar:
        return self.add_bar(PCI_ROM_SLOT, size)

    def add_capability(self, cap_id: int, length: int, offset: int | None = None) -> int:
        """Place a capability (first fit from 0x40) and prepend it to the list."""
        if offset is None:
            offset = self._find_space(length)
        self._caps.insert(0, (offset, cap_id, length))
        self.wmask[offset : offset + length] = bytes(length)  # read-only unless said otherwise
        self.config[offset] = cap_id
        self.config[offset + 1] = self.config[HEADER["capabilities_pointer"].offset]
        self.config[HEADER["capabilities_pointer"].offset] = offset
        status = HEADER["status"].offset
        self.set_config(status, 2, self.config_word(status) | PCI_STATUS_CAP_LIST)
        return offset

    def _find_space(self, length: int) -> int:
        used = bytearray(self.config_size)
        for off, _, ln in self._caps:
            used[off : off + ln] = b"\x01" * ln
        offset = PCI_CONFIG_HEADER_SIZE
        while offset + length <= PCI_CONFIG_SPACE_SIZE:
            last = used.rfind(1, offset, offset + length)
            if last < 0:
                return offset
            offset = last + 1  # no window starting at or before ``last`` is free: first fit
        raise ValueError("no room for the capability in config space")

    def capabilities(self) -> list[tuple[int, int, int]]:
        """(offset, id, length) in list order, as a driver walking from 0x34 finds them."""
        return list(self._caps)

    def add_msix(self, nvectors: int, bar: int, table_offset: int, pba_offset: int) -> Msix:
        cap = self.add_capability(PCI_CAP_ID_MSIX, MSIX_CAP_LEN)
        msix = Msix(cap, nvectors, bar, table_offset, pba_offset, send=self.send_msi,
                    record_event=self.record_event,
                    intx_off=lambda: self.set_irq_level(False))  # fmt: skip
        self.set_config(cap + MSIX["message_control"].offset, 2, nvectors - 1)
        self.set_config(cap + MSIX["table_offset_bir"].offset, 4, table_offset | bar)
        self.set_config(cap + MSIX["pba_offset_bir"].offset, 4, pba_offset | bar)
        ctrl = cap + MSIX["message_control"].offset
        self._set_masks(ctrl, 2, MSIX["message_control"].wmask, 0)
        self.on_config_write(ctrl, 2, lambda off, size: msix.control_written(self.config_word(ctrl)))
        target = self.bars[bar]
        if target is None:
            raise ValueError(f"MSI-X table BAR {bar} does not exist")
        target.regions.add(msix.table_region())
        target.regions.add(msix.pba_region())
        self.msix = msix
        return msix

    def on_config_write(self, offset: int, size: int, hook: ConfigHook) -> None:
        """Run ``hook(offset, size)`` after a write that touches [offset, offset+size)."""
        self._write_hooks.append((offset, size, hook))

    def on_config_read(self, offset: int, size: int, hook: ConfigHook) -> None:
        """Run ``hook(offset, size)`` before a read that touches [offset, offset+size)."""
        self._read_hooks.append((offset, size, hook))

    # -- config cycles ------------------------------------------------------------------------
    def cfg_read(self, offset: int, size: int) -> int:
        value = self._cfg_read(offset, size)
        wanted = self.recorder.wanted
        if wanted is None or "cfg" in wanted:
            self.recorder.access("cfg", "r", offset, size, value)
        return value

    def cfg_read_is_plain(self, offset: int, size: int) -> bool:
        """Whether ``_cfg_read(offset, size)`` is just the config bytes there: a valid access
        no read hook watches. (Hooks are registered while the function is built.)"""
        if size not in (1, 2, 4) or offset < 0 or offset + size > self.config_size:
            return False
        return not any(offset < hoff + hsize and hoff < offset + size
                       for hoff, hsize, _ in self._read_hooks)  # fmt: skip

    def _cfg_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset < 0 or offset + size > self.config_size:
            return (1 << (8 * size)) - 1 if size in (1, 2, 4) else 0xFFFFFFFF
        for hoff, hsize, hook in self._read_hooks:
            if offset < hoff + hsize and hoff < offset + size:
                hook(offset, size)
        return CFG_LE[size].unpack_from(self.config, offset)[0]

    def cfg_write(self, offset: int, size: int, value: int) -> None:
        wanted = self.recorder.wanted
        if wanted is None or "cfg" in wanted:
            self.recorder.access("cfg", "w", offset, size, value)
        if size not in (1, 2, 4) or offset < 0 or offset + size > self.config_size:
            return
        config = self.config
        old_command = _U16.unpack_from(config, _COMMAND)[0]  # self.command
        self.cfg_space_generation += 1
        # Every byte as (old & ~wmask | new & wmask) & ~(new & w1cmask): the masks are per
        # bit, so the bytes of the access are computed together as one little-endian int.
        end = offset + size
        b = value & ((1 << (8 * size)) - 1)
        le = CFG_LE[size]  # unpack_from/pack_into in place: no slice copies
        old = le.unpack_from(config, offset)[0]
        wm = le.unpack_from(self.wmask, offset)[0]
        w1c = le.unpack_from(self.w1cmask, offset)[0]
        le.pack_into(config, offset, ((old & ~wm) | (b & wm)) & ~(b & w1c))
        if offset < _COMMAND + _COMMAND_SIZE and _COMMAND < end:
            self._command_written(old_command)
        for hoff, hsize, hook in self._write_hooks:
            if offset < hoff + hsize and hoff < offset + size:
                hook(offset, size)

    def _command_written(self, old: int) -> None:
        if (old ^ self.command) & PCI_COMMAND_INTX_DISABLE:
            self._update_intx_output()

    # -- BAR addresses and decode -------------------------------------------------------------
    def bar_address(self, index: int) -> int | None:
        """The address the driver programmed, or None while decode for it is off."""
        bar = self.bars[index]
        if bar is None:
            return None
        if index == PCI_ROM_SLOT:
            raw = self.config_long(HEADER["rom_address"].offset)
            if not raw & PCI_ROM_ADDRESS_ENABLE or not self.command & PCI_COMMAND_MEMORY:
                return None
            return raw & ~(bar.size - 1) & 0xFFFFFFFF
        off = bar_offset(index)
        if bar.is_io:
            if not self.command & PCI_COMMAND_IO:
                return None
            return self.config_long(off) & ~0x3 & ~(bar.size - 1)
        if not self.command & PCI_COMMAND_MEMORY:
            return None
        raw = self.config_long(off)
        if bar.is_64:
            raw |= self.config_long(off + 4) << 32
        return raw & ~0xF & ~(bar.size - 1)

    # -- BAR accesses (offset inside the BAR) -------------------------------------------------
    # bar_read and bar_write look the access up once (RegionMap.lookup) for both the record
    # and the handler: a one-handler access calls it directly, as RegionMap.read/write would;
    # the record is made only when the recorder wants its space (Recorder.wanted).
    def bar_read(self, bar: int, offset: int, size: int) -> int:
        b = self._bar(bar, offset, size)
        if b is None:
            value = 0 if size in (1, 2, 4, 8) else 0
            self.recorder.access(f"bar{bar}", "r", offset, size, value)
            return value
        regions = b.regions
        region, rel, direct = regions.lookup(offset, size)
        if direct:
            value = region.read_fn(rel, size) & ((1 << (8 * size)) - 1)  # type: ignore[union-attr]
        else:
            value = regions.read(offset, size)
        wanted = self.recorder.wanted
        if wanted is None or (region.name if region is not None else f"bar{b.index}") in wanted:
            self._record_bar(b, "r", offset, size, value, region, rel)
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        bars = self.bars
        b = bars[bar] if 0 <= bar < len(bars) else None  # _bar(bar, offset, size), inline
        if b is not None and (size not in (1, 2, 4, 8) or offset < 0 or offset + size > b.size):
            b = None
        value &= (1 << (8 * size)) - 1 if 0 < size <= 8 else 0
        if b is None:
            self.recorder.access(f"bar{bar}", "w", offset, size, value)
            return
        regions = b.regions
        # RegionMap.lookup's compiled answer taken here (its frame saved on every kick)
        hit = regions._compiled.get((offset, size))
        region, rel, direct = hit if hit is not None else regions.lookup(offset, size)
        wanted = self.recorder.wanted
        if wanted is None or (region.name if region is not None else f"bar{b.index}") in wanted:
            self._record_bar(b, "w", offset, size, value, region, rel)
        if direct:
            region.write_fn(rel, size, value)  # type: ignore[union-attr]
        else:
            regions.write(offset, size, value)

    def _bar(self, bar: int, offset: int, size: int) -> Bar | None:
        if not 0 <= bar < len(self.bars):
            return None
        b = self.bars[bar]
        if b is None or size not in (1, 2, 4, 8) or offset < 0 or offset + size > b.size:
            return None
        return b

    def _record_bar(self, b: Bar, op: str, offset: int, size: int, value: int,
                    region: Region | None = None, rel: int = 0) -> None:  # fmt: skip
        """The access's record; ``region``/``rel``: its lookup, when the caller made it."""
        rec = self.recorder
        if not rec.active:
            return
        if region is None:
            region, rel, _ = b.regions.lookup(offset, size)
        if region is None:
            rec.access(f"bar{b.index}", op, offset, size, value)
        else:
            rec.access(region.name, op, rel, size, value)

    # -- interrupts ---------------------------------------------------------------------------
    def set_irq_level(self, level: bool) -> None:
        """Drive INTx (level-triggered). STATUS.INTERRUPT follows the internal level; the pin
        is held low while COMMAND.INTX_DISABLE is set (PCI 3.0 §6.2.2, §6.2.3)."""
        if level == self.irq_level:
            return
        self.irq_level = level
        status = HEADER["status"].offset
        st = self.config_word(status)
        st = st | PCI_STATUS_INTERRUPT if level else st & ~PCI_STATUS_INTERRUPT
        self.set_config(status, 2, st)
        self._update_intx_output()

    def _update_intx_output(self) -> None:
        out = self.irq_level and not self.command & PCI_COMMAND_INTX_DISABLE
        if self._intx_out == out:
            return
        self._intx_out = out
        self.recorder.event("intx", level=int(out))
        self.sink.set_intx(out)

    def send_msi(self, address: int, data: int, vector: int | None = None) -> None:
        """An MSI is a DMA write: it goes out only while Bus Master is enabled."""
        if not _U16.unpack_from(self.config, _COMMAND)[0] & PCI_COMMAND_MASTER:  # bus_master
            self.msi_dropped += 1
            self.record_event("msi-dropped", vector=vector, reason="bus master disabled")
            return
        wanted = self.recorder.wanted
        if wanted is None or "msi" in wanted:  # no record's fields built when none is made
            self.recorder.event("msi", vector=vector, address=address, data=data)
        self.sink.msi(address, data)

    def function_reset(self) -> None:
        """A PCI function reset (FLR / bus reset): header registers to their defaults."""
        for reg in TYPE0_HEADER:
            if reg.access in ("rw", "rw1c"):
                self.set_config(reg.offset, reg.size, 0)
        if self._caps:
            self.set_config(HEADER["status"].offset, 2, PCI_STATUS_CAP_LIST)
        for bar in self.bars:
            if bar is not None:
                off = (bar_offset(bar.index) if bar.index != PCI_ROM_SLOT
                       else HEADER["rom_address"].offset)  # fmt: skip
                self.set_config(off, 8 if bar.is_64 else 4, bar.flags)
        self.irq_level = False
        self._update_intx_output()
        if self.msix is not None:
            ctrl = MSIX["message_control"]
            self.set_config(self.msix.cap + ctrl.offset, ctrl.size, self.msix.table_size - 1)
            self.msix.reset()
