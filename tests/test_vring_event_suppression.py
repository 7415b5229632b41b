"""Interrupt suppression as Linux 6.1's virtio_ring.c drives it: what the driver model writes
into the rings' suppression fields (split: avail->flags and used_event, virtio 1.2 §2.7.7 and
§2.7.10; packed: the driver event suppression structure, §2.8.10 and §2.8.14) through
virtqueue_disable_cb / enable_cb_prepare / poll / enable_cb_delayed / get_buf_ctx and
vring_interrupt's event_triggered. How virtio_net's NAPI drives them: tests/test_napi.py.

Every expected value is worked out here from the rule of the 6.1 function named beside it,
reading the fields from guest memory at their spec offsets — not taken from the model.
The real kernel's side is at the end: Linux 6.1 (and 6.12) on QEMU with INTx (vectors=0),
where an interrupt the control queue raises shows as an ISR read."""

from __future__ import annotations

import struct

import pytest
from capture_sets import load

from virtio_msix.guest.kernel import Kernel
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.vring import PackedVringVirtqueue, VringVirtqueue, vring_interrupt
from virtio_msix.pci.bus import PciBus
from virtio_msix.virtio.devspec import parse_device
from virtio_msix.virtio.memory import GuestMemory

NUM = 16
# §2.7.7: the driver's avail->flags bit; §2.8.10: struct pvirtq_event_suppress flags values
NO_INTERRUPT = 1
EV_ENABLE, EV_DISABLE, EV_DESC = 0, 1, 2
WRAP = 1 << 15  # §2.8.10: off_wrap's bit 15 is the wrap counter
# §2.8.1: packed descriptor flags AVAIL (bit 7) and USED (bit 15)
P_AVAIL, P_USED = 1 << 7, 1 << 15


def _u16(vq, addr: int) -> int:
    return struct.unpack("<H", vq.k.memory.read(addr, 2))[0]


# -- split ring -------------------------------------------------------------------------------
def _split(event_idx: bool, callback=lambda vq: None) -> VringVirtqueue:
    k = Kernel(PciBus(), GuestMemory(1 << 22))
    return VringVirtqueue(k, 0, NUM, "q", callback, lambda vq: True, event_idx=event_idx)


def avail_flags(vq: VringVirtqueue) -> int:
    return _u16(vq, vq.avail)  # struct virtq_avail: flags at 0


def used_event(vq: VringVirtqueue) -> int:
    return _u16(vq, vq.avail + 4 + 2 * NUM)  # after flags, idx and ring[num] (§2.7.6)


def _post(vq, n: int) -> None:
    for i in range(n):
        assert vq.add_sgs([(0x10000 + 64 * i, 64)], [], ("buf", i)) == 0


def _use(vq: VringVirtqueue, n: int) -> None:
    """The device: the next ``n`` available buffers used, in order (§2.7.8)."""
    mem = vq.k.memory
    idx = _u16(vq, vq.used + 2)
    for _ in range(n):
        head = _u16(vq, vq.avail + 4 + 2 * (idx % NUM))
        mem.write(vq.used + 4 + 8 * (idx % NUM), struct.pack("<II", head, 0))
        idx = (idx + 1) & 0xFFFF
    mem.write(vq.used + 2, struct.pack("<H", idx))


def _get(vq, n: int) -> None:
    for _ in range(n):
        assert vq.get_buf() is not None


def test_split_get_buf_with_callbacks_on_moves_used_event_then_disable_cb_writes_0():
    """virtqueue_get_buf_ctx_split: callbacks on, used_event = the new last_used_idx after
    each buffer; virtqueue_disable_cb_split with event idx and no event_triggered: used_event
    = 0 (Linux's "hack"); avail->flags never written with event idx."""
    vq = _split(event_idx=True)
    _post(vq, 4)
    _use(vq, 2)
    seen = []
    for _ in range(2):
        _get(vq, 1)
        seen.append(used_event(vq))
    assert seen == [1, 2]
    vq.disable_cb()
    assert used_event(vq) == 0
    assert avail_flags(vq) == 0


def test_split_get_buf_with_callbacks_off_leaves_used_event():
    """get_buf_ctx_split writes used_event only while NO_INTERRUPT is clear in the shadow:
    after disable_cb it stays what disable_cb wrote (0)."""
    vq = _split(event_idx=True)
    _post(vq, 4)
    vq.disable_cb()
    _use(vq, 3)
    _get(vq, 3)
    assert used_event(vq) == 0


def test_split_interrupt_then_napi_poll_then_complete():
    """The cycle skb_recv_done → virtnet_poll → virtqueue_napi_complete drives, on the ring:
    vring_interrupt sets event_triggered (event idx), so the callback's disable_cb writes
    nothing (the device already notified: it will not again before used_event is passed);
    the poll's get_buf leaves used_event (callbacks off); enable_cb_prepare clears
    event_triggered and points used_event at last_used_idx; virtqueue_poll says whether more
    came meanwhile."""
    vq = _split(event_idx=True, callback=lambda vq: vq.disable_cb())
    _post(vq, 8)
    _use(vq, 2)
    _get(vq, 2)  # callbacks on: used_event = 2
    assert used_event(vq) == 2
    _use(vq, 3)  # 2 → 5 passes used_event 2: the device interrupts
    assert vring_interrupt(None, vq)
    assert used_event(vq) == 2  # disable_cb after the interrupt: nothing written
    _get(vq, 3)  # the poll, callbacks off
    assert used_event(vq) == 2
    opaque = vq.enable_cb_prepare()
    assert opaque == 5 and used_event(vq) == 5
    assert not vq.poll(opaque)
    _use(vq, 1)
    assert vq.poll(opaque)  # used after enable: virtqueue_napi_complete reschedules
    # event_triggered was cleared: the next disable_cb writes the 0 again
    vq.disable_cb()
    assert used_event(vq) == 0


def test_split_without_event_idx_uses_avail_flags_and_still_writes_used_event():
    """Without event idx: disable_cb and enable_cb_prepare write avail->flags (NO_INTERRUPT,
    then 0), and enable_cb_prepare writes used_event anyway ("always do both")."""
    vq = _split(event_idx=False)
    _post(vq, 4)
    vq.disable_cb()
    assert avail_flags(vq) == NO_INTERRUPT
    _use(vq, 3)
    _get(vq, 3)
    assert used_event(vq) == 0  # callbacks off: get_buf leaves it
    assert vq.enable_cb() is True  # nothing used since
    assert avail_flags(vq) == 0 and used_event(vq) == 3


def test_split_enable_cb_delayed_threshold():
    """virtqueue_enable_cb_delayed_split: used_event = last_used_idx + bufs, bufs =
    (u16)(avail_idx_shadow - last_used_idx) * 3 / 4; False once the device has used more
    than bufs past last_used_idx."""
    vq = _split(event_idx=True)
    _post(vq, 8)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True
    assert used_event(vq) == 8 * 3 // 4
    _use(vq, 6)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True  # 6 used, not more than 6
    _use(vq, 1)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is False  # 7 > 6
    _get(vq, 7)  # callbacks on since enable_cb_delayed: used_event follows, 7
    assert used_event(vq) == 7
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True
    assert used_event(vq) == 7 + (8 - 7) * 3 // 4


def test_split_enable_cb_delayed_across_the_16_bit_wrap():
    vq = _split(event_idx=True)
    start = 0x10000 - 8
    for _ in range(start // 8):
        _post(vq, 8)
        _use(vq, 8)
        _get(vq, 8)
    _post(vq, 12)  # avail index 0xfff8 + 12 wraps to 4
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True
    bufs = ((start + 12 - start) & 0xFFFF) * 3 // 4
    assert used_event(vq) == (start + bufs) & 0xFFFF == 1
    _use(vq, bufs + 1)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is False


@pytest.mark.parametrize("event_idx", [True, False])
def test_split_queue_without_callback_asks_for_no_interrupts(event_idx):
    """virtqueue_vring_init_split: no callback (virtio_net's control queue) → NO_INTERRUPT in
    the shadow, written to avail->flags only without event idx; with it used_event is never
    written (get_buf sees NO_INTERRUPT) and stays 0, so the device notifies at most when its
    used index passes 0."""
    vq = _split(event_idx=event_idx, callback=None)
    assert avail_flags(vq) == (0 if event_idx else NO_INTERRUPT)
    for _ in range(3):
        _post(vq, 1)
        _use(vq, 1)
        _get(vq, 1)
    assert used_event(vq) == 0


# -- packed ring --------------------------------------------------------------------------------
def _packed(event_idx: bool, callback=lambda vq: None) -> PackedVringVirtqueue:
    k = Kernel(PciBus(), GuestMemory(1 << 22))
    return PackedVringVirtqueue(k, 0, NUM, "q", callback, lambda vq: True, event_idx=event_idx)


def drv_event(vq: PackedVringVirtqueue) -> tuple[int, int]:
    """(off_wrap, flags) of the driver event suppression structure (§2.8.10)."""
    return _u16(vq, vq.avail), _u16(vq, vq.avail + 2)


class _PackedDevice:
    """The device's used side of a packed ring: one used descriptor per one-descriptor
    buffer, AVAIL = USED = its wrap counter (§2.8.4)."""

    def __init__(self, vq: PackedVringVirtqueue) -> None:
        self.vq, self.pos, self.wrap = vq, 0, 1

    def use(self, n: int) -> None:
        mem = self.vq.k.memory
        for _ in range(n):
            d = self.vq.desc + 16 * self.pos
            buf_id = _u16(self.vq, d + 12)
            flags = (P_AVAIL | P_USED) if self.wrap else 0
            mem.write(d + 8, struct.pack("<IHH", 0, buf_id, flags))
            self.pos += 1
            if self.pos == NUM:
                self.pos, self.wrap = 0, self.wrap ^ 1


def test_packed_disable_cb_after_interrupt_writes_nothing_and_prepare_rewrites():
    """virtqueue_disable_cb_packed returns before writing the flags when event_triggered;
    get_buf_ctx_packed writes off_wrap only while the shadow is DESC; enable_cb_prepare
    writes off_wrap = last_used_idx (wrap in bit 15), then the flags DESC."""
    vq = _packed(event_idx=True, callback=lambda vq: vq.disable_cb())
    dev = _PackedDevice(vq)
    # A queue with a callback starts ENABLE (virtqueue_vring_init_packed); enabling turns only
    # a DISABLE shadow into DESC.
    vq.enable_cb()
    assert drv_event(vq) == (0 | WRAP, EV_ENABLE)
    vq.disable_cb()
    assert drv_event(vq) == (0 | WRAP, EV_DISABLE)
    vq.enable_cb()
    assert drv_event(vq) == (0 | WRAP, EV_DESC)
    _post(vq, 4)
    dev.use(2)
    assert vring_interrupt(None, vq)
    assert drv_event(vq) == (0 | WRAP, EV_DESC)  # nothing written: the device just notified
    _get(vq, 2)
    assert drv_event(vq) == (0 | WRAP, EV_DESC)  # callbacks off: off_wrap left
    assert vq.enable_cb_prepare() == 2 | WRAP
    assert drv_event(vq) == (2 | WRAP, EV_DESC)


def test_packed_disable_cb_without_event_triggered_writes_disable():
    """The same interrupt with event idx off: event_triggered stays clear (vring_interrupt
    sets it only for vq->event), so disable_cb writes DISABLE."""
    vq = _packed(event_idx=False, callback=lambda vq: vq.disable_cb())
    dev = _PackedDevice(vq)
    _post(vq, 2)
    dev.use(1)
    assert vring_interrupt(None, vq)
    assert drv_event(vq)[1] == EV_DISABLE


def test_packed_enable_cb_delayed_threshold_and_wrap():
    """virtqueue_enable_cb_delayed_packed: off_wrap = last_used + (num - num_free) * 3 / 4,
    the wrap counter flipped past the ring's end; flags DESC; False when the descriptor at
    last_used is used already."""
    vq = _packed(event_idx=True)
    dev = _PackedDevice(vq)
    _post(vq, 8)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True
    assert drv_event(vq) == ((8 * 3 // 4) | WRAP, EV_DESC)
    dev.use(8)
    _get(vq, 8)  # last_used: position 8, wrap 1
    _post(vq, 12)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is True
    pos = 8 + 12 * 3 // 4  # 17: past the end, so position 1 on the other wrap (0)
    assert drv_event(vq) == (pos - NUM, EV_DESC)
    dev.use(1)
    vq.disable_cb()
    assert vq.enable_cb_delayed() is False


def test_packed_without_event_idx_enables_with_enable_flag():
    vq = _packed(event_idx=False)
    vq.disable_cb()
    assert drv_event(vq)[1] == EV_DISABLE
    vq.enable_cb_prepare()
    assert drv_event(vq) == (0, EV_ENABLE)  # off_wrap not written without event idx


# -- the real kernel: Linux 6.1 / 6.12 on QEMU 7.2 with INTx --------------------------------------
def _cvq_interrupted(records: list[dict], cvq: int) -> list[bool]:
    """For each control-queue notification after the probe (``run``), whether an ISR read
    — the INTx handler, vp_interrupt — follows before the next notification of any queue."""
    out: list[bool | None] = []
    for r in records:
        if r.get("phase") != "run" or "op" not in r:
            continue
        notify = r["space"] == "notify" or (r["space"] == "legacy" and r["offset"] == 16)
        isr = r["space"] == "isr" or (r["space"] == "legacy" and r["offset"] == 19)
        if notify and r["op"] == "w":
            out.append(False if r["value"] == cvq else None)
        elif isr and r["op"] == "r" and out and out[-1] is False:
            out[-1] = True
    return [x for x in out if x is not None]


INTX_CAPTURES = {
    "qemu-q35-vectors0": SimOptions(vectors=0),
    "qemu612-q35-vectors0": SimOptions(vectors=0, kernel="6.12"),
    "qemu-q35-smp2-vectors0": SimOptions(vectors=0, cpus=2),
    "qemu-q35-teardown-vectors0": SimOptions(vectors=0),
    "qemu-q35-legacy-teardown-vectors0": SimOptions(
        spec=parse_device("virtio-net-pci,disable-modern=on,vectors=0")),
}


@pytest.mark.parametrize("name", sorted(INTX_CAPTURES))
def test_control_queue_interrupts_as_the_real_kernel(name):
    """The control queue has no callback: Linux keeps NO_INTERRUPT in its shadow, never
    writes used_event (0), so QEMU notifies for its first completion only (vring_need_event
    with used_event 0; the very first because QEMU has not signalled yet) — one INTx for the
    first command after ip link up, none for the others. The model wrote used_event on every
    completion and took an interrupt for each."""
    real = _cvq_interrupted(load(name), cvq=2)
    model = _cvq_interrupted(run_sim(INTX_CAPTURES[name]).recorder.records, cvq=2)
    assert len(real) >= 3 and len(model) >= 3
    assert real.index(True) == 0 and not any(real[1:]), real
    assert model.index(True) == 0 and not any(model[1:]), model
