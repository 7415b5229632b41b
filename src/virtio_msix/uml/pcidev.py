"""The virtio_pcidev protocol: one PCI function of ours on UML's virtual PCI bus.

UML's ``arch/um/drivers/virt-pci.c`` binds to a virtio device (our vhost-user backend) with two
queues. On the "cmd" queue it sends ``struct virtio_pcidev_msg`` requests
(``include/uapi/linux/virtio_pcidev.h``): config-space and BAR reads (it busy-polls the used ring
for the answer, about 40 ms at most) and posted writes. On the "irq" queue it leaves empty
buffers that we fill with INT (INTx pin) and MSI messages; an MSI message carries the address
and data our MSI-X table entry holds, and virt-pci raises the Linux IRQ whose number is the data
(its MSI domain composes address 0xa0000, data = IRQ number).

This module knows the protocol and a ``PciFunction``; it knows nothing of virtio-net.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ..pci.function import PciFunction
from ..virtio.memory import Memory
from ..virtio.queue import VirtQueue, VirtqueueError

CFG_SPACE_SIZE = 4096
MAX_MMIO_LEN = 4096  # longest memcpy_fromio/toio we serve in one message
UML_MSI_ADDRESS = 0xA0000  # um_pci_compose_msi_msg


class PcidevOp(IntEnum):
    RESERVED = 0
    CFG_READ = 1
    CFG_WRITE = 2
    MMIO_READ = 3
    MMIO_WRITE = 4
    MMIO_MEMSET = 5
    INT = 6
    MSI = 7
    PME = 8


# struct virtio_pcidev_msg: u8 op, u8 bar, u16 reserved, u32 size, u64 addr, u8 data[]
MSG = struct.Struct("<BBHIQ")
CMD_QUEUE = 0
IRQ_QUEUE = 1
IRQ_MSG_MAX = MSG.size + 4  # virt-pci's MAX_IRQ_MSG_SIZE


class PcidevError(Exception):
    """The kernel sent something the protocol does not allow (reported, the message skipped)."""


@dataclass
class PcidevStats:
    cfg_reads: int = 0
    cfg_writes: int = 0
    mmio_reads: int = 0
    mmio_writes: int = 0
    msi_sent: int = 0
    int_sent: int = 0
    irq_dropped: int = 0
    bad_messages: int = 0


class UmlInterruptSink:
    """The function's interrupt sink: MSI and INTx become messages on the irq queue."""

    def __init__(self, host: VirtPciHost) -> None:
        self.host = host
        self.level = False

    def msi(self, address: int, data: int) -> None:
        self.host.queue_irq(PcidevOp.MSI, address, data)

    def set_intx(self, level: bool) -> None:
        # virt-pci calls generic_handle_irq once per INT message: it is an edge. Send one on each
        # rising edge; the virtio INTx handler reads the ISR, which lowers the line (§4.1.4.5).
        if level and not self.level:
            self.host.queue_irq(PcidevOp.INT, 1, None)  # INTA#
        self.level = level


class VirtPciHost:
    """Serves virt-pci's cmd queue against ``function`` and fills its irq queue."""

    def __init__(self, memory: Memory, cmd: VirtQueue, irq: VirtQueue) -> None:
        self.memory = memory
        self.cmd = cmd
        self.irq = irq
        self.function: PciFunction | None = None
        self.pending_irqs: deque[bytes] = deque()
        self.stats = PcidevStats()
        self.errors: list[str] = []
        self.signal_cmd = False
        self.signal_irq = False

    def attach(self, function: PciFunction) -> None:
        self.function = function

    # -- cmd queue ---------------------------------------------------------------------------
    def process_cmds(self) -> int:
        """Serve every available request; returns how many."""
        n = 0
        while True:
            elem = self.cmd.pop(self.memory)
            if elem is None:
                return n
            n += 1
            try:
                request = elem.read(self.memory)
                reply = self._execute(request, elem.writable_len)
            except PcidevError as e:
                self.stats.bad_messages += 1
                self.errors.append(str(e))
                reply = b""
            written = elem.write(self.memory, reply) if reply else 0
            self.cmd.push(self.memory, elem, written)
            self.signal_cmd = True

    def _execute(self, request: bytes, out_len: int) -> bytes:
        if len(request) < MSG.size:
            raise PcidevError(f"short virtio_pcidev_msg: {len(request)} bytes")
        op, bar, _res, size, addr = MSG.unpack_from(request)
        data = request[MSG.size :]
        fn = self.function
        if fn is None:
            raise PcidevError("no PCI function attached")
        try:
            op = PcidevOp(op)
        except ValueError:
            raise PcidevError(f"unknown virtio_pcidev op {op}") from None
        if op is PcidevOp.CFG_READ:
            self.stats.cfg_reads += 1
            if size not in (1, 2, 4, 8) or out_len < size:
                raise PcidevError(f"CFG_READ of size {size} (answer room {out_len})")
            return self._cfg_read(fn, addr, size).to_bytes(size, "little")
        if op is PcidevOp.CFG_WRITE:
            self.stats.cfg_writes += 1
            if size not in (1, 2, 4, 8) or len(data) < size:
                raise PcidevError(f"CFG_WRITE of size {size} with {len(data)} data bytes")
            self._cfg_write(fn, addr, size, int.from_bytes(data[:size], "little"))
            return b""
        if op is PcidevOp.MMIO_READ:
            self.stats.mmio_reads += 1
            if not 0 < size <= MAX_MMIO_LEN or out_len < size:
                raise PcidevError(f"MMIO_READ of {size} bytes (answer room {out_len})")
            return self._mmio_read(fn, bar, addr, size)
        if op is PcidevOp.MMIO_WRITE:
            self.stats.mmio_writes += 1
            if not 0 < size <= MAX_MMIO_LEN or len(data) < size:
                raise PcidevError(f"MMIO_WRITE of {size} bytes with {len(data)} data bytes")
            self._mmio_write(fn, bar, addr, data[:size])
            return b""
        if op is PcidevOp.MMIO_MEMSET:
            self.stats.mmio_writes += 1
            if not 0 < size <= MAX_MMIO_LEN or len(data) < 1:
                raise PcidevError(f"MMIO_MEMSET of {size} bytes")
            self._mmio_write(fn, bar, addr, data[:1] * size)
            return b""
        raise PcidevError(f"{op.name} is a device-to-driver message, not a request")

    @staticmethod
    def _cfg_read(fn: PciFunction, addr: int, size: int) -> int:
        if addr + size > CFG_SPACE_SIZE:
            return (1 << (8 * size)) - 1
        if size == 8:  # two dword cycles, as a PCI host bridge would split it
            return fn.cfg_read(addr, 4) | fn.cfg_read(addr + 4, 4) << 32
        return fn.cfg_read(addr, size)

    @staticmethod
    def _cfg_write(fn: PciFunction, addr: int, size: int, value: int) -> None:
        if addr + size > CFG_SPACE_SIZE:
            return
        if size == 8:
            fn.cfg_write(addr, 4, value & 0xFFFFFFFF)
            fn.cfg_write(addr + 4, 4, value >> 32)
        else:
            fn.cfg_write(addr, size, value)

    @staticmethod
    def _chunks(addr: int, length: int) -> list[tuple[int, int]]:
        """Split a copy into naturally aligned accesses of 8, 4, 2 or 1 bytes."""
        out = []
        end = addr + length
        while addr < end:
            for n in (8, 4, 2, 1):
                if addr % n == 0 and addr + n <= end:
                    out.append((addr, n))
                    addr += n
                    break
        return out

    def _mmio_read(self, fn: PciFunction, bar: int, addr: int, size: int) -> bytes:
        if size in (1, 2, 4, 8):
            return fn.bar_read(bar, addr, size).to_bytes(size, "little")
        return b"".join(fn.bar_read(bar, a, n).to_bytes(n, "little")
                        for a, n in self._chunks(addr, size))  # fmt: skip

    def _mmio_write(self, fn: PciFunction, bar: int, addr: int, data: bytes) -> None:
        size = len(data)
        if size in (1, 2, 4, 8):
            fn.bar_write(bar, addr, size, int.from_bytes(data, "little"))
            return
        for a, n in self._chunks(addr, size):
            fn.bar_write(bar, a, n, int.from_bytes(data[a - addr : a - addr + n], "little"))

    # -- irq queue ---------------------------------------------------------------------------
    def queue_irq(self, op: PcidevOp, addr: int, data: int | None) -> None:
        if op is PcidevOp.MSI:
            self.stats.msi_sent += 1
            msg = MSG.pack(op, 0, 0, 4, addr) + (data or 0).to_bytes(4, "little")
        else:
            self.stats.int_sent += 1
            msg = MSG.pack(op, 0, 0, 0, addr)
        self.pending_irqs.append(msg)
        self.flush_irqs()

    def flush_irqs(self) -> None:
        """Put queued interrupt messages into the buffers virt-pci left on the irq queue; what
        does not fit waits for the next buffers (virt-pci recycles each one it has handled)."""
        while self.pending_irqs:
            try:
                elem = self.irq.pop(self.memory)
            except VirtqueueError as e:
                self.errors.append(f"irq queue: {e}")
                self.stats.irq_dropped += len(self.pending_irqs)
                self.pending_irqs.clear()
                return
            if elem is None:
                return
            msg = self.pending_irqs.popleft()
            if elem.writable_len < len(msg):
                self.errors.append(f"irq buffer of {elem.writable_len} bytes < {len(msg)}")
                self.stats.irq_dropped += 1
                self.irq.push(self.memory, elem, 0)
            else:
                self.irq.push(self.memory, elem, elem.write(self.memory, msg))
            self.signal_irq = True

    def summary(self) -> dict[str, Any]:
        return dict(vars(self.stats), pending_irqs=len(self.pending_irqs), errors=self.errors[-5:])
