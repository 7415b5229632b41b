"""The backend ("slave") side of the vhost-user protocol, as UML's ``virtio_uml`` client uses it.

UML's ``arch/um/drivers/virtio_uml.c`` connects to our UNIX socket (``virtio_uml.device=PATH:ID``)
and drives one virtio device through it: it reads our features, shares its physical memory
(SET_MEM_TABLE with the memory file descriptor), and sets each vring up (NUM, BASE, ADDR, KICK
eventfd, CALL pipe, ENABLE). Buffers then move through split rings in that shared memory; the
kernel kicks an eventfd and we write to the call pipe (its SIGIO becomes the interrupt).

What we offer, and why (kept minimal so each message has one meaning):
- virtio features: VERSION_1 (modern ring layout); no EVENT_IDX, so notification suppression is
  only the flags words. No RING_PACKED: virt-pci's own two rings stay split (a peer that acks
  it is refused at SET_FEATURES), so SET/GET_VRING_BASE carry a plain avail index, never the
  packed encoding (bits 0-14 index, bit 15 wrap counter). This is only the transport to the
  kernel: the virtio device we host on its PCI bus negotiates packed rings with its own driver
  and walks them in guest memory (virtio/packed.py), untouched by vhost-user.
- VHOST_USER_F_PROTOCOL_FEATURES with REPLY_ACK: every request the client does not expect
  an answer for gets an explicit ack, so a failure shows where it happened.
- SLAVE_REQ: we never send a back-end request, but Linux 6.1's virtio_uml allocates the
  interrupt its call descriptors share only in ``vhost_user_init_slave_req``; without SLAVE_REQ
  ``vu_dev->irq`` stays 0 and requesting the call interrupt collides with the timer on IRQ 0
  ("genirq: Flags mismatch irq 0", virt-pci's probe fails with -EBUSY). Seen on this kernel.
- No INBAND_NOTIFICATIONS (eventfd kicks and pipe calls are faster from Python than messages),
  no CONFIG (virt-pci's device has no config space of its own).

Every message from the peer is checked (size, index, file descriptors); anything malformed
raises ``VhostUserError`` naming the message, and the caller ends the session cleanly. One
reader (``read_message``) takes every message: the header is checked before any payload is read,
the payload and the descriptors attached are bounded, and the whole message must arrive before a
deadline; replies are sent under a deadline too. Every descriptor a message brings is either kept
by its handler or closed.

The peer's memory is read and written with ``pread``/``pwrite`` on its file, never through a
mapping: a peer that truncates its file after SET_MEM_TABLE would turn a mapped read into SIGBUS
(fatal to a Python process), while a read past the new end simply comes back short and becomes a
``GuestMemoryError``. The page cache is shared with the peer's own mapping, so both see the same
bytes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import mmap
import os
import select
import signal as signals
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from ..virtio.memory import GuestMemoryError, Windowed, windowed, words
from ..virtio.queue import VirtQueue


class VhostUserError(Exception):
    """The peer broke the protocol or went away."""


class PeerClosed(VhostUserError):
    """The peer hung up between two messages (how a session normally ends)."""


class Request(IntEnum):
    """Front-end requests (the vhost-user specification's numbering; those UML sends)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SET_SLAVE_REQ_FD = 21
    GET_CONFIG = 24
    SET_CONFIG = 25
    VRING_KICK = 35


HEADER = struct.Struct("<III")  # request, flags, size
FLAG_VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
VRING_INDEX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8

VHOST_USER_F_PROTOCOL_FEATURES = 30
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_SLAVE_REQ = 5

MAX_PAYLOAD = 4096
MAX_FDS = 8  # VHOST_MEMORY_BASELINE_NREGIONS: the most any message carries
MAX_QUEUES = 64
# A message, once its first byte is here, must be complete within this many seconds (the
# front-end writes each one with a single sendmsg loop); a reply must be taken as fast.
MESSAGE_TIMEOUT = 5.0
CALL_FD_KINDS = ("eventfd", "pipe", "socket")
MAX_ERRORS_KEPT = 8  # the last problems' texts kept for the summary

# Payload layouts (packed, little endian): name -> struct.
U64 = struct.Struct("<Q")
CALL_ONE = U64.pack(1)  # what a call writes (an eventfd adds it up; a pipe only wakes)
FD_SYSCALL_LIMIT = 1.0  # seconds a read/write of a call/kick descriptor may block at worst


def _ready(fd: int, events: int) -> bool:
    """Whether ``fd`` is ready for ``events`` now (poll with a zero timeout: any fd number)."""
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(0))
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_REGIONS_HDR = struct.Struct("<II")  # num, padding
MEM_REGION = struct.Struct("<QQQQ")  # guest_addr, size, user_addr, mmap_offset


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int]

    @property
    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"


def close_fds(fds: list[int]) -> int:
    """Close every descriptor in ``fds`` not already taken (-1); returns how many."""
    n = 0
    for i, fd in enumerate(fds):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
            fds[i] = -1
            n += 1
    return n


def _recv_exact(conn: socket.socket, n: int, fds: list[int], deadline: float, limit: float,
                what: str) -> bytes:  # fmt: skip
    """Exactly ``n`` bytes before ``deadline`` (monotonic; ``limit`` s after the message began),
    collecting any descriptors."""
    buf = b""
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        try:
            conn.settimeout(max(remaining, 0.0))
            data, anc, flags, _addr = conn.recvmsg(
                n - len(buf), socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except InterruptedError:
            continue
        except (TimeoutError, BlockingIOError):
            raise VhostUserError(
                f"{what}: the peer sent {len(buf)} of {n} bytes, then nothing within {limit:.1f} s"
            ) from None
        except OSError as e:
            raise VhostUserError(f"{what}: socket: {e}") from None
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
        if flags & socket.MSG_CTRUNC or len(fds) > MAX_FDS:
            # The kernel dropped (and closed) what did not fit: the message is not whole.
            raise VhostUserError(f"{what}: more than {MAX_FDS} file descriptors attached")
        if not data:
            if not buf and what == "header":
                raise PeerClosed("peer closed the connection")
            raise VhostUserError(
                f"{what}: peer closed the connection inside a message ({len(buf)} of {n} bytes)"
            )
        buf += data
    return buf


def read_message(conn: socket.socket, timeout: float = MESSAGE_TIMEOUT,
                 deadline: float | None = None) -> Message:  # fmt: skip
    """Read one message: header, checked, then its payload (at most ``MAX_PAYLOAD`` bytes), all
    within ``timeout`` s and before ``deadline``. On error every descriptor received is closed."""
    start = time.monotonic()
    end = start + timeout if deadline is None else min(start + timeout, deadline)
    limit = max(end - start, 0.0)
    fds: list[int] = []
    try:
        request, flags, size = HEADER.unpack(
            _recv_exact(conn, HEADER.size, fds, end, limit, "header")
        )
        try:
            name = Request(request).name
        except ValueError:
            raise VhostUserError(f"unknown vhost-user request {request}") from None
        if flags & 0x3 != FLAG_VERSION:
            raise VhostUserError(f"{name}: protocol version {flags & 3}, expected 1")
        if flags & FLAG_REPLY:
            raise VhostUserError(f"{name}: a reply where a request was expected")
        if size > MAX_PAYLOAD:
            raise VhostUserError(
                f"{name}: payload of {size} bytes is too large (at most {MAX_PAYLOAD})"
            )
        payload = _recv_exact(conn, size, fds, end, limit, f"{name} payload") if size else b""
    except VhostUserError:
        close_fds(fds)
        raise
    return Message(request, flags, payload, fds)


def send_message(conn: socket.socket, data: bytes, what: str, timeout: float = MESSAGE_TIMEOUT,
                 deadline: float | None = None) -> None:  # fmt: skip
    """Send ``data`` whole within ``timeout`` s and before ``deadline`` (a peer that never reads
    its replies must not hold the loop)."""
    end = time.monotonic() + timeout
    if deadline is not None:
        end = min(end, deadline)
    try:
        conn.settimeout(max(end - time.monotonic(), 0.0))
        conn.sendall(data)  # since 3.5 the timeout bounds the whole call
    except (TimeoutError, BlockingIOError):
        raise VhostUserError(f"{what}: the peer does not read its replies") from None
    except OSError as e:
        raise VhostUserError(f"{what}: sending the reply: {e}") from None


def describe_fd(fd: int) -> str:
    """What a descriptor is, for messages: 'eventfd', 'pipe', 'regular file', 'socket', ..."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = ""
    if link == "anon_inode:[eventfd]":
        return "eventfd"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        return f"unusable descriptor ({e.strerror})"
    for test, name in ((stat.S_ISFIFO, "pipe"), (stat.S_ISREG, "regular file"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory")):  # fmt: skip
        if test(mode):
            return name
    return link or "unknown descriptor"


@dataclass
class MemRegion:
    guest_addr: int
    size: int
    user_addr: int
    file_offset: int
    fd: int
    mapping: mmap.mmap | None = None  # the region mapped (mappable(): only a sealed memfd)


TMPFS_MAGIC = 0x01021994  # statfs(2) f_type of shmem: tmpfs and memfd_create's files
_STATFS_BYTES = 256  # room for struct statfs (120 bytes on x86-64)


def _fs_type(fd: int) -> int | None:
    """The f_type of the file system ``fd`` lives on (fstatfs(2)); None if it cannot be read.
    Python's os.fstatvfs does not report it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(_STATFS_BYTES)
    if libc.fstatfs(fd, buf) != 0:
        return None
    return int(struct.unpack_from("<q", buf.raw)[0])


def unmappable(fd: int, offset: int, size: int) -> str | None:
    """Why the region [offset, +size) of ``fd`` must not be mapped, or None if it may be.

    An access to a shared mapping past its file's end is SIGBUS, which kills the process, and
    the front-end holds the same file and may truncate it at any time. Only a memfd sealed
    against shrinking (F_SEAL_SHRINK: memfd_create(2), fcntl(2) "File Sealing") cannot be
    truncated, and only shmem's (not hugetlbfs', whose faults SIGBUS when the huge-page pool
    runs out; memfd_create's files live on an internal shmem mount without a size limit)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return "not a memfd (its file system has no seals)"
    if not seals & fcntl.F_SEAL_SHRINK:
        # tmpfs files answer F_GET_SEALS too (F_SEAL_SEAL: they can never be sealed)
        return "not sealed against shrinking (F_SEAL_SHRINK): not a sealed memfd"
    if _fs_type(fd) != TMPFS_MAGIC:
        return "not a shmem memfd (hugetlbfs, or its file system unknown)"
    if offset % mmap.ALLOCATIONGRANULARITY:
        return f"its file offset {offset:#x} is not page-aligned"
    if offset + size > os.fstat(fd).st_size:  # add() checked it; sealed, it stays so
        return "it extends past the end of its file"
    return None


@windowed
class SharedMemory(Windowed):
    """The peer's memory, addressed by guest-physical address (UML gives guest_addr ==
    user_addr). Same interface as ``virtio.memory.GuestMemory``. Owns the descriptors of its
    regions.

    A region whose file is a sealed memfd (``unmappable`` says why only that) is mapped, and
    the largest such region is the window the ring code reads in place; every other region is
    read and written with pread/pwrite, whole buffers or ring areas per call (issue 8: a
    mapping of a file the peer can truncate could SIGBUS). ``mapped`` counts the regions
    mapped so far; ``unmapped_why`` keeps why others were not (the last few). Only the window
    has the 16-bit view that ring fields need (memory.py): a ring in another mapped region is
    copied like any buffer, and a field the peer writes meanwhile may be read torn — its own
    rings' trouble, a device error at worst; UML shares one region."""

    def __init__(self) -> None:
        self.regions: list[MemRegion] = []
        self.size = 0
        self.mapped = 0
        self.unmapped_why: list[str] = []
        self._last: MemRegion | None = None  # the region the last access hit
        # That region as plain numbers, for the per-access fast path (UML shares one region,
        # so almost every ring and buffer access is one comparison and one copy or system
        # call): [lo, hi) guest-physical, its fd and mapping, and file offset minus address.
        self._lo = self._hi = 0
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._delta = 0

    def add(self, guest_addr: int, size: int, user_addr: int, mmap_offset: int, fd: int) -> None:
        """Take ``fd`` for a region; ValueError (and ``fd`` not taken) if the region is not
        wholly inside the file as it is now."""
        what = describe_fd(fd)
        if what != "regular file":  # memfd and tmpfs files are regular files too
            raise ValueError(f"its descriptor is a {what}, not a memory file")
        if size == 0 or guest_addr + size > 1 << 64 or user_addr + size > 1 << 64:
            raise ValueError(f"region [{guest_addr:#x}, +{size:#x}) is empty or wraps")
        file_size = os.fstat(fd).st_size
        if mmap_offset + size > file_size:
            raise ValueError(
                f"[{mmap_offset:#x}, +{size:#x}) extends past the end of its file "
                f"({file_size:#x} bytes)"
            )
        for r in self.regions:
            # Two regions for one address would give the ring code (the window) and read/write
            # (the first region found) different bytes for it; libvhost-user refuses overlaps.
            if guest_addr < r.guest_addr + r.size and r.guest_addr < guest_addr + size:
                raise ValueError(
                    f"region [{guest_addr:#x}, +{size:#x}) overlaps [{r.guest_addr:#x}, "
                    f"+{r.size:#x})"
                )
        region = MemRegion(guest_addr, size, user_addr, mmap_offset, fd)
        why = unmappable(fd, mmap_offset, size)
        if why is None:
            try:
                region.mapping = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                           mmap.PROT_READ | mmap.PROT_WRITE, offset=mmap_offset)  # fmt: skip
            except (OSError, ValueError, OverflowError) as e:  # e.g. a read-only descriptor
                why = f"mmap: {e}"
        if why is None:
            self.mapped += 1
        else:
            self.unmapped_why.append(f"[{guest_addr:#x}, +{size:#x}): {why}")
            del self.unmapped_why[:-MAX_ERRORS_KEPT]
        self.regions.append(region)
        self.size = max(self.size, guest_addr + size)
        # The window: the largest mapped region at an even address (buf16's words must be the
        # guest's aligned 16-bit fields).
        window = max((r for r in self.regions if r.mapping is not None and not r.guest_addr & 1),
                     key=lambda r: r.size, default=None)  # fmt: skip
        if window is not None and window.mapping is not self.buf:
            self._drop_window()
            buf16 = words(window.mapping)
            if buf16 is not None:
                self.buf, self.buf16 = window.mapping, buf16
                self.lo, self.hi = window.guest_addr, window.guest_addr + window.size

    def _drop_window(self) -> None:
        if self.buf16 is not None:
            self.buf16.release()  # an exported view would keep its mapping from closing
        self.buf, self.buf16, self.lo, self.hi = None, None, 0, 0

    def close(self) -> None:
        self._drop_window()
        for r in self.regions:
            if r.mapping is not None:
                r.mapping.close()  # nothing keeps a view of it: slices are copies
                r.mapping = None
        close_fds([r.fd for r in self.regions])
        self.regions.clear()
        self.size = 0
        self._last = self._map = None
        self._lo = self._hi = self._delta = 0
        self._fd = -1

    def _find(self, addr: int, length: int) -> MemRegion:
        if addr < 0 or length < 0:
            raise GuestMemoryError(f"DMA [{addr:#x}, +{length:#x}) is negative")
        r = self._last
        if r is not None and r.guest_addr <= addr and addr + length <= r.guest_addr + r.size:
            return r  # UML shares one region
        for r in self.regions:
            if r.guest_addr <= addr and addr + length <= r.guest_addr + r.size:
                self._last = r
                self._lo, self._hi, self._fd = r.guest_addr, r.guest_addr + r.size, r.fd
                self._map = r.mapping
                # mapped: the index into the mapping; else the file offset (for pread)
                self._delta = -r.guest_addr if r.mapping is not None else r.file_offset - r.guest_addr
                return r
        raise GuestMemoryError(f"DMA [{addr:#x}, +{length:#x}) outside the peer's shared memory")

    def read(self, addr: int, length: int) -> bytes:
        if self._lo <= addr and addr + length <= self._hi and length >= 0:
            # The region of the last access: no lookup (the common case, one region).
            m = self._map
            if m is not None:
                a = addr + self._delta
                return m[a : a + length]
            try:
                data = os.pread(self._fd, length, addr + self._delta)
            except OSError:
                data = b""
            if len(data) == length:
                return data
        r = self._find(addr, length)
        if r.mapping is not None:
            a = addr - r.guest_addr
            return r.mapping[a : a + length]
        fd, off = r.fd, r.file_offset + addr - r.guest_addr
        try:
            data = os.pread(fd, length, off)  # whole at once, almost always
        except OSError:
            data = b""  # retried below, where the error is reported
        if len(data) == length:
            return data
        out = data
        while len(out) < length:
            try:
                data = os.pread(fd, length - len(out), off + len(out))
            except InterruptedError:
                continue
            except OSError as e:
                raise GuestMemoryError(f"DMA read [{addr:#x}, +{length:#x}): {e}") from None
            if not data:
                raise GuestMemoryError(
                    f"DMA read [{addr:#x}, +{length:#x}): the peer's memory file ends at "
                    f"{off + len(out):#x} (truncated after SET_MEM_TABLE)"
                )
            out += data
        return out

    def write(self, addr: int, data: bytes) -> None:
        length = len(data)
        if self._lo <= addr and addr + length <= self._hi:
            m = self._map
            if m is not None:
                a = addr + self._delta
                m[a : a + length] = data
                return
            try:
                if os.pwrite(self._fd, data, addr + self._delta) == length:
                    return  # whole at once, almost always
            except OSError:
                pass  # retried below, where the error is reported
        r = self._find(addr, length)
        if r.mapping is not None:
            a = addr - r.guest_addr
            r.mapping[a : a + length] = data
            return
        off = r.file_offset + addr - r.guest_addr
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(r.fd, view, off)
            except InterruptedError:
                continue
            except OSError as e:
                raise GuestMemoryError(f"DMA write [{addr:#x}, +{len(data):#x}): {e}") from None
            view, off = view[n:], off + n
        # A write past the end of a file the peer truncated extends it again (sparse): harmless
        # to us, and the peer's own mapping of what it cut away is gone anyway.


@dataclass
class Vring:
    """One vring as the front-end set it up, with the split-ring walker of ``virtio/``."""

    queue: VirtQueue
    kick_fd: int = -1
    call_fd: int = -1
    # With a socket for call_fd (UML's os_pipe() is a socketpair): a duplicate sent to with
    # MSG_DONTWAIT, which never blocks whatever the peer does to the shared O_NONBLOCK flag,
    # so a call is one system call (no flag check, no readiness poll, no timer).
    call_sock: socket.socket | None = None
    started: bool = False
    enabled: bool = False


def _close_call_sock(vr: Vring) -> None:
    if vr.call_sock is not None:
        vr.call_sock.close()
        vr.call_sock = None


@dataclass
class VhostUserStats:
    messages: int = 0
    unused_fds_closed: int = 0  # descriptors attached to a message that takes none (or fewer)
    calls_coalesced: int = 0  # call pipe full: the peer has not read the earlier ones yet
    kicks_on_stopped_rings: int = 0
    # A call/kick descriptor the peer made blocking again (it shares the open file
    # description): set non-blocking once more before the access, counted.
    fd_blocking_reset: int = 0
    errors: int = 0  # VhostUserError raised (the first ends the session)


class VhostUserBackend:
    """Answers one front-end on a connected socket. The owner selects on ``conn`` and on each
    vring's ``kick_fd``, calls ``handle_one`` / ``drain_kick``, and ``signal(index)`` for used
    buffers. ``deadline`` (monotonic, or None) bounds every blocking read and write."""

    def __init__(
        self, conn: socket.socket, features: int, num_queues: int, max_queue_size: int = 1024
    ) -> None:
        self.conn = conn
        self.features = features | (1 << VHOST_USER_F_PROTOCOL_FEATURES)
        self.protocol_features = 1 << PROTOCOL_F_REPLY_ACK | 1 << PROTOCOL_F_SLAVE_REQ
        self.slave_req_fd = -1
        self.acked_features = 0
        self.acked_protocol_features = 0
        self.memory = SharedMemory()
        self.max_queue_size = max_queue_size
        self.vrings = [Vring(VirtQueue(i, max_queue_size)) for i in range(num_queues)]
        self.owner = False
        self.deadline: float | None = None
        self.message_timeout = MESSAGE_TIMEOUT
        self.stats = VhostUserStats()
        self.errors: list[str] = []  # the last few problems, newest last
        self.log: list[str] = []  # the last messages' names, for errors

    @property
    def messages(self) -> int:
        return self.stats.messages

    def _note(self, text: str) -> None:
        self.errors.append(text)
        del self.errors[:-MAX_ERRORS_KEPT]

    def handle_one(self) -> int:
        """Read and execute one message; returns its request number."""
        try:
            msg = read_message(self.conn, self.message_timeout, self.deadline)
        except PeerClosed:
            raise
        except VhostUserError as e:
            self.stats.errors += 1
            self._note(str(e))
            raise
        self.stats.messages += 1
        name = msg.name
        handler = getattr(self, f"_m_{name.lower()}", None)
        try:
            if handler is None:
                raise VhostUserError(f"vhost-user request {name} is not supported")
            try:
                reply = handler(msg.payload, msg.fds)
            except (struct.error, IndexError) as e:
                raise VhostUserError(
                    f"{name}: malformed payload of {len(msg.payload)} bytes: {e}"
                ) from None
            self.log.append(name)
            del self.log[:-MAX_ERRORS_KEPT]
            if reply is not None:
                self._reply(msg.request, name, reply)
            elif msg.flags & FLAG_NEED_REPLY and self.acked_protocol_features & (
                1 << PROTOCOL_F_REPLY_ACK
            ):
                self._reply(msg.request, name, U64.pack(0))
        except VhostUserError as e:
            self.stats.errors += 1
            self._note(str(e))
            close_fds(msg.fds)  # the message is refused with whatever it brought
            raise
        finally:
            unused = close_fds(msg.fds)  # whatever the handler did not take
            if unused:
                self.stats.unused_fds_closed += unused
                self._note(f"{name}: {unused} file descriptor(s) attached that it does not use "
                           "(closed)")  # fmt: skip
        return msg.request

    def _reply(self, request: int, name: str, payload: bytes) -> None:
        hdr = HEADER.pack(request, FLAG_VERSION | FLAG_REPLY, len(payload))
        send_message(self.conn, hdr + payload, name, self.message_timeout, self.deadline)

    @staticmethod
    def _take(fds: list[int], i: int) -> int:
        """Keep descriptor ``i`` of a message (handle_one closes the others)."""
        fd, fds[i] = fds[i], -1
        return fd

    def _vring(self, index: int, name: str) -> Vring:
        if index >= len(self.vrings):
            raise VhostUserError(f"{name}: vring index {index} ≥ {len(self.vrings)} queues")
        return self.vrings[index]

    @staticmethod
    def _need(payload: bytes, st: struct.Struct, name: str) -> tuple:
        if len(payload) < st.size:
            raise VhostUserError(f"{name}: payload {len(payload)} bytes, need {st.size}")
        return st.unpack_from(payload)

    # -- messages ----------------------------------------------------------------------------
    def _m_set_owner(self, payload: bytes, fds: list[int]) -> None:
        self.owner = True

    def _m_reset_owner(self, payload: bytes, fds: list[int]) -> None:
        self.owner = False

    def _m_get_features(self, payload: bytes, fds: list[int]) -> bytes:
        return U64.pack(self.features)

    def _m_set_features(self, payload: bytes, fds: list[int]) -> None:
        (value,) = self._need(payload, U64, "SET_FEATURES")
        if value & ~self.features:
            raise VhostUserError(f"SET_FEATURES {value:#x} has bits we did not offer")
        self.acked_features = value

    def _m_get_protocol_features(self, payload: bytes, fds: list[int]) -> bytes:
        return U64.pack(self.protocol_features)

    def _m_set_protocol_features(self, payload: bytes, fds: list[int]) -> None:
        (value,) = self._need(payload, U64, "SET_PROTOCOL_FEATURES")
        if value & ~self.protocol_features:
            raise VhostUserError(f"SET_PROTOCOL_FEATURES {value:#x} has bits we did not offer")
        self.acked_protocol_features = value

    def _m_get_queue_num(self, payload: bytes, fds: list[int]) -> bytes:
        return U64.pack(len(self.vrings))

    def _m_set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        num, _pad = self._need(payload, MEM_REGIONS_HDR, "SET_MEM_TABLE")
        if not 1 <= num <= MAX_FDS or len(fds) != num:
            raise VhostUserError(f"SET_MEM_TABLE: {num} regions with {len(fds)} descriptors")
        if len(payload) < MEM_REGIONS_HDR.size + num * MEM_REGION.size:
            raise VhostUserError(f"SET_MEM_TABLE: {num} regions in {len(payload)} bytes")
        self.memory.close()
        for i in range(num):
            ga, size, ua, off = MEM_REGION.unpack_from(
                payload, MEM_REGIONS_HDR.size + i * MEM_REGION.size
            )
            try:
                self.memory.add(ga, size, ua, off, fds[i])
            except (OSError, ValueError) as e:
                self.memory.close()
                raise VhostUserError(f"SET_MEM_TABLE: region {i}: {e}") from None
            self._take(fds, i)

    def _m_set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_NUM")
        q = self._vring(index, "SET_VRING_NUM").queue
        if num == 0 or num > self.max_queue_size or num & (num - 1):
            raise VhostUserError(
                f"SET_VRING_NUM {index}: size {num} is not a power of 2 ≤ {self.max_queue_size}"
            )
        q.size = num

    def _m_set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_BASE")
        q = self._vring(index, "SET_VRING_BASE").queue
        q.last_avail_idx = num & 0xFFFF
        q.used_idx = num & 0xFFFF
        q.forget_shadow()

    def _m_get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        # vhost-user spec ("Starting and stopping rings"): GET_VRING_BASE stops the ring. As
        # libvhost-user does, the ring's kick and call descriptors go with it: it is served
        # again only after a new SET_VRING_KICK starts it.
        index, _ = self._need(payload, VRING_STATE, "GET_VRING_BASE")
        vr = self._vring(index, "GET_VRING_BASE")
        vr.started = False
        self._update(vr)
        close_fds([vr.kick_fd, vr.call_fd])
        vr.kick_fd = vr.call_fd = -1
        _close_call_sock(vr)
        return VRING_STATE.pack(index, vr.queue.last_avail_idx)

    def _m_set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        index, _flags, desc, used, avail, _log = self._need(payload, VRING_ADDR, "SET_VRING_ADDR")
        q = self._vring(index, "SET_VRING_ADDR").queue
        q.desc_addr, q.used_addr, q.avail_addr = desc, used, avail

    def _fd_message(self, payload: bytes, fds: list[int], name: str,
                    kinds: tuple[str, ...]) -> tuple[Vring, int]:  # fmt: skip
        """The vring and the descriptor of a SET_VRING_KICK/CALL/ERR (-1 with the NOFD flag);
        the descriptor must be one of ``kinds``."""
        (value,) = self._need(payload, U64, name)
        vr = self._vring(value & VRING_INDEX_MASK, name)
        if value & VRING_NOFD_MASK:
            return vr, -1
        if len(fds) != 1:
            raise VhostUserError(f"{name}: expected one file descriptor, got {len(fds)}")
        what = describe_fd(fds[0])
        if what not in kinds:
            raise VhostUserError(f"{name}: expected {' or '.join(kinds)}, got a {what}")
        return vr, self._take(fds, 0)

    def _m_set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        # A kick is read as one 8-byte counter: only an eventfd guarantees that (a pipe could
        # give a few bytes, or end-of-file for ever).
        vr, fd = self._fd_message(payload, fds, "SET_VRING_KICK", ("eventfd",))
        close_fds([vr.kick_fd])
        vr.kick_fd = fd
        if fd >= 0:
            os.set_blocking(fd, False)
        # Without PROTOCOL_FEATURES a ring starts enabled; with them, at SET_VRING_ENABLE.
        vr.started = True
        if not self.acked_features & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            vr.enabled = True
        self._update(vr)

    def _m_set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        # UML's virtio_uml passes one end of its os_pipe(), a UNIX socket pair (it turns the
        # other end's SIGIO into the interrupt); the specification's eventfd, or a pipe, works
        # the same for us: each is written 8 bytes at a time, never blocking.
        vr, fd = self._fd_message(payload, fds, "SET_VRING_CALL", CALL_FD_KINDS)
        close_fds([vr.call_fd])
        _close_call_sock(vr)
        vr.call_fd = fd
        if fd >= 0:
            os.set_blocking(fd, False)
            if describe_fd(fd) == "socket":
                try:
                    vr.call_sock = socket.socket(fileno=os.dup(fd))
                except OSError:
                    vr.call_sock = None  # served through call_fd as before

    def _m_set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        _vr, fd = self._fd_message(payload, fds, "SET_VRING_ERR", CALL_FD_KINDS)
        close_fds([fd])  # we never report ring errors this way

    def _m_set_slave_req_fd(self, payload: bytes, fds: list[int]) -> None:
        if len(fds) != 1:
            raise VhostUserError(f"SET_SLAVE_REQ_FD with {len(fds)} descriptors")
        close_fds([self.slave_req_fd])
        self.slave_req_fd = self._take(fds, 0)

    def _m_set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_ENABLE")
        vr = self._vring(index, "SET_VRING_ENABLE")
        vr.enabled = bool(num)
        self._update(vr)

    def _update(self, vr: Vring) -> None:
        vr.queue.enabled = vr.enabled and vr.started

    # -- used-buffer notification ------------------------------------------------------------
    def _nonblocking(self, fd: int) -> bool:
        """Make sure ``fd`` is non-blocking before we read or write it. The call and kick
        descriptors share their open file description with the peer, which can clear
        O_NONBLOCK on its copy at any time: returns True if it had (the fd is then suspect)."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            return False
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.stats.fd_blocking_reset += 1
        return True

    @contextlib.contextmanager
    def _bounded_syscall(self, what: str, suspect: bool) -> Iterator[None]:
        """The last guard for a descriptor a peer has made blocking: even after the readiness
        check and O_NONBLOCK set again, the peer can race us (clear the flag and fill or
        drain the descriptor in between). A real-time timer interrupts a read or write that
        blocks anyway (PEP 475: a handler that raises ends the call). Only on such suspect
        descriptors and only in the main thread (where Python runs signal handlers)."""
        if not suspect or threading.current_thread() is not threading.main_thread():
            yield
            return

        def expired(_sig: int, _frame: object) -> None:
            raise VhostUserError(f"{what}: blocked (the front-end made it blocking)")

        old = signals.signal(signals.SIGALRM, expired)
        old_timer = signals.setitimer(signals.ITIMER_REAL, FD_SYSCALL_LIMIT)
        try:
            yield
        finally:
            signals.setitimer(signals.ITIMER_REAL, 0)
            signals.signal(signals.SIGALRM, old)
            if old_timer[0]:
                signals.setitimer(signals.ITIMER_REAL, *old_timer)

    def signal(self, index: int) -> None:
        """Tell the front-end about used buffers on ``index`` (write to its call descriptor)."""
        vr = self.vrings[index]
        if vr.call_fd < 0 or not vr.started:
            return
        what = f"call descriptor of vring {index}"
        if vr.call_sock is not None:
            try:
                vr.call_sock.send(CALL_ONE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.stats.calls_coalesced += 1  # the peer has not read the earlier calls
            except OSError as e:
                raise VhostUserError(f"{what}: {e}") from None
            return
        try:
            suspect = self._nonblocking(vr.call_fd)
            if not _ready(vr.call_fd, select.POLLOUT):
                # The pipe is full of unread calls: one more changes nothing (an eventfd adds
                # up).
                self.stats.calls_coalesced += 1
                return
            if suspect:
                with self._bounded_syscall(what, suspect):
                    os.write(vr.call_fd, CALL_ONE)
            else:
                os.write(vr.call_fd, CALL_ONE)  # non-blocking: no timer needed
        except BlockingIOError:
            self.stats.calls_coalesced += 1
        except (OSError, ValueError) as e:
            raise VhostUserError(f"{what}: {e}") from None

    def kicked(self, index: int) -> None:
        """A kick the event loop saw without reading it (it watches kick descriptors
        edge-triggered: boot.BootSession._loop says why); counted like drain_kick's."""
        if 0 <= index < len(self.vrings) and not self.vrings[index].started:
            self.stats.kicks_on_stopped_rings += 1

    def drain_kick(self, index: int) -> int:
        """Consume a kick; returns how many were pending (0 if none)."""
        vr = self.vrings[index]
        if vr.kick_fd < 0:
            return 0
        what = f"kick descriptor of vring {index}"
        try:
            suspect = self._nonblocking(vr.kick_fd)
            if not _ready(vr.kick_fd, select.POLLIN):
                return 0  # the peer took the count itself between our select and now
            if suspect:
                with self._bounded_syscall(what, suspect):
                    data = os.read(vr.kick_fd, 8)
            else:
                data = os.read(vr.kick_fd, 8)
        except BlockingIOError:
            return 0
        except (OSError, ValueError) as e:
            raise VhostUserError(f"{what}: {e}") from None
        if len(data) != 8:  # cannot happen with the eventfd SET_VRING_KICK checked
            raise VhostUserError(
                f"kick descriptor of vring {index}: read {len(data)} bytes, not an eventfd count"
            )
        if not vr.started:
            self.stats.kicks_on_stopped_rings += 1
        return U64.unpack(data)[0]

    def summary(self) -> dict[str, object]:
        return dict(vars(self.stats), last_errors=list(self.errors),
                    memory_regions_mapped=self.memory.mapped,
                    memory_not_mapped=list(self.memory.unmapped_why))  # fmt: skip

    def close(self) -> None:
        for vr in self.vrings:
            close_fds([vr.kick_fd, vr.call_fd])
            vr.kick_fd = vr.call_fd = -1
            _close_call_sock(vr)
        close_fds([self.slave_req_fd])
        self.slave_req_fd = -1
        self.memory.close()
        self.conn.close()
