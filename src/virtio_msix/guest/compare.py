"""Compare two access traces of the virtio probe, record by record (ring addresses aside:
they are wherever the guest's allocator put the rings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..host.phases import probe_window
from ..virtio.regs import COMMON, LEGACY

RING_ADDRESS_OFFSETS = {
    COMMON[n].offset
    for n in (
        "queue_desc_lo",
        "queue_desc_hi",
        "queue_driver_lo",
        "queue_driver_hi",
        "queue_device_lo",
        "queue_device_hi",
    )
}


# The legacy ring address: a page frame number (§4.1.4.10), as far from the model's as the
# modern addresses are — except 0, which deactivates the queue and must match.
LEGACY_PFN_OFFSET = LEGACY["queue_address"].offset


def key(rec: dict[str, Any]) -> tuple:
    value = rec["value"]
    if rec["space"] == "common" and rec["op"] == "w" and rec["offset"] in RING_ADDRESS_OFFSETS:
        value = None
    elif (rec["space"] == "legacy" and rec["op"] == "w" and rec["offset"] == LEGACY_PFN_OFFSET
          and value):  # fmt: skip
        value = None
    return (rec["space"], rec["op"], rec["offset"], rec["size"], value)


def phase(records: list[dict[str, Any]], name: str = "probe") -> list[dict[str, Any]]:
    return [r for r in records if r.get("phase") == name and "op" in r]


@dataclass
class Difference:
    index: int
    expected: tuple | None
    got: tuple | None


def diff(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[Difference]:
    out = []
    for i in range(max(len(expected), len(got))):
        e = key(expected[i]) if i < len(expected) else None
        g = key(got[i]) if i < len(got) else None
        if e != g:
            out.append(Difference(i, e, g))
    return out


def format_key(k: tuple | None) -> str:
    if k is None:
        return "(nothing)"
    space, op, offset, size, value = k
    v = "<ring address>" if value is None else f"{value:#x}"
    return f"{space:<10} {op} +{offset:#05x}/{size} {v}"


def virtio_phase(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accesses from the first common-config access to the first DRIVER_OK write, inclusive
    (host/phases.py probe_window): the virtio transport's part of a probe; the PCI enumeration
    before it differs between hosts (firmware, bus scan)."""
    return probe_window(records)
