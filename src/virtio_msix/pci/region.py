"""Memory/I/O regions inside a BAR, with the access-size rules a real bus applies.

A CPU access may be of any size 1..8 at any offset. Like QEMU's memory core (the behaviour the
device must match), an access is first cut into naturally aligned pieces no larger than the
region's largest *valid* access; a piece the region does not accept (too small, unaligned)
reads 0 and its write is dropped; an accepted piece larger than what the handler implements is
split again into handler-sized pieces, combined little-endian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ReadFn = Callable[[int, int], int]
WriteFn = Callable[[int, int, int], None]


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


@dataclass
class Region:
    """A window of ``size`` bytes at ``offset`` inside a BAR."""

    name: str  # the trace space name ("common", "msix-table", ...)
    offset: int
    size: int
    read_fn: ReadFn
    write_fn: WriteFn
    valid_min: int = 1
    valid_max: int = 4
    impl_min: int = 1
    impl_max: int = 4

    def contains(self, offset: int) -> bool:
        return self.offset <= offset < self.offset + self.size

    # -- one accepted piece ------------------------------------------------------------------
    def _valid(self, offset: int, size: int) -> bool:
        return self.valid_min <= size <= self.valid_max and offset % size == 0

    def _impl_pieces(self, size: int) -> tuple[int, int]:
        step = max(min(size, self.impl_max), self.impl_min)
        return step, max(size // step, 1)

    def dispatch_read(self, offset: int, size: int) -> int:
        """A read of exactly this size at this region offset (one bus transaction)."""
        if not self._valid(offset, size):
            return 0
        step, count = self._impl_pieces(size)
        value = 0
        for i in range(count):
            value |= (self.read_fn(offset + i * step, step) & _mask(step)) << (8 * i * step)
        return value & _mask(size)

    def dispatch_write(self, offset: int, size: int, value: int) -> None:
        if not self._valid(offset, size):
            return
        step, count = self._impl_pieces(size)
        for i in range(count):
            self.write_fn(offset + i * step, step, (value >> (8 * i * step)) & _mask(step))


def split_access(offset: int, size: int, max_size: int) -> list[tuple[int, int, int]]:
    """Cut [offset, offset+size) into naturally aligned pieces ≤ max_size.

    Returns (piece offset, piece size, byte position in the original access).
    """
    pieces = []
    pos = 0
    while pos < size:
        off = offset + pos
        limit = max_size
        align = off & -off if off else max_size
        if align < limit:
            limit = align
        length = min(size - pos, limit)
        length = 1 << (length.bit_length() - 1)  # power of two not above it
        pieces.append((off, length, pos))
        pos += length
    return pieces


COMPILED_MAX = 4096  # distinct (offset, size) accesses remembered per BAR


class RegionMap:
    """The regions of one BAR; space between them reads 0 and ignores writes.

    Regions are described once, as data; each (offset, size) a bus access uses is compiled, the
    first time it is seen, into what it resolves to: either one region handler called directly
    (the access lies inside one region, is a valid and implemented size there, aligned: one
    bus transaction, no split) or the general walk below. The compiled table is dropped when
    a region is added."""

    def __init__(self, size: int, regions: list[Region] | None = None) -> None:
        self.size = size
        self.regions: list[Region] = list(regions or [])
        # (offset, size) → (region or None, offset inside it, direct); see _compile
        self._compiled: dict[tuple[int, int], tuple[Region | None, int, bool]] = {}

    def add(self, region: Region) -> Region:
        self.regions.append(region)
        self._compiled.clear()
        return region

    def find(self, offset: int) -> Region | None:
        for r in self.regions:
            if r.contains(offset):
                return r
        return None

    def lookup(self, offset: int, size: int) -> tuple[Region | None, int, bool]:
        """(the region holding ``offset`` or None, the offset inside it, whether the access is
        one direct handler call)."""
        hit = self._compiled.get((offset, size))
        if hit is None:
            hit = self._compile(offset, size)
            if len(self._compiled) < COMPILED_MAX:  # a guest probing every offset: bounded
                self._compiled[(offset, size)] = hit
        return hit

    def _compile(self, offset: int, size: int) -> tuple[Region | None, int, bool]:
        region = self.find(offset)
        if region is None:
            return None, offset, False
        rel = offset - region.offset
        direct = (
            rel + size <= region.size  # inside the region: _walk makes one span
            and size & (size - 1) == 0  # a power of two, aligned and ≤ valid_max: one piece
            and rel % size == 0
            and region.valid_min <= size <= region.valid_max  # Region._valid
            and region.impl_min <= size <= region.impl_max  # one handler call, no split
        )
        return region, rel, direct

    def _walk(self, offset: int, size: int):
        """(region, region offset, piece size, byte position) for each bus transaction."""
        pos = 0
        while pos < size:
            off = offset + pos
            region = self.find(off)
            if region is None:  # a hole: one byte of nothing
                yield None, off, 1, pos
                pos += 1
                continue
            rel = off - region.offset
            span = min(size - pos, region.size - rel)
            for piece_off, length, ppos in split_access(rel, span, region.valid_max):
                yield region, piece_off, length, pos + ppos
            pos += span

    def read(self, offset: int, size: int) -> int:
        region, rel, direct = self.lookup(offset, size)
        if direct:
            return region.read_fn(rel, size) & ((1 << (8 * size)) - 1)  # type: ignore[union-attr]
        value = 0
        for region, off, length, pos in self._walk(offset, size):
            if region is not None:
                value |= region.dispatch_read(off, length) << (8 * pos)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        region, rel, direct = self.lookup(offset, size)
        if direct:
            region.write_fn(rel, size, value & ((1 << (8 * size)) - 1))  # type: ignore[union-attr]
            return
        for region, off, length, pos in self._walk(offset, size):
            if region is not None:
                region.dispatch_write(off, length, (value >> (8 * pos)) & _mask(length))
