"""In-process CPU figures of the simulator and of replay (no kernel, no QEMU, no network).

    .venv/bin/python bench/inproc.py [--repeats 5] [--packets 10000] [--json FILE]
    .venv/bin/python bench/inproc.py --against /work/main/src --out bench/inproc.md

Measures, in one process, CPU time (``time.process_time``; the median of ``--repeats`` runs):
- ``sim``: ``run_sim`` as ``virtio-msix sim --packets N`` runs it (probe, ``ip link set up``,
  N frames sent and received back through the loopback backend, removal), with recording on
  (``Recorder()``: every record kept, as the tests use it) and off (``Recorder(enabled=False)``:
  what the ``sim`` command uses when no output file is asked for);
- ``replay``: ``replay_records`` over every capture in tests/data (records already parsed, so
  JSON decoding is not counted; device construction and the record checks are), as register
  accesses per CPU second;
- of ``sim``'s time, how much is inside the device's ``queue_notify`` (virtio/net.py and its
  virtqueues, and the MSI-X messages they raise).

``--against SRC``: the same figures for the code under SRC too (e.g. main's ``src``), each run
in a child process with ``PYTHONPATH=SRC``, alternated with this tree's, and both written to
``--out`` as a Markdown table. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"


def _median_cpu(fn: Any, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        gc.collect()  # what an earlier run left is not charged to this one
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times), min(times), max(times)


def measure(repeats: int, packets: int) -> dict[str, Any]:
    """The figures for whatever ``virtio_msix`` this interpreter imports."""
    import virtio_msix
    from virtio_msix.devcli import is_access, meta_json_for, replay_records
    from virtio_msix.guest.sim import SimOptions, run_sim
    from virtio_msix.trace import Recorder, load_jsonl

    out: dict[str, Any] = {"src": str(Path(virtio_msix.__file__).parent.parent)}

    def sim(enabled: bool, n: int) -> Any:
        res = run_sim(SimOptions(packets=n), Recorder(enabled=enabled))
        if res.probe_rc != 0 or res.net is None:
            raise RuntimeError(f"sim probe failed: {res.probe_rc}")
        return res

    for label, enabled in (("on", True), ("off", False)):
        med, lo, hi = _median_cpu(lambda e=enabled: sim(e, packets), repeats)
        out[f"sim_{label}_s"] = [med, lo, hi]
        med, lo, hi = _median_cpu(lambda e=enabled: sim(e, 0), repeats)
        out[f"probe_{label}_s"] = [med, lo, hi]
    out["packets"] = packets
    out["device_s"] = device_share(packets, repeats)

    # The device each capture was taken with: its meta record, else (older captures) the
    # vectors in NAME.meta.json, as ``virtio-msix replay`` chooses.
    captures = []
    for path in sorted(DATA.glob("*.jsonl")):
        meta = meta_json_for(str(path)) or {}
        vectors = meta.get("vectors") if isinstance(meta.get("vectors"), int) else None
        captures.append((path.name, load_jsonl(path), vectors))
    accesses = sum(1 for _, recs, _ in captures for r in recs if is_access(r))

    def replay_all() -> None:
        for name, recs, vectors in captures:
            if replay_records(recs, vectors=vectors):
                raise RuntimeError(f"replay of {name} mismatches")

    med, lo, hi = _median_cpu(replay_all, repeats)
    out["replay_s"] = [med, lo, hi]
    out["replay_accesses"] = accesses
    out["replay_captures"] = len(captures)
    out["replay_per_s"] = accesses / med
    return out


def device_share(packets: int, repeats: int) -> list[float]:
    """CPU inside the device's queue_notify during ``sim`` (recording off): the virtio-net
    device and its virtqueues (virtio/net.py, queue.py, packed.py) plus the MSI-X messages they
    raise — the part of a packet the transport, bus and guest model do not own. Measured by
    wrapping the method (a few hundred ns per kick of its own); the median of ``repeats``."""
    from virtio_msix.guest.sim import SimOptions, run_sim
    from virtio_msix.trace import Recorder
    from virtio_msix.virtio import net

    spent = [0]
    wrapped = []
    for cls in (c for c in vars(net).values() if isinstance(c, type) and "queue_notify" in vars(c)):
        orig = cls.queue_notify

        def timed(self: Any, *a: Any, _orig: Any = orig, **kw: Any) -> Any:
            t0 = time.process_time_ns()
            try:
                return _orig(self, *a, **kw)
            finally:
                spent[0] += time.process_time_ns() - t0

        cls.queue_notify = timed
        wrapped.append((cls, orig))
    try:
        shares = []
        for _ in range(repeats):
            spent[0] = 0
            gc.collect()
            run_sim(SimOptions(packets=packets), Recorder(enabled=False))
            shares.append(spent[0] / 1e9)
    finally:
        for cls, orig in wrapped:
            cls.queue_notify = orig
    return [statistics.median(shares), min(shares), max(shares)]


def _child(src: str | None, repeats: int, packets: int) -> dict[str, Any]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           "--repeats", str(repeats), "--packets", str(packets)]  # fmt: skip
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def _row(name: str, r: dict[str, Any]) -> str:
    def s(key: str) -> str:
        med, lo, hi = r[key]
        return f"{med:.3f} ({lo:.3f}–{hi:.3f})"

    return (f"| {name} | {s('probe_off_s')} | {s('sim_off_s')} | {s('device_s')} | {s('sim_on_s')} | "
            f"{r['replay_per_s'] / 1000:.0f} k/s ({r['replay_accesses']} in "
            f"{r['replay_s'][0] * 1000:.1f} ms) |")  # fmt: skip


def report(results: list[tuple[str, dict[str, Any]]], how: str, packets: int) -> str:
    lines = [
        f"# In-process figures ({time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"Python {platform.python_version()})",
        "",
        f"CPU seconds, median (min–max) {how}; `bench/inproc.py`. sim: probe, "
        f"{packets} frames each way through the loopback, removal. Replay: every capture in "
        "tests/data, parsed beforehand.",
        "",
        f"| code | probe only, recording off | sim {packets} pkts, recording off "
        f"| of which in the device's queue_notify (net.py, queue.py) "
        f"| sim {packets} pkts, recording on | replay |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_row(name, r) for name, r in results]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--packets", type=int, default=10_000)
    ap.add_argument("--against", metavar="SRC", help="also measure the package under SRC")
    ap.add_argument("--rounds", type=int, default=2, help="alternations with --against")
    ap.add_argument("--out", metavar="FILE", help="write the Markdown table here")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats, args.packets)))
        return 0
    results: list[tuple[str, dict[str, Any]]] = []
    if args.against:
        per = max(1, args.repeats // args.rounds)
        runs: dict[str, list[dict[str, Any]]] = {"against": [], "this": []}
        for _ in range(args.rounds):
            runs["against"].append(_child(args.against, per, args.packets))
            runs["this"].append(_child(None, per, args.packets))
        for key, label in (("against", args.against), ("this", "this tree")):
            results.append((f"{label}", _merge(runs[key])))
    else:
        results.append(("this tree", measure(args.repeats, args.packets)))
    if args.against:
        how = (f"of {args.rounds} rounds alternating the two trees, {per} runs each (the median "
               "of the rounds' medians; min–max over all runs)")  # fmt: skip
    else:
        how = f"of {args.repeats} runs"
    text = report(results, how, args.packets)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results), indent=2), encoding="utf-8")
    return 0


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one tree: the median of the rounds' medians, the extremes of their ranges."""
    out = dict(runs[0])
    for key in [k for k, v in runs[0].items() if isinstance(v, list)]:
        out[key] = [statistics.median(r[key][0] for r in runs),
                    min(r[key][1] for r in runs), max(r[key][2] for r in runs)]  # fmt: skip
    out["replay_per_s"] = out["replay_accesses"] / out["replay_s"][0]
    return out


if __name__ == "__main__":
    sys.exit(main())
