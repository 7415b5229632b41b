"""The virtio_pcidev protocol: one PCI function of ours on UML's virtual PCI bus.

UML's ``arch/um/drivers/virt-pci.c`` binds to a virtio device (our vhost-user backend) with two
queues. On the "cmd" queue it sends ``struct virtio_pcidev_msg`` requests
(``include/uapi/linux/virtio_pcidev.h``): config-space and BAR reads (it busy-polls the used ring
for the answer, about 40 ms at most) and posted writes. On the "irq" queue it leaves empty
buffers that we fill with INT (INTx pin) and MSI messages; an MSI message carries the address
and data our MSI-X table entry holds, and virt-pci raises the Linux IRQ whose number is the data
(its MSI domain composes address 0xa0000, data = IRQ number).

This module knows the protocol and a ``PciFunction``; it knows nothing of virtio-net.

The kernel on the other side may be hostile: a request's header is read and checked before any
data (only the bytes its size announces are read, at most ``MAX_MMIO_LEN``), one pass serves at
most a queue's worth of requests, an access to an absent BAR or past a BAR's end is a counted bad
message answered with all-ones (as the config path answers past its end), and interrupt messages
waiting for irq buffers are coalesced (an identical one already waiting stands for both, as an
MSI-X pending bit would) and bounded, every drop counted with its reason.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..pci.function import PciFunction
from ..pci.region import split_access
from ..virtio.memory import GuestMemoryError, Memory
from ..virtio.queue import Element, VirtQueue, VirtqueueError

CFG_SPACE_SIZE = 4096
MAX_MMIO_LEN = 4096  # longest memcpy_fromio/toio we serve in one message


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


_OPS = {int(op): op for op in PcidevOp}

# struct virtio_pcidev_msg: u8 op, u8 bar, u16 reserved, u32 size, u64 addr, u8 data[]
MSG = struct.Struct("<BBHIQ")
CMD_QUEUE = 0
IRQ_QUEUE = 1
IRQ_MSG_MAX = MSG.size + 4  # virt-pci's MAX_IRQ_MSG_SIZE
# Interrupt messages waiting for irq buffers (virt-pci keeps NUM_IRQ_MSGS = 10 posted and
# recycles each): identical ones coalesce, so a real kernel needs one per vector at most.
MAX_PENDING_IRQS = 256
ERRORS_KEPT = 8  # the last bad messages' texts kept for the summary
# Register accesses one pass may make for the kernel's requests: a 4096-byte MMIO_MEMSET to a
# register region is hundreds of register writes (each notify write a kick), so the pass also
# stops at this many and leaves the other requests for the next one (``backlog``).
MAX_ACCESSES_PER_PASS = 4096


class PcidevError(Exception):
    """The kernel sent something the protocol does not allow (reported, the message skipped);
    ``kind`` groups it in the counters."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass
class PcidevStats:
    cfg_reads: int = 0
    cfg_writes: int = 0
    mmio_reads: int = 0
    mmio_writes: int = 0
    msi_sent: int = 0
    int_sent: int = 0
    irq_dropped: int = 0
    irq_coalesced: int = 0
    bad_messages: int = 0
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    irq_dropped_by_reason: dict[str, int] = field(default_factory=dict)


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
        self.irq_error: VirtqueueError | None = None
        self.accesses = 0  # register accesses made for requests (8/4/2/1-byte pieces)
        self.backlog = False  # the last pass stopped at a bound with requests left

    def attach(self, function: PciFunction) -> None:
        self.function = function

    def bad(self, kind: str, text: str) -> None:
        """Count a bad message (or another problem the kernel caused) and keep its text."""
        self.stats.bad_messages += 1
        self.stats.bad_by_kind[kind] = self.stats.bad_by_kind.get(kind, 0) + 1
        self.errors.append(text)
        del self.errors[:-ERRORS_KEPT]

    # -- cmd queue ---------------------------------------------------------------------------
    def process_cmds(self) -> int:
        """Serve the available requests, at most a queue's worth (the kernel may keep adding
        while we serve) and at most MAX_ACCESSES_PER_PASS register accesses; returns how
        many. ``backlog`` says whether requests were left for the next pass."""
        n = 0
        start = self.accesses
        self.backlog = False
        try:
            while n < max(self.cmd.size, 1):
                if self.accesses - start >= MAX_ACCESSES_PER_PASS:
                    self.backlog = self.cmd.has_available(self.memory)
                    return n
                elem = self.cmd.pop(self.memory)
                if elem is None:
                    return n
                n += 1
                try:
                    reply = self._execute(elem)
                except PcidevError as e:
                    self.bad(e.kind, str(e))
                    reply = b""
                written = elem.write(self.memory, reply) if reply else 0
                # A read's answer is published at once: virt-pci busy-polls for it while
                # the requests behind it wait. Posted writes are published as a burst.
                self.cmd.push(self.memory, elem, written, publish=bool(reply))
                # One call per pass covers every used buffer of the pass. It is not held back
                # further: virt-pci sets no VRING_AVAIL_F_NO_INTERRUPT, so a notification is
                # owed (§2.7.7.2, without EVENT_IDX), and a front-end that waits on the call
                # rather than polling (or a posted write's buffer that is freed only by the
                # callback, before virt-pci's 256-entry ring fills) depends on it.
                self.signal_cmd = True
            self.backlog = self.cmd.has_available(self.memory)
        finally:
            self.cmd.publish_used(self.memory)
        return n

    def _read_prefix(self, elem: Element, length: int) -> bytes:
        """The first ``length`` bytes of the chain's readable buffers (fewer if it is shorter),
        without reading the rest: a request announces its size in its header."""
        out = b""
        try:
            for a, n in elem.readable:
                if len(out) >= length:
                    break
                out += self.memory.read(a, min(n, length - len(out)))
        except GuestMemoryError as e:
            raise VirtqueueError(f"virt-pci cmd queue: {e}") from None
        return out

    def _execute(self, elem: Element) -> bytes:
        # The header and, for the register writes virt-pci posts (at most 8 bytes), their
        # data in one read; a longer MMIO write reads its data below.
        first = self._read_prefix(elem, MSG.size + 8)
        head = first[: MSG.size]
        if len(head) < MSG.size:
            raise PcidevError("short", f"short virtio_pcidev_msg: {len(head)} bytes")
        op, bar, _res, size, addr = MSG.unpack(head)
        out_len = elem.writable_len
        fn = self.function
        if fn is None:
            raise PcidevError("no function", "no PCI function attached")
        op = _OPS.get(op, op)  # a dict, not the enum's constructor: this runs per request
        if type(op) is int:
            raise PcidevError("unknown op", f"unknown virtio_pcidev op {op}")
        if op is PcidevOp.CFG_READ:
            self.stats.cfg_reads += 1
            if size not in (1, 2, 4, 8) or out_len < size:
                raise PcidevError("bad size", f"CFG_READ of size {size} (answer room {out_len})")
            return self._cfg_read(fn, addr, size).to_bytes(size, "little")
        if op is PcidevOp.MMIO_READ:
            self.stats.mmio_reads += 1
            if not 0 < size <= MAX_MMIO_LEN or out_len < size:
                raise PcidevError("bad size", f"MMIO_READ of {size} bytes (answer room {out_len})")
            return self._mmio_read(fn, bar, addr, size)
        if op not in (PcidevOp.CFG_WRITE, PcidevOp.MMIO_WRITE, PcidevOp.MMIO_MEMSET):
            raise PcidevError(
                "wrong direction", f"{op.name} is a device-to-driver message, not a request"
            )
        # A write: check the size before reading the data it announces.
        want = 1 if op is PcidevOp.MMIO_MEMSET else size
        if op is PcidevOp.CFG_WRITE:
            self.stats.cfg_writes += 1
            ok = size in (1, 2, 4, 8)
        else:
            self.stats.mmio_writes += 1
            ok = 0 < size <= MAX_MMIO_LEN
        if not ok:
            data = b""
        elif want <= 8:
            data = first[MSG.size : MSG.size + want]
        else:
            data = self._read_prefix(elem, MSG.size + want)[MSG.size :]
        if not ok or len(data) < want:
            raise PcidevError("bad size", f"{op.name} of size {size} with {len(data)} data bytes")
        if op is PcidevOp.CFG_WRITE:
            self._cfg_write(fn, addr, size, int.from_bytes(data, "little"))
        else:
            self._mmio_write(fn, bar, addr, data * size if op is PcidevOp.MMIO_MEMSET else data)
        return b""

    def _cfg_read(self, fn: PciFunction, addr: int, size: int) -> int:
        if addr + size > CFG_SPACE_SIZE:
            self.bad("config past end", f"CFG_READ [{addr:#x}, +{size}) past 4 KiB of config space")
            return (1 << (8 * size)) - 1
        if size == 8:  # two dword cycles, as a PCI host bridge would split it
            return fn.cfg_read(addr, 4) | fn.cfg_read(addr + 4, 4) << 32
        return fn.cfg_read(addr, size)

    def _cfg_write(self, fn: PciFunction, addr: int, size: int, value: int) -> None:
        if addr + size > CFG_SPACE_SIZE:
            self.bad("config past end", f"CFG_WRITE [{addr:#x}, +{size}) past 4 KiB of config "
                     "space (dropped)")  # fmt: skip
            return
        if size == 8:
            fn.cfg_write(addr, 4, value & 0xFFFFFFFF)
            fn.cfg_write(addr + 4, 4, value >> 32)
        else:
            fn.cfg_write(addr, size, value)

    def _bar_ok(self, fn: PciFunction, op: str, bar: int, addr: int, size: int) -> bool:
        """Whether [addr, +size) lies inside BAR ``bar``; if not, a counted bad message."""
        b = fn.bars[bar] if 0 <= bar < len(fn.bars) else None
        if b is None:
            self.bad("absent BAR", f"{op} on BAR {bar}, which the function does not have")
            return False
        if addr + size > b.size:
            self.bad("past BAR end", f"{op} [{addr:#x}, +{size:#x}) past the end of BAR {bar} "
                     f"({b.size:#x} bytes)")  # fmt: skip
            return False
        return True

    def _mmio_read(self, fn: PciFunction, bar: int, addr: int, size: int) -> bytes:
        if not self._bar_ok(fn, "MMIO_READ", bar, addr, size):
            return b"\xff" * size  # what a read nobody claims returns on PCI
        if size in (1, 2, 4, 8):
            self.accesses += 1
            return fn.bar_read(bar, addr, size).to_bytes(size, "little")
        pieces = list(split_access(addr, size, 8))
        self.accesses += len(pieces)
        return b"".join(fn.bar_read(bar, a, n).to_bytes(n, "little") for a, n, _ in pieces)

    def _mmio_write(self, fn: PciFunction, bar: int, addr: int, data: bytes) -> None:
        size = len(data)
        if not self._bar_ok(fn, "MMIO_WRITE", bar, addr, size):
            return
        if size in (1, 2, 4, 8):
            self.accesses += 1
            fn.bar_write(bar, addr, size, int.from_bytes(data, "little"))
            return
        # Naturally aligned pieces of 8, 4, 2 or 1 bytes, as the CPU's copy would make them.
        for a, n, _ in split_access(addr, size, 8):
            self.accesses += 1
            fn.bar_write(bar, a, n, int.from_bytes(data[a - addr : a - addr + n], "little"))

    # -- irq queue ---------------------------------------------------------------------------
    def _drop_irqs(self, reason: str, n: int) -> None:
        self.stats.irq_dropped += n
        by = self.stats.irq_dropped_by_reason
        by[reason] = by.get(reason, 0) + n

    def queue_irq(self, op: PcidevOp, addr: int, data: int | None) -> None:
        if op is PcidevOp.MSI:
            self.stats.msi_sent += 1
            msg = MSG.pack(op, 0, 0, 4, addr) + ((data or 0) & 0xFFFFFFFF).to_bytes(4, "little")
        else:
            self.stats.int_sent += 1
            msg = MSG.pack(op, 0, 0, 0, addr)
        if msg in self.pending_irqs:
            # The same message is already waiting for a buffer: like an MSI-X pending bit, one
            # delivery stands for both (the handler serves every used buffer it finds).
            self.stats.irq_coalesced += 1
        elif len(self.pending_irqs) >= MAX_PENDING_IRQS:
            self._drop_irqs("no irq buffers (pending queue full)", 1)
        else:
            self.pending_irqs.append(msg)
        try:
            self.flush_irqs()
        except VirtqueueError as e:
            # This runs inside the device's register or queue handling, which must not see a
            # broken irq ring: the owner's next flush_irqs raises it.
            self.irq_error = e

    def flush_irqs(self) -> None:
        """Put queued interrupt messages into the buffers virt-pci left on the irq queue; what
        does not fit waits for the next buffers (virt-pci recycles each one it has handled)."""
        if self.irq_error is not None:
            e, self.irq_error = self.irq_error, None
            raise e
        self._fill_irq_buffers()
        # virt-pci kicks the irq queue each time it gives a buffer back; we need to hear of
        # buffers only while a message waits for one (VRING_USED_F_NO_NOTIFY otherwise:
        # thousands fewer kicks and wake-ups per MiB). Clearing the flag races with a buffer
        # added just before: look once more after clearing it.
        if self.pending_irqs and self.irq.ready():
            self.irq.set_no_notify(self.memory, False)
            self._fill_irq_buffers()
        if not self.pending_irqs and self.irq.ready():
            self.irq.set_no_notify(self.memory, True)

    def _fill_irq_buffers(self) -> None:
        try:
            while self.pending_irqs:
                elem = self.irq.pop(self.memory)
                if elem is None:
                    return
                msg = self.pending_irqs.popleft()
                if elem.writable_len < len(msg):
                    self.bad("irq buffer", f"irq buffer of {elem.writable_len} bytes < {len(msg)}")
                    self._drop_irqs("irq buffer too small", 1)
                    self.irq.push(self.memory, elem, 0, publish=False)
                else:
                    written = elem.write(self.memory, msg)
                    self.irq.push(self.memory, elem, written, publish=False)
                self.signal_irq = True
        except VirtqueueError as e:
            # A broken irq ring (pop or push) is the peer's error and ends the session, one way
            # for both: counted, the interrupts waiting dropped with their reason, raised.
            self.bad("irq queue", f"irq queue: {e}")
            self._drop_irqs("irq queue broken", len(self.pending_irqs))
            self.pending_irqs.clear()
            raise
        finally:
            self.irq.publish_used(self.memory)  # one used-index write for the burst

    def summary(self) -> dict[str, Any]:
        return dict(vars(self.stats), pending_irqs=len(self.pending_irqs), errors=list(self.errors))
