"""Benchmarks of the real kernel driving our device (UML), and of the simulator.

    .venv/bin/python bench/uml_bench.py [--out bench/results.txt]

Measures, with the UML kernel already built (cached):
- time from starting the kernel to the guest's /init (median of 5 boots);
- ping round-trip through our device: to the ARP/ICMP responder (our Python process answers) and
  through a TAP to the host kernel (needs root for the TAP);
- TCP throughput from the guest to a host socket through our device and the TAP;
- the simulator: a full probe, and 10 000 packets each way, CPU time.
Figures are printed and written to the output file; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import platform
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml import kernel as uml_kernel
from virtio_msix.uml.boot import BootError, BootOptions, run_boot

TCP_PORT = 5001
TCP_BYTES = 16 * 1024 * 1024


def boot_to_init(runs: int = 5) -> list[float]:
    times = []
    for _ in range(runs):
        res = run_boot(BootOptions(script="true\n", timeout=60))
        if res.error:
            raise RuntimeError(res.error)
        times.append(res.times["init"])
    return times


def ping(net: str, count: int = 20) -> dict:
    res = run_boot(BootOptions(net=net, timeout=120, script=(
        "ip link set eth0 up; ip addr add $GUEST_IP/24 dev eth0\n"
        f"echo @@vmsix ping; ping -c {count} -i 0.2 $HOST_IP; echo @@vmsix end\n")))  # fmt: skip
    if res.error:
        raise RuntimeError(res.error)
    return res.ping()


def tcp_throughput() -> tuple[float, int]:
    """Guest → host: busybox dd | nc into a host socket on the TAP's host address."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    result: dict = {}

    def sink() -> None:
        srv.settimeout(60)
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        total, start = 0, None
        with conn:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    break
                if start is None:
                    start = time.monotonic()
                total += len(data)
        result["bytes"], result["seconds"] = total, time.monotonic() - (start or time.monotonic())

    # Listening on every address: the TAP's host address only exists once the boot starts.
    srv.bind(("0.0.0.0", TCP_PORT))
    srv.listen(1)
    receiver = threading.Thread(target=sink, daemon=True)
    receiver.start()
    try:
        res = run_boot(BootOptions(net="tap", timeout=180, script=(
            "ip link set eth0 up; ip addr add $GUEST_IP/24 dev eth0; sleep 1\n"
            f"dd if=/dev/zero bs=65536 count={TCP_BYTES // 65536} 2>/dev/null | nc $HOST_IP {TCP_PORT}\n")))  # fmt: skip
        receiver.join(timeout=30)  # the last bytes may still be in flight when the guest ends
    finally:
        srv.close()
    if res.error or "bytes" not in result:
        raise RuntimeError(res.error or "no TCP data arrived")
    return result["bytes"] / result["seconds"] / 1e6, result["bytes"]


def sim_figures() -> dict:
    t0 = time.process_time()
    run_sim(SimOptions(packets=0, teardown=False))
    probe = time.process_time() - t0
    t0 = time.process_time()
    run_sim(SimOptions(packets=10_000, teardown=False))
    traffic = time.process_time() - t0 - probe
    return {"probe_s": probe, "packets_10k_s": traffic}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(Path(__file__).with_name("results.txt")))
    args = p.parse_args()
    uml_kernel.build(progress=True)
    lines: list[str] = []

    def say(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    say(f"virtio-msix benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")  # fmt: skip
    t = boot_to_init()
    say(f"UML boot → /init (kernel cached, 5 runs): median {statistics.median(t) * 1000:.0f} ms "
        f"(min {min(t) * 1000:.0f}, max {max(t) * 1000:.0f})")  # fmt: skip
    r = ping("responder")
    say(f"ping via our device to the responder: {r['received']}/{r['sent']}, rtt "
        f"min/avg/max {r['rtt_ms']['min']:.3f}/{r['rtt_ms']['avg']:.3f}/{r['rtt_ms']['max']:.3f} ms")  # fmt: skip
    try:
        r = ping("tap")
        say(f"ping via our device + TAP to the host kernel: {r['received']}/{r['sent']}, rtt "
            f"min/avg/max {r['rtt_ms']['min']:.3f}/{r['rtt_ms']['avg']:.3f}/{r['rtt_ms']['max']:.3f} ms")  # fmt: skip
        mbps, n = tcp_throughput()
        say(f"TCP guest → host through our device + TAP: {mbps:.2f} MB/s ({n} bytes)")
    except (BootError, RuntimeError) as e:
        say(f"TAP figures not measured: {e}")
    s = sim_figures()
    say(f"simulator: probe {s['probe_s'] * 1000:.1f} ms CPU; 10 000 packets each way "
        f"{s['packets_10k_s']:.2f} s CPU ({10_000 / s['packets_10k_s']:.0f} packets/s)")  # fmt: skip
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
