"""The device views every host shows, built once: the MSI-X table with each message decoded
for the architecture that wrote it, the event → vector map, and the names drivers give queues."""

from __future__ import annotations

from typing import Any

from ..abi.uml import UML_MSI_ADDRESS
from ..abi.virtio import VIRTIO_MSI_NO_VECTOR
from ..irq.x86 import decode_msi
from ..trace.text import table
from ..virtio.device import VirtioDevice
from ..virtio.pci import VirtioPciDevice


def queue_names(device: VirtioDevice) -> list[str]:
    """The names the driver gives the device's virtqueues: the device's ``queue_names`` when it
    declares them (as Linux drivers name theirs: "input", "requests.0", ...), else queueN."""
    declared = list(device.queue_names)
    return [declared[i] if i < len(declared) else f"queue{i}" for i in range(len(device.queues))]


def default_vectors(device: VirtioDevice) -> int:
    """One MSI-X vector for configuration changes and one per virtqueue: what Linux asks for
    first (vp_find_vqs_msix with per_vq_vectors)."""
    return 1 + len(device.queues)


def decode_message(address: int, data: int, arch: str) -> str:
    """An MSI message as the interrupt controller of ``arch`` ("x86" or "um") reads it."""
    if arch == "um":
        return f"UML irq {data}" if address == UML_MSI_ADDRESS else "-"
    d = decode_msi(address, data)
    if not (d.valid and address):
        return "-"
    return f"{'logical' if d.logical else 'physical'} dest {d.dest:#x} vector {d.vector:#04x}"


def msix_table(device: VirtioPciDevice, arch: str) -> list[dict[str, Any]]:
    """The device's MSI-X table rows (entry, address, data, masked, pending, sent) + decoded."""
    if device.msix is None:
        return []
    rows = device.msix.table_rows()
    for row in rows:
        row["decoded"] = decode_message(row["address"], row["data"], arch)
    return rows


def device_views(device: VirtioPciDevice, names: list[str], arch: str) -> dict[str, Any]:
    """MSI-X state and table, and the event → vector map, as the driver has programmed them."""
    msix = device.msix
    return {
        "msix_enabled": bool(msix and msix.enabled),
        "function_masked": bool(msix and msix.function_masked),
        "table": msix_table(device, arch),
        "event_vectors": device.event_vectors(names),
        # virtio 1.2 §3.1.1: what the device offered, what the driver accepted, and its status
        "device_features": device.device.host_features,
        "driver_features": device.device.driver_features,
        "device_status": device.device.status,
    }


def render_msix_table(rows: list[dict[str, Any]], sent: bool = False) -> str:
    """The MSI-X table rows as a text table (``sent``: with each entry's message count)."""
    head = ["entry", "address", "data", "decoded", "masked", "pending"] + (["sent"] if sent else [])
    return table([[str(r["entry"]), f"{r['address']:#010x}", f"{r['data']:#06x}", r["decoded"],
                   "yes" if r["masked"] else "no", "yes" if r["pending"] else "no"]
                  + ([str(r["sent"])] if sent else []) for r in rows], head)  # fmt: skip


def render_event_vectors(pairs: list[tuple[str, int]]) -> str:
    """event → vector as a text table (NO_VECTOR by name)."""
    return table([[n, "NO_VECTOR" if v == VIRTIO_MSI_NO_VECTOR else str(v)] for n, v in pairs],
                 ["event", "vector"])  # fmt: skip
