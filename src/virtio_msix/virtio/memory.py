"""Guest memory as the device sees it: DMA reads and writes by guest-physical address.

The simulator uses an anonymous mapping; the UML host reads and writes the kernel's memory file
descriptors (mapping the one it can map safely) and provides an object with the same members.
Every access is bounds-checked: a guest may put any address in a descriptor, and that must become
a device error, never an exception elsewhere.

A memory whose class derives from ``Windowed`` has a window of plain bytes, ``buf``, holding the
guest-physical range [lo, hi) at ``buf[addr - lo]``: the ring code reads and writes indexes and
descriptors there in place (``struct.unpack_from``), without a call per field; an access outside
the window (or any access to another memory) goes through ``read``/``write``.

``buf16`` is the same window as 16-bit words (``lo`` is even): the ring's indexes, flags and event
fields are read and written through it, each with one aligned 16-bit load or store. The other
side may be running at the same moment (a real kernel on a shared mapping): ``struct`` moves a
16-bit field byte by byte, and a driver reading a used index half written (0x00ff → 0x0100 seen
as 0x0000) walks 65 281 entries that are not there ("id 0 is not a head", seen with UML).
"""

from __future__ import annotations

import mmap
import struct
import sys
from typing import Protocol, TypeVar

_U16 = struct.Struct("<H")
_W = TypeVar("_W", bound="Windowed")


class GuestMemoryError(Exception):
    """A DMA access outside guest memory (the device marks itself NEEDS_RESET)."""


class Memory(Protocol):
    size: int

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class Windowed:
    """A memory with a window of plain bytes (the module's docstring); lo == hi: none now."""

    buf: mmap.mmap | bytearray | None = None
    buf16: memoryview | None = None  # buf as native 16-bit words (little-endian hosts only)
    lo = 0
    hi = 0


# The classes whose instances the ring code reads in place: ``type(mem) in WINDOWED`` is the
# hot paths' test (a set lookup, cheaper than isinstance). Exact classes, registered with
# ``windowed``: a subclass that overrides read/write (a test's counting memory) must see every
# access, so it is not in the set unless it says so.
WINDOWED: set[type] = set()


def words(buf: mmap.mmap | bytearray) -> memoryview | None:
    """``buf`` as native 16-bit words (its even-length prefix), or None on a big-endian host
    (virtio's rings are little-endian: no window there, every access through read/write)."""
    if sys.byteorder != "little" or len(buf) < 2:
        return None
    return memoryview(buf)[: len(buf) & ~1].cast("H")


def load16(mem: Memory, addr: int) -> int:
    """The little-endian 16-bit field at ``addr``: one aligned load from the window where
    ``mem`` has one there (the other side may be writing it: the module's docstring), else
    through ``read``, whose GuestMemoryError it raises."""
    if type(mem) in WINDOWED and mem.lo <= addr and addr + 2 <= mem.hi and not addr & 1:
        return mem.buf16[(addr - mem.lo) >> 1]  # type: ignore[attr-defined,index]
    return int.from_bytes(mem.read(addr, 2), "little")


def store16(mem: Memory, addr: int, value: int) -> None:
    """``load16``'s store: one aligned 16-bit store into the window, else through ``write``."""
    value &= 0xFFFF
    if type(mem) in WINDOWED and mem.lo <= addr and addr + 2 <= mem.hi and not addr & 1:
        mem.buf16[(addr - mem.lo) >> 1] = value  # type: ignore[attr-defined,index]
        return
    mem.write(addr, value.to_bytes(2, "little"))


def windowed(cls: type[_W]) -> type[_W]:
    """Class decorator: ``cls``'s instances have a window the ring code may use in place."""
    WINDOWED.add(cls)
    return cls


@windowed
class GuestMemory(Windowed):
    """Flat guest-physical memory starting at address 0: all of it is the window.

    The bytes are an anonymous mapping (zero pages the host kernel provides on first touch: a
    64 MiB guest costs nothing until used): a slice of it is the bytes read (one copy), and
    stores go through a memoryview (no intermediate object)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf: mmap.mmap | bytearray = mmap.mmap(-1, size) if size > 0 else bytearray(0)
        self._view = memoryview(self.buf)
        self._small = size <= 0  # no mapping (a bytearray: its slice is not bytes)
        self.buf16 = words(self.buf)
        self.lo, self.hi = (0, max(size, 0)) if self.buf16 is not None else (0, 0)

    def _check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestMemoryError(
                f"DMA [{addr:#x}, {addr + length:#x}) outside guest memory of {self.size:#x} bytes"
            )

    # The bounds test is inlined (these run for every ring index and descriptor).
    def read(self, addr: int, length: int) -> bytes:
        if addr < 0 or length < 0 or addr + length > self.size:
            self._check(addr, length)
        return bytes(self._view[addr : addr + length]) if self._small else self.buf[addr : addr + length]

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        if addr < 0 or addr + n > self.size:
            self._check(addr, n)
        self._view[addr : addr + n] = data

    def read_u16(self, addr: int) -> int:
        if addr < 0 or addr + 2 > self.size:
            self._check(addr, 2)
        return _U16.unpack_from(self.buf, addr)[0]

    def write_u16(self, addr: int, value: int) -> None:
        if addr < 0 or addr + 2 > self.size:
            self._check(addr, 2)
        _U16.pack_into(self.buf, addr, value & 0xFFFF)

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, (value & (2**64 - 1)).to_bytes(8, "little"))


class SparseMemory:
    """Memory of any size whose unwritten bytes read as zero (replaying a register trace, where
    the guest's RAM contents are unknown: rings read empty, so the device finds no work)."""

    PAGE = 4096

    def __init__(self, size: int = 1 << 64) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}

    def read(self, addr: int, length: int) -> bytes:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise GuestMemoryError(f"DMA [{addr:#x}, +{length:#x}) outside memory")
        out = bytearray()
        while length:
            page, off = divmod(addr, self.PAGE)
            n = min(length, self.PAGE - off)
            data = self.pages.get(page)
            out += data[off : off + n] if data is not None else bytes(n)
            addr += n
            length -= n
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        if addr < 0 or addr + len(data) > self.size:
            raise GuestMemoryError(f"DMA [{addr:#x}, +{len(data):#x}) outside memory")
        pos = 0
        while pos < len(data):
            page, off = divmod(addr + pos, self.PAGE)
            n = min(len(data) - pos, self.PAGE - off)
            buf = self.pages.setdefault(page, bytearray(self.PAGE))
            buf[off : off + n] = data[pos : pos + n]
            pos += n
