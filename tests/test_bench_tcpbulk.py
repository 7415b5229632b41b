"""bench/guest/tcpbulk.c, the 64 KiB-write transfer program the side-by-side bench puts into both
guests, against the host's own TCP stack: it sends what bench/side_by_side.bulk_md5 expects (the
bench's integrity check depends on that) and counts what it receives."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import side_by_side  # noqa: E402


@pytest.fixture(scope="module")
def tcpbulk(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc (Debian's build-essential): tcpbulk.c cannot be built")
    path = side_by_side.build_bulk(tmp_path_factory.mktemp("tcpbulk"))
    assert path is not None, "tcpbulk.c did not build static (libc6-dev's static libc?)"
    return path


@pytest.mark.parametrize("nbytes", [1, 65535, 65536, 3 * 65536 + 1234])
def test_send_writes_the_pattern_bulk_md5_expects(tcpbulk, nbytes):
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    got = hashlib.md5()
    total = [0]

    def sink() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(1 << 16):
                got.update(data)
                total[0] += len(data)

    t = threading.Thread(target=sink)
    t.start()
    out = subprocess.run([str(tcpbulk), "send", "127.0.0.1", str(port), str(nbytes)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    t.join(timeout=30)
    srv.close()
    assert out.returncode == 0, out.stderr
    assert total[0] == nbytes
    assert got.hexdigest() == side_by_side.bulk_md5(nbytes)
    if nbytes > 1:  # a pattern, not zeros (its first byte is 0): a lost block would show
        assert side_by_side.bulk_md5(nbytes) != hashlib.md5(bytes(nbytes)).hexdigest()


def test_recv_counts_every_byte(tcpbulk):
    with socket.socket() as probe:  # a free port for the program to listen on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([str(tcpbulk), "recv", str(port)], stdout=subprocess.PIPE, text=True)
    payload = bytes(range(256)) * 4099
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            break
        except OSError:
            subprocess.run(["sleep", "0.05"])
    else:
        proc.kill()
        pytest.fail("tcpbulk recv never listened")
    with s:
        s.sendall(payload)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and int(out) == len(payload)


def test_usage_errors_exit_2(tcpbulk):
    out = subprocess.run([str(tcpbulk), "send"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr
