"""virtio-net (virtio 1.2 §5.1), with QEMU 7.2's defaults for ``-device virtio-net-pci``.

Host features are what QEMU 7.2 offers with a ``-netdev user`` peer, read from the real QEMU
(device_feature windows 0 and 1 of the modern interface): 0x0000010130bf8024 — MAC,
CTRL_GUEST_OFFLOADS, MRG_RXBUF, STATUS, CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA,
GUEST_ANNOUNCE, CTRL_MAC_ADDR, INDIRECT_DESC, EVENT_IDX, VERSION_1, RING_RESET. The user-mode
peer has no vnet header, so no checksum or segmentation offloads are offered. MQ is offered
when there is more than one queue pair (QEMU's ``mq=on``), RING_PACKED with ``packed=True``
(QEMU's ``packed=on``).
"""

from __future__ import annotations

import struct
from collections import deque

from .backends import NetBackend, NullBackend
from .device import (
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_NOTIFY_ON_EMPTY,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
)
from .memory import GuestMemoryError, Memory
from .queue import Element, VirtQueue, VirtqueueError, scatter_chains

# Feature bits (§5.1.3).
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GSO = 6
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_CTRL_VLAN = 19
VIRTIO_NET_F_CTRL_RX_EXTRA = 20
VIRTIO_NET_F_GUEST_ANNOUNCE = 21
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_CTRL_MAC_ADDR = 23
VIRTIO_NET_F_NOTF_COAL = 53  # Linux 6.1 offers it; QEMU 7.2 does not
VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_NET_F_RSS = 60
VIRTIO_NET_F_RSC_EXT = 61
VIRTIO_NET_F_STANDBY = 62
VIRTIO_NET_F_SPEED_DUPLEX = 63

FEATURE_NAMES = {
    VIRTIO_NET_F_CSUM: "CSUM",
    VIRTIO_NET_F_GUEST_CSUM: "GUEST_CSUM",
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS: "CTRL_GUEST_OFFLOADS",
    VIRTIO_NET_F_MTU: "MTU",
    VIRTIO_NET_F_MAC: "MAC",
    VIRTIO_NET_F_GSO: "GSO",
    VIRTIO_NET_F_GUEST_TSO4: "GUEST_TSO4",
    VIRTIO_NET_F_GUEST_TSO6: "GUEST_TSO6",
    VIRTIO_NET_F_GUEST_ECN: "GUEST_ECN",
    VIRTIO_NET_F_GUEST_UFO: "GUEST_UFO",
    VIRTIO_NET_F_HOST_TSO4: "HOST_TSO4",
    VIRTIO_NET_F_HOST_TSO6: "HOST_TSO6",
    VIRTIO_NET_F_HOST_ECN: "HOST_ECN",
    VIRTIO_NET_F_HOST_UFO: "HOST_UFO",
    VIRTIO_NET_F_MRG_RXBUF: "MRG_RXBUF",
    VIRTIO_NET_F_STATUS: "STATUS",
    VIRTIO_NET_F_CTRL_VQ: "CTRL_VQ",
    VIRTIO_NET_F_CTRL_RX: "CTRL_RX",
    VIRTIO_NET_F_CTRL_VLAN: "CTRL_VLAN",
    VIRTIO_NET_F_CTRL_RX_EXTRA: "CTRL_RX_EXTRA",
    VIRTIO_NET_F_GUEST_ANNOUNCE: "GUEST_ANNOUNCE",
    VIRTIO_NET_F_MQ: "MQ",
    VIRTIO_NET_F_CTRL_MAC_ADDR: "CTRL_MAC_ADDR",
    VIRTIO_NET_F_HASH_REPORT: "HASH_REPORT",
    VIRTIO_NET_F_RSS: "RSS",
    VIRTIO_NET_F_RSC_EXT: "RSC_EXT",
    VIRTIO_NET_F_STANDBY: "STANDBY",
    VIRTIO_NET_F_SPEED_DUPLEX: "SPEED_DUPLEX",
    VIRTIO_F_NOTIFY_ON_EMPTY: "NOTIFY_ON_EMPTY",
    VIRTIO_F_ANY_LAYOUT: "ANY_LAYOUT",
    VIRTIO_F_INDIRECT_DESC: "RING_INDIRECT_DESC",
    VIRTIO_F_EVENT_IDX: "RING_EVENT_IDX",
    VIRTIO_F_VERSION_1: "VERSION_1",
    33: "ACCESS_PLATFORM",
    34: "RING_PACKED",
    35: "IN_ORDER",
    36: "ORDER_PLATFORM",
    37: "SR_IOV",
    38: "NOTIFICATION_DATA",
    VIRTIO_F_RING_RESET: "RING_RESET",
}


def feature_names(features: int) -> list[str]:
    return [FEATURE_NAMES.get(b, f"bit{b}") for b in range(64) if features >> b & 1]


def _bits(*bits: int) -> int:
    v = 0
    for b in bits:
        v |= 1 << b
    return v


QEMU_72_USER_NETDEV_FEATURES = _bits(
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_VERSION_1,
    VIRTIO_F_RING_RESET,
)
assert QEMU_72_USER_NETDEV_FEATURES == 0x0000010130BF8024

# With a peer that has a vnet header (``-netdev tap``, vnet_hdr on by default) QEMU 7.2 keeps the
# checksum and segmentation offloads virtio_net_get_features clears otherwise (UFO only when the
# TAP accepts it: peer_has_ufo). Read from the real QEMU over qtest with a TAP in a private
# network namespace: 0x0000010130BFFFA7 (MQ stays off: QEMU's mq property defaults to off).
TAP_VNET_OFFLOADS = _bits(
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_UFO,
)
UFO_BITS = _bits(VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO)
QEMU_72_TAP_VNET_FEATURES = QEMU_72_USER_NETDEV_FEATURES | TAP_VNET_OFFLOADS
assert QEMU_72_TAP_VNET_FEATURES == 0x0000010130BFFFA7
# The guest offloads a driver may switch (§5.1.6.5.6.1), as QEMU's
# virtio_net_guest_offloads_by_features: the GUEST_* checksum and segmentation bits.
GUEST_OFFLOAD_BITS = _bits(
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_UFO,
)


def qemu_features_for(backend: object) -> int:
    """QEMU 7.2's host features for ``-device virtio-net-pci`` with this peer."""
    if not getattr(backend, "vnet_hdr", False):
        return QEMU_72_USER_NETDEV_FEATURES
    if not getattr(backend, "has_ufo", False):
        return QEMU_72_TAP_VNET_FEATURES & ~UFO_BITS
    return QEMU_72_TAP_VNET_FEATURES


# Config layout (§5.1.4), and which feature makes each field exist (QEMU's feature_sizes).
CONFIG_FIELDS = (
    ("mac", 0, 6, VIRTIO_NET_F_MAC),
    ("status", 6, 2, VIRTIO_NET_F_STATUS),
    ("max_virtqueue_pairs", 8, 2, VIRTIO_NET_F_MQ),
    ("mtu", 10, 2, VIRTIO_NET_F_MTU),
    ("speed", 12, 4, VIRTIO_NET_F_SPEED_DUPLEX),
    ("duplex", 16, 1, VIRTIO_NET_F_SPEED_DUPLEX),
)
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2

# Control queue (§5.1.6.5).
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
CTRL_RX, CTRL_MAC, CTRL_VLAN, CTRL_ANNOUNCE, CTRL_MQ, CTRL_GUEST_OFFLOADS = 0, 1, 2, 3, 4, 5
CTRL_CLASS_NAMES = {0: "RX", 1: "MAC", 2: "VLAN", 3: "ANNOUNCE", 4: "MQ", 5: "GUEST_OFFLOADS"}

_U16 = struct.Struct("<H")
_ZERO10 = bytes(10)
_HDR_ONE_BUFFER = _ZERO10 + _U16.pack(1)  # the 12-byte header: flags 0, GSO_NONE, num_buffers 1
RX_QUEUE_SIZE = 256
TX_QUEUE_SIZE = 256
# QEMU's TX_BURST (x-txburst's default): chains one TX flush serves before it reschedules.
TX_BURST = 256
# A flush here ends after this many chains whatever x-txburst says (QEMU's int32 would let a
# guest that re-posts as fast as we serve hold one flush for ever): the event loop must come
# back to its deadline. The rest is served on the next pass, as a rescheduled bottom half.
TX_BURST_MAX = 4 * 1024
CTRL_QUEUE_SIZE = 64
HDR_LEN = 12  # struct virtio_net_hdr_v1 (VERSION_1 or MRG_RXBUF)
HDR_LEN_LEGACY = 10
MAX_FRAME = 65535 + 14
CTRL_LOG_MAX = 256
CTRL_MAX_COMMAND = 65536  # most of a control command read whole (QEMU has none; for memory)
CTRL_LOG_PAYLOAD = 64  # bytes of each command's payload kept in ctrl_log
MAC_TABLE_ENTRIES = 64  # QEMU's filter table; more set the overflow flags (accept all)
SPEED_UNKNOWN = -1  # config speed/duplex when not set (§5.1.4: 0xffffffff / 0xff)
DUPLEX_UNKNOWN = 0xFF



def _hdr_len(driver_features: int) -> int:
    """The virtio-net header the driver uses: 12 bytes with VERSION_1 or MRG_RXBUF, else the
    legacy 10 (§5.1.6)."""
    if (driver_features >> VIRTIO_F_VERSION_1 | driver_features >> VIRTIO_NET_F_MRG_RXBUF) & 1:
        return HDR_LEN
    return HDR_LEN_LEGACY

class VirtioNet(VirtioDevice):
    device_id = 1
    name = "virtio-net"
    # QEMU's legacy_features for virtio-net: GSO besides the core's two (virtio_net_class_init).
    legacy_only_features = _bits(VIRTIO_NET_F_GSO, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_ANY_LAYOUT)

    def __init__(
        self,
        queue_pairs: int = 1,
        mac: bytes = bytes.fromhex("525400123456"),
        backend: NetBackend | None = None,
        mtu: int | None = None,
        host_features: int | None = None,
        *,
        legacy_features: int | None = None,
        ctrl_queue: bool | None = None,
        rx_queue_size: int = RX_QUEUE_SIZE,
        tx_queue_size: int = TX_QUEUE_SIZE,
        speed: int = SPEED_UNKNOWN,
        duplex: int = DUPLEX_UNKNOWN,
        packed: bool = False,
        tx_burst: int = TX_BURST,
    ) -> None:
        """QEMU's virtio-net with ``queue_pairs`` pairs. ``host_features`` None: QEMU's
        default set for this ``backend`` (MQ with more than one pair, MTU with ``mtu``);
        otherwise exactly those bits (virtio/devspec.py computes them from -device
        properties). ``ctrl_queue`` None: a control queue when CTRL_VQ is offered; QEMU itself
        always adds it (True), whatever ctrl_vq says. ``legacy_features``: the bits only the
        legacy interface shows (QEMU's legacy_features: GSO, NOTIFY_ON_EMPTY, ANY_LAYOUT).
        ``packed``: offer VIRTIO_F_RING_PACKED (the ring itself is the queue's). ``tx_burst``:
        QEMU's x-txburst, TX chains served per kick (at least 1) before the rest waits for
        the next pass."""
        if len(mac) != 6:
            raise ValueError("a MAC address has 6 bytes")
        if not 1 <= queue_pairs <= 0x8000:
            raise ValueError("queue_pairs must be 1..32768")
        if host_features is None:
            features = qemu_features_for(backend)
            if queue_pairs > 1:
                features |= 1 << VIRTIO_NET_F_MQ
            if mtu is not None:
                features |= 1 << VIRTIO_NET_F_MTU
        else:
            features = host_features
        if packed:
            # QEMU's packed=on (a property of every virtio device, off by default): offer
            # VIRTIO_F_RING_PACKED; the queues go packed when the driver takes it.
            features |= 1 << VIRTIO_F_RING_PACKED
        if legacy_features is not None:
            self.legacy_only_features = legacy_features
        # QEMU starts with one pair (and the control queue after it) and adds the others when
        # the driver accepts MQ (virtio_net_set_multiqueue → change_num_queue_pairs; measured
        # through qtest: num_queues 3 → 5 at the driver_feature write, back to 3 at reset).
        self._pair_sizes = [rx_queue_size, tx_queue_size]
        sizes = list(self._pair_sizes)
        self.active_pairs = 1
        if ctrl_queue is None:
            ctrl_queue = bool(features >> VIRTIO_NET_F_CTRL_VQ & 1)
        self.has_ctrl_queue = ctrl_queue
        if ctrl_queue:
            sizes.append(CTRL_QUEUE_SIZE)
        # Config length: up to the last field whose feature is offered (never less than mac).
        config_len = 6
        for _name, off, size, bit in CONFIG_FIELDS:
            if features >> bit & 1:
                config_len = max(config_len, off + size)
        super().__init__(sizes, features | self.legacy_only_features, config_len)
        self.host_features = features
        self.queue_pairs = queue_pairs
        self.mac = bytearray(mac)
        self.default_mac = bytes(mac)
        self.mtu = mtu or 1500
        # Config fields as QEMU fills them: mtu is host_mtu (0 unless given), speed/duplex
        # SPEED_UNKNOWN/DUPLEX_UNKNOWN unless given.
        self.config_mtu = mtu or 0
        self.speed = speed
        self.duplex = duplex
        self.backend: NetBackend = backend if backend is not None else NullBackend()
        # Frames cross the backend with their virtio-net header (a TAP with IFF_VNET_HDR).
        self.vnet = bool(getattr(self.backend, "vnet_hdr", False))
        self.link_up = True
        self.stats = {
            "tx_frames": 0,
            "rx_frames": 0,
            "tx_bytes": 0,
            "rx_bytes": 0,
            "rx_no_buffer": 0,  # frames that had to wait for receive buffers
        }
        # Recent control commands (class name, cmd, payload, ack); bounded: a guest may send
        # commands for ever.
        self.ctrl_log: deque[tuple[str, int, bytes, int]] = deque(maxlen=CTRL_LOG_MAX)
        # A frame taken from the backend that waits for receive buffers. It survives a device
        # reset and is delivered to the next driver, as QEMU keeps a netdev's queued packets.
        self._held: bytes | None = None
        # A multi-queue peer (a backend with ``queues`` > 1, as a multi-queue TAP): QEMU gives
        # each queue pair its own subqueue of the peer, so pair i transmits to peer queue i and
        # receive queue i takes the frames of peer queue i. Frames waiting per pair (pair 0's
        # is ``_held``) and the pair being served.
        self._held_pairs: dict[int, bytes | None] = {}
        self._rx_pair = 0
        # Queues whose last service stopped at its per-call bound with chains still available
        # (a guest may add buffers as fast as we consume them): poll() comes back to them, as
        # QEMU's TX bottom half reschedules itself after tx_burst packets.
        self.backlog: set[int] = set()
        self.tx_burst = max(1, min(tx_burst, TX_BURST_MAX))
        self._reset_net_state()

    # -- state -------------------------------------------------------------------------------------
    def _reset_net_state(self) -> None:
        self.curr_queue_pairs = 1
        self.promisc = True
        self.allmulti = False
        self.mac_table: list[bytes] = []
        self.uni_overflow = False
        self.multi_overflow = False
        self.vlans: set[int] = set()
        self.guest_offloads = 0

    def reset(self) -> None:
        super().reset()
        self._set_multiqueue(False)
        self.backlog.clear()
        self.mac[:] = self.default_mac
        self._reset_net_state()

    def counters(self) -> dict[str, int]:
        rx_dropped = sum(n for r, n in self.dropped.items() if r.startswith("rx_"))
        tx_dropped = sum(n for r, n in self.dropped.items() if r.startswith("tx_"))
        return {
            **self.stats,
            "rx_dropped": rx_dropped,
            "tx_dropped": tx_dropped,
            "rx_held": int(self._held is not None),
            "backlog_queues": len(self.backlog),
            **self._backend_counters(),
        }

    def _backend_counters(self) -> dict[str, int]:
        """Frames the backend itself lost (a loopback queue full, ...), so that a health
        view shows every drop, not only the device's."""
        dropped = getattr(self.backend, "dropped", None)
        return {"backend_dropped": dropped} if isinstance(dropped, int) else {}

    def _set_multiqueue(self, on: bool) -> None:
        """QEMU's virtio_net_change_num_queue_pairs: keep the pairs both layouts share, drop or
        add the others, and put a fresh control queue last."""
        pairs = self.queue_pairs if on else 1
        if pairs == self.active_pairs:
            return
        kept = self.queues[: 2 * min(pairs, self.active_pairs)]
        added = [VirtQueue(i, self._pair_sizes[i % 2]) for i in range(len(kept), 2 * pairs)]
        ctrl = [VirtQueue(2 * pairs, CTRL_QUEUE_SIZE)] if self.has_ctrl_queue else []
        self.queues = kept + added + ctrl
        self.active_pairs = pairs
        self.backlog = {i for i in self.backlog if i < len(kept)}

    def set_driver_features(self, features: int) -> None:
        self._set_multiqueue(bool((features & self.host_features) >> VIRTIO_NET_F_MQ & 1))
        super().set_driver_features(features)
        for q in self.queues:
            q.event_idx = bool(self.driver_features >> VIRTIO_F_EVENT_IDX & 1)

    @property
    def queue_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """virtio_net's virtqueue names (virtnet_find_vqs): input.N, output.N, then control,
        for the queues the device has now (one pair until the driver accepts MQ)."""
        pairs = tuple(f"{k}.{i}" for i in range(self.active_pairs) for k in ("input", "output"))
        return pairs + (("control",) if self.ctrl_index is not None else ())

    @property
    def ctrl_index(self) -> int | None:
        if self.has_ctrl_queue:
            return 2 * self.active_pairs
        return None

    @property
    def hdr_len(self) -> int:
        return _hdr_len(self.driver_features)

    # -- config space ------------------------------------------------------------------------------
    def _config_bytes(self) -> bytes:
        status = VIRTIO_NET_S_LINK_UP if self.link_up else 0
        raw = bytes(self.mac) + struct.pack(
            "<HHHIB",
            status,
            self.queue_pairs,
            self.config_mtu,
            self.speed & 0xFFFFFFFF,
            self.duplex,
        )
        return raw[: self.config_len]

    def config_read(self, offset: int, size: int) -> int:
        raw = self._config_bytes()
        if offset < 0 or offset + size > len(raw):
            return (1 << (8 * size)) - 1
        return int.from_bytes(raw[offset : offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        # The MAC is writable through config space only for legacy drivers that did not
        # negotiate CTRL_MAC_ADDR and not VERSION_1 (§5.1.4.2 / QEMU virtio_net_set_config).
        if offset + size > 6 or self.has_feature(VIRTIO_F_VERSION_1):
            return
        if self.has_feature(VIRTIO_NET_F_CTRL_MAC_ADDR):
            return
        self.mac[offset : offset + size] = value.to_bytes(size, "little")

    def set_link(self, up: bool) -> None:
        """Change the link state; the driver learns it through a config change (§5.1.4)."""
        if up == self.link_up:
            return
        self.link_up = up
        if self.hooks is not None:
            self.hooks.notify_config()

    # -- queues ------------------------------------------------------------------------------------
    def set_status(self, status: int) -> None:
        became_ok = status & DRIVER_OK and not self.status & DRIVER_OK
        features_ok = status & FEATURES_OK and not self.status & FEATURES_OK
        super().set_status(status)
        if features_ok or (became_ok and not status & FEATURES_OK):  # a legacy driver
            # QEMU virtio_net_set_features: the guest's offloads follow its features, and
            # the peer's header size follows the header the driver uses.
            self.guest_offloads = self.driver_features & GUEST_OFFLOAD_BITS
            self._apply_offloads()
        if became_ok:
            self.poll()

    def _apply_offloads(self) -> None:
        """Tell a vnet-header backend the header size and which offloads the guest takes
        (QEMU virtio_net_apply_guest_offloads → tap_set_offload)."""
        if not self.vnet:
            return
        try:
            self.backend.set_vnet_hdr_len(self.hdr_len)  # type: ignore[attr-defined]
            o = self.guest_offloads
            self.backend.set_offload(  # type: ignore[attr-defined]
                bool(o >> VIRTIO_NET_F_GUEST_CSUM & 1),
                bool(o >> VIRTIO_NET_F_GUEST_TSO4 & 1),
                bool(o >> VIRTIO_NET_F_GUEST_TSO6 & 1),
                bool(o >> VIRTIO_NET_F_GUEST_ECN & 1),
                bool(o >> VIRTIO_NET_F_GUEST_UFO & 1),
            )
        except OSError:
            self._drop("backend_offload_error")

    def rx_ready(self) -> bool:
        """Whether a frame from the backend could be delivered now: the driver is running and
        has receive buffers posted, and no frame already waits. The host's event loop watches
        the backend only then (a kick on the RX queue says when buffers come)."""
        if not self.status & DRIVER_OK or self._held is not None or not self._dma_allowed():
            return False
        try:
            return self.queues[0].has_available(self.memory)
        except (VirtqueueError, GuestMemoryError):
            return False  # the next queue operation reports it

    def _dma_allowed(self) -> bool:
        return self.hooks is not None and self.hooks.dma_allowed()

    def queue_notify(self, index: int) -> None:
        if not 0 <= index < len(self.queues) or not self.queues[index].max_size:
            return  # no such queue: nothing to do (§4.1.5.2 leaves it to the transport)
        hooks = self.hooks
        if not self.status & DRIVER_OK or hooks is None or not hooks.dma_allowed():  # _dma_allowed
            return
        try:
            if index % 2 == 1 and not (self.has_ctrl_queue and index == 2 * self.active_pairs):
                self._handle_tx(index)  # _service_queue's TX case (a kick per packet), inline
            else:
                self._service_queue(index)
        except (VirtqueueError, GuestMemoryError) as e:
            self._error(str(e))

    def _service_queue(self, index: int) -> None:
        if self.has_ctrl_queue and index == 2 * self.active_pairs:  # ctrl_index
            self._handle_ctrl(index)
        elif index % 2 == 1:
            self._handle_tx(index)
        else:
            self._deliver_rx()

    def _note_backlog(self, index: int, done: int, budget: int) -> None:
        """After a bounded pass: remember the queue if it stopped at its bound with more
        available, so that the next poll() serves the rest."""
        q = self.queues[index]
        if done >= budget and q.has_available(self.memory):
            self.backlog.add(index)
        else:
            self.backlog.discard(index)

    def _error(self, reason: str) -> None:
        if self.hooks is not None:
            self.hooks.device_error(reason)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def _handle_tx(self, index: int) -> None:
        q = self.queues[index]
        mem = self.hooks.memory  # self.memory (the caller checked hooks: dma_allowed)
        done = 0
        # At most tx_burst chains per call (virtio_net_flush_tx stops there and the bottom half
        # reschedules): a guest that re-posts buffers while we walk must not keep one kick
        # going for ever. The rest is the backlog poll() serves on the next pass.
        budget = self.tx_burst
        try:
            done = self._tx_burst(q, mem, index, budget)
        finally:
            q.publish_used(mem)  # one used-index write per burst
        if done >= budget:
            self._note_backlog(index, done, budget)
        else:
            self.backlog.discard(index)  # what _note_backlog does below the bound
        if done and q.should_notify(mem) and self.hooks is not None:
            self.hooks.notify_queue(index)
        if done:
            # a loopback backend may have frames now: _deliver_rx (single-queue case inline)
            if getattr(self.backend, "queues", 1) <= 1:
                self._deliver_rx_pair(0)
            else:
                self._deliver_rx()

    def _tx_burst(self, q: VirtQueue, mem: Memory, index: int, budget: int) -> int:
        done = 0
        df = self.driver_features  # self.hdr_len (_hdr_len), inline
        modern_hdr = (df >> VIRTIO_F_VERSION_1 | df >> VIRTIO_NET_F_MRG_RXBUF) & 1
        hdr_len = HDR_LEN if modern_hdr else HDR_LEN_LEGACY
        vnet = self.vnet
        pair = index // 2
        pop, push, send = q.pop, q.push, self._send
        while done < budget and (elem := pop(mem)) is not None:
            readable = elem.readable
            # elem.readable_len and elem.read(mem) below, inline for one segment (a TX skb
            # with its header in front): the same length, the same one read of memory.
            one = readable[0] if len(readable) == 1 else None
            readable_len = one[1] if one is not None else elem.readable_len
            if readable_len < hdr_len:
                # QEMU virtio_net_flush_tx: "virtio-net header incorrect" is a device error.
                raise VirtqueueError(
                    f"queue {index}: TX chain of {readable_len} bytes is shorter than "
                    f"the {hdr_len}-byte virtio-net header"
                )
            if readable_len > MAX_FRAME + hdr_len:
                # Not read at all (it could be gigabytes); the buffer goes back, the frame
                # is counted as dropped.
                frame = None
                self._drop("tx_oversize")
            elif one is not None:
                try:
                    frame = mem.read(one[0], readable_len)
                except GuestMemoryError as e:
                    raise VirtqueueError(str(e)) from None  # as Element.read
            else:
                frame = elem.read(mem)
            push(mem, elem, 0, publish=False)
            done += 1
            if frame is not None and len(frame) > hdr_len:
                # A vnet-header peer takes the guest's header (checksum and GSO requests) with
                # the frame, as QEMU passes it to the TAP; others get the bare frame.
                send(frame if vnet else frame[hdr_len:], len(frame) - hdr_len, pair)
            elif frame is not None:
                self._drop("tx_empty")
        return done

    def _mq_backend(self) -> bool:
        return getattr(self.backend, "queues", 1) > 1

    def _send(self, frame: bytes, payload_len: int, pair: int = 0) -> None:
        """Hand a transmitted frame to the backend. A backend reports a frame it could not
        send by returning False or raising OSError (a full disk under a pcap writer, a TAP
        queue full): the frame is counted as dropped, never as sent, and the device goes on."""
        backend = self.backend
        try:
            if getattr(backend, "queues", 1) > 1:  # _mq_backend(), inline
                ok = backend.send(frame, pair)
            else:
                ok = backend.send(frame)
        except OSError:
            self._drop("tx_backend_error")
            return
        if ok is False:
            self._drop("tx_backend_error")
            return
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += payload_len

    def poll(self) -> int:
        if not self.status & DRIVER_OK or not self._dma_allowed():
            return 0
        try:
            for index in sorted(self.backlog):
                self._service_queue(index)
            return self._deliver_rx()
        except (VirtqueueError, GuestMemoryError) as e:
            self._error(str(e))
            return 0

    def _take_frame(self) -> bytes | None:
        if self._held is not None:
            frame, self._held = self._held, None
            return frame
        try:
            if self._mq_backend():
                return self.backend.take_frame(self._rx_pair)
            return self.backend.take_frame()
        except OSError:
            # A backend that fails a read loses whatever it was reading: count it.
            self._drop("rx_backend_error")
            return None

    def _deliver_rx(self) -> int:
        """Move backend frames into posted receive buffers: receive queue 0, or with a
        multi-queue peer the receive queue of each active pair from its own peer queue."""
        if getattr(self.backend, "queues", 1) <= 1:  # not _mq_backend()
            return self._deliver_rx_pair(0)
        delivered = 0
        for pair in range(min(self.curr_queue_pairs, self.backend.queues)):
            delivered += self._deliver_rx_pair(pair)
        return delivered

    def _deliver_rx_pair(self, pair: int) -> int:
        """Move frames of the peer's queue ``pair`` into receive queue 2 × ``pair``.

        A frame that finds too few buffers waits (held, at most one) for the driver to post
        more, as QEMU's virtio_net_has_buffers makes the netdev queue it; it is never
        delivered truncated. The only frames dropped are those no buffer the driver could
        ever post would hold; each is counted by reason.
        """
        q = self.queues[2 * pair]
        mem = self.memory
        self._rx_pair = pair
        if pair:
            self._held, self._held_pairs[pair] = self._held_pairs.get(pair), self._held
        try:
            delivered = self._rx_burst(q, mem)
        finally:
            q.publish_used(mem)  # one used-index write per burst
            if pair:
                self._held_pairs[pair], self._held = self._held, self._held_pairs[pair]
            self._rx_pair = 0
        if delivered and q.should_notify(mem) and self.hooks is not None:
            self.hooks.notify_queue(2 * pair)
        return delivered

    def _rx_burst(self, q: VirtQueue, mem: Memory) -> int:
        delivered = 0
        mergeable = bool(self.driver_features >> VIRTIO_NET_F_MRG_RXBUF & 1)
        # Per-burst constants, looked up once rather than per frame.
        vnet = self.vnet
        df = self.driver_features  # self.hdr_len (_hdr_len), inline
        modern_hdr = (df >> VIRTIO_F_VERSION_1 | df >> VIRTIO_NET_F_MRG_RXBUF) & 1
        hdr_len = HDR_LEN if modern_hdr else HDR_LEN_LEGACY
        peer_hdr = hdr_len if vnet else 0
        stats = self.stats
        take_frame = self._take_frame
        # _take_frame's backend read, bound once per burst (the backend does not change
        # during a burst); a held frame and a multi-queue backend still go through it.
        backend_take = None if getattr(self.backend, "queues", 1) > 1 else self.backend.take_frame
        # Each delivered frame uses at least one chain, so at most q.size are delivered per
        # call; but a frame that does not fit gives its chains back, and the next one walks
        # them again. So one call takes at most 2 × q.size frames and walks about as many
        # chains (the frames left stay in the backend for the next call): the work is bounded
        # by the queue size, not by how many frames the peer sends.
        budget = q.walks + 2 * q.size
        for _ in range(2 * q.size):
            if q.walks >= budget:
                break
            waited = self._held is not None
            if waited or backend_take is None:
                frame = take_frame()
            else:
                try:
                    frame = backend_take()
                except OSError:
                    self._drop("rx_backend_error")  # as _take_frame
                    frame = None
            if frame is None:
                break
            if len(frame) > MAX_FRAME + peer_hdr:
                self._drop("rx_oversize")
                continue
            if vnet and len(frame) <= hdr_len:
                self._drop("rx_short")  # no frame behind the peer's header
                continue
            # has_available's first answer (chains known to be pending) inline, else the call
            if not (
                q.shadow_pending and not q.packed and q.enabled and q.size > 0 and q.desc_addr
            ) and not q.has_available(mem):  # fmt: skip
                self._held = frame
                stats["rx_no_buffer"] += not waited
                break
            try:
                if mergeable:
                    outcome = self._rx_mergeable(q, mem, frame, hdr_len)
                else:
                    outcome = self._rx_single(q, mem, frame)
            except (VirtqueueError, GuestMemoryError):
                # The driver's ring is broken (NEEDS_RESET follows); the frame was not
                # delivered, so it waits for the next driver rather than vanishing.
                self._held = frame
                raise
            if outcome == "ok":
                delivered += 1
                stats["rx_frames"] += 1
                stats["rx_bytes"] += len(frame) - peer_hdr
            elif outcome == "wait":
                self._held = frame
                stats["rx_no_buffer"] += not waited
                break
            else:
                self._drop(outcome)
        return delivered

    def _packet(self, frame: bytes, num_buffers: int, hdr_len: int | None = None) -> bytes:
        """Header and frame as the guest receives them. From a vnet-header peer the header is
        the peer's (checksum state, GSO type and sizes); otherwise flags 0, GSO_NONE. The device
        sets num_buffers, which exists in the 12-byte header; without MRG_RXBUF it is 1
        (§5.1.6.4.1)."""
        if hdr_len is None:
            hdr_len = self.hdr_len
        if self.vnet:
            if hdr_len != HDR_LEN:
                return frame
            return frame[:10] + _U16.pack(num_buffers) + frame[HDR_LEN:]
        if hdr_len == HDR_LEN:
            return _ZERO10 + _U16.pack(num_buffers) + frame
        return b"\0" * hdr_len + frame

    def _rx_single(self, q: VirtQueue, mem: Memory, frame: bytes) -> str:
        elem = q.pop(mem)
        assert elem is not None  # has_available said so
        if not elem.writable:
            # QEMU: "virtio-net receive queue contains no in buffers" — a device error.
            raise VirtqueueError(f"queue {q.index}: RX chain {elem.head} has no writable buffer")
        packet = self._packet(frame, 1)
        if elem.writable_len < len(packet):
            # Without MRG_RXBUF a packet must fit one chain (§5.1.6.3.1). QEMU gives the
            # buffer back (virtqueue_unpop) and drops the packet; so do we, and count it.
            q.unpop()
            return "rx_buffer_too_small"
        written = elem.write(mem, packet)
        q.push(mem, elem, written, publish=False)
        return "ok"

    def _rx_mergeable(self, q: VirtQueue, mem: Memory, frame: bytes,
                      hdr_len: int | None = None) -> str:  # fmt: skip
        """§5.1.6.4: spread the packet over as many chains as it needs, num_buffers in the
        header of the first. Chains are popped until the packet fits; if the driver has not
        offered enough, they are given back and the frame waits (QEMU checks
        virtqueue_avail_bytes first, to the same effect)."""
        if hdr_len is None:
            hdr_len = self.hdr_len
        need = len(frame) + (0 if self.vnet else hdr_len)
        elems: list[Element] = []
        room = 0
        first_room = 0
        pop = q.pop
        size = q.size
        # At most a ring's worth of chains for one packet (the guest may keep adding while we
        # pop), so unpop never gives back more than this call took.
        while room < need and len(elems) < size:
            elem = pop(mem)
            if elem is None:
                break
            w = elem.writable
            n = w[0][1] if len(w) == 1 else elem.writable_len  # writable_len, one segment inline
            if not elems:
                first_room = n
                room = first_room
            else:
                room += n
            elems.append(elem)
        if room < need:
            q.unpop(len(elems))
            if len(elems) >= size:
                # The whole ring cannot hold it: waiting would stall reception for ever.
                return "rx_ring_too_small"
            return "wait"
        # Enough room: now the chains are used in order, and a malformed one is an error as
        # QEMU finds it in virtio_net_receive_rcu.
        for n, elem in enumerate(elems):
            if not elem.writable:
                raise VirtqueueError(
                    f"queue {q.index}: RX chain {elem.head} has no writable buffer"
                )
            if n == 0 and first_room < hdr_len:
                # §5.1.6.3.1: with MRG_RXBUF every buffer holds at least the header, and
                # num_buffers lives in the first one.
                raise VirtqueueError(
                    f"queue {q.index}: RX buffer of {first_room} bytes is smaller than "
                    f"the {hdr_len}-byte virtio-net header"
                )
        if len(elems) == 1 and len(elems[0].writable) == 1:
            # One buffer of one segment (the usual case): elem.write's one store, inline.
            elem = elems[0]
            a, n = elem.writable[0]
            if not self.vnet and hdr_len == HDR_LEN:
                raw = _HDR_ONE_BUFFER + frame  # _packet(frame, 1, hdr_len), inline
            else:
                raw = self._packet(frame, 1, hdr_len)
            take = min(n, len(raw))
            try:
                mem.write(a, raw if take == len(raw) else raw[:take])
            except GuestMemoryError as e:
                raise VirtqueueError(str(e)) from None
            q.push(mem, elem, take, publish=False)
            return "ok"
        # A view: slicing a 64 KiB TSO packet per buffer would copy it once per buffer.
        packet = memoryview(self._packet(frame, len(elems), hdr_len))
        if len(elems) == 1:
            elem = elems[0]
            q.push(mem, elem, elem.write(mem, packet), publish=False)
            return "ok"
        lens = scatter_chains(mem, elems, packet)  # adjacent buffers in one write
        for elem, n in zip(elems, lens, strict=True):
            q.push(mem, elem, n, publish=False)
        return "ok"

    # -- control queue (§5.1.6.5) ---------------------------------------------------------------------
    def _handle_ctrl(self, index: int) -> None:
        q = self.queues[index]
        mem = self.memory
        done = 0
        budget = max(q.size, 1)  # a ring's worth per call, as for TX
        while done < budget and (elem := q.pop(mem)) is not None:
            if elem.readable_len < 2 or elem.writable_len < 1:
                raise VirtqueueError(f"queue {index}: malformed control command")
            # Read at most CTRL_MAX_COMMAND bytes: no command but MAC_TABLE_SET can be longer
            # than a few bytes, and that one is parsed in place (_mac_table_set).
            data = elem.read(mem, min(elem.readable_len, CTRL_MAX_COMMAND))
            cls, cmd, payload = data[0], data[1], data[2:]
            if cls == CTRL_MAC and cmd == 0:
                ack = self._mac_table_set(elem, mem, payload)
            elif elem.readable_len > CTRL_MAX_COMMAND:
                ack = VIRTIO_NET_ERR  # no such command is that long
            else:
                ack = self._ctrl_command(cls, cmd, payload)
            logged = bytes(payload[:CTRL_LOG_PAYLOAD])
            self.ctrl_log.append((CTRL_CLASS_NAMES.get(cls, str(cls)), cmd, logged, ack))
            elem.write(mem, bytes([ack]))
            q.push(mem, elem, 1)
            done += 1
        self._note_backlog(index, done, budget)
        if done and q.should_notify(mem) and self.hooks is not None:
            self.hooks.notify_queue(index)

    def _mac_table_set(self, elem: Element, mem: Memory, prefix: bytes) -> int:
        """VIRTIO_NET_CTRL_MAC_TABLE_SET (§5.1.6.5.2): a unicast then a multicast table, each a
        le32 count and that many MACs. As QEMU 7.2 (virtio_net_handle_mac): a table that would
        take the filter past MAC_TABLE_ENTRIES is not stored but sets its overflow flag (the
        device then accepts all such frames), and the command is OK; only a length that does
        not match the counts is an error. The counts are read where they lie, the MACs only
        when they are kept, so a command of any length costs a bounded read."""
        total = elem.readable_len - 2  # payload length
        base = len(prefix)

        def read_at(off: int, n: int) -> bytes:
            if off + n <= base:
                return prefix[off : off + n]
            # Past the prefix read whole: skip to the offset in the chain (2 header bytes).
            out, skip = [], off + 2
            for a, seg in elem.readable:
                if skip >= seg:
                    skip -= seg
                    continue
                take = min(seg - skip, n - sum(map(len, out)))
                out.append(mem.read(a + skip, take))
                skip = 0
                if sum(map(len, out)) >= n:
                    break
            return b"".join(out)

        tables: list[list[bytes] | None] = []
        pos = 0
        for _ in range(2):
            if pos + 4 > total:
                return VIRTIO_NET_ERR
            (n,) = struct.unpack("<I", read_at(pos, 4))
            pos += 4
            if pos + 6 * n > total:
                return VIRTIO_NET_ERR
            kept = sum(len(t) for t in tables if t is not None)
            if kept + n <= MAC_TABLE_ENTRIES:
                raw = read_at(pos, 6 * n)
                tables.append([raw[6 * i : 6 * i + 6] for i in range(n)])
            else:
                tables.append(None)  # overflow: not read, not stored
            pos += 6 * n
        if pos != total:
            return VIRTIO_NET_ERR
        uni, multi = tables
        self.uni_overflow, self.multi_overflow = uni is None, multi is None
        self.mac_table = (uni or []) + (multi or [])
        return VIRTIO_NET_OK

    def _ctrl_command(self, cls: int, cmd: int, payload: bytes) -> int:
        if cls == CTRL_RX and self.has_feature(VIRTIO_NET_F_CTRL_RX):
            if len(payload) != 1 or cmd > 5:
                return VIRTIO_NET_ERR
            if cmd == 0:
                self.promisc = bool(payload[0])
            elif cmd == 1:
                self.allmulti = bool(payload[0])
            return VIRTIO_NET_OK
        if cls == CTRL_MAC:
            if cmd == 1 and len(payload) == 6:  # ADDR_SET
                self.mac[:] = payload
                return VIRTIO_NET_OK
            return VIRTIO_NET_ERR  # TABLE_SET is _mac_table_set
        if cls == CTRL_VLAN and self.has_feature(VIRTIO_NET_F_CTRL_VLAN):
            if len(payload) != 2:
                return VIRTIO_NET_ERR
            vid = struct.unpack("<H", payload)[0]
            # A failed command changes nothing: check everything before acting.
            if vid >= 4096 or cmd not in (0, 1):
                return VIRTIO_NET_ERR
            (self.vlans.add if cmd == 0 else self.vlans.discard)(vid)
            return VIRTIO_NET_OK
        if cls == CTRL_ANNOUNCE and cmd == 0:
            return VIRTIO_NET_OK
        if cls == CTRL_MQ and cmd == 0 and self.has_feature(VIRTIO_NET_F_MQ):
            if len(payload) != 2:
                return VIRTIO_NET_ERR
            pairs = struct.unpack("<H", payload)[0]
            if not 1 <= pairs <= self.queue_pairs:
                return VIRTIO_NET_ERR
            self.curr_queue_pairs = pairs
            return VIRTIO_NET_OK
        if (
            cls == CTRL_GUEST_OFFLOADS
            and cmd == 0
            and self.has_feature(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
        ):
            if len(payload) != 8:
                return VIRTIO_NET_ERR
            offloads = struct.unpack("<Q", payload)[0]
            # QEMU virtio_net_handle_offloads: refused outright without a vnet-header peer
            # (there is nothing to switch); RSC_EXT is not an offload of its own here.
            if not self.vnet:
                return VIRTIO_NET_ERR
            offloads &= ~(1 << VIRTIO_NET_F_RSC_EXT)
            if offloads & ~(self.driver_features & GUEST_OFFLOAD_BITS):
                return VIRTIO_NET_ERR
            self.guest_offloads = offloads
            self._apply_offloads()
            return VIRTIO_NET_OK
        return VIRTIO_NET_ERR
