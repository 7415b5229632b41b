"""A recorder of register accesses and named events, in the JSON-lines format of docs/DESIGN.md.

One record per access: ``{"space", "op", "offset", "size", "value"}`` plus optional extra keys,
and ``t``: nanoseconds since the recorder was made (the host's monotonic clock), for timelines.
Events (an MSI sent, INTx raised, a device error) are records whose ``space`` is not a register
space (``"msi"``, ``"intx"``, ``"event"``) so replay skips them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

# The register spaces an access record may name (docs/DESIGN.md "Access trace format").
SPACES = ("cfg", "common", "isr", "device", "notify", "msix-table", "msix-pba", "legacy",
          "notify-pio")  # fmt: skip
# Records that are not register accesses: interrupts sent, device events, trace metadata.
EVENT_SPACES = ("msi", "intx", "event", "meta")

Record = dict[str, Any]


class Recorder:
    """Collects records in order; listeners see each record as it is made."""

    def __init__(
        self, enabled: bool = True, keep_first: int | None = None, keep_last: int = 0
    ) -> None:
        self._records: list[Record] = []
        self._listeners: list[Callable[[Record], None]] = []
        # Listeners that, while nothing keeps or streams records, need only the records of some
        # spaces (a phase tagger: only common-config accesses change its state); see subscribe.
        self._narrow: dict[int, frozenset[str]] = {}
        self._enabled = enabled
        self._update()
        self.t0 = time.monotonic_ns()
        # Bounded (keep_first set): the first ``keep_first`` records and the last
        # ``keep_last``; ``dropped`` counts those between, which listeners still saw.
        self.keep_first = keep_first
        self._tail: deque[Record] = deque(maxlen=keep_last or None)
        self.keep_last = keep_last
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        """False: records go to the listeners only, none are kept."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        self._update()

    def _update(self) -> None:
        # Recording off costs one test per access: ``_all`` False means nobody wants every
        # record; then only records of a space in ``_spaces`` are made (empty: none at all).
        narrow = [self._narrow.get(id(fn)) for fn in self._listeners]
        self._all = self._enabled or any(n is None for n in narrow)
        self._spaces: frozenset[str] = frozenset().union(*(n for n in narrow if n is not None))
        # For callers on a hot path, before they build a record's fields: None when every
        # space is wanted, else the spaces whose records are made (empty: none).
        self.wanted: frozenset[str] | None = None if self._all else self._spaces

    @property
    def active(self) -> bool:
        """Whether any record is made at all (callers may skip work that only feeds one)."""
        return self._all or bool(self._spaces)

    @property
    def records(self) -> list[Record]:
        """The records kept, in order (when bounded: the first ones, then the last ones)."""
        if not self._tail:
            return self._records
        return self._records + list(self._tail)

    def subscribe(
        self,
        listener: Callable[[Record], None],
        first: bool = False,
        only: Iterable[str] | None = None,
    ) -> None:
        """``first``: before the listeners already there (one that adds keys others read).
        ``only``: the spaces whose records this listener needs while no other listener (and no
        keeping) wants records — records of other spaces are then not made at all."""
        if first:
            self._listeners.insert(0, listener)
        else:
            self._listeners.append(listener)
        if only is not None:
            self._narrow[id(listener)] = frozenset(only)
        self._update()

    def access(self, space: str, op: str, offset: int, size: int, value: int, **extra: Any) -> None:
        if not self._all and space not in self._spaces:
            return
        rec: Record = {"space": space, "op": op, "offset": offset, "size": size, "value": value}
        if extra:
            rec.update(extra)
        self._emit(rec)

    def event(self, space: str, **fields: Any) -> None:
        if not self._all and space not in self._spaces:
            return
        rec: Record = {"space": space}
        rec.update(fields)
        self._emit(rec)

    def _emit(self, rec: Record) -> None:
        rec["t"] = time.monotonic_ns() - self.t0
        if self._enabled:
            if self.keep_first is None or len(self._records) < self.keep_first:
                self._records.append(rec)
            elif self.keep_last:
                if len(self._tail) == self.keep_last:
                    self.dropped += 1
                self._tail.append(rec)
            else:
                self.dropped += 1
        for listener in self._listeners:
            listener(rec)

    def clear(self) -> None:
        self._records.clear()
        self._tail.clear()

    def accesses(self) -> Iterator[Record]:
        """Only the register-access records (those replay compares)."""
        return (r for r in self.records if r.get("space") in SPACES and "op" in r)


def trace_meta(records: Iterable[Record]) -> Record | None:
    """A trace's configuration: its first record when that is ``{"space": "meta", ...}``
    (capture-qemu writes the device, netdev, machine, CPUs and kernel there); None for traces
    without one (older captures, sim/boot)."""
    for rec in records:
        return rec if rec.get("space") == "meta" else None
    return None


def write_jsonl(records: Iterable[Record], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")


class JsonlWriter:
    """A recorder listener that streams each record to a file as it is made."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, rec: Record) -> None:
        self.out.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.out.close()


def load_jsonl(path: str | Path | IO[str]) -> list[Record]:
    """Read a trace; blank lines are skipped, a malformed line is a clear ValueError."""
    return [rec for _, rec in load_jsonl_lines(path)]


def load_jsonl_lines(path: str | Path | IO[str]) -> list[tuple[int, Record]]:
    """Like ``load_jsonl``, each record with its line number; ``path`` may be an open file."""
    if not isinstance(path, str | Path):
        return _parse_lines(path, getattr(path, "name", "<stream>"))
    with open(path, encoding="utf-8") as f:
        return _parse_lines(f, str(path))


def _parse_lines(f: IO[str], name: str) -> list[tuple[int, Record]]:
    out: list[tuple[int, Record]] = []
    for lineno, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}:{lineno}: not JSON: {e.msg}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{name}:{lineno}: a record must be a JSON object")
        out.append((lineno, rec))
    return out
