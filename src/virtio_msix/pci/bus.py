"""A PCI bus as a CPU reaches it: config cycles by slot/function, MMIO and port I/O by address.

Memory and I/O accesses are routed to the function whose BAR the driver programmed to cover
the address, and only while that function's COMMAND.MEM / COMMAND.IO decode is on (PCI 3.0
§6.2.2). An address nobody decodes reads all ones and drops writes (master abort).
"""

from __future__ import annotations

from .function import PciFunction


class PciBus:
    def __init__(self) -> None:
        self.functions: dict[tuple[int, int], PciFunction] = {}

    def attach(self, slot: int, function: PciFunction, func: int = 0) -> None:
        if not (0 <= slot < 32 and 0 <= func < 8):
            raise ValueError(f"slot {slot} function {func} out of range")
        self.functions[(slot, func)] = function

    def function(self, slot: int, func: int = 0) -> PciFunction | None:
        return self.functions.get((slot, func))

    # -- config cycles ------------------------------------------------------------------------
    def cfg_read(self, slot: int, func: int, offset: int, size: int) -> int:
        fn = self.functions.get((slot, func))
        if fn is None:
            return (1 << (8 * size)) - 1  # no device: master abort reads all ones
        return fn.cfg_read(offset, size)

    def cfg_write(self, slot: int, func: int, offset: int, size: int, value: int) -> None:
        fn = self.functions.get((slot, func))
        if fn is not None:
            fn.cfg_write(offset, size, value)

    # -- memory and I/O space ------------------------------------------------------------------
    def _decode(self, addr: int, size: int, io: bool) -> tuple[PciFunction, int, int] | None:
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
        hit = self._decode(addr, size, io=False)
        if hit is None:
            return (1 << (8 * size)) - 1
        fn, bar, off = hit
        return fn.bar_read(bar, off, size)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        hit = self._decode(addr, size, io=False)
        if hit is not None:
            fn, bar, off = hit
            fn.bar_write(bar, off, size, value)

    def io_read(self, port: int, size: int) -> int:
        hit = self._decode(port, size, io=True)
        if hit is None:
            return (1 << (8 * size)) - 1
        fn, bar, off = hit
        return fn.bar_read(bar, off, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        hit = self._decode(port, size, io=True)
        if hit is not None:
            fn, bar, off = hit
            fn.bar_write(bar, off, size, value)
