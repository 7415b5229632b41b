"""The backend ("slave") side of the vhost-user protocol, as UML's ``virtio_uml`` client uses it.

UML's ``arch/um/drivers/virtio_uml.c`` connects to our UNIX socket (``virtio_uml.device=PATH:ID``)
and drives one virtio device through it: it reads our features, shares its physical memory
(SET_MEM_TABLE with the memory file descriptor), and sets each vring up (NUM, BASE, ADDR, KICK
eventfd, CALL pipe, ENABLE). Buffers then move through split rings in that shared memory; the
kernel kicks an eventfd and we write to the call pipe (its SIGIO becomes the interrupt).

What we offer, and why (kept minimal so each message has one meaning):
- virtio features: VERSION_1 (modern ring layout); no EVENT_IDX, so notification suppression is
  only the flags words.
- VHOST_USER_F_PROTOCOL_FEATURES with REPLY_ACK: every request the client does not expect
  an answer for gets an explicit ack, so a failure shows where it happened.
- SLAVE_REQ: we never send a back-end request, but Linux 6.1's virtio_uml allocates the
  interrupt its call descriptors share only in ``vhost_user_init_slave_req``; without SLAVE_REQ
  ``vu_dev->irq`` stays 0 and requesting the call interrupt collides with the timer on IRQ 0
  ("genirq: Flags mismatch irq 0", virt-pci's probe fails with -EBUSY). Seen on this kernel.
- No INBAND_NOTIFICATIONS (eventfd kicks and pipe calls are faster from Python than messages),
  no CONFIG (virt-pci's device has no config space of its own).

Every message from the peer is checked (size, index, file descriptors); anything malformed
raises ``VhostUserError`` naming the message, and the caller ends the session cleanly.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from ..virtio.memory import GuestMemoryError
from ..virtio.queue import VirtQueue


class VhostUserError(Exception):
    """The peer broke the protocol or went away."""


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
VIRTIO_F_VERSION_1 = 32
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_SLAVE_REQ = 5

MAX_PAYLOAD = 4096
MAX_FDS = 8
MAX_QUEUES = 64

# Payload layouts (packed, little endian): name -> struct.
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_REGIONS_HDR = struct.Struct("<II")  # num, padding
MEM_REGION = struct.Struct("<QQQQ")  # guest_addr, size, user_addr, mmap_offset


@dataclass
class MemRegion:
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    map: mmap.mmap


class SharedMemory:
    """The peer's memory, mapped from its file descriptors; addressed by guest-physical address
    (UML gives guest_addr == user_addr). Same interface as ``virtio.memory.GuestMemory``."""

    def __init__(self) -> None:
        self.regions: list[MemRegion] = []
        self.size = 0

    def add(self, guest_addr: int, size: int, user_addr: int, mmap_offset: int, fd: int) -> None:
        page = mmap.ALLOCATIONGRANULARITY
        base = mmap_offset - mmap_offset % page
        m = mmap.mmap(
            fd,
            size + (mmap_offset - base),
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=base,
        )
        self.regions.append(MemRegion(guest_addr, size, user_addr, mmap_offset - base, m))
        self.size = max(self.size, guest_addr + size)

    def close(self) -> None:
        for r in self.regions:
            try:
                r.map.close()
            except (BufferError, ValueError):
                pass
        self.regions.clear()
        self.size = 0

    def _find(self, addr: int, length: int) -> tuple[mmap.mmap, int]:
        for r in self.regions:
            if r.guest_addr <= addr and addr + length <= r.guest_addr + r.size:
                return r.map, r.mmap_offset + addr - r.guest_addr
        raise GuestMemoryError(f"DMA [{addr:#x}, +{length:#x}) outside the peer's shared memory")

    def read(self, addr: int, length: int) -> bytes:
        if length < 0:
            raise GuestMemoryError(f"negative DMA length {length}")
        m, off = self._find(addr, length)
        return m[off : off + length]

    def write(self, addr: int, data: bytes) -> None:
        m, off = self._find(addr, len(data))
        m[off : off + len(data)] = data


@dataclass
class Vring:
    """One vring as the front-end set it up, with the split-ring walker of ``virtio/``."""

    queue: VirtQueue
    kick_fd: int = -1
    call_fd: int = -1
    started: bool = False
    enabled: bool = False
    pending_calls: int = field(default=0)


class VhostUserBackend:
    """Answers one front-end on a connected socket. ``on_started(index)`` tells the owner a ring
    became usable; the owner polls ``kick_fds`` and calls ``signal(index)`` for used buffers."""

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
        self.messages = 0
        self.log: list[str] = []  # one line per message, for --verbose and errors

    # -- socket I/O --------------------------------------------------------------------------
    def _recv_exact(self, n: int, fds: list[int]) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                data, anc, _flags, _addr = self.conn.recvmsg(
                    n - len(buf), socket.CMSG_LEN(MAX_FDS * 4)
                )
            except InterruptedError:
                continue
            except OSError as e:
                raise VhostUserError(f"socket: {e}") from None
            for level, typ, payload in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                    fds.extend(a)
            if not data:
                raise VhostUserError(
                    "peer closed the connection"
                    if not buf
                    else f"peer closed the connection inside a message ({len(buf)} of {n} bytes)"
                )
            buf += data
        return buf

    def _reply(self, request: int, payload: bytes) -> None:
        hdr = HEADER.pack(request, FLAG_VERSION | FLAG_REPLY, len(payload))
        try:
            self.conn.sendall(hdr + payload)
        except OSError as e:
            raise VhostUserError(f"sending reply to {request}: {e}") from None

    def handle_one(self) -> int:
        """Read and execute one message; returns its request number."""
        fds: list[int] = []
        request, flags, size = HEADER.unpack(self._recv_exact(HEADER.size, fds))
        if flags & 0x3 != FLAG_VERSION:
            self._close_fds(fds)
            raise VhostUserError(f"message {request}: protocol version {flags & 3}, expected 1")
        if size > MAX_PAYLOAD:
            self._close_fds(fds)
            raise VhostUserError(f"message {request}: payload of {size} bytes is too large")
        payload = self._recv_exact(size, fds) if size else b""
        self.messages += 1
        try:
            name = Request(request).name
        except ValueError:
            self._close_fds(fds)
            raise VhostUserError(f"unknown vhost-user request {request}") from None
        handler = getattr(self, f"_m_{name.lower()}", None)
        if handler is None:
            self._close_fds(fds)
            raise VhostUserError(f"vhost-user request {name} is not supported")
        try:
            reply = handler(payload, fds)
        except (struct.error, IndexError) as e:
            self._close_fds(fds)
            raise VhostUserError(f"{name}: malformed payload of {size} bytes: {e}") from None
        self.log.append(name)
        if reply is not None:
            self._reply(request, reply)
        elif flags & FLAG_NEED_REPLY and self.acked_protocol_features & (1 << PROTOCOL_F_REPLY_ACK):
            self._reply(request, U64.pack(0))
        return request

    @staticmethod
    def _close_fds(fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def _vring(self, index: int) -> Vring:
        if index >= len(self.vrings):
            raise VhostUserError(f"vring index {index} ≥ {len(self.vrings)} queues")
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
            self._close_fds(fds)
            raise VhostUserError(f"SET_MEM_TABLE: {num} regions with {len(fds)} descriptors")
        self.memory.close()
        try:
            for i in range(num):
                ga, size, ua, off = MEM_REGION.unpack_from(
                    payload, MEM_REGIONS_HDR.size + i * MEM_REGION.size
                )
                self.memory.add(ga, size, ua, off, fds[i])
        except (OSError, ValueError) as e:
            raise VhostUserError(f"SET_MEM_TABLE: cannot map region: {e}") from None
        finally:
            self._close_fds(fds)  # the mappings stay valid after close

    def _m_set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_NUM")
        q = self._vring(index).queue
        if num == 0 or num > self.max_queue_size or num & (num - 1):
            raise VhostUserError(
                f"SET_VRING_NUM {index}: size {num} is not a power of 2 ≤ {self.max_queue_size}"
            )
        q.size = num

    def _m_set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_BASE")
        q = self._vring(index).queue
        q.last_avail_idx = num & 0xFFFF
        q.used_idx = num & 0xFFFF

    def _m_get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        index, _ = self._need(payload, VRING_STATE, "GET_VRING_BASE")
        vr = self._vring(index)
        vr.started = False
        return VRING_STATE.pack(index, vr.queue.last_avail_idx)

    def _m_set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        index, _flags, desc, used, avail, _log = self._need(payload, VRING_ADDR, "SET_VRING_ADDR")
        q = self._vring(index).queue
        q.desc_addr, q.used_addr, q.avail_addr = desc, used, avail

    def _fd_message(self, payload: bytes, fds: list[int], name: str) -> tuple[Vring, int]:
        (value,) = self._need(payload, U64, name)
        vr = self._vring(value & VRING_INDEX_MASK)
        if value & VRING_NOFD_MASK:
            self._close_fds(fds)
            return vr, -1
        if len(fds) != 1:
            self._close_fds(fds)
            raise VhostUserError(f"{name}: expected one file descriptor, got {len(fds)}")
        return vr, fds[0]

    def _m_set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        vr, fd = self._fd_message(payload, fds, "SET_VRING_KICK")
        if vr.kick_fd >= 0:
            os.close(vr.kick_fd)
        vr.kick_fd = fd
        if fd >= 0:
            os.set_blocking(fd, False)
        # Without PROTOCOL_FEATURES a ring starts enabled; with them, at SET_VRING_ENABLE.
        vr.started = True
        if not self.acked_features & (1 << VHOST_USER_F_PROTOCOL_FEATURES):
            vr.enabled = True
        self._update(vr)

    def _m_set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        vr, fd = self._fd_message(payload, fds, "SET_VRING_CALL")
        if vr.call_fd >= 0:
            os.close(vr.call_fd)
        vr.call_fd = fd
        if fd >= 0:
            os.set_blocking(fd, False)

    def _m_set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        _vr, fd = self._fd_message(payload, fds, "SET_VRING_ERR")
        if fd >= 0:
            os.close(fd)

    def _m_set_slave_req_fd(self, payload: bytes, fds: list[int]) -> None:
        if len(fds) != 1:
            self._close_fds(fds)
            raise VhostUserError(f"SET_SLAVE_REQ_FD with {len(fds)} descriptors")
        if self.slave_req_fd >= 0:
            os.close(self.slave_req_fd)
        self.slave_req_fd = fds[0]

    def _m_set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        index, num = self._need(payload, VRING_STATE, "SET_VRING_ENABLE")
        vr = self._vring(index)
        vr.enabled = bool(num)
        self._update(vr)

    def _update(self, vr: Vring) -> None:
        vr.queue.enabled = vr.enabled and vr.started

    # -- used-buffer notification ------------------------------------------------------------
    def signal(self, index: int) -> None:
        """Tell the front-end about used buffers on ``index`` (write to its call descriptor)."""
        vr = self.vrings[index]
        if vr.call_fd < 0:
            return
        try:
            os.write(vr.call_fd, U64.pack(1))
        except BlockingIOError:
            pass  # the pipe is full of unread calls: one more changes nothing
        except OSError as e:
            raise VhostUserError(f"call descriptor of vring {index}: {e}") from None

    def drain_kick(self, index: int) -> int:
        """Consume a kick; returns how many were pending (0 if none)."""
        fd = self.vrings[index].kick_fd
        if fd < 0:
            return 0
        try:
            return U64.unpack(os.read(fd, 8))[0]
        except BlockingIOError:
            return 0
        except OSError as e:
            raise VhostUserError(f"kick descriptor of vring {index}: {e}") from None

    def close(self) -> None:
        for vr in self.vrings:
            for fd in (vr.kick_fd, vr.call_fd):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            vr.kick_fd = vr.call_fd = -1
        if self.slave_req_fd >= 0:
            os.close(self.slave_req_fd)
            self.slave_req_fd = -1
        self.memory.close()
