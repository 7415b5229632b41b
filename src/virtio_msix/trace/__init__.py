"""Access and event recording (docs/DESIGN.md layer 1): knows nothing of PCI or virtio."""

from .recorder import (
    EVENT_SPACES,
    SPACES,
    Recorder,
    load_jsonl,
    load_jsonl_lines,
    trace_meta,
    write_jsonl,
)

__all__ = [
    "EVENT_SPACES",
    "SPACES",
    "Recorder",
    "load_jsonl",
    "load_jsonl_lines",
    "trace_meta",
    "write_jsonl",
]
