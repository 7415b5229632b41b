"""A timeline of a run in the Chrome trace-event JSON format (Perfetto's ui.perfetto.dev and
chrome://tracing open it): register accesses and MSI-X table writes as instants on one track
per register space, MSI messages and INTx changes on an "interrupts" track, and each interrupt
handler run as a slice on a track per IRQ.

Events are written as they come (the ``traceEvents`` array is streamed), so memory stays flat
however long the run. Times are the records' ``t`` (ns since the recorder started), written in
microseconds as the format wants.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from ..abi.msix import FIELD_NAMES, entry_field

PID = 1
# Fixed tracks first, in a readable order; one more track per IRQ, numbered from IRQ_TID.
TRACKS = ("cfg", "common", "isr", "device", "notify", "msix-table", "msix-pba", "legacy",
          "interrupts", "events")  # fmt: skip
IRQ_TID = 100


class TimelineWriter:
    def __init__(self, out: TextIO, t0: int, process: str = "virtio-msix") -> None:
        """``t0``: the recorder's start (monotonic ns), to put handler runs on the same axis."""
        self.out = out
        self.t0 = t0
        self.events = 0
        self._first = True
        self._irq_tracks: set[int] = set()
        out.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
        self._emit({"ph": "M", "pid": PID, "name": "process_name", "args": {"name": process}})
        for tid, name in enumerate(TRACKS, 1):
            self._thread(tid, name)

    def _thread(self, tid: int, name: str) -> None:
        self._emit({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name",
                    "args": {"name": name}})  # fmt: skip
        self._emit({"ph": "M", "pid": PID, "tid": tid, "name": "thread_sort_index",
                    "args": {"sort_index": tid}})  # fmt: skip

    def _emit(self, event: dict[str, Any]) -> None:
        self.out.write(("" if self._first else ",\n") + json.dumps(event, separators=(",", ":")))
        self._first = False
        self.events += 1

    def record(self, rec: dict[str, Any]) -> None:
        """A recorder listener: one instant per access, MSI message, INTx change or event."""
        space = rec.get("space")
        ts = rec.get("t", 0) / 1000
        args = {k: v for k, v in rec.items() if k not in ("space", "t")}
        if "op" in rec and space in TRACKS:
            name = f"{space} {rec['op']} +{rec['offset']:#x}/{rec['size']} = {rec['value']:#x}"
            if space == "msix-table" and rec["op"] == "w":
                entry, field = entry_field(rec["offset"])
                part = FIELD_NAMES.get(field, "?")
                name = f"entry {entry} {part} = {rec['value']:#x}"
            tid = TRACKS.index(space) + 1
        elif space == "msi":
            name = f"MSI vector {rec.get('vector')} → {rec.get('address', 0):#x}/{rec.get('data', 0):#x}"
            tid = TRACKS.index("interrupts") + 1
        elif space == "intx":
            name = f"INTx {'assert' if rec.get('level') else 'deassert'}"
            tid = TRACKS.index("interrupts") + 1
        else:
            name = str(rec.get("kind", space))
            tid = TRACKS.index("events") + 1
        self._emit({"ph": "i", "s": "t", "pid": PID, "tid": tid, "ts": ts, "name": name,
                    "cat": str(space), "args": args})  # fmt: skip

    def handler(self, irq: int, name: str, start_ns: int, end_ns: int) -> None:
        """One interrupt handler run (monotonic ns), as a slice on the IRQ's own track."""
        tid = IRQ_TID + irq
        if irq not in self._irq_tracks:
            self._irq_tracks.add(irq)
            self._thread(tid, f"irq {irq} {name}")
        self._emit({"ph": "X", "pid": PID, "tid": tid, "ts": (start_ns - self.t0) / 1000,
                    "dur": max(end_ns - start_ns, 0) / 1000, "name": name or f"irq {irq}",
                    "cat": "irq"})  # fmt: skip

    def close(self) -> None:
        self.out.write("\n]}\n")
        self.out.close()
