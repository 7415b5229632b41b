"""Boots in a row with traffic: does the real kernel come up every time on this host?

    .venv/bin/python bench/boot_loop.py [--boots 50] [--out bench/boot-loop.txt]

Each boot runs the default guest script (bring eth0 up, ping the responder through our device 3
times, /proc/interrupts) and, every fifth boot, ``tests/guest/fpcheck.c`` (SSE/AVX/AVX-512
registers across context switches). Counted: boots that finished, kernel panics, other errors,
pings answered, fpcheck passes; with the host's XSAVE size and the kernel's FP plan, since that
is what decided whether this kernel runs here (uml/patches/uml-host-xstate-size.patch).
Figures are printed and written to the output file; nothing asserts on time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import DEFAULT_SCRIPT, BootOptions, run_boot

ROOT = Path(__file__).resolve().parent.parent
FPCHECK_SRC = ROOT / "tests" / "guest" / "fpcheck.c"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--boots", type=int, default=50, help="how many boots (default 50)")
    p.add_argument("--out", default=str(Path(__file__).with_name("boot-loop.txt")),
                   help="file the figures are written to")  # fmt: skip
    args = p.parse_args(argv)
    if args.boots < 1:
        p.error("--boots must be at least 1")
    uml_kernel.build(progress=True)
    plan = uml_kernel.host_fp_plan()
    with tempfile.TemporaryDirectory() as tmp:
        fpcheck = Path(tmp) / "fpcheck"
        subprocess.run(["gcc", "-O2", "-static", "-pthread", "-o", str(fpcheck), str(FPCHECK_SRC)],
                       check=True, capture_output=True)  # fmt: skip
        finished = panics = errors = fp_runs = fp_pass = 0
        pings_sent = pings_received = 0
        init_ms: list[float] = []
        failures: list[str] = []
        start = time.monotonic()
        for i in range(args.boots):
            script = DEFAULT_SCRIPT
            files = {}
            if i % 5 == 4:
                script += "/fpcheck 2 2 100\n"
                files = {"/fpcheck": fpcheck}
            res = run_boot(BootOptions(script=script, files=files, timeout=120))
            panicked = "Kernel panic" in res.console
            panics += panicked
            if res.error is None and not panicked:
                finished += 1
            else:
                errors += not panicked
                failures.append(f"boot {i}: {res.error}")
            ping = res.ping()
            pings_sent += ping["sent"]
            pings_received += ping["received"]
            if "init" in res.times:
                init_ms.append(res.times["init"] * 1000)
            if files:
                fp_runs += 1
                fp_pass += "FPCHECK PASS" in res.console
            sys.stderr.write(f"\rboot {i + 1}/{args.boots}: {finished} finished, {panics} panics")
            sys.stderr.flush()
        sys.stderr.write("\n")
        wall = time.monotonic() - start
    lines = [
        f"virtio-msix boot loop, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"host XSAVE area {plan.host_xstate_bytes} bytes → kernel FP area {plan.area_bytes} "
        f"bytes, kernel stack order {plan.stack_order}",
        f"{args.boots} boots with traffic in {wall:.0f} s: {finished} finished, {panics} kernel "
        f"panics, {errors} other errors",
        f"pings through our device: {pings_received}/{pings_sent} answered",
        f"fpcheck (2 processes x 2 threads x 100 rounds): {fp_pass}/{fp_runs} passed",
    ]
    if init_ms:
        lines.append(f"boot → /init: median {statistics.median(init_ms):.0f} ms "
                     f"(min {min(init_ms):.0f}, max {max(init_ms):.0f})")  # fmt: skip
    lines += failures[:10]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).write_text(text)
    return 0 if finished == args.boots and fp_pass == fp_runs else 1


if __name__ == "__main__":
    sys.exit(main())
