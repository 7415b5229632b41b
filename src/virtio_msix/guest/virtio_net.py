"""drivers/net/virtio_net.c, the part a device sees: validate, probe (config reads with the
generation loop, find_vqs, affinity hints), RX buffer posting, TX, the control queue, the NAPI
polls the interrupt handlers schedule (virtnet_poll, virtnet_poll_tx: guest/napi.py runs them
as softirq work), and remove."""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..virtio import net as dev_net
from .irqcore import EINVAL, irq_set_affinity_hint
from .kernel import Kernel
from .napi import (
    NAPI_POLL_WEIGHT,
    NAPIF_STATE_DISABLE,
    NAPIF_STATE_SCHED,
    Napi,
    __napi_schedule,
    local_bh_disable,
    local_bh_enable,
    napi_complete_done,
    napi_disable,
    napi_enable,
    napi_schedule_prep,
)
from .virtio_pci import (
    VirtioDriver,
    VpDev,
    del_vq,
    irq_desc_of,
    virtio_cread16,
    virtio_cread_bytes,
    virtio_device_ready,
    virtio_find_vqs_ctx,
    vp_del_vqs,
    vp_get,
    vp_reset,
)
from .vring import VringVirtqueue

# The driver's feature table in Linux 6.1 (VIRTNET_FEATURES).
VIRTNET_FEATURES = (
    dev_net.VIRTIO_NET_F_CSUM,
    dev_net.VIRTIO_NET_F_GUEST_CSUM,
    dev_net.VIRTIO_NET_F_MAC,
    dev_net.VIRTIO_NET_F_HOST_TSO4,
    dev_net.VIRTIO_NET_F_HOST_UFO,
    dev_net.VIRTIO_NET_F_HOST_TSO6,
    dev_net.VIRTIO_NET_F_HOST_ECN,
    dev_net.VIRTIO_NET_F_GUEST_TSO4,
    dev_net.VIRTIO_NET_F_GUEST_TSO6,
    dev_net.VIRTIO_NET_F_GUEST_ECN,
    dev_net.VIRTIO_NET_F_GUEST_UFO,
    dev_net.VIRTIO_NET_F_MRG_RXBUF,
    dev_net.VIRTIO_NET_F_STATUS,
    dev_net.VIRTIO_NET_F_CTRL_VQ,
    dev_net.VIRTIO_NET_F_CTRL_RX,
    dev_net.VIRTIO_NET_F_CTRL_VLAN,
    dev_net.VIRTIO_NET_F_GUEST_ANNOUNCE,
    dev_net.VIRTIO_NET_F_MQ,
    dev_net.VIRTIO_NET_F_CTRL_MAC_ADDR,
    dev_net.VIRTIO_NET_F_MTU,
    dev_net.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    dev_net.VIRTIO_NET_F_SPEED_DUPLEX,
    dev_net.VIRTIO_NET_F_STANDBY,
    dev_net.VIRTIO_NET_F_RSS,
    dev_net.VIRTIO_NET_F_HASH_REPORT,
    dev_net.VIRTIO_NET_F_NOTF_COAL,
)
# struct virtio_net_config offsets (one table: the device's CONFIG_FIELDS).
CONFIG_OFFSET = {name: offset for name, offset, _size, _bit in dev_net.CONFIG_FIELDS}
MIN_MTU = 68
HDR_LEN = dev_net.HDR_LEN  # struct virtio_net_hdr_mrg_rxbuf
RX_BUF_SIZE = 1536 + HDR_LEN  # GOOD_PACKET_LEN + header: one buffer per frame (mergeable)
# Without MRG_RXBUF (add_recvbuf_small / add_recvbuf_big): a small buffer is the header and
# GOOD_PACKET_LEN (ETH_HLEN + VLAN_HLEN + ETH_DATA_LEN); a big one, when the device may send
# guest GSO packets, is a page whose first bytes hold the header (padded to struct
# padded_vnet_hdr) and the rest data, followed by MAX_SKB_FRAGS more pages.
GOOD_PACKET_LEN = 14 + 4 + 1500
PADDED_VNET_HDR = 32  # sizeof(struct padded_vnet_hdr): virtio_net_hdr_v1_hash + 12
MAX_SKB_FRAGS = 17
RX_PAGE = 4096
GUEST_GSO_FEATURES = (
    dev_net.VIRTIO_NET_F_GUEST_TSO4,
    dev_net.VIRTIO_NET_F_GUEST_TSO6,
    dev_net.VIRTIO_NET_F_GUEST_ECN,
    dev_net.VIRTIO_NET_F_GUEST_UFO,
)
RECEIVED_KEPT = 64


@dataclass
class VirtnetInfo:
    vp: VpDev
    mac: bytes = b""
    max_queue_pairs: int = 1
    curr_queue_pairs: int = 1
    mtu: int = 1500
    rq: list[VringVirtqueue] = field(default_factory=list)
    sq: list[VringVirtqueue] = field(default_factory=list)
    cvq: VringVirtqueue | None = None
    link_up: bool = False
    affinity_hint_set: bool = False  # virtnet_set_affinity gave the queues hints
    # The last frames handed up (the stack's socket buffers are not modelled: older ones go).
    received: deque[bytes] = field(default_factory=lambda: deque(maxlen=RECEIVED_KEPT))
    rx_packets: int = 0
    tx_packets: int = 0
    tx_completed: int = 0
    tx_dropped: int = 0
    rx_oom: int = 0  # RX refills cut short by guest RAM running out
    speed: int = 0xFFFFFFFF  # SPEED_UNKNOWN until the device says (virtnet_update_settings)
    duplex: int = 0xFF  # DUPLEX_UNKNOWN
    ctrl_results: list[tuple[int, int, int]] = field(default_factory=list)
    ctrl_buf: int = 0  # struct control_buf: allocated once, reused by every command
    # The receive buffer layout virtnet_probe chose from the features.
    mergeable_rx_bufs: bool = True
    big_packets: bool = False
    big_packets_num_skbfrags: int = 0
    hdr_len: int = HDR_LEN
    any_header_sg: bool | None = None  # virtnet_probe's vi->any_header_sg (None: not set yet)
    # Sees every frame the driver sends (outbound=True) or hands up: pcap writers hook here.
    capture: Callable[[bytes, bool], None] | None = None
    # Per queue pair (virtnet_alloc_queues): rq[i].napi and sq[i].napi; the TX queue stopped
    # by start_xmit when its ring is nearly full (netif_stop_subqueue).
    rq_napi: list[Napi] = field(default_factory=list)
    sq_napi: list[Napi] = field(default_factory=list)
    tx_stopped: list[bool] = field(default_factory=list)
    # Per TX queue, the CPU holding its xmit lock (netdev_queue._xmit_lock: __netif_tx_lock
    # around start_xmit), else None. With --cpus N an interrupt another CPU takes during a
    # kick runs its softirq work while this CPU still holds the lock.
    tx_lock_owner: list[int | None] = field(default_factory=list)
    opened: bool = False


def virtnet_validate(k: Kernel, vp: VpDev) -> int:
    if not vp.has_feature(dev_net.VIRTIO_NET_F_CTRL_VQ):
        for bit in (dev_net.VIRTIO_NET_F_CTRL_RX, dev_net.VIRTIO_NET_F_CTRL_VLAN,
                    dev_net.VIRTIO_NET_F_GUEST_ANNOUNCE, dev_net.VIRTIO_NET_F_MQ,
                    dev_net.VIRTIO_NET_F_CTRL_MAC_ADDR):  # fmt: skip
            if vp.has_feature(bit):  # virtnet_fail_on_feature
                k.printk(f"virtio_net {vp.name}: device advertises feature "
                         f"VIRTIO_NET_F_{dev_net.feature_names(1 << bit)[0]} but not "
                         "VIRTIO_NET_F_CTRL_VQ")  # fmt: skip
                return -EINVAL
    if vp.has_feature(dev_net.VIRTIO_NET_F_MTU):
        mtu = virtio_cread16(k, vp, CONFIG_OFFSET["mtu"])
        if mtu < MIN_MTU:
            vp.features &= ~(1 << dev_net.VIRTIO_NET_F_MTU)
    return 0


def virtnet_probe(k: Kernel, vp: VpDev) -> int:
    vi = VirtnetInfo(vp)
    vp.priv = vi
    if vp.has_feature(dev_net.VIRTIO_NET_F_MQ) and vp.has_feature(dev_net.VIRTIO_NET_F_CTRL_VQ):
        pairs = virtio_cread16(k, vp, CONFIG_OFFSET["max_virtqueue_pairs"])
        vi.max_queue_pairs = pairs if 1 <= pairs <= 0x8000 else 1
    # Multiqueue by default, at most one pair per online CPU; set before init_vqs, whose
    # virtnet_set_affinity spreads these pairs (no device access: its place is free).
    vi.curr_queue_pairs = min(vi.max_queue_pairs, k.cpus)
    virtnet_alloc_queues(k, vi)
    if vp.has_feature(dev_net.VIRTIO_NET_F_MAC):
        vi.mac = virtio_cread_bytes(k, vp, CONFIG_OFFSET["mac"], 6)
    if vp.has_feature(dev_net.VIRTIO_NET_F_MTU):
        vi.mtu = virtio_cread16(k, vp, CONFIG_OFFSET["mtu"])
    virtnet_set_rx_layout(vi)
    vi.any_header_sg = vp_any_header_sg(vi)
    err = init_vqs(k, vi)
    if err:
        return err
    virtio_device_ready(k, vp)
    _virtnet_set_queues(k, vi, vi.curr_queue_pairs)
    return 0


# napi_tx: the module parameter, on by default; sq napi weight is napi_weight (64) with it.
NAPI_TX = True


def virtnet_alloc_queues(k: Kernel, vi: VirtnetInfo) -> None:
    """The NAPI contexts of every pair (netif_napi_add_weight / netif_napi_add_tx_weight):
    RX polls with NAPI_POLL_WEIGHT; TX with it too when napi_tx, else weight 0 (no TX
    NAPI: completions are reaped by the next start_xmit)."""
    vi.rq_napi = [Napi(partial(virtnet_poll, k, vi, i), NAPI_POLL_WEIGHT, f"rx-{i}")
                  for i in range(vi.max_queue_pairs)]  # fmt: skip
    vi.sq_napi = [Napi(partial(virtnet_poll_tx, k, vi, i), NAPI_POLL_WEIGHT if NAPI_TX else 0,
                       f"tx-{i}") for i in range(vi.max_queue_pairs)]  # fmt: skip
    vi.tx_stopped = [False] * vi.max_queue_pairs
    vi.tx_lock_owner = [None] * vi.max_queue_pairs


def _virtnet_set_queues(k: Kernel, vi: VirtnetInfo, pairs: int) -> bool:
    """VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, sent only when the device has MQ and a control queue."""
    if vi.cvq is None or not vi.vp.has_feature(dev_net.VIRTIO_NET_F_MQ):
        return True
    return virtnet_send_command(k, vi, dev_net.CTRL_MQ, 0, struct.pack("<H", pairs))


def init_vqs(k: Kernel, vi: VirtnetInfo) -> int:
    err = virtnet_find_vqs(k, vi)
    if err:
        return err
    virtnet_set_affinity(k, vi)
    return 0


def virtnet_find_vqs(k: Kernel, vi: VirtnetInfo) -> int:
    vp = vi.vp
    names: list[str] = []
    callbacks: list = []
    for i in range(vi.max_queue_pairs):
        names += [f"input.{i}", f"output.{i}"]
        # partials called with the virtqueue (its ``vq``): no lambda frame per interrupt
        callbacks += [partial(skb_recv_done, k, vi, i), partial(skb_xmit_done, k, vi, i)]
    if vp.has_feature(dev_net.VIRTIO_NET_F_CTRL_VQ):
        names.append("control")
        callbacks.append(None)  # the control queue is polled, it has no interrupt
    vqs = virtio_find_vqs_ctx(k, vp, names, callbacks)
    if isinstance(vqs, int):
        return vqs
    vi.rq = vqs[0 : 2 * vi.max_queue_pairs : 2]
    vi.sq = vqs[1 : 2 * vi.max_queue_pairs : 2]
    if not vi.big_packets or vi.mergeable_rx_bufs:
        # virtnet_find_vqs asks for a per-buffer context on the receive queues unless it posts
        # big buffers (ctx[rxq2vq(i)] = true when !big_packets || mergeable_rx_bufs), and a queue
        # with contexts never goes indirect (vq->indirect = INDIRECT_DESC && !context). The
        # model's find_vqs takes no ctx list: the same decision, made here.
        for rq in vi.rq:
            rq.indirect = False
    vi.cvq = vqs[-1] if vp.has_feature(dev_net.VIRTIO_NET_F_CTRL_VQ) else None
    return 0


def virtnet_set_affinity(k: Kernel, vi: VirtnetInfo) -> None:
    """Spread the queue pairs over the online CPUs: pair i gets a group of ``stride`` CPUs
    (one more for the first ``stragglers``), its RX and TX interrupts that group as affinity
    hint (applied at their next interrupt on x86), its TX queue that group for XPS."""
    num_cpu = k.cpus
    pairs = vi.curr_queue_pairs
    stride = max(num_cpu // pairs, 1)
    stragglers = num_cpu % pairs if num_cpu >= pairs else 0
    cpu = 0  # cpumask_first(cpu_online_mask)
    for i in range(pairs):
        group = set()
        for _ in range(stride + (1 if i < stragglers else 0)):
            group.add(cpu)
            cpu = (cpu + 1) % num_cpu  # cpumask_next_wrap
        mask = frozenset(group)
        vp_set_vq_affinity(k, vi.vp, vi.rq[i], mask)
        vp_set_vq_affinity(k, vi.vp, vi.sq[i], mask)
        k.xps[f"tx-{i}"] = mask  # __netif_set_xps_queue(dev, mask, i, XPS_CPUS)
    vi.affinity_hint_set = True


def virtnet_clean_affinity(k: Kernel, vi: VirtnetInfo) -> None:
    """Take the hints back (virtnet_del_vqs, before the queues go): nothing is moved."""
    if not vi.affinity_hint_set:
        return
    for i in range(vi.max_queue_pairs):
        vp_set_vq_affinity(k, vi.vp, vi.rq[i], None)
        vp_set_vq_affinity(k, vi.vp, vi.sq[i], None)
    vi.affinity_hint_set = False


def vp_set_vq_affinity(k: Kernel, vp: VpDev, vq: VringVirtqueue, mask: frozenset[int] | None) -> int:
    """drivers/virtio/virtio_pci_common.c: the hint goes to the interrupt of the queue's
    MSI-X vector — its own, or the one every queue shares; a queue without callback has
    none (-EINVAL), nor has INTx."""
    if vq.callback is None:
        return -EINVAL
    if vp.msix_enabled:
        info = vp.vq_info.get(vq.index)
        desc = irq_desc_of(k, vp, info.msix_vector) if info is not None else None
        if desc is not None:
            irq_set_affinity_hint(k, desc, mask)
    return 0


# -- after DRIVER_OK: link, RX buffers, control commands, TX ------------------------------------------------
def virtnet_config_changed(k: Kernel, vp: VpDev) -> None:
    vi: VirtnetInfo = vp.priv
    if vi is not None and vp.has_feature(dev_net.VIRTIO_NET_F_STATUS):
        status = virtio_cread16(k, vp, CONFIG_OFFSET["status"])
        was_up = vi.link_up
        vi.link_up = bool(status & dev_net.VIRTIO_NET_S_LINK_UP)
        if vi.link_up and not was_up:
            virtnet_update_settings(k, vi)


def virtnet_update_settings(k: Kernel, vi: VirtnetInfo) -> None:
    """The link came up: speed (a 32-bit read) and duplex (a byte) from config when the
    device offers SPEED_DUPLEX (§5.1.4); values ethtool would reject are ignored."""
    vp = vi.vp
    if not vp.has_feature(dev_net.VIRTIO_NET_F_SPEED_DUPLEX):
        return
    speed = int.from_bytes(vp_get(k, vp, CONFIG_OFFSET["speed"], 4), "little")
    if speed <= 0x7FFFFFFF or speed == 0xFFFFFFFF:  # ethtool_validate_speed: ≤ INT_MAX or UNKNOWN
        vi.speed = speed
    duplex = vp_get(k, vp, CONFIG_OFFSET["duplex"], 1)[0]
    if duplex in (0x00, 0x01, 0xFF):  # ethtool_validate_duplex: half, full, unknown
        vi.duplex = duplex


def virtnet_open(k: Kernel, vi: VirtnetInfo) -> None:
    """ndo_open, then the RX mode __dev_open sets after it: every pair's NAPI enabled, the
    current ones' receive rings filled first (virtnet_enable_queue_pair)."""
    for i in range(vi.max_queue_pairs):
        if i < vi.curr_queue_pairs:
            try_fill_recv(k, vi, i)  # -ENOMEM would schedule refill work: not modelled
        virtnet_napi_enable(k, vi.rq[i], vi.rq_napi[i])
        virtnet_napi_tx_enable(k, vi, vi.sq[i], vi.sq_napi[i])
    vi.opened = True
    virtnet_set_rx_mode(k, vi)


def virtnet_close(k: Kernel, vi: VirtnetInfo) -> None:
    """ndo_stop (unregister_netdev of an up interface): every pair's NAPI disabled, TX first
    (virtnet_disable_queue_pair). Guest state only, no device access."""
    if not vi.opened:
        return
    for i in range(vi.max_queue_pairs):
        if vi.sq_napi[i].weight:
            napi_disable(k, vi.sq_napi[i])  # virtnet_napi_tx_disable
        napi_disable(k, vi.rq_napi[i])
    vi.opened = False


def virtnet_napi_enable(k: Kernel, vq: VringVirtqueue, napi: Napi) -> None:
    """napi_enable, then one poll at once: buffers the device filled before NAPI was on gave
    an interrupt nobody could act on, and there will be no other (the poll runs at
    local_bh_enable)."""
    napi_enable(napi)
    local_bh_disable(k)
    virtqueue_napi_schedule(k, napi, vq)
    local_bh_enable(k)


def virtnet_napi_tx_enable(k: Kernel, vi: VirtnetInfo, vq: VringVirtqueue, napi: Napi) -> None:
    """TX NAPI only where it is likely on the transmitting CPU: with affinity hints set
    (virtnet_set_affinity); else its weight goes to 0 and TX runs without it."""
    if not napi.weight:
        return
    if not vi.affinity_hint_set:
        napi.weight = 0
        return
    virtnet_napi_enable(k, vq, napi)


def virtqueue_napi_schedule(k: Kernel, napi: Napi, vq: VringVirtqueue) -> None:
    """Callbacks off while the poll is scheduled (only when this call scheduled it)."""
    state = napi.state
    if not state & (NAPIF_STATE_SCHED | NAPIF_STATE_DISABLE):  # napi_schedule_prep, inline
        napi.state = state | NAPIF_STATE_SCHED
        vq.disable_cb()
        k.poll_list[k.this_cpu].append(napi)  # __napi_schedule, inline
    else:
        napi_schedule_prep(napi)  # refused: it sets MISSED when scheduled


def virtqueue_napi_complete(k: Kernel, napi: Napi, vq: VringVirtqueue, processed: int) -> None:
    """Callbacks on again (enable_cb_prepare) and NAPI done; buffers used meanwhile
    (virtqueue_poll) schedule another poll rather than wait for an interrupt that may not
    come. Not done (an interrupt came during the poll: scheduled again): callbacks off."""
    opaque = vq.enable_cb_prepare()
    if napi_complete_done(k, napi, processed):
        if vq.poll(opaque):
            virtqueue_napi_schedule(k, napi, vq)
    else:
        vq.disable_cb()


def virtnet_set_rx_layout(vi: VirtnetInfo) -> None:
    """virtnet_probe's choice of receive buffers: mergeable with MRG_RXBUF; else big ones
    (virtnet_set_big_packets) when the device may send guest GSO packets or the MTU exceeds
    ETH_DATA_LEN, small ones otherwise. The header is virtio_net_hdr_mrg_rxbuf (12 bytes)
    with MRG_RXBUF or VERSION_1, the legacy 10-byte one without (§5.1.6)."""
    vp = vi.vp
    vi.mergeable_rx_bufs = vp.has_feature(dev_net.VIRTIO_NET_F_MRG_RXBUF)
    modern = vp.has_feature(dev_net.VIRTIO_F_VERSION_1)
    vi.hdr_len = HDR_LEN if vi.mergeable_rx_bufs or modern else dev_net.HDR_LEN_LEGACY
    mtu = vi.mtu if vp.has_feature(dev_net.VIRTIO_NET_F_MTU) else 0
    guest_gso = any(vp.has_feature(b) for b in GUEST_GSO_FEATURES)
    if mtu > 1500 or guest_gso:
        vi.big_packets = True
        vi.big_packets_num_skbfrags = MAX_SKB_FRAGS if guest_gso else -(-mtu // RX_PAGE)


def _rx_buffer(k: Kernel, vi: VirtnetInfo) -> tuple[list[tuple[int, int]], Any]:
    """One receive buffer as (device-writable segments, token); MemoryError when out of RAM.
    A big buffer's segments go into one indirect table when RING_INDIRECT_DESC is negotiated
    (the ring's add_sgs decides, as virtqueue_add_split does), else a direct chain."""
    if vi.mergeable_rx_bufs:
        buf = k.pages.alloc(RX_BUF_SIZE, align=64)
        return [(buf, RX_BUF_SIZE)], buf
    if not vi.big_packets:  # add_recvbuf_small
        size = vi.hdr_len + GOOD_PACKET_LEN
        buf = k.pages.alloc(size, align=64)
        return [(buf, size)], buf
    pages: list[int] = []  # add_recvbuf_big: the first page, then the list of the others
    try:
        for _ in range(vi.big_packets_num_skbfrags + 1):
            pages.append(k.pages.alloc(RX_PAGE, align=RX_PAGE))
    except MemoryError:
        for page in pages:
            k.pages.free(page)
        raise
    first = pages[0]
    sgs = [(first, vi.hdr_len), (first + PADDED_VNET_HDR, RX_PAGE - PADDED_VNET_HDR)]
    return sgs + [(page, RX_PAGE) for page in pages[1:]], tuple(pages)


def _free_rx(k: Kernel, token: Any) -> None:
    for buf in token if isinstance(token, tuple) else (token,):
        k.pages.free(buf)


def _rx_frame(k: Kernel, vi: VirtnetInfo, token: Any, length: int) -> bytes:
    """The frame a used receive buffer holds (its ``length`` bytes, header stripped)."""
    if not isinstance(token, tuple):
        return k.memory.read(token, min(length, RX_BUF_SIZE))[vi.hdr_len :]
    data = b""
    left = max(length - vi.hdr_len, 0)
    segments = [(token[0] + PADDED_VNET_HDR, RX_PAGE - PADDED_VNET_HDR)]
    segments += [(page, RX_PAGE) for page in token[1:]]
    for addr, size in segments:
        if left <= 0:
            break
        data += k.memory.read(addr, min(size, left))
        left -= size
    return data


def try_fill_recv(k: Kernel, vi: VirtnetInfo, i: int) -> int:
    rq = vi.rq[i]
    added = 0
    mergeable, alloc = vi.mergeable_rx_bufs, k.pages.alloc
    while rq.free:
        try:
            if mergeable:  # _rx_buffer's first case, inline
                token = alloc(RX_BUF_SIZE, align=64)
                sgs = [(token, RX_BUF_SIZE)]
            else:
                sgs, token = _rx_buffer(k, vi)
        except MemoryError:
            # -ENOMEM: post what we have; the kernel retries from its refill work later.
            vi.rx_oom += 1
            break
        if rq.add_sgs([], sgs, token):
            _free_rx(k, token)
            break
        added += 1
    if added:
        rq.kick()
    return added


def virtnet_send_command(k: Kernel, vi: VirtnetInfo, cls: int, cmd: int, payload: bytes) -> bool:
    cvq = vi.cvq
    if cvq is None:
        return False
    if not vi.ctrl_buf:
        vi.ctrl_buf = k.pages.alloc(64, align=64)
    hdr = vi.ctrl_buf
    k.memory.write(hdr, bytes([cls, cmd]) + payload)
    status = hdr + 48
    k.memory.write(status, b"\xff")
    out = [(hdr, 2)] + ([(hdr + 2, len(payload))] if payload else [])
    if cvq.add_sgs(out, [(status, 1)], hdr):
        return False
    cvq.kick()
    # Spin for the answer: the kick traps into the device, which answers at once.
    for _ in range(1000):
        if cvq.get_buf() is not None or cvq.broken:
            break
    ack = k.memory.read(status, 1)[0]
    vi.ctrl_results.append((cls, cmd, ack))
    return ack == dev_net.VIRTIO_NET_OK


def virtnet_set_rx_mode(k: Kernel, vi: VirtnetInfo) -> None:
    vp = vi.vp
    if not vp.has_feature(dev_net.VIRTIO_NET_F_CTRL_RX):
        return
    virtnet_send_command(k, vi, dev_net.CTRL_RX, 0, b"\x00")  # PROMISC off
    virtnet_send_command(k, vi, dev_net.CTRL_RX, 1, b"\x00")  # ALLMULTI off
    # MAC_TABLE_SET: no extra unicast, one multicast (IPv6 all-nodes, as an up interface has).
    table = struct.pack("<I", 0) + struct.pack("<I", 1) + bytes.fromhex("333300000001")
    virtnet_send_command(k, vi, dev_net.CTRL_MAC, 0, table)


def netdev_pick_tx(k: Kernel, vi: VirtnetInfo, cpu: int) -> int:
    """net/core/dev.c get_xps_queue: the TX queue whose XPS CPUs hold the sending CPU
    (virtnet_set_affinity gives each CPU one); queue 0 when XPS names none."""
    for i in range(vi.curr_queue_pairs):
        if cpu in k.xps.get(f"tx-{i}", ()):
            return i
    return 0


def vp_any_header_sg(vi: VirtnetInfo) -> bool:
    """virtnet_probe's vi->any_header_sg."""
    return vi.vp.has_feature(dev_net.VIRTIO_F_ANY_LAYOUT) or vi.vp.has_feature(
        dev_net.VIRTIO_F_VERSION_1
    )


def dev_queue_xmit(k: Kernel, vi: VirtnetInfo, frame: bytes, qp: int = 0) -> bool:
    """The stack's way into start_xmit (__dev_queue_xmit): bottom halves off around it
    (rcu_read_lock_bh), so the NAPI polls the kick's interrupts schedule run when it
    returns (local_bh_enable), not inside it. A stopped queue takes nothing (the qdisc would
    hold the frame: not modelled, counted as dropped)."""
    if vi.tx_stopped and vi.tx_stopped[qp]:
        vi.tx_dropped += 1
        return False
    k.softirq_count[k.this_cpu] += 1  # local_bh_disable, inline (every frame)
    owners = vi.tx_lock_owner
    if owners:
        owners[qp] = k.this_cpu  # HARD_TX_LOCK (sch_direct_xmit)
    try:
        sent = start_xmit(k, vi, frame, qp)
    finally:
        if owners:
            owners[qp] = None
        cpu = k.this_cpu
        if k.softirq_count[cpu] > 1 or not k.poll_list[cpu]:
            k.softirq_count[cpu] -= 1  # local_bh_enable with nothing to run, inline
        else:
            local_bh_enable(k)
    return sent


def start_xmit(k: Kernel, vi: VirtnetInfo, frame: bytes, qp: int = 0, more: bool = False) -> bool:
    """``more``: netdev_xmit_more(), another frame follows at once: no kick, and with TX NAPI
    no re-enabling of callbacks for this one."""
    sq = vi.sq[qp]
    use_napi = bool(vi.sq_napi) and vi.sq_napi[qp].weight != 0
    kick = not more
    # Free what the device has sent; with TX NAPI, callbacks off meanwhile and back on with
    # enable_cb_delayed, again while the device has already passed its 3/4 mark (bounded:
    # each round frees what was used, and the ring holds at most sq.num).
    for _ in range(sq.num + 1):
        if use_napi:
            sq.disable_cb()
        free_old_xmit_skbs(k, vi, qp)
        if not (use_napi and kick and not sq.enable_cb_delayed()):
            break
    hdr_len = vi.hdr_len
    try:
        buf = k.pages.alloc(hdr_len + len(frame), align=64)
    except MemoryError:
        vi.tx_dropped += 1  # no memory for the skb: the stack drops the frame
        return False
    k.memory.write(buf, bytes(hdr_len) + frame)
    # xmit_skb: the header pushed in front of the frame (one segment) when the device takes
    # any layout (ANY_LAYOUT or VERSION_1, vi->any_header_sg); else a segment of its own.
    any_header_sg = vi.any_header_sg
    if any_header_sg is None:  # a VirtnetInfo virtnet_probe did not set up
        any_header_sg = vp_any_header_sg(vi)
    if any_header_sg:
        out = [(buf, hdr_len + len(frame))]
    else:
        out = [(buf, hdr_len), (buf + hdr_len, len(frame))]
    if sq.add_sgs(out, [], buf):
        k.pages.free(buf)  # "Unexpected TXQ queue failure": the skb is dropped
        vi.tx_dropped += 1
        return False
    vi.tx_packets += 1
    if vi.capture is not None:
        vi.capture(frame, True)
    stopped = False
    if sq.num_free < 2 + MAX_SKB_FRAGS:
        # Nearly full: stop the queue until completions make room (netif_stop_subqueue),
        # and ask for an interrupt when 3/4 of what is outstanding is sent.
        stopped = _netif_stop_subqueue(vi, qp)
        if use_napi:
            if not sq.enable_cb_delayed():
                virtqueue_napi_schedule(k, vi.sq_napi[qp], sq)
        elif not sq.enable_cb_delayed():
            free_old_xmit_skbs(k, vi, qp)  # more just got used: free them, then recheck
            if sq.num_free >= 2 + MAX_SKB_FRAGS:
                _netif_wake_subqueue(vi, qp)
                stopped = False
                sq.disable_cb()
    if kick or stopped:
        sq.kick()
    return True


def _netif_stop_subqueue(vi: VirtnetInfo, qp: int) -> bool:
    if vi.tx_stopped:
        vi.tx_stopped[qp] = True
    return True


def _netif_wake_subqueue(vi: VirtnetInfo, qp: int) -> None:
    if vi.tx_stopped:
        vi.tx_stopped[qp] = False


def free_old_xmit_skbs(k: Kernel, vi: VirtnetInfo, qp: int) -> None:
    """Free every skb the device has finished sending (napi_consume_skb); bounded by the
    ring: get_buf gives each buffer back once."""
    get_buf, free = vi.sq[qp].get_buf, k.pages.free
    while (used := get_buf()) is not None:
        free(used[0])
        vi.tx_completed += 1


def skb_xmit_done(k: Kernel, vi: VirtnetInfo, qp: int, vq: Any = None) -> None:
    """The TX interrupt: callbacks off; the TX poll scheduled (TX NAPI), else the queue woken
    for start_xmit to reap the completions."""
    sq = vi.sq[qp]
    sq.disable_cb()
    napi = vi.sq_napi[qp] if vi.sq_napi else None
    if napi is not None and napi.weight:
        virtqueue_napi_schedule(k, napi, sq)
    else:
        _netif_wake_subqueue(vi, qp)


def virtnet_poll_tx(k: Kernel, vi: VirtnetInfo, qp: int, napi: Napi, budget: int) -> int:
    """The TX poll: free the completions with callbacks off, wake the queue when there is
    room, callbacks on and NAPI done; completions that came meanwhile schedule it again.
    Reports no work (TX is not counted against the budget). Linux spins on the TX queue's
    lock (__netif_tx_lock) when another CPU holds it; here that CPU is in its kick, the last
    thing start_xmit does to the ring, so running now is what running after it would do."""
    sq = vi.sq[qp]
    sq.disable_cb()
    free_old_xmit_skbs(k, vi, qp)
    if sq.num_free >= 2 + MAX_SKB_FRAGS and vi.tx_stopped:
        vi.tx_stopped[qp] = False  # netif_tx_wake_queue
    opaque = sq.enable_cb_prepare()
    done = napi_complete_done(k, napi, 0)
    if not done:
        sq.disable_cb()
    elif sq.poll(opaque) and napi_schedule_prep(napi):
        sq.disable_cb()
        __napi_schedule(k, napi)
    return 0


def virtnet_poll_cleantx(k: Kernel, vi: VirtnetInfo, qp: int, budget: int) -> None:
    """From the RX poll: reap the paired TX queue's completions too (TX NAPI only), callbacks
    re-enabled delayed, again while the device is past the mark (bounded as start_xmit's).
    Only when __netif_tx_trylock gets the TX queue's lock: not while another CPU is in
    start_xmit on it (with one CPU the lock is always free here: start_xmit runs with
    bottom halves off)."""
    napi = vi.sq_napi[qp] if vi.sq_napi else None
    if napi is None or not napi.weight:
        return
    if vi.tx_lock_owner and vi.tx_lock_owner[qp] is not None:
        return  # __netif_tx_trylock failed: the holder's next start_xmit frees them
    sq = vi.sq[qp]
    for _ in range(sq.num + 1):
        sq.disable_cb()
        free_old_xmit_skbs(k, vi, qp)
        if sq.enable_cb_delayed():
            break
    if sq.num_free >= 2 + MAX_SKB_FRAGS and vi.tx_stopped:
        vi.tx_stopped[qp] = False  # netif_tx_wake_queue


def skb_recv_done(k: Kernel, vi: VirtnetInfo, qp: int, vq: Any = None) -> None:
    """The RX interrupt: schedule the RX poll (callbacks off until it completes)."""
    virtqueue_napi_schedule(k, vi.rq_napi[qp], vi.rq[qp])


def virtnet_poll(k: Kernel, vi: VirtnetInfo, qp: int, napi: Napi, budget: int) -> int:
    """The RX poll: callbacks off, the paired TX queue cleaned, up to ``budget`` frames
    received; fewer than the budget: done (virtqueue_napi_complete), else NAPI polls again."""
    rq = vi.rq[qp]
    if budget:
        rq.disable_cb()
    virtnet_poll_cleantx(k, vi, qp, budget)
    received = virtnet_receive(k, vi, qp, budget)
    if received < budget:
        virtqueue_napi_complete(k, napi, rq, received)
    return received


def virtnet_receive(k: Kernel, vi: VirtnetInfo, qp: int, budget: int) -> int:
    """At most ``budget`` used RX buffers: each frame handed up, its buffer freed; the ring
    refilled only once more than half of min(budget, ring size) is free."""
    rq = vi.rq[qp]
    got = 0
    get_buf, read, free, hdr_len = rq.get_buf, k.memory.read, k.pages.free, vi.hdr_len
    while got < budget and (used := get_buf()) is not None:
        buf, length = used
        if type(buf) is int:
            # One buffer (mergeable or small): _rx_frame and _free_rx inline.
            frame = read(buf, min(length, RX_BUF_SIZE))[hdr_len:]
            free(buf)  # the page goes with the skb up the stack and is freed there
        else:
            frame = _rx_frame(k, vi, buf, length)
            _free_rx(k, buf)
        vi.received.append(frame)
        vi.rx_packets += 1
        if vi.capture is not None:
            vi.capture(frame, False)
        got += 1
    if rq.num_free > min(budget, rq.num) // 2:
        try_fill_recv(k, vi, qp)  # -ENOMEM would schedule refill work: not modelled
    return got


def virtnet_remove(k: Kernel, vp: VpDev) -> None:
    """Reset the device, free the buffers it still held, then give back every queue and
    interrupt (remove_vq_common)."""
    if vp.priv is not None:
        virtnet_close(k, vp.priv)  # unregister_netdev: the interface goes down first
    vp_reset(k, vp)
    free_unused_bufs(k, vp.priv)
    virtnet_del_vqs(k, vp)


def free_unused_bufs(k: Kernel, vi: VirtnetInfo | None) -> None:
    """After reset the device owns nothing: free the TX skbs and RX pages still posted. Guest
    memory only, no device access."""
    if vi is None:
        return
    for vq in (*vi.sq, *vi.rq):
        while (buf := vq.detach_unused_buf()) is not None:
            _free_rx(k, buf)


def virtnet_del_vqs(k: Kernel, vp: VpDev) -> None:
    if vp.priv is not None:
        virtnet_clean_affinity(k, vp.priv)
    vp_del_vqs(k, vp)


VIRTIO_NET_DRIVER = VirtioDriver(
    name="virtio_net",
    device_id=1,
    feature_table=VIRTNET_FEATURES,
    # features_legacy: a device without VERSION_1 also gets GSO and ANY_LAYOUT.
    feature_table_legacy=(*VIRTNET_FEATURES, dev_net.VIRTIO_NET_F_GSO,
                          dev_net.VIRTIO_F_ANY_LAYOUT),  # fmt: skip
    probe=virtnet_probe,
    remove=virtnet_remove,
    validate=virtnet_validate,
    config_changed=virtnet_config_changed,
)

__all__ = ["VIRTIO_NET_DRIVER", "VirtnetInfo", "del_vq", "dev_queue_xmit", "start_xmit",
           "virtnet_open"]
