"""Access and event recording (DESIGN.md layer 1): knows nothing of PCI or virtio."""

from .recorder import SPACES, Recorder, load_jsonl, write_jsonl

__all__ = ["SPACES", "Recorder", "load_jsonl", "write_jsonl"]
