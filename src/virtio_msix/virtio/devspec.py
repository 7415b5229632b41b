"""One device description for every command, in QEMU's own syntax.

``virtio-net-pci,mq=on,vectors=6,...`` (QEMU's ``-device``) and ``user|tap[,queues=N,
vnet_hdr=on|off]`` (QEMU's ``-netdev``) parsed into a :class:`DeviceSpec`, and the device that
QEMU 7.2 would build from them (:func:`build_device`).

The properties are data (:data:`PROPERTIES`): QEMU 7.2's own list for ``virtio-net-pci``
(``qemu-system-x86_64 -device virtio-net-pci,help``: virtio_net_properties, the virtio core's
common features, virtio-pci's transport properties), each with its type, its default and what it
sets here. Values are parsed as QEMU's property setters parse them (bool: on/off/yes/no/true/
false/y/n; integers: decimal, 0x hex, 0 octal, within the C type), and errors read as QEMU's.
Properties that change nothing a driver can observe (ioeventfd, bootindex, ...) are accepted;
properties whose effect is not modelled (rss, hash, iommu_platform, failover, ...) are refused
with a one-line error naming them. Where QEMU refuses to start, :class:`SpecError`; where it
starts with a warning (MSI-X vectors it cannot place), ``DeviceSpec.warnings``.

Measured against the real QEMU 7.2 through qtest (tests/test_qemu_devspec.py): the control
queue exists whatever ``ctrl_vq`` says (only the feature bit goes); ``speed``/``duplex`` offer
SPEED_DUPLEX and lengthen device config to ``duplex``; ``host_mtu`` offers MTU; ``mq`` only
offers the feature — the queue pairs are the netdev's ``queues``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..abi.virtio import (
    VIRTIO_F_ACCESS_PLATFORM,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_NOTIFY_ON_EMPTY,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_RING_RESET,
)
from .net import (
    TAP_VNET_OFFLOADS,
    UFO_BITS,
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GSO,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HASH_REPORT,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_RSC_EXT,
    VIRTIO_NET_F_RSS,
    VIRTIO_NET_F_SPEED_DUPLEX,
    VIRTIO_NET_F_STANDBY,
    VIRTIO_NET_F_STATUS,
)
from .regs import VIRTIO_QUEUE_MAX

DRIVER = "virtio-net-pci"
# QEMU's DEV_NVECTORS_UNSPECIFIED: "vectors" left at its default means 2 * pairs + 2.
NVECTORS_UNSPECIFIED = 0xFFFFFFFF
# PCI 3.0 §6.8.2.3: an 11-bit Table Size field (N-1); QEMU's msix_init refuses more and
# virtio-pci then runs without MSI-X, with a warning.
MSIX_MAX_VECTORS = 2048
# virtio_net_device_realize: 2 * pairs + 1 (control) must fit VIRTIO_QUEUE_MAX queues.
MAX_QUEUE_PAIRS = (VIRTIO_QUEUE_MAX - 1) // 2
# VIRTIO_NET_RX_QUEUE_MIN_SIZE / VIRTQUEUE_MAX_SIZE; TX's maximum is 256 without vhost-user
# (virtio_net_max_tx_queue_size), a larger value is silently cut to it.
RX_QUEUE_MIN, QUEUE_MAX_SIZE, TX_QUEUE_MAX_NO_VHOST = 256, 1024, 256
SPEED_UNKNOWN = -1
DUPLEX_HALF, DUPLEX_FULL, DUPLEX_UNKNOWN = 0x00, 0x01, 0xFF

INT_RANGES = {
    "uint16": (0, 0xFFFF, "uint16_t"),
    "uint32": (0, 0xFFFFFFFF, "uint32_t"),
    "int32": (-(1 << 31), (1 << 31) - 1, "int32_t"),
}

# QEMU's option ROM for virtio-net-pci (romfile's default) and its size in Debian bookworm's
# ipxe-qemu; romsize's "unset" (-1 as uint32) means the file's size rounded up: 256 KiB.
ROMFILE = "efi-virtio.rom"
ROMFILE_BYTES = 249344
ROMSIZE_UNSET = 0xFFFFFFFF


class SpecError(ValueError):
    """A device or netdev description QEMU would refuse; the message is QEMU's one line."""


@dataclass(frozen=True)
class Prop:
    """One ``-device`` property: QEMU's type and default, and what it does here.

    ``feature``: the host feature bit a bool property offers (DEFINE_PROP_BIT64);
    ``effect``: "model" (changes the device), "none" (accepted, nothing a driver can observe
    changes: QEMU-internal or migration knobs), "refuse-on" (only its default is modelled)."""

    name: str
    kind: str  # bool | uint16 | uint32 | int32 | str | onoffauto | mac
    default: Any
    sets: str
    feature: int | None = None
    effect: str = "model"


def _f(name: str, bit: int, default: bool, sets: str) -> Prop:
    return Prop(name, "bool", default, sets, feature=bit)


PROPERTIES: tuple[Prop, ...] = (
    # virtio-net (hw/net/virtio-net.c virtio_net_properties): feature bits.
    _f("csum", VIRTIO_NET_F_CSUM, True, "CSUM (kept only with a vnet-header peer)"),
    _f("guest_csum", VIRTIO_NET_F_GUEST_CSUM, True, "GUEST_CSUM (vnet-header peer)"),
    _f("gso", VIRTIO_NET_F_GSO, True, "GSO (legacy interface only)"),
    _f("guest_tso4", VIRTIO_NET_F_GUEST_TSO4, True, "GUEST_TSO4 (vnet-header peer)"),
    _f("guest_tso6", VIRTIO_NET_F_GUEST_TSO6, True, "GUEST_TSO6 (vnet-header peer)"),
    _f("guest_ecn", VIRTIO_NET_F_GUEST_ECN, True, "GUEST_ECN (vnet-header peer)"),
    _f("guest_ufo", VIRTIO_NET_F_GUEST_UFO, True, "GUEST_UFO (peer with UFO)"),
    _f("guest_announce", VIRTIO_NET_F_GUEST_ANNOUNCE, True, "GUEST_ANNOUNCE"),
    _f("host_tso4", VIRTIO_NET_F_HOST_TSO4, True, "HOST_TSO4 (vnet-header peer)"),
    _f("host_tso6", VIRTIO_NET_F_HOST_TSO6, True, "HOST_TSO6 (vnet-header peer)"),
    _f("host_ecn", VIRTIO_NET_F_HOST_ECN, True, "HOST_ECN (vnet-header peer)"),
    _f("host_ufo", VIRTIO_NET_F_HOST_UFO, True, "HOST_UFO (peer with UFO)"),
    _f("mrg_rxbuf", VIRTIO_NET_F_MRG_RXBUF, True, "MRG_RXBUF: mergeable receive buffers"),
    _f("status", VIRTIO_NET_F_STATUS, True, "STATUS: link status in config"),
    _f("ctrl_vq", VIRTIO_NET_F_CTRL_VQ, True, "CTRL_VQ (the queue itself always exists)"),
    _f("ctrl_rx", VIRTIO_NET_F_CTRL_RX, True, "CTRL_RX"),
    _f("ctrl_vlan", VIRTIO_NET_F_CTRL_VLAN, True, "CTRL_VLAN"),
    _f("ctrl_rx_extra", VIRTIO_NET_F_CTRL_RX_EXTRA, True, "CTRL_RX_EXTRA"),
    _f("ctrl_mac_addr", VIRTIO_NET_F_CTRL_MAC_ADDR, True, "CTRL_MAC_ADDR"),
    _f("ctrl_guest_offloads", VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, True, "CTRL_GUEST_OFFLOADS"),
    _f("mq", VIRTIO_NET_F_MQ, False, "MQ (pairs: the netdev's queues=N)"),
    Prop("rss", "bool", False, "RSS: not modelled", VIRTIO_NET_F_RSS, "refuse-on"),
    Prop(
        "hash", "bool", False, "HASH_REPORT: not modelled", VIRTIO_NET_F_HASH_REPORT, "refuse-on"
    ),  # fmt: skip
    Prop(
        "guest_rsc_ext", "bool", False, "RSC_EXT: not modelled", VIRTIO_NET_F_RSC_EXT, "refuse-on"
    ),  # fmt: skip
    Prop("failover", "bool", False, "STANDBY: not modelled", VIRTIO_NET_F_STANDBY, "refuse-on"),
    Prop("mac", "mac", "52:54:00:12:34:56", "config mac (QEMU's first NIC's default)"),
    Prop("host_mtu", "uint16", 0, "MTU offered and config mtu (0: not offered)"),
    Prop("speed", "int32", SPEED_UNKNOWN, "SPEED_DUPLEX offered and config speed (Mb/s)"),
    Prop("duplex", "str", None, "SPEED_DUPLEX offered and config duplex: half | full"),
    Prop("rx_queue_size", "uint16", 256, "receive queues' maximum size (256..1024, 2^n)"),
    Prop("tx_queue_size", "uint16", 256, "transmit queues' maximum size (256; more is cut)"),
    Prop("netdev", "str", None, "the peer: the --netdev with this id"),
    Prop("tx", "str", None, "bh (the default: each kick served at once); timer is refused"),
    Prop("x-txtimer", "uint32", 150000, "TX timer period (used by tx=timer only)",
         effect="none"),
    Prop("x-txburst", "int32", 256, "TX chains served per kick before the rest waits a pass"),
    Prop("x-mtu-bypass-backend", "bool", True, "", effect="none"),
    Prop("rsc_interval", "uint32", 300000, "", effect="none"),
    Prop("failover_pair_id", "str", None, "", effect="none"),
    # The virtio core (hw/virtio/virtio.c virtio common features).
    _f("indirect_desc", VIRTIO_F_INDIRECT_DESC, True, "RING_INDIRECT_DESC"),
    _f("event_idx", VIRTIO_F_EVENT_IDX, True, "RING_EVENT_IDX"),
    _f("notify_on_empty", VIRTIO_F_NOTIFY_ON_EMPTY, True, "NOTIFY_ON_EMPTY (legacy only)"),
    _f("any_layout", VIRTIO_F_ANY_LAYOUT, True, "ANY_LAYOUT (legacy only)"),
    _f("packed", VIRTIO_F_RING_PACKED, False, "RING_PACKED: packed virtqueues (§2.8)"),
    _f("queue_reset", VIRTIO_F_RING_RESET, True, "RING_RESET"),
    Prop(
        "iommu_platform",
        "bool",
        False,
        "ACCESS_PLATFORM: not modelled",
        VIRTIO_F_ACCESS_PLATFORM,
        "refuse-on",
    ),  # fmt: skip
    Prop("use-started", "bool", True, "", effect="none"),
    Prop("use-disabled-flag", "bool", True, "", effect="none"),
    Prop("x-disable-legacy-check", "bool", False, "", effect="none"),
    # virtio-pci (hw/virtio/virtio-pci.c).
    Prop("vectors", "uint32", NVECTORS_UNSPECIFIED, "MSI-X table size (default 2*pairs+2)"),
    Prop(
        "disable-legacy",
        "onoffauto",
        "auto",
        "modern-only (0x1041, no I/O BAR); auto: off on the root bus",
    ),  # fmt: skip
    Prop("disable-modern", "bool", False, "legacy-only (no modern capabilities, no BAR4)"),
    Prop("page-per-vq", "bool", False, "a 4 KiB notify page per queue (multiplier 0x1000)"),
    Prop("modern-pio-notify", "bool", False, "a second notify structure in I/O BAR2"),
    Prop("ioeventfd", "bool", True, "", effect="none"),
    Prop("migrate-extra", "bool", True, "", effect="none"),
    Prop("virtio-pci-bus-master-bug-migration", "bool", False, "", effect="none"),
    Prop("x-ignore-backend-features", "bool", False, "", effect="none"),
    Prop("x-disable-pcie", "bool", False, "", effect="none"),
    Prop("x-pcie-deverr-init", "bool", True, "", effect="none"),
    Prop("x-pcie-lnkctl-init", "bool", True, "", effect="none"),
    Prop("x-pcie-pm-init", "bool", True, "", effect="none"),
    Prop("x-pcie-flr-init", "bool", True, "", effect="none"),
    Prop("x-pcie-extcap-init", "bool", True, "", effect="none"),
    Prop("x-pcie-lnksta-dllla", "bool", True, "", effect="none"),
    Prop("x-ats-page-aligned", "bool", True, "", effect="none"),
    Prop("ats", "bool", False, "", effect="none"),
    Prop("aer", "bool", False, "", effect="none"),
    # PCI device (hw/pci/pci.c).
    Prop("addr", "str", None, "slot[.fn] (the model's slot is 3)", effect="none"),
    Prop("multifunction", "bool", False, "", effect="none"),
    Prop("rombar", "uint32", 1, "0: no expansion ROM BAR"),
    Prop("romsize", "uint32", ROMSIZE_UNSET, "expansion ROM size (default: the file's, 256 KiB)"),
    Prop("romfile", "str", None, "", effect="none"),
    Prop("acpi-index", "uint32", 0, "", effect="none"),
    Prop("bootindex", "int32", None, "", effect="none"),
    # Not properties but qdev_device_add's own options, which every -device takes: copied QEMU
    # command lines carry them.
    Prop("id", "str", None, "the device's name in QEMU's monitor", effect="none"),
    Prop("bus", "str", None, "the bus it plugs into (the model's is the root bus)",
         effect="none"),
)
PROPERTY = {p.name: p for p in PROPERTIES}
ROOT_BUSES = ("pcie.0", "pci.0")  # q35's and pc's root bus

_TRUE = ("on", "yes", "true", "y")
_FALSE = ("off", "no", "false", "n")


def _parse_value(prop: Prop, text: str) -> Any:
    """A property value as QEMU's setter parses it; SpecError with QEMU's message if not."""
    if prop.kind == "bool":
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SpecError(f"Parameter '{prop.name}' expects 'on' or 'off'")
    if prop.kind == "onoffauto":
        if text in ("on", "off", "auto"):
            return text
        raise SpecError(f"Parameter '{prop.name}' does not accept value '{text}'")
    if prop.kind in INT_RANGES:
        lo, hi, ctype = INT_RANGES[prop.kind]
        value = _strtoll(text)
        if value is None:
            raise SpecError(f"Parameter '{prop.name}' expects integer")
        if not lo <= value <= hi:
            raise SpecError(f"Parameter '{prop.name}' expects {ctype}")
        return value
    if prop.kind == "mac":
        parts = text.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise SpecError(f"Property 'virtio-net-device.mac' doesn't take value '{text}'")
        try:
            return bytes(int(p, 16) for p in parts)
        except ValueError:
            raise SpecError(
                f"Property 'virtio-net-device.mac' doesn't take value '{text}'"
            ) from None
    return text


def _strtoll(text: str) -> int | None:
    """An integer as QEMU's strtoll with base 0 reads it: 0x hex, a leading 0 octal."""
    body = text[1:] if text[:1] in "+-" else text
    sign = -1 if text.startswith("-") else 1
    if not body or not body.isascii() or any(c in "_ \t\n" for c in body):
        return None  # Python's int() would take these; strtoll does not
    try:
        if body[:2].lower() == "0x":
            return sign * int(body[2:], 16)
        if len(body) > 1 and body.startswith("0"):
            return sign * int(body[1:], 8)
        return sign * int(body, 10)
    except ValueError:
        return None


def split_opts(text: str) -> list[tuple[str, str | None]]:
    """QEMU's option string: comma-separated ``key=value``; ``,,`` is a literal comma."""
    items: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if text[i + 1 : i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    items.append(cur)
    out: list[tuple[str, str | None]] = []
    for item in items:
        if item == "":
            continue
        key, eq, value = item.partition("=")
        out.append((key, value if eq else None))
    return out


@dataclass
class NetdevSpec:
    """``-netdev TYPE[,id=ID][,queues=N][,vnet_hdr=on|off]``: the peer of the NIC.

    ``user``: no vnet header (QEMU clears the checksum/segmentation offloads); ``tap``: a
    vnet header unless ``vnet_hdr=off`` (offloads kept; UFO when the TAP has it — ``ufo``);
    ``responder``: ours (boot's ARP/ICMP responder), offered as ``user``. ``queues`` is the
    number of queue pairs the NIC gets (tap, as in QEMU, and our responder)."""

    kind: str = "user"
    id: str | None = None
    queues: int = 1
    vnet_hdr: bool = False
    ufo: bool = True

    @property
    def text(self) -> str:
        out = [self.kind]
        if self.id:
            out.append(f"id={self.id}")
        if self.queues != 1:
            out.append(f"queues={self.queues}")
        if self.kind == "tap":
            if not self.vnet_hdr:
                out.append("vnet_hdr=off")
        return ",".join(out)


NETDEV_KINDS = ("user", "tap", "responder")
NETDEV_OPTIONS = {
    "user": ("id",),
    "responder": ("id", "queues"),  # ours: boot's ARP/ICMP responder, any number of pairs
    "tap": ("id", "queues", "vnet_hdr", "ifname", "script", "downscript"),
}


def parse_netdev(text: str) -> NetdevSpec:
    opts = split_opts(text)
    if not opts or opts[0][1] is not None:
        raise SpecError(f"Parameter 'type' is missing in '{text}'")
    kind = opts[0][0]
    if kind not in NETDEV_KINDS:
        raise SpecError(
            f"Parameter 'type' does not accept value '{kind}' (here: {', '.join(NETDEV_KINDS)})"
        )
    spec = NetdevSpec(kind=kind, vnet_hdr=kind == "tap")
    for key, value in opts[1:]:
        if key not in NETDEV_OPTIONS[kind]:
            raise SpecError(f"Invalid parameter '{key}'")
        if value is None:
            raise SpecError(f"Parameter '{key}' expects a value")
        if key == "id":
            spec.id = value
        elif key == "queues":
            try:
                q = int(value, 0)
            except ValueError:
                raise SpecError("Parameter 'queues' expects uint32_t") from None
            if not 1 <= q <= 1024:  # tap's MAX_TAP_QUEUES; 0 is "use 1" in QEMU, refused here
                raise SpecError(f"queues={value}: tap takes 1..1024 queues")
            spec.queues = q
        elif key == "vnet_hdr":
            if value in _TRUE:
                spec.vnet_hdr = True
            elif value in _FALSE:
                spec.vnet_hdr = False
            else:
                raise SpecError("Parameter 'vnet_hdr' expects 'on' or 'off'")
    return spec


@dataclass
class DeviceSpec:
    """A parsed ``-device virtio-net-pci,...`` with its netdev, and what QEMU derives."""

    props: dict[str, Any] = field(default_factory=dict)  # only those given
    netdev: NetdevSpec = field(default_factory=NetdevSpec)
    warnings: list[str] = field(default_factory=list)
    device_text: str = DRIVER

    def get(self, name: str) -> Any:
        return self.props.get(name, PROPERTY[name].default)

    def given(self, name: str) -> bool:
        return name in self.props

    # -- what QEMU derives ----------------------------------------------------------------------------
    @property
    def queue_pairs(self) -> int:
        """virtio_net_device_realize: one pair per peer queue (``mq`` only offers MQ)."""
        return max(self.netdev.queues, 1)

    @property
    def vectors(self) -> int:
        """virtio_net_pci_realize's default, then msix_init's limit (beyond it: no MSI-X)."""
        v = self.get("vectors")
        if v == NVECTORS_UNSPECIFIED:
            return 2 * self.queue_pairs + 2
        return v if v <= MSIX_MAX_VECTORS else 0

    @property
    def disable_legacy(self) -> bool:
        # virtio_pci_realize: auto means on only for a PCIe port's downstream device; the
        # model's device sits on the root bus (q35's pcie.0 or pc's pci.0), so auto is off.
        return self.get("disable-legacy") == "on"

    @property
    def disable_modern(self) -> bool:
        return bool(self.get("disable-modern"))

    @property
    def mac(self) -> bytes:
        m = self.get("mac")
        return m if isinstance(m, bytes) else bytes.fromhex(m.replace(":", ""))

    @property
    def speed(self) -> int:
        return self.get("speed")

    @property
    def duplex(self) -> int:
        d = self.get("duplex")
        return {None: DUPLEX_UNKNOWN, "half": DUPLEX_HALF, "full": DUPLEX_FULL}[d]

    @property
    def rx_queue_size(self) -> int:
        return self.get("rx_queue_size")

    @property
    def tx_burst(self) -> int:
        """x-txburst as virtio_net_flush_tx counts it: it stops once the count of chains
        served reaches tx_burst, so at least one chain is served whatever the value."""
        return max(1, self.get("x-txburst"))

    @property
    def tx_queue_size(self) -> int:
        return min(self.get("tx_queue_size"), TX_QUEUE_MAX_NO_VHOST)

    @property
    def rom_size(self) -> int:
        if not self.get("rombar"):
            return 0
        size = self.get("romsize")
        return 256 * 1024 if size == ROMSIZE_UNSET else size

    @property
    def packed(self) -> bool:
        return bool(self.get("packed"))

    @property
    def modern_pio_notify(self) -> bool:
        return bool(self.get("modern-pio-notify"))

    @property
    def page_per_vq(self) -> bool:
        return bool(self.get("page-per-vq"))

    def host_features(self) -> int:
        """virtio_net_get_features on the property bits: MAC always; the checksum and
        segmentation offloads only with a vnet-header peer, UFO only if it takes UFO; MTU
        with host_mtu; SPEED_DUPLEX with speed or duplex. Legacy-only bits (GSO,
        NOTIFY_ON_EMPTY, ANY_LAYOUT) are in :meth:`legacy_features`. VERSION_1 unless
        disable-modern."""
        f = 0
        for p in PROPERTIES:
            if p.feature is not None and p.kind == "bool" and self.get(p.name):
                f |= 1 << p.feature
        f |= 1 << VIRTIO_NET_F_MAC
        if not self.netdev.vnet_hdr:
            f &= ~TAP_VNET_OFFLOADS
        elif not self.netdev.ufo:
            f &= ~UFO_BITS
        if self.get("host_mtu"):
            f |= 1 << VIRTIO_NET_F_MTU
        if self.speed >= 0 or self.get("duplex") is not None:
            f |= 1 << VIRTIO_NET_F_SPEED_DUPLEX
        if not self.disable_modern:
            f |= 1 << VIRTIO_F_VERSION_1
        return f & ~LEGACY_ONLY_BITS

    def legacy_features(self) -> int:
        f = 0
        for name, bit in (("gso", VIRTIO_NET_F_GSO), ("notify_on_empty", VIRTIO_F_NOTIFY_ON_EMPTY),
                          ("any_layout", VIRTIO_F_ANY_LAYOUT)):  # fmt: skip
            if self.get(name):
                f |= 1 << bit
        return f

    @property
    def text(self) -> str:
        return self.device_text


LEGACY_ONLY_BITS = 1 << VIRTIO_NET_F_GSO | 1 << VIRTIO_F_NOTIFY_ON_EMPTY | 1 << VIRTIO_F_ANY_LAYOUT


def parse_device(text: str, netdev: str | NetdevSpec | None = None) -> DeviceSpec:
    """``virtio-net-pci[,prop=value]...`` (a leading driver name is optional) with its peer.

    Every error is QEMU's one line (SpecError); warnings QEMU prints and starts anyway (MSI-X
    vectors it cannot place) are in ``spec.warnings``."""
    nd = parse_netdev(netdev) if isinstance(netdev, str) else (netdev or NetdevSpec())
    opts = split_opts(text)
    if opts and opts[0][1] is None and opts[0][0] not in PROPERTY:
        driver = opts.pop(0)[0]
        if driver != DRIVER:
            raise SpecError(f"'{driver}' is not a valid device model name (here: {DRIVER})")
    spec = DeviceSpec(netdev=nd, device_text=text if text.startswith(DRIVER) else
                      f"{DRIVER},{text}" if text else DRIVER)  # fmt: skip
    for key, value in opts:
        prop = PROPERTY.get(key)
        if prop is None:
            raise SpecError(f"Property '{DRIVER}.{key}' not found")
        if value is None:
            if prop.kind != "bool":
                raise SpecError(f"Parameter '{key}' expects a value")
            value = "on"  # QEMU's deprecated short form, which it warns about
            spec.warnings.append(f"warning: short-form boolean option '{key}' deprecated; "
                                 f"please use {key}=on instead")  # fmt: skip
        spec.props[key] = _parse_value(prop, value)
    _check(spec)
    return spec


def _check(spec: DeviceSpec) -> None:
    """virtio_net_device_realize / virtio_pci_realize: where QEMU refuses to start."""
    for p in PROPERTIES:
        if p.effect == "refuse-on" and spec.given(p.name) and spec.get(p.name):
            raise SpecError(f"{DRIVER}: {p.name}=on is not modelled ({p.sets.split(':')[0]})")
    nid = spec.get("netdev")
    if nid is not None and spec.netdev.id is not None and nid != spec.netdev.id:
        raise SpecError(f"Property '{DRIVER}.netdev' can't find value '{nid}'")
    if spec.disable_legacy and spec.disable_modern:
        raise SpecError(
            "device cannot work as neither modern nor legacy mode is enabled; "
            "set either disable-modern or disable-legacy to off"
        )
    rx = spec.get("rx_queue_size")
    if not RX_QUEUE_MIN <= rx <= QUEUE_MAX_SIZE or rx & (rx - 1):
        raise SpecError(
            f"Invalid rx_queue_size (= {rx}), must be a power of 2 between "
            f"{RX_QUEUE_MIN} and {QUEUE_MAX_SIZE}."
        )
    tx = spec.get("tx_queue_size")
    if not RX_QUEUE_MIN <= tx <= QUEUE_MAX_SIZE or tx & (tx - 1):
        raise SpecError(
            f"Invalid tx_queue_size (= {tx}), must be a power of 2 between "
            f"{RX_QUEUE_MIN} and {QUEUE_MAX_SIZE}"
        )
    tx_mode = spec.get("tx")
    if tx_mode == "timer":
        # virtio_net_add_queue: tx=timer batches TX behind a timer of x-txtimer ns
        # (virtio_net_handle_tx_timer); the model serves every kick at once, as tx=bh. Said,
        # not refused: nothing in config space differs (replay and show are exact), only when
        # TX completes.
        spec.warnings.append("warning: tx=timer is not modelled: the device serves each TX "
                             "kick at once, as tx=bh")  # fmt: skip
    elif tx_mode not in (None, "bh"):
        # virtio_net_device_realize warns and goes on with the bottom half (two lines).
        spec.warnings += [f'warning: virtio-net: Unknown option tx={tx_mode}, valid options: '
                          '"timer" "bh"', 'Defaulting to "bh"']  # fmt: skip
    qdev_id = spec.get("id")
    if qdev_id is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", qdev_id):
        # qdev_device_add → id_wellformed
        raise SpecError("Parameter 'id' expects an identifier (identifiers consist of letters, "
                        "digits, '-', '.', '_', starting with a letter)")  # fmt: skip
    bus = spec.get("bus")
    if bus is not None and bus not in ROOT_BUSES:
        # QEMU knows its machine's buses (pcie.0 on q35, pci.0 on pc); the model sits on the
        # root bus of either, so it takes either name.
        raise SpecError(f"Bus '{bus}' not found")
    if spec.speed < SPEED_UNKNOWN:
        raise SpecError("'speed' must be between 0 and INT_MAX")
    if spec.get("duplex") not in (None, "half", "full"):
        raise SpecError("'duplex' must be 'half' or 'full'")
    if spec.queue_pairs > MAX_QUEUE_PAIRS:
        raise SpecError(
            f"Invalid number of queue pairs (= {spec.queue_pairs}), must be a positive "
            f"integer less than {MAX_QUEUE_PAIRS + 1}."
        )
    # pci_add_option_rom: the size must be a power of two whatever rombar says; with a ROM
    # BAR, the option ROM file must fit (Debian bookworm's ipxe-qemu efi-virtio.rom).
    romsize = spec.get("romsize")
    if romsize != ROMSIZE_UNSET and (romsize == 0 or romsize & (romsize - 1)):
        raise SpecError(f"ROM size {romsize} is not a power of two")
    if romsize != ROMSIZE_UNSET and spec.get("rombar") and romsize < ROMFILE_BYTES:
        raise SpecError(f'romfile "{ROMFILE}" ({ROMFILE_BYTES} bytes) is too large for ROM '
                        f"size {romsize}")  # fmt: skip
    if spec.packed and spec.disable_modern:
        raise SpecError(f"{DRIVER}: packed=on needs the modern interface (VIRTIO_F_VERSION_1)")
    v = spec.get("vectors")
    if v != NVECTORS_UNSPECIFIED and v > MSIX_MAX_VECTORS:
        # virtio_pci_device_plugged: msix_init fails, QEMU warns and goes on without MSI-X.
        spec.warnings.append(f"warning: unable to init msix vectors to {v}")
