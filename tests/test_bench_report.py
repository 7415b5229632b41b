"""bench/side_by_side.py's figures from what the guests print: the system-call probe's parse and
the guest-bound ceilings the report derives from the guest kernel's CPU per MB."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import side_by_side  # noqa: E402

N = side_by_side.SYSCALL_BYTES


def test_syscall_probe_parses_busybox_time():
    text = f"{N}+0 records in\n{N}+0 records out\nreal\t0m 1.20s\nuser\t0m 0.10s\nsys\t0m 0.90s\n"
    # 1.2 s over two system calls (read, write) per byte
    assert side_by_side.parse_syscall_us(text) == pytest.approx(1.2e6 / (2 * N))
    minutes = text.replace("0m 1.20s", "1m 3.00s")
    assert side_by_side.parse_syscall_us(minutes) == pytest.approx(63e6 / (2 * N))


@pytest.mark.parametrize("text", [
    "",  # the section never printed (an older guest script, a guest that died)
    f"{N}+0 records in\n{N}+0 records out\n",  # no time applet
    f"dd: /dev/null: I/O error\n{N // 2}+0 records in\n{N // 2}+0 records out\nreal\t0m 0.50s\n",
])  # fmt: skip
def test_syscall_probe_refuses_incomplete_output(text):
    assert side_by_side.parse_syscall_us(text) is None


def test_real_busybox_time_output_parses():
    """What the guests' busybox prints, from the host's busybox-static (the same binary)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("no busybox (Debian's busybox-static)")
    script = side_by_side.WORKLOAD.splitlines()[-1].split("; ")[1]
    out = subprocess.run([busybox, "sh", "-c", script.format(syscall_bytes=N)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    us = side_by_side.parse_syscall_us(out.stdout)
    assert us is not None, out.stdout + out.stderr
    assert 0 <= us < 1000


def _run(kernel_s: float, seconds: float, nbytes: int = 16 << 20) -> dict:
    return {"bytes": nbytes, "seconds": seconds, "cpu": {"device": 0.1, "kernel": kernel_s}}


def test_busy_share_and_ceiling_come_from_the_guest_kernel_cpu():
    uml = side_by_side.metrics({"boot_s": 0.2, "g2h": _run(1.9, 2.0), "h2g": _run(4.0, 8.0)})
    qemu = side_by_side.metrics({"boot_s": 8.0, "g2h": _run(6.0, 6.7), "h2g": _run(2.5, 2.7)})
    assert uml["g2h_kernel_busy_pct"] == pytest.approx(95.0)
    assert uml["h2g_kernel_busy_pct"] == pytest.approx(50.0)
    m = [{"floor": {}, "uml": uml, "qemu": qemu}]
    (line,) = [ln for ln in side_by_side.ceilings(m) if ln]
    mb = (16 << 20) / 1e6
    g2h_cap, q_g2h = mb / 1.9, mb / 6.7  # MB/s with no device time; QEMU's rate
    assert f"g→h {side_by_side._fmt(g2h_cap)} MB/s = {g2h_cap / q_g2h:.1f}× QEMU" in line
    assert f"h→g {side_by_side._fmt(mb / 4.0)} MB/s" in line
    assert "64 KiB" not in line  # no bulk transfer in these rounds: no ceiling claimed for it


def test_no_ceiling_without_guest_cpu():
    assert side_by_side.ceilings([{"floor": {}, "uml": {}, "qemu": {}}]) == []
