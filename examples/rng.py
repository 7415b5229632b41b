"""A virtio-rng device (virtio 1.2 §5.4, device id 4) written against virtio_msix's public API.

    virtio-msix boot --device-module examples/rng.py -- 'head -c 64 /dev/hwrng | od -x'
"""

import os

from virtio_msix import VIRTIO_F_VERSION_1, VirtioDevice


class VirtioRng(VirtioDevice):
    device_id = 4
    name = "virtio-rng"
    queue_names = ("input",)  # Linux's virtio_rng: one requestq

    def __init__(self) -> None:
        super().__init__([8], host_features=1 << VIRTIO_F_VERSION_1, config_len=0)
        self.produced: list[bytes] = []  # every buffer's bytes, in the order we wrote them

    def queue_notify(self, index: int) -> None:
        q, mem = self.queues[index], self.memory
        while (chain := q.pop(mem)) is not None:  # §5.4.6: fill each device-writable buffer
            data = os.urandom(min(chain.writable_len, 65536))
            q.push(mem, chain, chain.write(mem, data))
            self.produced.append(data)
        if q.should_notify(mem):
            self.hooks.notify_queue(index)


def make_device() -> VirtioRng:
    return VirtioRng()
