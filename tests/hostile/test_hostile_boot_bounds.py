"""Issue 8, review round: what a boot session keeps of a guest's output and accesses is
bounded — the console (its first lines and last bytes), the marker sections and the access
records (the first ones, whole, for the sim-vs-real comparisons, and the last ones) — and
everything cut is counted and reported; --trace-json streams every record to its file.
"""

from __future__ import annotations

import json
import struct
import sys

from virtio_msix.trace.recorder import JsonlWriter, Recorder
from virtio_msix.uml import boot
from virtio_msix.uml.boot import BootOptions, BootSession, BoundedConsole
from virtio_msix.uml.pcidev import MSG, VirtPciHost
from virtio_msix.virtio.memory import GuestMemory
from virtio_msix.virtio.queue import VirtQueue


def stand_in(code: str, timeout: float = 2) -> BootSession:
    """A "kernel" (any program) that never connects and prints what ``code`` prints."""
    return BootSession(BootOptions(timeout=timeout, kernel_command=[sys.executable, "-c", code]))


def test_a_console_printed_without_pause_is_kept_bounded_and_the_cut_is_counted():
    s = stand_in("import sys\nb = (('x' * 1000 + '\\n') * 64).encode()\n"
                 "while True: sys.stdout.buffer.write(b)")  # fmt: skip
    res = s.run()
    assert res.error is not None and res.error.startswith("timeout")
    kept = s.console.lines()
    assert len(kept) <= boot.CONSOLE_HEAD_LINES + boot.CONSOLE_TAIL_BYTES // 1001 + 1
    assert len(res.console) <= boot.CONSOLE_HEAD_BYTES + boot.CONSOLE_TAIL_BYTES + 200
    assert res.cut["console_lines"] > 0 and res.cut["console_bytes"] >= 1001 * res.cut["console_lines"]
    assert "console lines" in res.console and "not kept" in res.console
    # The first lines are there, and the last ones.
    assert kept[0] == "x" * 1000 and kept[-1] == "x" * 1000


def test_a_console_without_newlines_becomes_bounded_lines():
    s = stand_in("import sys\nb = b'y' * 65536\nwhile True: sys.stdout.buffer.write(b)")
    res = s.run()
    assert len(s._partial) <= boot.CONSOLE_MAX_LINE
    assert all(len(ln) <= boot.CONSOLE_MAX_LINE for ln in s.console.lines())
    assert s.console.tail_size <= boot.CONSOLE_TAIL_BYTES + boot.CONSOLE_MAX_LINE + 1
    assert len(res.console) <= boot.CONSOLE_HEAD_BYTES + boot.CONSOLE_TAIL_BYTES + 2 * boot.CONSOLE_MAX_LINE
    assert res.cut.get("console_bytes", 0) > 0


def test_sections_are_bounded_and_their_cut_counted():
    s = stand_in("pass")
    s._console_line(f"{boot.MARK} ping")
    line = "z" * 999
    for _ in range(3 * boot.SECTION_MAX_BYTES // 1000):
        s._console_line(line)
    s._console_line(f"{boot.MARK} end")
    kept = s.sections["ping"]
    assert len(kept) <= boot.SECTION_MAX_BYTES
    assert s.sections_cut == 3 * boot.SECTION_MAX_BYTES // 1000 * 1000 - len(kept)


def test_bounded_console_keeps_head_and_tail():
    c = BoundedConsole(head_lines=3, tail_bytes=20)
    for i in range(100):
        c.append(f"line{i:03d}")  # 8 bytes + newline
    assert c.head == ["line000", "line001", "line002"]
    assert list(c.tail) == ["line098", "line099"]
    assert c.cut_lines == 95 and c.cut_bytes == 95 * 8


def serve_legal_reads(session: BootSession, passes: int) -> None:
    """A kernel that repeats one legal request: MMIO_READ of 4096 bytes of the common
    config (each becomes hundreds of register reads, each recorded)."""
    mem = GuestMemory(1 << 20)
    cmd, irq = VirtQueue(0, 32), VirtQueue(1, 32)
    cmd.desc_addr, cmd.avail_addr, cmd.used_addr, cmd.enabled = 0x1000, 0x1400, 0x1800, True
    session.device.memory = mem
    host = VirtPciHost(mem, cmd, irq)
    host.attach(session.device)
    mem.write(0x10000, MSG.pack(3, 4, 0, 4096, 0))
    for i in range(16):
        struct.pack_into("<QIHHQIHH", mem.buf, 0x1000 + 32 * i,
                         0x10000, 16, 1, 2 * i + 1, 0x20000, 4096, 2, 0)  # fmt: skip
    avail = 0
    for _ in range(passes):
        for s in range(16):
            struct.pack_into("<H", mem.buf, 0x1404 + 2 * s, 2 * s)
        avail = (avail + 16) & 0xFFFF
        struct.pack_into("<H", mem.buf, 0x1402, avail)
        served = 0
        while served < 16:  # a pass may stop at its access bound: the next one goes on
            n = host.process_cmds()
            assert n
            served += n


def test_boot_keeps_the_first_records_whole_and_a_bounded_tail(monkeypatch, tmp_path):
    monkeypatch.setattr(boot, "RECORDS_FIRST", 3000)
    monkeypatch.setattr(boot, "RECORDS_LAST", 1000)
    s = stand_in("pass")
    seen = []
    s.recorder.subscribe(seen.append)
    serve_legal_reads(s, 5)
    rec = s.recorder
    total = len(seen)
    assert total > 10_000
    assert len(rec.records) == 4000
    assert rec.dropped == total - 4000
    assert rec.records[:3000] == seen[:3000]  # the first ones whole (probe)
    assert rec.records[3000:] == seen[-1000:]  # then the last ones


def test_recorder_unbounded_by_default_and_streaming_writes_everything(tmp_path):
    r = Recorder()
    for i in range(50):
        r.access("common", "r", 0, 4, i)
    assert len(r.records) == 50 and r.dropped == 0
    b = Recorder(keep_first=10, keep_last=5)
    path = tmp_path / "t.jsonl"
    with open(path, "w") as f:
        b.subscribe(JsonlWriter(f))
        for i in range(50):
            b.access("common", "r", 0, 4, i)
    assert [x["value"] for x in b.records] == [*range(10), *range(45, 50)]
    assert b.dropped == 35
    lines = path.read_text().splitlines()
    assert [json.loads(ln)["value"] for ln in lines] == list(range(50))
    b.clear()
    assert b.records == []


def test_boot_streams_trace_json_with_every_record_while_memory_keeps_a_bound(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(boot, "RECORDS_FIRST", 1000)
    monkeypatch.setattr(boot, "RECORDS_LAST", 100)
    path = tmp_path / "trace.jsonl"

    class Session(BootSession):
        def _run_kernel(self, linux, sigs):  # the accesses happen while the run is on
            serve_legal_reads(self, 2)
            return super()._run_kernel(linux, sigs)

    s = Session(BootOptions(timeout=1, trace_json=path,
                            kernel_command=[sys.executable, "-c", "pass"]))  # fmt: skip
    res = s.run()
    lines = path.read_text().splitlines()
    assert len(res.recorder.records) == 1100
    assert len(lines) == 1100 + res.recorder.dropped and res.recorder.dropped > 0
    assert res.cut["records"] == res.recorder.dropped
    assert json.loads(lines[0])["phase"] == res.recorder.records[0]["phase"]
