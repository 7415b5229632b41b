"""A recorder of register accesses and named events, in the JSON-lines format of DESIGN.md.

One record per access: ``{"space", "op", "offset", "size", "value"}`` plus optional extra keys.
Events (an MSI sent, INTx raised, a device error) are records whose ``space`` is not a register
space (``"msi"``, ``"intx"``, ``"event"``) so replay skips them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

# The register spaces an access record may name (DESIGN.md "Access trace format").
SPACES = ("cfg", "common", "isr", "device", "notify", "msix-table", "msix-pba", "legacy")

Record = dict[str, Any]


class Recorder:
    """Collects records in order; listeners see each record as it is made."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.records: list[Record] = []
        self._listeners: list[Callable[[Record], None]] = []

    def subscribe(self, listener: Callable[[Record], None]) -> None:
        self._listeners.append(listener)

    def access(self, space: str, op: str, offset: int, size: int, value: int, **extra: Any) -> None:
        if not self.enabled and not self._listeners:
            return
        rec: Record = {"space": space, "op": op, "offset": offset, "size": size, "value": value}
        if extra:
            rec.update(extra)
        self._emit(rec)

    def event(self, space: str, **fields: Any) -> None:
        if not self.enabled and not self._listeners:
            return
        rec: Record = {"space": space}
        rec.update(fields)
        self._emit(rec)

    def _emit(self, rec: Record) -> None:
        if self.enabled:
            self.records.append(rec)
        for listener in self._listeners:
            listener(rec)

    def clear(self) -> None:
        self.records.clear()

    def accesses(self) -> Iterator[Record]:
        """Only the register-access records (those replay compares)."""
        return (r for r in self.records if r.get("space") in SPACES and "op" in r)


def write_jsonl(records: Iterable[Record], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")


def load_jsonl(path: str | Path) -> list[Record]:
    """Read a trace; blank lines are skipped, a malformed line is a clear ValueError."""
    out: list[Record] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: a record must be a JSON object")
            out.append(rec)
    return out
