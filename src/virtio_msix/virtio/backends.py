"""What a virtio-net device needs of its network backend: where its frames go and come from.

The interface is deliberately small: the device calls ``send(frame)`` for every frame the guest
transmits and pulls frames for the guest with ``take_frame()`` while it has receive buffers (a
frame stays in the backend while the guest has none, so nothing is dropped for lack of buffers).
The backends themselves (loopback, responder, TAP, pcap) are the hosts': host/backends.py.
"""

from __future__ import annotations

from typing import Protocol


class NetBackend(Protocol):
    """A backend may also have ``vnet_hdr = True`` (frames both ways then carry a virtio-net
    header first, of the size ``set_vnet_hdr_len`` set), ``has_ufo``, and ``set_offload``:
    see host/backends.py's TapBackend."""

    def send(self, frame: bytes) -> bool | None:
        """A frame the guest transmitted (Ethernet, no virtio-net header). False (or an
        OSError) says it was not sent: the device counts it as dropped (tx_backend_error)."""

    def take_frame(self) -> bytes | None:
        """The next frame for the guest, or None."""


class NullBackend:
    """Drops what the guest sends, delivers nothing (QEMU without a netdev)."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, frame: bytes) -> None:
        self.sent += 1

    def take_frame(self) -> bytes | None:
        return None
