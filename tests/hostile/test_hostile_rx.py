"""Issue 8, defects 1–4: the receive path against a hostile driver's buffers.

The device writes the virtio-net header and the frame only through the writable scatter list
(§2.7.4); a frame that does not fit waits for buffers or is dropped and counted, never delivered
truncated; a guest-caused fault sets DEVICE_NEEDS_RESET with a configuration interrupt (§2.1.2)
and no exception leaves the device; a reset keeps the frame the device holds.
"""

from __future__ import annotations

import struct
from collections import deque

import pytest
from rig import CONFIG_VECTOR, F_NEXT, F_WRITE, NEEDS_RESET, RX_VECTOR, Rig, frame


def assert_needs_reset(rig: Rig, words: str) -> None:
    assert rig.status() & NEEDS_RESET
    assert CONFIG_VECTOR in rig.sink.msis  # the configuration change interrupt (§2.1.2)
    h = rig.dev.health()
    assert h["needs_reset"] is not None and words in h["needs_reset"]
    assert h["errors"][-1] == h["needs_reset"]
    assert h["counters"]["ring_errors"] >= 1


@pytest.mark.parametrize("mergeable", [True, False])
def test_tiny_descriptor_at_the_end_of_memory_is_a_device_error_not_an_exception(mergeable):
    rig = Rig(mergeable=mergeable)
    end = rig.mem.size
    # Enough other room so that the frame could fit: the first buffer is the 4-byte one.
    rig.rx.set_desc(0, end - 4, 4, F_WRITE)
    rig.rx.set_desc(1, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0, 1)
    rig.inject(frame(64))
    rig.kick(rig.rx)  # must not raise
    rig.dev.poll()
    assert rig.net.stats["rx_frames"] == 0
    if mergeable:
        assert_needs_reset(rig, "smaller than the 12-byte virtio-net header")
    else:
        # Without MRG_RXBUF the frame must fit one chain: it is dropped and counted.
        assert rig.dev.health()["dropped"] == {"rx_buffer_too_small": 1}
    assert rig.mem.buf[end - 4 :] == bytes(4)
    assert rig.net.stats["rx_frames"] == 0


@pytest.mark.parametrize("mergeable", [True, False])
def test_canary_after_a_short_buffer_is_never_written(mergeable):
    rig = Rig(mergeable=mergeable)
    short = rig.buffer(64)
    canary = b"\xa5" * 60
    rig.mem.poke(short + 4, canary)
    rig.rx.set_desc(0, short, 4, F_WRITE)
    rig.rx.set_desc(1, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0, 1)
    rig.inject(frame(76))
    rig.kick(rig.rx)
    assert bytes(rig.mem.buf[short + 4 : short + 64]) == canary
    assert rig.net.stats["rx_frames"] == 0 or not mergeable


def test_sixteen_one_byte_mergeable_buffers_make_the_frame_wait_untouched():
    rig = Rig(mergeable=True, qsize=32)
    bufs = [rig.buffer(16) for _ in range(16)]
    for i, b in enumerate(bufs):
        rig.mem.poke(b, b"\xee")
        rig.rx.set_desc(i, b, 1, F_WRITE)
    rig.rx.offer(*range(16))
    rig.inject(frame(76))
    rig.kick(rig.rx)
    # 16 bytes cannot hold 12 + 76: nothing is used, nothing written, the frame waits.
    assert rig.rx.used_idx() == 0
    assert all(rig.mem.buf[b] == 0xEE for b in bufs)
    h = rig.dev.health()
    assert h["counters"]["rx_frames"] == 0 and h["counters"]["rx_held"] == 1
    assert h["dropped"] == {} and h["needs_reset"] is None


def test_a_full_ring_too_small_for_the_frame_drops_it_counted():
    rig = Rig(mergeable=True, qsize=4)
    for i in range(4):
        rig.rx.set_desc(i, rig.buffer(16), 16, F_WRITE)
    rig.rx.offer(*range(4))
    rig.inject(frame(100))  # 112 bytes > 4 × 16, and the ring is full
    rig.inject(frame(40, tag=7))  # 52 bytes fit
    rig.kick(rig.rx)
    # The used buffers hold the second frame (52 bytes: num_buffers 4), not a truncated first.
    assert rig.rx.used_idx() == 4
    assert sum(rig.rx.used_elem(n)[1] for n in range(4)) == 12 + 40
    h = rig.dev.health()
    assert h["dropped"] == {"rx_ring_too_small": 1}
    assert h["counters"]["rx_frames"] == 1 and h["counters"]["rx_dropped"] == 1


def test_mergeable_frame_spreads_over_buffers_with_num_buffers():
    rig = Rig(mergeable=True)
    bufs = [rig.buffer(32) for _ in range(4)]
    for i, b in enumerate(bufs):
        rig.rx.set_desc(i, b, 32, F_WRITE)
    rig.rx.offer(*range(4))
    f = frame(76)
    rig.inject(f)
    rig.kick(rig.rx)
    assert rig.rx.used_idx() == 3
    lens = [rig.rx.used_elem(n) for n in range(3)]
    assert lens == [(0, 32), (1, 32), (2, 24)]
    data = b"".join(bytes(rig.mem.buf[b : b + n]) for b, (_, n) in zip(bufs, lens, strict=False))
    assert struct.unpack_from("<H", data, 10)[0] == 3  # num_buffers
    assert data[12:] == f
    assert RX_VECTOR in rig.sink.msis
    assert rig.dev.health()["counters"]["rx_frames"] == 1


def test_header_split_across_descriptors_of_one_chain_goes_through_the_scatter_list():
    rig = Rig(mergeable=True)
    a, b, c = rig.buffer(16), rig.buffer(16), rig.buffer(256)
    rig.mem.poke(a + 12, b"\xcc" * 4)
    rig.rx.set_desc(0, a, 12, F_WRITE | F_NEXT, 1)  # exactly the header...
    rig.rx.set_desc(1, b, 4, F_WRITE | F_NEXT, 2)  # ...then 4 bytes...
    rig.rx.set_desc(2, c, 256, F_WRITE)  # ...then the rest
    rig.rx.offer(0)
    f = frame(64)
    rig.inject(f)
    rig.kick(rig.rx)
    assert rig.rx.used_elem(0) == (0, 76)
    assert struct.unpack_from("<H", rig.mem.buf, a + 10)[0] == 1
    assert bytes(rig.mem.buf[a + 12 : a + 16]) == b"\xcc" * 4  # not a buffer: untouched
    assert bytes(rig.mem.buf[b : b + 4]) + bytes(rig.mem.buf[c : c + 60]) == f


def test_non_mergeable_buffer_too_small_drops_the_frame_and_keeps_the_buffer():
    rig = Rig(mergeable=False)
    small, big = rig.buffer(20), rig.buffer(2048)
    rig.rx.set_desc(0, small, 20, F_WRITE)
    rig.rx.offer(0)
    rig.inject(frame(76))
    rig.kick(rig.rx)
    assert rig.rx.used_idx() == 0 and bytes(rig.mem.buf[small : small + 20]) == bytes(20)
    h = rig.dev.health()
    assert h["dropped"] == {"rx_buffer_too_small": 1} and h["counters"]["rx_frames"] == 0
    # The buffer was given back (QEMU's virtqueue_unpop): the next frame that fits uses it.
    rig.rx.set_desc(1, big, 2048, F_WRITE)
    rig.rx.offer(1)
    rig.inject(b"\x77" * 8)  # 12 + 8 bytes: fits the 20-byte buffer exactly
    rig.kick(rig.rx)
    assert rig.rx.used_elem(0) == (0, 20)
    assert struct.unpack_from("<H", rig.mem.buf, small + 10)[0] == 1  # num_buffers = 1
    assert bytes(rig.mem.buf[small + 12 : small + 20]) == b"\x77" * 8


@pytest.mark.parametrize("mergeable", [True, False])
def test_chain_with_no_writable_descriptor_is_a_device_error_not_a_received_frame(mergeable):
    rig = Rig(mergeable=mergeable)
    rig.rx.set_desc(0, rig.buffer(2048), 2048)  # device-readable only
    rig.rx.set_desc(1, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0, 1)
    rig.inject(frame(64))
    rig.kick(rig.rx)
    assert_needs_reset(rig, "no writable buffer")
    assert rig.rx.used_idx() == 0
    assert rig.net.stats["rx_frames"] == 0


def test_reset_keeps_the_held_frame_for_the_next_driver():
    rig = Rig(mergeable=True)
    f = frame(64, tag=9)
    rig.inject(f)
    rig.dev.poll()  # no buffers: the device takes the frame and holds it
    rig.wr("device_status", 0)  # device reset
    rig2_rx = rig.rx
    rig2_rx.avail_idx = 0
    rig.mem.poke(rig2_rx.avail, bytes(4))
    rig.mem.poke(rig2_rx.used, bytes(4))
    rig.bring_up()
    buf = rig.buffer(2048)
    rig.rx.set_desc(0, buf, 2048, F_WRITE)
    rig.rx.offer(0)
    rig.kick(rig.rx)
    assert rig.rx.used_elem(0) == (0, 12 + len(f))
    assert bytes(rig.mem.buf[buf + 12 : buf + 12 + len(f)]) == f
    assert rig.backend.queue == deque()  # the held frame was the only one
    h = rig.dev.health()
    assert h["counters"]["rx_frames"] == 1 and h["dropped"] == {}


def test_backend_failure_is_counted_not_raised():
    class Broken:
        def send(self, frame: bytes) -> None:
            pass

        def take_frame(self) -> bytes | None:
            raise OSError(5, "Input/output error")

    rig = Rig()
    rig.net.backend = Broken()
    rig.rx.set_desc(0, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0)
    rig.kick(rig.rx)
    rig.dev.poll()
    assert rig.dev.health()["dropped"] == {"rx_backend_error": 2}


def test_oversize_backend_frame_is_dropped_counted():
    rig = Rig()
    rig.rx.set_desc(0, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0)
    rig.inject(bytes(70000))
    rig.inject(frame(60))
    rig.kick(rig.rx)
    h = rig.dev.health()
    assert h["dropped"] == {"rx_oversize": 1} and h["counters"]["rx_frames"] == 1


def test_a_flood_of_oversize_frames_is_drained_a_bounded_amount_per_call():
    rig = Rig(qsize=4)
    rig.rx.set_desc(0, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(0)
    for _ in range(50):
        rig.inject(bytes(70000))
    rig.dev.poll()
    assert rig.dev.health()["dropped"] == {"rx_oversize": 8}
    assert len(rig.backend.queue) == 42
