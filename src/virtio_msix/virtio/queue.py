"""Split virtqueues (virtio 1.2 §2.7): the state the transport programs.

Ring processing (pop/push, indirect descriptors, event idx, bound checks) lives here too.
"""

from __future__ import annotations

NO_VECTOR = 0xFFFF


class VirtQueue:
    def __init__(self, index: int, max_size: int) -> None:
        self.index = index
        self.max_size = max_size  # 0 = the queue does not exist
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.enabled = False
        self.vector = NO_VECTOR
        self.last_avail_idx = 0
        self.used_idx = 0
