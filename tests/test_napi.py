"""virtio_net's NAPI as Linux 6.1 runs it, on the whole simulated machine: the RX interrupt
schedules virtnet_poll (skb_recv_done → virtqueue_napi_schedule), which runs as softirq work
when the interrupt returns, takes at most the budget (NAPI_POLL_WEIGHT) and completes with
virtqueue_napi_complete, or is polled again; TX NAPI (virtnet_poll_tx, virtnet_poll_cleantx).
Observed in guest memory at the spec offsets (virtio 1.2 §2.7.6: used_event after the avail
ring); expected values from the rule of the 6.1 function named beside each."""

from __future__ import annotations

import struct

import pytest

from virtio_msix.guest.napi import NAPI_POLL_WEIGHT
from virtio_msix.guest.sim import SimOptions, make_frame, run_sim
from virtio_msix.guest.virtio_net import start_xmit


def _u16(vq, addr: int) -> int:
    return struct.unpack("<H", vq.k.memory.read(addr, 2))[0]


# -- virtio_net's NAPI on the whole simulated machine -------------------------------------------
def _machine(**kw):
    res = run_sim(SimOptions(packets=0, teardown=False, **kw))
    assert res.net is not None
    return res.kernel, res.net


def _watch_polls(vi, qp: int = 0) -> list[tuple[int, int, int]]:
    """(work done, used_event after, rx avail idx after) of every RX poll of pair ``qp``."""
    rq, napi, log = vi.rq[qp], vi.rq_napi[qp], []
    poll = napi.poll

    def watched(n, budget):
        got = poll(n, budget)
        log.append((got, _u16(rq, rq.avail + 4 + 2 * rq.num), _u16(rq, rq.avail + 2)))
        return got

    napi.poll = watched
    return log


def test_rx_burst_larger_than_the_budget_is_polled_again_not_completed():
    """A kick that makes the device deliver 100 frames at once: one RX interrupt; the RX poll
    takes NAPI_POLL_WEIGHT (64) and, having used its budget, does not complete — callbacks
    stay off, used_event untouched — and is polled again (net_rx_action's repoll) for the
    other 36, which completes it: used_event = last_used_idx. Each poll refills the ring
    once more than min(budget, ring size) / 2 buffers are free (virtnet_receive)."""
    k, vi = _machine()
    rq = vi.rq[0]
    for n in range(3):  # settle: three single frames, each a complete poll
        start_xmit(k, vi, make_frame(vi.mac, n))
    base_used, base_avail, free0 = rq.last_used_idx, _u16(rq, rq.avail + 2), rq.num_free
    assert _u16(rq, rq.avail + 4 + 2 * rq.num) == base_used
    irq = next(d for d in k.irqs.values() if d.actions and d.actions[0].name.endswith("input.0"))
    before = sum(irq.counts)
    log = _watch_polls(vi)
    burst = 100
    for n in range(burst):
        start_xmit(k, vi, make_frame(vi.mac, 100 + n), more=n < burst - 1)
    assert sum(irq.counts) - before == 1
    first, rest = NAPI_POLL_WEIGHT, burst - NAPI_POLL_WEIGHT
    refill_above = min(NAPI_POLL_WEIGHT, rq.num) // 2
    assert free0 <= refill_above  # the single frames' buffers are not given back yet
    assert free0 + first > refill_above and rest > refill_above  # each poll below refills all
    assert log == [
        (first, base_used, (base_avail + free0 + first) & 0xFFFF),  # not completed
        (rest, (base_used + burst) & 0xFFFF, (base_avail + free0 + burst) & 0xFFFF),
    ]
    assert vi.rx_packets == 3 + burst


def test_rx_poll_refills_only_past_half_the_budget():
    """virtnet_receive refills the RX ring only when more than min(budget, size) / 2 buffers
    are free: single frames leave the avail index alone until then."""
    k, vi = _machine()
    rq = vi.rq[0]
    log = _watch_polls(vi)
    threshold = min(NAPI_POLL_WEIGHT, rq.num) // 2
    avail0 = _u16(rq, rq.avail + 2)
    for n in range(threshold + 1):
        start_xmit(k, vi, make_frame(vi.mac, n))
    avails = [a for _got, _ue, a in log]
    assert avails[:threshold] == [avail0] * threshold
    assert avails[threshold] == (avail0 + threshold + 1) & 0xFFFF


def test_tx_napi_reaps_completions_in_its_poll():
    """With affinity hints set (virtnet_set_affinity always sets them in 6.1), TX NAPI is on:
    skb_xmit_done schedules virtnet_poll_tx, which frees the sent skb before the next
    start_xmit, and completes with used_event = last_used_idx."""
    k, vi = _machine()
    sq = vi.sq[0]
    assert vi.affinity_hint_set and vi.sq_napi[0].weight == NAPI_POLL_WEIGHT
    for n in range(5):
        start_xmit(k, vi, make_frame(vi.mac, n))
        assert vi.tx_completed == n + 1
        # the RX poll's virtnet_poll_cleantx ran last: enable_cb_delayed with nothing
        # outstanding, bufs = 0
        assert _u16(sq, sq.avail + 4 + 2 * sq.num) == sq.last_used_idx




def test_without_tx_napi_the_tx_interrupt_stays_off(monkeypatch):
    """napi_tx=0 (sq napi weight 0): skb_xmit_done only disables callbacks — after the
    interrupt (event_triggered) without writing — and start_xmit reaps the completions
    without re-enabling them (enable_cb_delayed only when the ring is nearly full), so
    used_event stays where it was (0 on a fresh ring) and the device interrupts for the first
    completion only; each frame's skb is freed by the next start_xmit."""
    from virtio_msix.guest import virtio_net

    monkeypatch.setattr(virtio_net, "NAPI_TX", False)
    k, vi = _machine()
    sq = vi.sq[0]
    assert vi.sq_napi[0].weight == 0
    irq = next(d for d in k.irqs.values() if d.actions and d.actions[0].name.endswith("output.0"))
    frames = 5
    for n in range(frames):
        start_xmit(k, vi, make_frame(vi.mac, n))
    assert sum(irq.counts) == 1
    assert vi.tx_completed == frames - 1
    assert _u16(sq, sq.avail + 4 + 2 * sq.num) == 0


def test_rx_poll_on_another_cpu_leaves_a_tx_queue_being_sent_on(monkeypatch):
    """--cpus 2, one pair: CPU 0's kick makes the device answer at once, and the RX
    interrupt (affine to both CPUs) is taken on the other CPU while CPU 0 is still in
    start_xmit holding the TX queue's lock. virtnet_poll_cleantx only __netif_tx_trylock's
    that lock: it must leave the TX completions to their holder (its TX poll or next
    start_xmit) rather than free them under it."""
    from virtio_msix.guest import virtio_net

    k, vi = _machine(cpus=2)
    assert vi.curr_queue_pairs == 1 and vi.sq_napi[0].weight
    in_xmit: list[int] = []  # CPUs in start_xmit on pair 0
    start_xmit_real = virtio_net.start_xmit

    def start_xmit_watched(k, vi, frame, qp=0, more=False):
        in_xmit.append(k.this_cpu)
        try:
            return start_xmit_real(k, vi, frame, qp, more)
        finally:
            in_xmit.pop()

    monkeypatch.setattr(virtio_net, "start_xmit", start_xmit_watched)
    napi, poll = vi.rq_napi[0], vi.rq_napi[0].poll
    seen = []

    def rx_poll_watched(n, budget):
        before = vi.tx_completed
        got = poll(n, budget)
        seen.append((list(in_xmit), k.this_cpu, vi.tx_completed - before))
        return got

    napi.poll = rx_poll_watched
    for n in range(6):
        k.this_cpu = n % 2
        virtio_net.dev_queue_xmit(k, vi, make_frame(vi.mac, n))
        k.take_interrupts()
    held = [(cpus, cpu, freed) for cpus, cpu, freed in seen if cpus and cpus[0] != cpu]
    assert held, seen  # the interleaving this test is about happens
    assert all(freed == 0 for _cpus, _cpu, freed in held), held
    assert vi.tx_completed == 6  # all freed in the end, by the TX poll


@pytest.mark.parametrize("vectors", [0, 2])  # INTx; MSI-X with one vector for all queues
def test_shared_interrupt_schedules_the_newest_queue_first(vectors):
    """vp_vring_interrupt walks vp_dev->virtqueues, which vp_setup_vq builds with list_add
    (each queue with a callback put at the head): output.0 (created after input.0) is
    handled first, so its TX poll is ahead of the RX poll on the CPU's poll list and
    net_rx_action runs it first."""
    k, vi = _machine(vectors=vectors)
    assert not vi.vp.per_vq_vectors
    order: list[str] = []
    for vq in (vi.rq[0], vi.sq[0]):
        cb = vq.callback

        def logged(v, cb=cb):
            order.append(v.name)
            cb(v)

        vq.callback = logged
    polls: list[str] = []
    for napi in (vi.rq_napi[0], vi.sq_napi[0]):
        poll = napi.poll

        def logged_poll(n, budget, poll=poll):
            polls.append(n.name)
            return poll(n, budget)

        napi.poll = logged_poll
    start_xmit(k, vi, make_frame(vi.mac, 0))
    assert order[:2] == ["output.0", "input.0"], order
    assert polls[:2] == ["tx-0", "rx-0"]


def test_work_left_to_ksoftirqd_waits_for_it():
    """A device that always has another frame: the RX poll always uses its whole weight, so
    __do_softirq stops after MAX_SOFTIRQ_RESTART rounds with the poll still listed and wakes
    ksoftirqd. From then on (6.1's ksoftirqd_running: NET_RX is not in SOFTIRQ_NOW_MASK)
    neither irq_exit nor local_bh_enable runs NET_RX on that CPU: the work is the thread's
    until it has run it."""
    from virtio_msix.guest.napi import (
        MAX_SOFTIRQ_RESTART,
        irq_exit,
        local_bh_disable,
        local_bh_enable,
    )
    from virtio_msix.guest.virtio_net import dev_queue_xmit

    res = run_sim(SimOptions(packets=0, teardown=False))
    k, vi = res.kernel, res.net
    frame = make_frame(vi.mac, 0)
    res.device.device.backend.take_frame = lambda: frame  # the peer never runs dry
    before = vi.rx_packets
    dev_queue_xmit(k, vi, frame)  # local_bh_enable runs __do_softirq: 10 rounds, one poll each
    assert vi.rx_packets - before == MAX_SOFTIRQ_RESTART * NAPI_POLL_WEIGHT
    assert k.poll_list[0] == [vi.rq_napi[0]]
    left = vi.rx_packets
    local_bh_disable(k)
    local_bh_enable(k)
    assert vi.rx_packets == left  # ksoftirqd is running: local_bh_enable leaves it
    irq_exit(k, 0)
    assert vi.rx_packets == left  # and so does the next interrupt's return
    k.ksoftirqd()
    assert vi.rx_packets > left
