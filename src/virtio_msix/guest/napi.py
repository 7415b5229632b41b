"""NAPI and the NET_RX softirq (net/core/dev.c, kernel/softirq.c), as much as virtio_net's
interrupt path meets: a driver's interrupt handler schedules a poll (napi_schedule), the poll
runs as softirq work when the hard interrupt returns (irq_exit) or when bottom halves are
enabled again (local_bh_enable), on the CPU that scheduled it, with a budget.

One CPU runs at a time in the model, so the per-CPU state is exact and the SMP races Linux
guards against (a poll running on one CPU while another takes the interrupt) do not occur;
the state bits that matter on one CPU are kept: SCHED, MISSED (an interrupt while the poll
runs), NPSVC (not schedulable before napi_enable / after napi_disable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .kernel import Kernel

NAPI_POLL_WEIGHT = 64  # include/linux/netdevice.h: virtio_net's napi_weight default
NETDEV_BUDGET = 300  # net.core.netdev_budget: packets per net_rx_action
MAX_SOFTIRQ_RESTART = 10  # kernel/softirq.c: __do_softirq's restarts before ksoftirqd

NAPIF_STATE_SCHED = 1 << 0
NAPIF_STATE_MISSED = 1 << 1
NAPIF_STATE_DISABLE = 1 << 2
NAPIF_STATE_NPSVC = 1 << 3


class Napi:
    """struct napi_struct: its poll function (called with the napi and the budget, returns
    the work done), weight, state."""

    __slots__ = ("poll", "weight", "state", "name")

    def __init__(self, poll: Callable[[Napi, int], int], weight: int, name: str = "") -> None:
        self.poll = poll
        self.weight = weight
        # netif_napi_add_weight: SCHED and NPSVC set, so nothing schedules it before
        # napi_enable.
        self.state = NAPIF_STATE_SCHED | NAPIF_STATE_NPSVC
        self.name = name

    def __repr__(self) -> str:
        return f"Napi({self.name!r}, state={self.state:#x})"


def napi_schedule_prep(napi: Napi) -> bool:
    """True when the caller now owns the poll (SCHED was clear); an attempt while it is
    scheduled sets MISSED, which napi_complete_done turns into another poll."""
    state = napi.state
    if state & NAPIF_STATE_DISABLE:
        return False
    if state & NAPIF_STATE_SCHED:
        napi.state = state | NAPIF_STATE_MISSED
        return False
    napi.state = state | NAPIF_STATE_SCHED
    return True


def __napi_schedule(k: Kernel, napi: Napi) -> None:
    """____napi_schedule: on this CPU's poll list (softnet_data.poll_list), NET_RX raised."""
    k.poll_list[k.this_cpu].append(napi)


def napi_complete_done(k: Kernel, napi: Napi, work_done: int) -> bool:
    """False when the poll must go on: not enabled (NPSVC), or an interrupt came meanwhile
    (MISSED: scheduled again at once); else SCHED cleared and True."""
    state = napi.state
    if state & NAPIF_STATE_NPSVC:
        return False
    if state & NAPIF_STATE_MISSED:
        napi.state = (state & ~NAPIF_STATE_MISSED) | NAPIF_STATE_SCHED
        __napi_schedule(k, napi)
        return False
    napi.state = state & ~NAPIF_STATE_SCHED
    return True


def napi_enable(napi: Napi) -> None:
    """SCHED and NPSVC cleared (MISSED kept)."""
    napi.state &= ~(NAPIF_STATE_SCHED | NAPIF_STATE_NPSVC)


def napi_disable(k: Kernel, napi: Napi) -> None:
    """Wait until no poll is scheduled — Linux sleeps while another CPU runs it; here the
    pending softirq work of the CPUs holding it runs — then own it (SCHED | NPSVC)."""
    napi.state |= NAPIF_STATE_DISABLE
    for cpu, plist in enumerate(k.poll_list):
        if napi in plist:
            do_softirq(k, cpu)
    napi.state = (napi.state | NAPIF_STATE_SCHED | NAPIF_STATE_NPSVC) & ~NAPIF_STATE_DISABLE
    for plist in k.poll_list:  # a poll still listed (its CPU gave up, see do_softirq)
        while napi in plist:
            plist.remove(napi)


def net_rx_action(k: Kernel, cpu: int) -> None:
    """The NET_RX softirq: the polls scheduled on ``cpu`` in order, until the list or
    NETDEV_BUDGET runs out (Linux also stops after two jiffies: the model has no clock).
    What is left, then what was scheduled meanwhile, then the repolls, wait for the next
    round."""
    plist = k.poll_list[cpu]
    work = plist[:]
    plist.clear()
    budget = NETDEV_BUDGET
    repoll: list[Napi] = []
    done = 0
    for napi in work:  # bounded: a copy, which the polls do not extend
        done += 1
        # napi_poll / __napi_poll: a poll that used its whole weight is still scheduled
        # and goes on the repoll list, unless it put itself back on the poll list
        weight = napi.weight
        polled = napi.poll(napi, weight) if napi.state & NAPIF_STATE_SCHED else 0
        if polled >= weight:
            if napi.state & NAPIF_STATE_DISABLE:
                napi_complete_done(k, napi, polled)
            elif napi not in plist:
                repoll.append(napi)
        budget -= polled
        if budget <= 0:
            break
    plist[:] = work[done:] + plist + repoll


def do_softirq(k: Kernel, cpu: int) -> None:
    """__do_softirq on ``cpu``: bottom halves off, hard interrupts on — interrupts already
    pending are taken first (their irq_exit does not run softirqs again: in_softirq) — then
    NET_RX rounds while polls are scheduled, at most MAX_SOFTIRQ_RESTART; anything left is
    ksoftirqd's (Kernel.ksoftirqd): wakeup_softirqd, after which irq_exit and local_bh_enable
    leave NET_RX to the thread (ksoftirqd_running)."""
    counts = k.softirq_count
    saved, k.this_cpu = k.this_cpu, cpu
    counts[cpu] += 1
    try:
        plist = k.poll_list[cpu]
        for _ in range(MAX_SOFTIRQ_RESTART):
            if k.pending_msi or k.intx_level or k.cleanup_list:  # take_interrupts' own test
                k.take_interrupts()
            if not plist:
                break
            net_rx_action(k, cpu)
    finally:
        counts[cpu] -= 1
        k.this_cpu = saved
    if plist:
        k.ksoftirqd_woken[cpu] = True  # wakeup_softirqd


def irq_exit(k: Kernel, cpu: int) -> None:
    """kernel/softirq.c irq_exit → invoke_softirq: leaving the outermost hard interrupt with
    softirq work pending and bottom halves enabled runs it, on that CPU — unless ksoftirqd was
    woken for it and has not run yet (ksoftirqd_running: NET_RX is not in SOFTIRQ_NOW_MASK)."""
    if (not k.in_interrupt and k.poll_list[cpu] and not k.softirq_count[cpu]
            and not k.ksoftirqd_woken[cpu]):  # fmt: skip
        do_softirq(k, cpu)


def local_bh_disable(k: Kernel) -> None:
    k.softirq_count[k.this_cpu] += 1


def local_bh_enable(k: Kernel) -> None:
    """Bottom halves on again: pending softirq work runs now (outside hard interrupts), unless
    it is ksoftirqd's (do_softirq's ksoftirqd_running test, as irq_exit)."""
    cpu = k.this_cpu
    k.softirq_count[cpu] -= 1
    if (not k.softirq_count[cpu] and not k.in_interrupt and k.poll_list[cpu]
            and not k.ksoftirqd_woken[cpu]):  # fmt: skip
        do_softirq(k, cpu)
