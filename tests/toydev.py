"""A small real virtio device for transport tests that do not need virtio-net."""

from __future__ import annotations

from virtio_msix.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice


class ToyDevice(VirtioDevice):
    """Device id 1 (so the transitional PCI id exists), two queues, an 8-byte config."""

    device_id = 1
    name = "toy"

    def __init__(self, queue_sizes: tuple[int, ...] = (256, 256)) -> None:
        super().__init__(
            list(queue_sizes), host_features=1 << VIRTIO_F_VERSION_1 | 0x5, config_len=8
        )
        self.cfg = bytearray(range(0x10, 0x18))
        self.kicks: list[int] = []

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.cfg[offset : offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.cfg[offset : offset + size] = value.to_bytes(size, "little")

    def queue_notify(self, index: int) -> None:
        self.kicks.append(index)
