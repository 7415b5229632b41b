"""A PCI bus as a CPU reaches it: config cycles by slot/function, MMIO and port I/O by address.

Memory and I/O accesses are routed to the function whose BAR the driver programmed to cover
the address, and only while that function's COMMAND.MEM / COMMAND.IO decode is on (PCI 3.0
§6.2.2). An address nobody decodes reads all ones and drops writes (master abort).

The bus is the CPU's side: it accepts only accesses a CPU can make (config cycles of 1, 2 or 4
bytes inside the 4 KiB of a function's config space; memory accesses of 1, 2, 4 or 8 bytes
inside the 64-bit address space; port accesses of 1, 2 or 4 bytes inside the 64 KiB I/O space;
a value that fits the access). Anything else is a caller's bug and raises ``PciBusError`` with
what was wrong, before any device sees it.
"""

from __future__ import annotations

from .function import PciFunction

CONFIG_SPACE = 0x1000  # ECAM: 4 KiB per function
CFG_SIZES = (1, 2, 4)
MEM_SIZES = (1, 2, 4, 8)
IO_SIZES = (1, 2, 4)
MEM_SPACE = 1 << 64
IO_SPACE = 1 << 16
DECODED_MAX = 4096  # addresses whose decode is remembered


class PciBusError(ValueError):
    """An access no CPU could make (bad size, offset, address or value)."""


def _check(kind: str, addr: int, size: int, sizes: tuple[int, ...], space: int,
           value: int | None = None) -> None:  # fmt: skip
    if not isinstance(size, int) or size not in sizes:
        raise PciBusError(f"{kind}: access size {size!r} is not one of {sizes}")
    if not isinstance(addr, int) or addr < 0 or addr + size > space:
        raise PciBusError(f"{kind}: address {addr!r} (+{size}) outside [0, {space:#x})")
    if value is not None and (not isinstance(value, int) or not 0 <= value < 1 << (8 * size)):
        raise PciBusError(f"{kind}: value {value!r} does not fit {size} bytes")


class PciBus:
    def __init__(self) -> None:
        self.functions: dict[tuple[int, int], PciFunction] = {}
        # (addr, size, io) → what _decode found, valid while the functions' config generations
        # sum to _decode_gen (they only grow, so any change of a BAR or COMMAND changes it)
        self._decoded: dict[tuple[int, int, bool], tuple[PciFunction, int, int] | None] = {}
        self._decode_gen = -1

    def attach(self, slot: int, function: PciFunction, func: int = 0) -> None:
        if not (0 <= slot < 32 and 0 <= func < 8):
            raise ValueError(f"slot {slot} function {func} out of range")
        self.functions[(slot, func)] = function
        self._decoded.clear()

    def function(self, slot: int, func: int = 0) -> PciFunction | None:
        return self.functions.get((slot, func))

    # -- config cycles ------------------------------------------------------------------------
    def cfg_read(self, slot: int, func: int, offset: int, size: int) -> int:
        _check("cfg_read", offset, size, CFG_SIZES, CONFIG_SPACE)
        fn = self.functions.get((slot, func))
        if fn is None:
            return (1 << (8 * size)) - 1  # no device: master abort reads all ones
        return fn.cfg_read(offset, size)

    def cfg_write(self, slot: int, func: int, offset: int, size: int, value: int) -> None:
        _check("cfg_write", offset, size, CFG_SIZES, CONFIG_SPACE, value)
        fn = self.functions.get((slot, func))
        if fn is not None:
            fn.cfg_write(offset, size, value)

    # -- memory and I/O space ------------------------------------------------------------------
    def _decode(self, addr: int, size: int, io: bool) -> tuple[PciFunction, int, int] | None:
        gen = 0
        for fn in self.functions.values():
            g = getattr(fn, "cfg_space_generation", None)
            if g is None:  # a function that does not count its changes: decode every time
                return self._decode_now(addr, size, io)
            gen += g
        if gen != self._decode_gen:
            self._decoded.clear()
            self._decode_gen = gen
        key = (addr, size, io)
        try:
            return self._decoded[key]
        except KeyError:
            pass
        hit = self._decode_now(addr, size, io)
        if len(self._decoded) < DECODED_MAX:  # bounded whatever addresses a caller tries
            self._decoded[key] = hit
        return hit

    def _decode_now(self, addr: int, size: int, io: bool) -> tuple[PciFunction, int, int] | None:
        for fn in self.functions.values():
            for bar in fn.bars:
                if bar is None or bar.is_io != io:
                    continue
                base = fn.bar_address(bar.index)
                if base is None or base == 0:
                    continue
                if base <= addr and addr + size <= base + bar.size:
                    return fn, bar.index, addr - base
        return None

    def mmio_read(self, addr: int, size: int) -> int:
        _check("mmio_read", addr, size, MEM_SIZES, MEM_SPACE)
        hit = self._decode(addr, size, io=False)
        if hit is None:
            return (1 << (8 * size)) - 1
        fn, bar, off = hit
        return fn.bar_read(bar, off, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        # The common case passes _check's tests here, without its frame; anything else gets
        # its verdict and message.
        if not (
            type(size) is int and size in MEM_SIZES and type(addr) is int  # noqa: E721
            and 0 <= addr and addr + size <= MEM_SPACE
            and type(value) is int and 0 <= value < 1 << (8 * size)  # noqa: E721
        ):  # fmt: skip
            _check("mmio_write", addr, size, MEM_SIZES, MEM_SPACE, value)
        hit = self._decode(addr, size, io=False)
        if hit is not None:
            fn, bar, off = hit
            fn.bar_write(bar, off, size, value)

    def io_read(self, port: int, size: int) -> int:
        _check("io_read", port, size, IO_SIZES, IO_SPACE)
        hit = self._decode(port, size, io=True)
        if hit is None:
            return (1 << (8 * size)) - 1
        fn, bar, off = hit
        return fn.bar_read(bar, off, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        _check("io_write", port, size, IO_SIZES, IO_SPACE, value)
        hit = self._decode(port, size, io=True)
        if hit is not None:
            fn, bar, off = hit
            fn.bar_write(bar, off, size, value)
