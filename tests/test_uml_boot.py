"""The real Linux 6.1 kernel (User-Mode Linux, built from Debian's linux-source-6.1) drives our
virtio-net device over virt-pci: it probes it with MSI-X, fills our table, unmasks it, takes our
interrupts and passes traffic; its access trace equals the driver model's (``sim --arch um``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from virtio_msix.guest.compare import diff, format_key, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.trace.recorder import load_jsonl
from virtio_msix.uml.boot import BootOptions, BootSession, run_boot
from virtio_msix.uml.vhost_user import HEADER, VhostUserBackend, VhostUserError

pytestmark = pytest.mark.uml

CONFIGS = {"default": None, "vectors2": 2, "vectors0": 0}


@pytest.fixture(scope="module")
def boots(linux):
    return {name: run_boot(BootOptions(vectors=v, timeout=90)) for name, v in CONFIGS.items()}


def _irq_rows(res, when):
    return {r["name"]: r for r in res.interrupts(when) if r["name"].startswith("virtio1")}


def test_default_probe_uses_msix_and_passes_traffic(boots):
    res = boots["default"]
    assert res.error is None, res.error + "\n" + res.console[-2000:]
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1-config", "virtio1-input.0", "virtio1-output.0"}
    for r in before.values():
        assert r["chip"] == "UM virtio PCIe MSI"
    for name in ("virtio1-input.0", "virtio1-output.0"):
        assert sum(after[name]["counts"]) > sum(before[name]["counts"]), name
    assert res.ping()["received"] == res.ping()["sent"] == 3
    # Our table, as the real kernel filled it: three entries unmasked, data = the guest's irq
    # numbers (virt-pci's MSI domain), address 0xa0000.
    table = res.snapshot["table"]
    unmasked = [e for e in table if not e["masked"]]
    assert len(unmasked) == 3 and res.snapshot["msix_enabled"]
    irqs = sorted(int(r["irq"]) for r in before.values())
    assert sorted(e["data"] for e in unmasked) == irqs
    assert {e["address"] for e in unmasked} == {0xA0000}
    assert table[3]["masked"]  # the fourth vector (control queue has no callback) stays masked
    vectors = dict(res.snapshot["event_vectors"])
    assert (vectors["config"], vectors["input.0"], vectors["output.0"]) == (0, 1, 2)
    # Every interrupt the guest counted on a virtio line is one we sent.
    sent = sum(e["sent"] for e in table)
    counted = sum(sum(r["counts"]) for r in _irq_rows(res, "after").values())
    assert sent >= counted > 0


def test_sim_as_um_names_and_numbers_interrupts_as_uml_does(boots):
    """``sim --arch um`` against the real kernel: the device is virtio1 (virt-pci is virtio0)
    at 0000:00:00.0, so its MSI hwirqs (devfn << 11 | index) are the bare indices 0, 1, 2."""
    real = {n: (r["chip"], r["hwirq"]) for n, r in _irq_rows(boots["default"], "before").items()}
    sim = run_sim(SimOptions(arch="um", packets=0))
    model = {r["name"]: (r["chip"], r["hwirq"]) for r in sim.interrupts
             if r["name"].startswith("virtio")}  # fmt: skip
    assert model == real, (model, real)
    assert "pci 0000:00:00.0: [1af4:1000]" in boots["default"].console


def test_reads_are_followed_by_polling_the_cmd_queue(boots):
    """After serving a read the event loop polls the cmd queue (BootSession._poll_cmds):
    virt-pci sends the next access microseconds after each answer, and a probe is hundreds of
    config reads; some are served in the same pass rather than after a sleep and a wake-up."""
    res = boots["default"]
    assert res.error is None, res.error
    stats = res.host.stats
    assert stats.cfg_reads > 100  # the probe: enumeration and virtio_pci's capability walk
    assert res.loop["poll_passes"] > 0 and res.loop["polled"] > 0, res.loop
    assert res.loop["polled"] <= stats.cfg_reads + stats.cfg_writes + stats.mmio_reads + \
        stats.mmio_writes


def test_ping_latency_samples_split_off_the_call_write(boots):
    """Each ping pass is timed from its wake-up to the irq call (kick_to_call_us) and, of that,
    the call's eventfd write alone (call_write_us): one write sample per pass sample, each inside
    its pass's interval."""
    loop = boots["default"].loop
    whole, write = loop.get("kick_to_call_us[ping]"), loop.get("call_write_us[ping]")
    assert whole and write, loop
    assert write["n"] == whole["n"] >= 3  # ping -c 3: at least one pass per reply
    assert 0 < write["median"] <= whole["median"] and write["max"] <= whole["max"]


def test_the_kernels_memory_is_a_sealed_memfd_and_is_mapped(boots):
    """patches/*/uml-sealed-memfd.patch: UML's memory file is a memfd sealed against shrinking,
    so our device maps it (vhost_user.unmappable) instead of a pread/pwrite per ring access.
    A host whose vm.memfd_noexec forbids an executable memfd gives UML its old temporary file:
    then the region is read with pread, and the reason says so."""
    res = boots["default"]
    assert res.error is None, res.error
    vu = res.vhost.summary()
    noexec = Path("/proc/sys/vm/memfd_noexec")
    if noexec.is_file() and noexec.read_text().strip() == "2":
        assert vu["memory_regions_mapped"] == 0 and vu["memory_not_mapped"], vu
        return
    assert vu["memory_regions_mapped"] >= 1 and vu["memory_not_mapped"] == [], vu
    # Kicks are watched edge-triggered and never read (BootSession._loop), and still seen.
    assert res.loop["kicks"] > 0, res.loop


def test_two_vectors_share_one_for_the_queues(boots):
    res = boots["vectors2"]
    assert res.error is None, res.error
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1-config", "virtio1-virtqueues"}
    assert sum(after["virtio1-virtqueues"]["counts"]) > sum(before["virtio1-virtqueues"]["counts"])
    assert res.ping()["received"] == 3
    vectors = dict(res.snapshot["event_vectors"])
    assert (vectors["config"], vectors["input.0"], vectors["output.0"]) == (0, 1, 1)


def test_no_msix_falls_back_to_intx(boots):
    res = boots["vectors0"]
    assert res.error is None, res.error
    before, after = _irq_rows(res, "before"), _irq_rows(res, "after")
    assert set(before) == {"virtio1"}
    assert sum(after["virtio1"]["counts"]) > sum(before["virtio1"]["counts"])
    assert res.ping()["received"] == 3
    assert res.host is not None and res.host.stats.int_sent > 0 and res.host.stats.msi_sent == 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_kernel_trace_equals_model(boots, name):
    """First common-config access to DRIVER_OK, access for access, values included (ring
    addresses aside): the real kernel's against ``sim --arch um``."""
    real = virtio_phase(boots[name].recorder.records)
    assert len(real) > 50
    model = virtio_phase(run_sim(SimOptions(vectors=CONFIGS[name], arch="um")).recorder.records)
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"


def test_model_differs_from_a_different_kernel_run(boots):
    """The comparison can fail: the default model against the 2-vector kernel."""
    real = virtio_phase(boots["vectors2"].recorder.records)
    model = virtio_phase(run_sim(SimOptions(arch="um")).recorder.records)
    assert diff(real, model)


def test_cli_boot_trace_json_equals_cli_sim(linux, tmp_path):
    """The two commands a user would run: ``boot --trace-json`` and ``sim --arch um --trace-json``."""
    boot_trace, sim_trace = tmp_path / "boot.jsonl", tmp_path / "sim.jsonl"
    cli = [sys.executable, "-m", "virtio_msix.cli"]
    out = subprocess.run([*cli, "boot", "--quiet", "--json", "--trace-json", str(boot_trace)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    views = json.loads(out.stdout)
    assert views["ping"]["received"] == 3 and views["msix_enabled"]
    subprocess.run([*cli, "sim", "--arch", "um", "--json", "--trace-json", str(sim_trace)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    assert not diff(virtio_phase(load_jsonl(boot_trace)), virtio_phase(load_jsonl(sim_trace)))


def test_kernel_killed_mid_probe_ends_cleanly(linux):
    """The kernel dies right after it filled the first MSI-X entry: a clear error, no exception,
    and the device's state is still there to inspect."""
    session = BootSession(BootOptions(timeout=60))
    fired = threading.Event()

    def kill_on_first_table_write(rec):
        if rec.get("space") == "msix-table" and rec.get("op") == "w" and not fired.is_set():
            fired.set()
            os.killpg(session.proc.pid, signal.SIGKILL)

    session.recorder.subscribe(kill_on_first_table_write)
    res = session.run()
    assert fired.is_set()
    assert res.error and "kernel went away" in res.error and "signal 9" in res.error
    assert res.device.msix is not None and res.device.msix.entries[0].address == 0xA0000
    assert any(r.get("space") == "common" for r in res.recorder.records)


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, VhostUserBackend(b, features=1 << 32, num_queues=2)


@pytest.mark.parametrize(
    "wire, message",
    [
        (HEADER.pack(99, 1, 0), "unknown vhost-user request 99"),
        (HEADER.pack(1, 2, 0), "protocol version"),
        (HEADER.pack(5, 1, 1 << 20), "too large"),
        (HEADER.pack(8, 1, 4) + b"\0\0\0\0", "SET_VRING_NUM: payload 4 bytes"),
        (HEADER.pack(8, 1, 8) + struct.pack("<II", 7, 256), "vring index 7"),
        (HEADER.pack(8, 1, 8) + struct.pack("<II", 0, 300), "not a power of 2"),
        (HEADER.pack(5, 1, 8) + struct.pack("<II", 1, 0), "1 regions with 0 descriptors"),
        (HEADER.pack(12, 1, 8) + struct.pack("<Q", 0), "expected one file descriptor"),
        (b"\x01\x00\x00", "inside a message"),
        (HEADER.pack(2, 1, 8) + b"\x01\x02", "inside a message"),
    ],
)
def test_garbage_from_the_peer_is_a_clear_error(wire, message):
    peer, be = _pair()
    peer.sendall(wire)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(VhostUserError, match=message):
        be.handle_one()
    be.close()
    peer.close()


def test_cli_reports_a_dead_peer_without_traceback(linux, tmp_path):
    """The kernel panics in the middle (sysrq: the CLI runs CMD in a subshell, so `exit` no
    longer ends init) and dies: a clear error line, exit status 1, no traceback."""
    cli = [sys.executable, "-m", "virtio_msix.cli", "boot", "--quiet", "--timeout", "30", "--",
           "echo c > /proc/sysrq-trigger"]  # fmt: skip
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stdout + out.stderr
    assert "error:" in out.stdout


def test_backtraces_from_the_real_kernel(linux):
    """Under gdb: the seed's two backtraces (entry fill through pci_msi_domain_write_msg from
    virtnet_probe, unmask through pci_msi_unmask_irq from request_irq), each next to the table
    write our device received."""
    res = run_boot(BootOptions(backtraces=True, timeout=90))
    assert res.error is None, res.error
    fills = [b for b in res.backtraces if b.startswith("# msix table entry fill\n")]
    unmasks = [b for b in res.backtraces if b.startswith("# msix unmask")]
    assert len(fills) == 3 and len(unmasks) == 3
    for i, bt in enumerate(fills):
        assert "#0  pci_msi_domain_write_msg" in bt and "virtnet_probe" in bt
        assert (
            "vp_find_vqs_msix" in bt and "reserve=reserve@entry=false" in bt
        )  # UML: no reservation
        assert f"entry {i}: addr_lo 0x000a0000, addr_hi 0x0, data {0x41 + i:#x}" in bt
    for i, bt in enumerate(unmasks):
        assert "#0  pci_msi_unmask_irq" in bt and "request_threaded_irq" in bt
        assert f"entry {i}: vector control <- 0x0 (unmasked)" in bt
