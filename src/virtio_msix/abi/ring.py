"""The split virtqueue in guest memory (virtio 1.2 §2.7; uapi linux/virtio_ring.h), as offsets
from each part's start, for the device (virtio/queue.py), the legacy transport's one-address
layout (virtio/pci.py) and the driver model (guest/vring.py)."""

from __future__ import annotations

import struct

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16  # struct vring_desc: le64 addr, le32 len, le16 flags, le16 next
DESC = struct.Struct("<QIHH")
USED_ELEM_SIZE = 8  # struct vring_used_elem: le32 id, le32 len
USED_ELEM = struct.Struct("<II")

# struct vring_avail: le16 flags, le16 idx, le16 ring[num], then le16 used_event (EVENT_IDX).
AVAIL_FLAGS = 0
AVAIL_IDX = 2
AVAIL_RING = 4
# struct vring_used: le16 flags, le16 idx, vring_used_elem ring[num], then le16 avail_event.
USED_FLAGS = 0
USED_IDX = 2
USED_RING = 4


def avail_entry(slot: int) -> int:
    """Offset of avail->ring[slot]."""
    return AVAIL_RING + 2 * slot


def used_event(num: int) -> int:
    """Offset of used_event, after avail->ring[num] (§2.7.10)."""
    return AVAIL_RING + 2 * num


def used_entry(slot: int) -> int:
    """Offset of used->ring[slot]."""
    return USED_RING + USED_ELEM_SIZE * slot


def avail_event(num: int) -> int:
    """Offset of avail_event, after used->ring[num] (§2.7.10)."""
    return USED_RING + USED_ELEM_SIZE * num


def avail_size(num: int) -> int:
    """Bytes of the avail ring, used_event included."""
    return used_event(num) + 2


def used_size(num: int) -> int:
    """Bytes of the used ring, avail_event included."""
    return avail_event(num) + 2


def vring_layout(num: int, align: int) -> tuple[int, int, int]:
    """(desc, avail, used) offsets of the legacy one-block layout: the used ring starts at the
    next ``align`` boundary after the avail ring (vring_init)."""
    avail = DESC_SIZE * num
    used = (avail + avail_size(num) + align - 1) & ~(align - 1)
    return 0, avail, used


def vring_size(num: int, align: int) -> int:
    """Bytes of the legacy one-block layout (uapi vring_size)."""
    return vring_layout(num, align)[2] + used_size(num)


def vring_need_event(event_idx: int, new: int, old: int) -> bool:
    """Whether moving an index from ``old`` to ``new`` passes ``event_idx`` (§2.7.10)."""
    return ((new - event_idx - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


# -- the packed virtqueue (§2.8; uapi linux/virtio_ring.h) -----------------------------------------
# struct vring_packed_desc: le64 addr, le32 len, le16 id, le16 flags. The ring is one array of
# these; its entries are both the available and the used descriptors (§2.8.13).
PACKED_DESC_SIZE = 16
PACKED_DESC = struct.Struct("<QIHH")
PACKED_DESC_LEN = 8  # offset of len: the device writes len and id of a used descriptor...
PACKED_DESC_FLAGS = 14  # ...then its flags, which make it used (§2.8.22)
PACKED_USED = struct.Struct("<IH")  # len, id (what a used descriptor carries)
VRING_PACKED_DESC_F_AVAIL = 7  # bit numbers, as the uapi header gives them
VRING_PACKED_DESC_F_USED = 15
DESC_F_AVAIL = 1 << VRING_PACKED_DESC_F_AVAIL
DESC_F_USED = 1 << VRING_PACKED_DESC_F_USED

# struct vring_packed_desc_event (§2.8.14): le16 off_wrap (bits 0-14 a descriptor offset, bit 15
# a wrap counter), le16 flags. The driver area holds the driver's structure (it suppresses
# used-buffer notifications), the device area the device's (it suppresses kicks).
PACKED_EVENT = struct.Struct("<HH")
PACKED_EVENT_SIZE = 4
PACKED_EVENT_OFF_WRAP = 0
PACKED_EVENT_FLAGS = 2
PACKED_EVENT_FLAGS_MASK = 0x3  # desc_event_flags: 2 bits; the other 14 are reserved
VRING_PACKED_EVENT_FLAG_ENABLE = 0
VRING_PACKED_EVENT_FLAG_DISABLE = 1
VRING_PACKED_EVENT_FLAG_DESC = 2  # only with VIRTIO_F_EVENT_IDX
VRING_PACKED_EVENT_F_WRAP_CTR = 15


def packed_desc_avail(flags: int, wrap_counter: int) -> bool:
    """§2.8.1: a descriptor is available when its AVAIL bit equals the wrap counter and its
    USED bit does not."""
    avail = flags >> VRING_PACKED_DESC_F_AVAIL & 1
    used = flags >> VRING_PACKED_DESC_F_USED & 1
    return avail != used and avail == wrap_counter


def packed_desc_used(flags: int, wrap_counter: int) -> bool:
    """§2.8.1: a descriptor is used when AVAIL and USED both equal the wrap counter."""
    avail = flags >> VRING_PACKED_DESC_F_AVAIL & 1
    used = flags >> VRING_PACKED_DESC_F_USED & 1
    return avail == used and used == wrap_counter


def packed_need_event(off_wrap: int, wrap: int, num: int, new: int, old: int) -> bool:
    """§2.8.10 / §2.8.14 with DESC: whether moving a ring position from ``old`` to ``new`` (on
    the wrap ``wrap``) passes the position ``off_wrap`` names. An event offset on the other
    wrap lies one ring length back (Linux virtqueue_kick_prepare_packed, QEMU
    vring_packed_need_event)."""
    event = off_wrap & ~(1 << VRING_PACKED_EVENT_F_WRAP_CTR)
    if off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR != wrap:
        event -= num
    return vring_need_event(event & 0xFFFF, new, old)
