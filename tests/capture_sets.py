"""The committed QEMU captures and the options each was taken with."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).parent / "data"

# name → device vectors (None: QEMU's default, 4)
CAPTURES = {
    "qemu-q35": None,
    "qemu-pc": None,
    "qemu-q35-vectors2": 2,
    "qemu-q35-vectors0": 0,
}


def load(name: str) -> list[dict]:
    with open(DATA / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]
