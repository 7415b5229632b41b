"""A pcapng writer for the frames a host's driver sends and receives (one Ethernet interface),
each frame marked inbound or outbound with the Enhanced Packet Block's ``epb_flags`` option,
as Wireshark/tshark show it (``frame.packet_flags_direction``).

Format: draft-ietf-opsawg-pcapng (the PCAP Next Generation capture file format), §4.1 Section
Header Block, §4.2 Interface Description Block, §4.3 Enhanced Packet Block; all little-endian.
"""

from __future__ import annotations

import struct
import time
from typing import Any, BinaryIO

SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
OPT_ENDOFOPT, OPT_EPB_FLAGS, OPT_IF_NAME, OPT_IF_TSRESOL = 0, 2, 2, 9
INBOUND, OUTBOUND = 1, 2  # epb_flags bits 0-1


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


class PcapngWriter:
    """Writes blocks as frames come: memory stays flat however long the run."""

    def __init__(self, out: BinaryIO, interface: str = "eth0") -> None:
        self.out = out
        self.frames = 0
        # The first write that failed (a full disk): later frames are not written, and the
        # traffic itself never suffers for it; the command reports it at the end.
        self.error: OSError | None = None
        out.write(_block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)))
        options = (
            _option(OPT_IF_NAME, interface.encode())
            + _option(OPT_IF_TSRESOL, bytes([9]))  # timestamps in nanoseconds
            + _option(OPT_ENDOFOPT, b"")
        )
        out.write(_block(IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 0) + options))

    def frame(self, data: bytes, outbound: bool, ts_ns: int | None = None) -> None:
        if self.error is not None:
            return
        ts = time.time_ns() if ts_ns is None else ts_ns
        flags = struct.pack("<I", OUTBOUND if outbound else INBOUND)
        body = (
            struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
            + _pad4(data)
            + _option(OPT_EPB_FLAGS, flags)
            + _option(OPT_ENDOFOPT, b"")
        )
        try:
            self.out.write(_block(EPB, body))
        except OSError as e:
            self.error = e
            return
        self.frames += 1

    def close(self) -> None:
        """Close the file; raises the first write error (OSError), if any."""
        try:
            self.out.close()
        except OSError as e:
            self.error = self.error or e
        if self.error is not None:
            raise self.error


class FrameTap:
    """Wraps a network backend of a device (``send`` a frame the guest transmitted,
    ``take_frame`` one for the guest to receive) and writes both directions to a pcapng
    writer, from the guest's side: what it sent is outbound, what it received inbound."""

    def __init__(self, inner: Any, writer: PcapngWriter) -> None:
        self.inner = inner
        self.writer = writer

    def send(self, frame: bytes) -> bool | None:
        self.writer.frame(frame, outbound=True)  # never raises: a write error is kept
        return self.inner.send(frame)

    def take_frame(self) -> bytes | None:
        frame = self.inner.take_frame()
        if frame is not None:
            self.writer.frame(frame, outbound=False)
        return frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
