"""Boots with ``--net tap`` for tests/test_tap.py, run inside a private network namespace:

    unshare --net python tests/tap_scenarios.py SCENARIO [ARGS]

(the TAP, its host address and every socket exist only in that namespace: nothing touches the
host's network). Prints one JSON object on stdout.

- ``flood``: the host side sends frames to the TAP from before the kernel starts until the
  script ends (the guest has no receive buffers before DRIVER_OK): the event loop's counters.
- ``transfer BYTES [vnet|novnet]``: TCP guest → host then host → guest, BYTES each way, random
  content; byte counts and MD5s on both ends, the features offered and negotiated, the largest
  frame the guest handed the device.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from virtio_msix.uml.boot import MARK, TAP_GUEST_IP, BootOptions, BootSession

G2H_PORT, H2G_PORT = 5001, 5002


def _lo_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def flood() -> dict[str, Any]:
    session = BootSession(BootOptions(net="tap", timeout=120, script="sleep 1\n"))
    name = session.netdev.name
    stop = threading.Event()
    sent = [0]

    def inject() -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((name, 0))
        # Broadcast, a local experimental ethertype (IEEE 802 0x88B5): the guest drops it.
        frame = b"\xff" * 6 + bytes.fromhex("525400aabbcc") + b"\x88\xb5" + b"\0" * 46
        while not stop.is_set():
            try:
                s.send(frame)
                sent[0] += 1
            except OSError:
                pass  # the TAP's queue is full: the host drops it
            time.sleep(0.001)
        s.close()

    t = threading.Thread(target=inject, daemon=True)
    t.start()
    try:
        res = session.run()
    finally:
        stop.set()
        t.join()
    return {"error": res.error, "loop": res.loop, "injected": sent[0],
            "times": res.times, "counters": session.device.device.counters(),
            "vhost_messages": res.vhost.stats.messages if res.vhost else 0}  # fmt: skip


def transfer(nbytes: int, vnet: bool) -> dict[str, Any]:
    script = f"""\
ip link set eth0 up; ip addr add $GUEST_IP/24 dev eth0
dd if=/dev/urandom of=/tmp/out bs=4096 count={nbytes // 4096} 2>/dev/null
echo {MARK} g2h; busybox md5sum /tmp/out; nc $HOST_IP {G2H_PORT} < /tmp/out; echo {MARK} end
echo {MARK} h2g; nc -l -p {H2G_PORT} > /tmp/in; busybox md5sum /tmp/in; busybox wc -c < /tmp/in
echo {MARK} end
"""
    session = BootSession(BootOptions(net="tap", timeout=240, script=script, tap_vnet_hdr=vnet))
    net = session.device.device
    seen: dict[str, Any] = {"features": 0, "max_tx_frame": 0}
    send = session.netdev.send

    def spy(frame: bytes, *a: Any) -> None:  # the largest frame the guest hands the device
        seen["max_tx_frame"] = max(seen["max_tx_frame"], len(frame))
        seen["features"] = net.driver_features
        seen["guest_offloads"] = net.guest_offloads
        send(frame, *a)

    take = session.netdev.take_frame

    def spy_rx() -> bytes | None:  # the largest frame the host hands the device
        frame = take()
        if frame is not None:
            seen["max_rx_frame"] = max(seen.get("max_rx_frame", 0), len(frame))
        return frame

    session.netdev.send = spy
    session.netdev.take_frame = spy_rx
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", G2H_PORT))
    srv.listen(1)
    host: dict[str, Any] = {}
    payload = os.urandom(nbytes)

    def peer() -> None:
        srv.settimeout(120)
        conn, _ = srv.accept()
        h, n = hashlib.md5(), 0
        with conn:
            conn.settimeout(60)
            while data := conn.recv(1 << 16):
                h.update(data)
                n += len(data)
        host["g2h"] = {"bytes": n, "md5": h.hexdigest()}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = socket.socket()
            try:
                s.connect((TAP_GUEST_IP, H2G_PORT))
                break
            except OSError:
                s.close()
                time.sleep(0.1)
        with s:
            s.settimeout(60)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        host["h2g"] = {"bytes": len(payload), "md5": hashlib.md5(payload).hexdigest()}

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    res = session.run()
    t.join(timeout=60)
    srv.close()
    g2h = re.search(r"([0-9a-f]{32})", res.sections.get("g2h", ""))
    h2g = re.findall(r"^([0-9a-f]{32})|^(\d+)$", res.sections.get("h2g", ""), re.M)
    return {
        "error": res.error,
        "host": host,
        "guest": {
            "g2h_md5": g2h.group(1) if g2h else None,
            "h2g_md5": next((a for a, _ in h2g if a), None),
            "h2g_bytes": next((int(b) for _, b in h2g if b), None),
        },
        "offered": net.host_features,
        "negotiated": seen["features"],
        "guest_offloads": seen.get("guest_offloads"),
        "max_tx_frame": seen["max_tx_frame"],
        "max_rx_frame": seen.get("max_rx_frame", 0),
        "tap_vnet_hdr": getattr(session.netdev, "vnet_hdr", False),
        "counters": net.counters(),
        "loop": res.loop,
    }


def main() -> int:
    _lo_up()
    which = sys.argv[1]
    if which == "flood":
        out = flood()
    elif which == "transfer":
        out = transfer(int(sys.argv[2]), sys.argv[3] == "vnet" if len(sys.argv) > 3 else True)
    else:
        raise SystemExit(f"unknown scenario {which}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
