"""Network backends the hosts give a virtio-net device (virtio/backends.py's NetBackend): a
loopback, an ARP/ICMP responder, a TAP interface, and a pcap writer."""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from typing import BinaryIO

from ..virtio.backends import NetBackend


class LoopbackBackend:
    """Every transmitted frame comes back as a received frame (source/destination MAC swapped
    when ``swap_macs``, so that the guest's stack accepts it as addressed to itself)."""

    def __init__(self, swap_macs: bool = False, limit: int = 4096) -> None:
        self.swap_macs = swap_macs
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.sent = 0
        self.dropped = 0

    def send(self, frame: bytes) -> None:
        self.sent += 1
        if len(self.queue) >= self.limit:
            self.dropped += 1
            return
        if self.swap_macs and len(frame) >= 12:
            frame = frame[6:12] + frame[0:6] + frame[12:]
        self.queue.append(frame)

    def inject(self, frame: bytes) -> None:
        """A frame from the outside world for the guest."""
        self.queue.append(frame)

    def take_frame(self) -> bytes | None:
        return self.queue.popleft() if self.queue else None


class MultiQueueLoopback:
    """A loopback peer with one queue per queue pair, as a multi-queue TAP is to QEMU: a
    frame the guest sends on pair i comes back on pair i (the host's tun steers a flow's
    replies to the queue it last transmitted on, automq)."""

    def __init__(self, queues: int, limit: int = 4096) -> None:
        self.queues = queues
        self.rings: list[deque[bytes]] = [deque() for _ in range(queues)]
        self.limit = limit
        self.sent = 0
        self.dropped = 0

    def send(self, frame: bytes, queue: int = 0) -> None:
        self.sent += 1
        ring = self.rings[queue % self.queues]
        if len(ring) >= self.limit:
            self.dropped += 1
            return
        ring.append(frame)

    def inject(self, frame: bytes, queue: int = 0) -> None:
        self.rings[queue % self.queues].append(frame)

    def take_frame(self, queue: int = 0) -> bytes | None:
        ring = self.rings[queue % self.queues]
        return ring.popleft() if ring else None


ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
IPPROTO_ICMP = 1


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_bytes(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


class ResponderBackend:
    """A host on the other end of the wire that answers ARP requests and ICMP echo requests
    for its own IPv4 address — enough for a guest to ping through the device."""

    def __init__(
        self,
        host_ip: str = "10.0.2.2",
        host_mac: bytes = bytes.fromhex("525400000002"),
        limit: int = 4096,
        max_bytes: int = 4 << 20,
    ) -> None:
        self.host_ip = ip_bytes(host_ip)
        self.host_mac = host_mac
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.sent = 0
        self.answered = 0
        self.ignored = 0
        self.dropped = 0  # answers not queued: the guest sent faster than it receives

    def take_frame(self) -> bytes | None:
        if not self.queue:
            return None
        frame = self.queue.popleft()
        self.queued_bytes -= len(frame)
        return frame

    def send(self, frame: bytes) -> None:
        self.sent += 1
        reply = self._answer(frame)
        if reply is None:
            self.ignored += 1
        elif len(self.queue) >= self.limit or self.queued_bytes + len(reply) > self.max_bytes:
            # A guest that transmits requests without posting receive buffers would make the
            # answers pile up without end: keep ``limit`` frames and ``max_bytes`` (as QEMU's
            # net queue keeps nq_maxlen packets), count the rest.
            self.dropped += 1
        else:
            self.answered += 1
            self.queued_bytes += len(reply)
            self.queue.append(reply)

    def _answer(self, frame: bytes) -> bytes | None:
        if len(frame) < 14:
            return None
        dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
        payload = frame[14:]
        if ethertype == ETH_P_ARP and len(payload) >= 28:
            op = struct.unpack("!H", payload[6:8])[0]
            sha, spa, tpa = payload[8:14], payload[14:18], payload[24:28]
            if op == 1 and tpa == self.host_ip:
                arp = (
                    struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2)
                    + self.host_mac
                    + self.host_ip
                    + sha
                    + spa
                )
                return src + self.host_mac + struct.pack("!H", ETH_P_ARP) + arp
            return None
        if ethertype == ETH_P_IP and len(payload) >= 20 and dst in (self.host_mac, b"\xff" * 6):
            ihl = (payload[0] & 0xF) * 4
            total = struct.unpack("!H", payload[2:4])[0]
            if payload[0] >> 4 != 4 or ihl < 20 or total > len(payload) or total < ihl + 8:
                return None
            if payload[9] != IPPROTO_ICMP or payload[16:20] != self.host_ip:
                return None
            icmp = payload[ihl:total]
            if icmp[0] != 8:  # echo request
                return None
            reply_icmp = b"\x00\x00\x00\x00" + icmp[4:]
            reply_icmp = (
                reply_icmp[:2] + struct.pack("!H", inet_checksum(reply_icmp)) + reply_icmp[4:]
            )
            hdr = bytearray(payload[:ihl])
            hdr[8] = 64  # TTL
            hdr[12:16], hdr[16:20] = payload[16:20], payload[12:16]
            hdr[10:12] = b"\0\0"
            hdr[10:12] = struct.pack("!H", inet_checksum(bytes(hdr)))
            return src + self.host_mac + struct.pack("!H", ETH_P_IP) + bytes(hdr) + reply_icmp
        return None


class PcapWriter:
    """Wraps a backend and writes every frame, both directions, to a pcap file
    (libpcap format, LINKTYPE_ETHERNET), readable by tcpdump/tshark/Wireshark."""

    def __init__(self, inner: NetBackend, path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.frames = 0

    def _write(self, frame: bytes) -> None:
        t = time.time()
        sec, usec = int(t), int((t % 1) * 1_000_000)
        self.file.write(struct.pack("<IIII", sec, usec, min(len(frame), 65535), len(frame)))
        self.file.write(frame[:65535])
        self.file.flush()
        self.frames += 1

    def send(self, frame: bytes) -> bool | None:
        self._write(frame)
        return self.inner.send(frame)

    def take_frame(self) -> bytes | None:
        frame = self.inner.take_frame()
        if frame is not None:
            self._write(frame)
        return frame

    def close(self) -> None:
        self.file.close()


class TapBackend:
    """A Linux TAP interface (needs /dev/net/tun and CAP_NET_ADMIN).

    With ``vnet_hdr`` (QEMU's ``-netdev tap`` default when the kernel supports it) every frame
    crosses the TAP with a virtio-net header in front (``IFF_VNET_HDR``): the device then passes
    the guest's header through and offers checksum and segmentation offloads, so the host kernel
    checksums and segments 64 KiB frames. ``vnet_hdr`` is False when the kernel refuses it.
    """

    TUNSETIFF = 0x400454CA
    dropped = 0  # frames the interface refused (per instance once one is)
    # Set by an event loop that selects on the TAP: False once a read found it empty, until
    # select reports it readable again (a read then would be a wasted system call; the device
    # tries after every burst and every pass). None, the default: always read.
    readable: bool | None = None
    TUNSETOFFLOAD = 0x400454D0
    TUNSETVNETHDRSZ = 0x400454D8
    IFF_TAP = 0x0002
    IFF_NO_PI = 0x1000
    IFF_VNET_HDR = 0x4000
    TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO = 0x01, 0x02, 0x04, 0x08, 0x10

    def __init__(self, name: str = "vmsix%d", vnet_hdr: bool = False) -> None:
        import fcntl

        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        flags = self.IFF_TAP | self.IFF_NO_PI
        try:
            try:
                res = fcntl.ioctl(self.fd, self.TUNSETIFF,
                                  struct.pack("16sH", name.encode(), flags | self.IFF_VNET_HDR * vnet_hdr))  # fmt: skip
                self.vnet_hdr = vnet_hdr
            except OSError:
                if not vnet_hdr:
                    raise
                res = fcntl.ioctl(
                    self.fd, self.TUNSETIFF, struct.pack("16sH", name.encode(), flags)
                )
                self.vnet_hdr = False
        except OSError:
            os.close(self.fd)
            raise
        self.name = res[:16].rstrip(b"\0").decode()
        self.sent = 0
        self.dropped = 0
        self.offload = 0
        self.vnet_hdr_len = 10  # the kernel's default: struct virtio_net_hdr
        # UFO, as QEMU probes it (tap_probe_has_ufo): the kernel accepts it in TUNSETOFFLOAD.
        self.has_ufo = self.vnet_hdr and self._ioctl_offload(self.TUN_F_CSUM | self.TUN_F_UFO)
        if self.has_ufo:
            self._ioctl_offload(0)

    def _ioctl_offload(self, flags: int) -> bool:
        import fcntl

        try:
            fcntl.ioctl(self.fd, self.TUNSETOFFLOAD, flags)
        except OSError:
            return False
        self.offload = flags
        return True

    def set_vnet_hdr_len(self, n: int) -> None:
        """The header size both ways (10, or 12 with MRG_RXBUF / VERSION_1)."""
        import fcntl

        if self.vnet_hdr and n != self.vnet_hdr_len:
            fcntl.ioctl(self.fd, self.TUNSETVNETHDRSZ, struct.pack("i", n))
            self.vnet_hdr_len = n

    def set_offload(self, csum: bool, tso4: bool, tso6: bool, ecn: bool, ufo: bool) -> None:
        """What the host may hand the guest: partial checksums, TSO/UFO frames (the guest's
        negotiated GUEST_* offloads). As QEMU's tap: segmentation only with checksum offload,
        ECN only with TSO; a kernel that refuses UFO is asked again without it."""
        if not self.vnet_hdr:
            return
        flags = 0
        if csum:
            flags = self.TUN_F_CSUM
            flags |= self.TUN_F_TSO4 * tso4 | self.TUN_F_TSO6 * tso6
            if (tso4 or tso6) and ecn:
                flags |= self.TUN_F_TSO_ECN
            flags |= self.TUN_F_UFO * ufo
        if flags != self.offload and not self._ioctl_offload(flags):
            self._ioctl_offload(flags & ~self.TUN_F_UFO)

    def fileno(self) -> int:
        return self.fd

    def send(self, frame: bytes) -> bool:
        try:
            os.write(self.fd, frame)
        except OSError:
            # Interface down, its queue full (EAGAIN, ENOBUFS), a frame it refuses: the frame
            # is lost on the wire, as on real hardware, but counted (here and by the device).
            self.dropped += 1
            return False
        self.sent += 1
        if self.readable is not None:
            self.readable = True  # the host kernel may have answered at once (an ACK, a reply)
        return True

    def take_frame(self) -> bytes | None:
        if self.readable is False:
            return None
        try:
            # A TSO/UFO frame is up to 64 KiB plus the Ethernet and virtio-net headers.
            return os.read(self.fd, 65536 + 14 + 12)
        except BlockingIOError:
            if self.readable is not None:
                self.readable = False
            return None

    def close(self) -> None:
        os.close(self.fd)
