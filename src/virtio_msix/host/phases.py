"""The phases of a probe in an access trace, the same for every host: ``enumeration`` (firmware
and the kernel's PCI scan), ``probe`` (from the driver's first access to its DRIVER_OK write,
inclusive) and ``run`` (after it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..virtio.device import DRIVER_OK
from ..virtio.regs import COMMON, LEGACY

# device_status in each transport's register block: the modern common config, or the legacy
# I/O BAR0 block of a legacy-only device (§4.1.4.10), which has no common config.
_STATUS = {"common": COMMON["device_status"].offset, "legacy": LEGACY["device_status"].offset}
# Where the virtio part of a probe starts: its first transport-register access.
TRANSPORT_SPACES = tuple(_STATUS)
# the only records next_phase changes the phase on (the tagger listens to nothing else)
PHASE_SPACES = TRANSPORT_SPACES


def is_driver_ok_write(rec: dict[str, Any]) -> bool:
    """A write of device_status that sets DRIVER_OK (virtio 1.2 §3.1.1 step 8)."""
    space = rec.get("space")
    return (space in _STATUS and rec.get("op") == "w"
            and rec.get("offset") == _STATUS[space] and bool(rec.get("value", 0) & DRIVER_OK))  # fmt: skip


def next_phase(phase: str, rec: dict[str, Any], probe_on_common: bool) -> tuple[str, str]:
    """(the record's phase, the phase after it). ``probe_on_common``: the probe starts at the
    first common-config access (hosts that cannot see the driver start: a real kernel);
    otherwise the host sets ``probe`` itself when it calls the driver."""
    if probe_on_common and phase == "enumeration" and rec.get("space") in TRANSPORT_SPACES:
        phase = "probe"
    return phase, ("run" if phase == "probe" and is_driver_ok_write(rec) else phase)


class PhaseTagger:
    """Tags each record a recorder emits with ``phase``; ``phase`` may be set by the host."""

    def __init__(self, recorder: Any = None, probe_on_common: bool = False) -> None:
        self.phase = "enumeration"
        self.probe_on_common = probe_on_common
        if recorder is not None:
            # before writers that stream tagged records; alone, it needs only the records that
            # move the phase (transport-register accesses), so recording off stays cheap
            recorder.subscribe(self, first=True, only=PHASE_SPACES)

    def __call__(self, rec: dict[str, Any]) -> None:
        if rec.get("space") not in PHASE_SPACES:  # next_phase keeps the phase: skip the calls
            rec["phase"] = self.phase
            return
        rec["phase"], self.phase = next_phase(self.phase, rec, self.probe_on_common)


def tag_phases(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tag a finished trace (the probe starting at the first common-config access)."""
    tagger = PhaseTagger(probe_on_common=True)
    out = []
    for rec in records:
        tagger(rec)
        out.append(rec)
    return out


def probe_window(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accesses from the first common-config access (legacy-only device: the first BAR0
    register access) to the first DRIVER_OK write, inclusive: the virtio transport's part of a
    probe, comparable between hosts whatever their enumeration did (firmware, bus scan)."""
    out: list[dict[str, Any]] = []
    for r in records:
        if "op" not in r or (not out and r.get("space") not in TRANSPORT_SPACES):
            continue
        out.append(r)
        if is_driver_ok_write(r):
            break
    return out
