"""The command line as a user meets it: --version, python -m, help for every flag, one-line
errors with exit status 2 for bad values in every command, outputs checked before the run,
replay's input checks and JSON output, and the files sim writes (pcapng read by tshark, a
timeline), show --hexdump decoded by pciutils' lspci."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virtio_msix import __version__
from virtio_msix.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse: --help, --version, usage errors
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# -- version, python -m, help -------------------------------------------------------------------
def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"virtio-msix {__version__}"


def test_options_without_a_command_go_to_sim(capsys):
    rc, out, _ = run(capsys, "--cpus", "2", "--color", "never")
    assert rc == 0 and "probed by the Linux 6.1 model (x86, 2 CPUs)" in out
    rc, _, err = run(capsys, "--cpus", "0")
    assert rc == 2 and err.splitlines()[-1].startswith("virtio-msix sim: error: argument --cpus")


def test_python_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "virtio_msix", "--version"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.strip() == f"virtio-msix {__version__}"


def test_every_flag_of_every_command_has_help():
    commands = subcommands()
    assert {"sim", "show", "replay", "capture-qemu", "boot"} <= set(commands)
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, p in commands.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not missing


def test_descriptions_are_plain_text_and_point_at_docs_that_exist():
    for name, p in subcommands().items():
        text = (p.description or "") + (p.format_help())
        assert "``" not in text, name  # no RST markup
        for ref in re.findall(r"[\w/]*DESIGN\.md", text):
            assert (ROOT / ref).is_file(), f"{name} points at {ref}"
    readme = (ROOT / "README.md").read_text()
    for ref in re.findall(r"[\w/]*DESIGN\.md", readme):
        assert (ROOT / ref).is_file(), ref


def test_timeout_help_gives_units():
    for name in ("boot", "capture-qemu"):
        p = subcommands()[name]
        action = next(a for a in p._actions if "--timeout" in a.option_strings)
        assert "seconds" in action.help


# -- bad values: one error line, status 2, the same in every command ------------------------------
BAD = [
    (cmd, *args)
    for cmd in ("show", "sim", "boot", "replay")
    for args in (
        ("--vectors", "-1"),
        ("--vectors", "5000"),
        ("--vectors", "x"),
        ("--queue-pairs", "0"),
        ("--queue-pairs", "100000"),
    )  # fmt: skip
] + [
    ("sim", "--packets", "-1"),
    ("sim", "--cpus", "0"),
    ("sim", "--refuse-vectors-from", "-3"),
    ("boot", "--timeout", "0"),
    ("boot", "--timeout", "-5"),
    ("boot", "--timeout", "soon"),
    ("capture-qemu", "out.jsonl", "--timeout", "0"),
    ("capture-qemu", "out.jsonl", "--vectors", "2049"),
]


@pytest.mark.parametrize("argv", BAD, ids=" ".join)
def test_bad_value_is_one_error_line_and_status_2(capsys, argv):
    if argv[0] == "replay":
        argv = (*argv, str(DATA / "qemu-q35.jsonl"))
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"virtio-msix {argv[0]}: error: argument")


@pytest.mark.parametrize(
    "argv",
    [
        ("sim", "--trace-json", "/nonexistent/x.jsonl"),
        ("sim", "--pcap", "/nonexistent/x.pcapng"),
        ("sim", "--timeline", "/nonexistent/x.json"),
        ("boot", "--trace-json", "/nonexistent/x.jsonl"),
        ("boot", "--pcap", "/nonexistent/x.pcapng"),
        ("capture-qemu", "/nonexistent/x.jsonl"),
    ],
    ids=" ".join,
)
def test_unwritable_output_fails_before_the_run(capsys, argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""  # nothing ran: no views printed
    assert "/nonexistent" in err.splitlines()[-1]


def test_output_that_is_a_directory_is_refused(capsys, tmp_path):
    rc, _, err = run(capsys, "sim", "--trace-json", str(tmp_path))
    assert rc == 2 and "is a directory" in err


# -- replay ----------------------------------------------------------------------------------------
def write_trace(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_replay_json_is_pure_json_lines_with_a_summary(capsys):
    rc, out, _ = run(capsys, "replay", "--json", str(DATA / "qemu-q35.jsonl"))
    assert rc == 0
    lines = [json.loads(line) for line in out.splitlines()]  # every line parses
    reads = [x for x in lines if x["kind"] == "read"]
    assert lines[-1] == {"kind": "summary", "records": 481, "reads": len(reads),
                         "matched": len(reads), "mismatched": 0, "device": "virtio-net-pci",
                         "netdev": "user", "device_from": "qemu-q35.meta.json"}  # fmt: skip
    assert all(x["match"] for x in reads) and len(reads) > 200


def test_replay_json_counts_a_mismatch(capsys, tmp_path):
    records = [json.loads(line) for line in (DATA / "qemu-q35.jsonl").read_text().splitlines()]
    i = next(i for i, r in enumerate(records) if r.get("op") == "r" and r["space"] == "common")
    records[i]["value"] ^= 1
    rc, out, _ = run(capsys, "replay", "--json", write_trace(tmp_path / "t.jsonl", records))
    lines = [json.loads(line) for line in out.splitlines()]
    assert rc == 1 and lines[-1]["mismatched"] == 1
    assert [x["index"] for x in lines if x["kind"] == "read" and not x["match"]] == [i]


GOOD_READ = {"space": "common", "op": "r", "offset": 0x14, "size": 1, "value": 0}


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({**GOOD_READ, "space": "bogus"}, "unknown space 'bogus'"),
        ({**GOOD_READ, "op": "x"}, "unknown op 'x'"),
        ({**GOOD_READ, "size": 3}, "size 3"),
        ({**GOOD_READ, "space": "cfg", "size": 8, "offset": 0}, "size 8"),
        ({**GOOD_READ, "offset": 0x1000}, "outside common"),
        ({**GOOD_READ, "space": "cfg", "offset": 4095, "size": 2}, "outside cfg"),
        ({k: v for k, v in GOOD_READ.items() if k != "value"}, "no 'value'"),
        ({**GOOD_READ, "offset": "0x14"}, "offset '0x14' is not an integer"),
        ({**GOOD_READ, "value": 1.5}, "value 1.5 is not an integer"),
        ({**GOOD_READ, "value": 0x100}, "does not fit"),
        ({**GOOD_READ, "space": "legacy", "offset": 0}, "no legacy structure"),
    ],
)
def test_replay_rejects_records_it_cannot_apply(capsys, tmp_path, record, why):
    records = [GOOD_READ, {"space": "msi", "vector": 0}, record]
    argv = ["replay", write_trace(tmp_path / "t.jsonl", records)]
    if record.get("space") == "legacy":
        argv.append("--disable-legacy")
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert "line 3:" in err and why in err


def test_replay_skips_records_that_are_not_accesses(capsys, tmp_path):
    records = [
        {"space": "meta", "tool": "x"},
        {"space": "msi", "vector": 1, "address": 0xFEE00000, "data": 0x26},
        {"space": "intx", "level": 1},
        {"space": "event", "kind": "device-error"},
        {**GOOD_READ, "value": 0x55, "via": "pci_cfg"},  # recorded twice: not replayed
        GOOD_READ,
    ]
    rc, out, _ = run(capsys, "replay", write_trace(tmp_path / "t.jsonl", records))
    assert rc == 0 and out.strip().splitlines()[-1] == "1 reads matched, 0 mismatched"


def test_replay_reads_stdin():
    trace = (DATA / "qemu-q35.jsonl").read_text()
    out = subprocess.run([sys.executable, "-m", "virtio_msix", "replay", "-"], input=trace,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("0 mismatched")


@pytest.mark.parametrize("content", ["", "\n\n", '{"space": "msi", "vector": 0}\n'])
def test_replay_of_an_empty_trace_is_an_error(capsys, tmp_path, content):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    rc, out, err = run(capsys, "replay", str(path))
    assert rc == 2 and out == "" and len(err.splitlines()) == 1


# -- sim: errno names, pcapng, timeline -------------------------------------------------------------
def test_errno_values_print_as_names(capsys):
    rc, out, _ = run(capsys, "sim", "--vectors", "2", "--color", "never")
    assert rc == 0 and "error -ENOSPC" in out
    assert not re.search(r"error -\d", out)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_sim_pcap_has_both_directions_for_tshark(capsys, tmp_path):
    path = tmp_path / "sim.pcapng"
    rc, _, _ = run(capsys, "sim", "--packets", "3", "--pcap", str(path))
    assert rc == 0
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.packet_flags_direction",
         "-e", "eth.type", "-e", "frame.len"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines()]
    # Each frame goes out (2) and comes back through the loopback (1), in that order.
    assert [r[0] for r in rows] == ["0x00000002", "0x00000001"] * 3
    assert {r[1] for r in rows} == {"0x88b5"} and {r[2] for r in rows} == {"74"}


def test_sim_timeline_is_chrome_trace_events(capsys, tmp_path):
    path = tmp_path / "t.json"
    rc, _, _ = run(capsys, "sim", "--packets", "2", "--timeline", str(path))
    assert rc == 0
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    kinds = {tracks[e["tid"]] for e in events if e["ph"] in ("i", "X")}
    assert {"cfg", "common", "msix-table", "notify", "interrupts"} <= kinds
    handlers = [e for e in events if e["ph"] == "X"]
    assert handlers and all(e["dur"] >= 0 for e in handlers)
    assert any("virtio0-input.0" in tracks[e["tid"]] for e in handlers)
    times = [e["ts"] for e in events if e["ph"] == "i"]
    assert times == sorted(times)  # one clock for the whole run
    fills = [
        e["name"] for e in events if e.get("cat") == "msix-table" and e["name"].startswith("entry")
    ]
    assert "entry 0 data = 0x26" in fills


def test_sim_trace_json_replays(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    assert run(capsys, "sim", "--trace-json", str(path))[0] == 0
    meta, *records = [json.loads(line) for line in path.read_text().splitlines()]
    assert (meta["space"], meta["device"], meta["netdev"]) == ("meta", "virtio-net-pci", "user")
    assert all(isinstance(r["t"], int) for r in records)
    phases = [r["phase"] for r in records]
    assert set(phases) == {"enumeration", "probe", "run", "teardown"}
    assert phases[-1] == "teardown" and phases.index("teardown") > phases.index("run")
    rc, out, _ = run(capsys, "replay", str(path))
    assert rc == 0 and out.strip().endswith(", 0 mismatched")


# -- show --hexdump through pciutils ----------------------------------------------------------------
@pytest.mark.skipif(
    shutil.which("lspci") is None, reason="lspci (Debian package pciutils) not installed"
)
@pytest.mark.parametrize(("argv", "device", "count"), [
    ((), "1af4:1000", 4),
    (("--queue-pairs", "4", "--disable-legacy"), "1af4:1041", 10),
])  # fmt: skip
def test_show_hexdump_is_decoded_by_lspci(capsys, tmp_path, argv, device, count):
    rc, out, _ = run(capsys, "show", "--hexdump", *argv)
    assert rc == 0
    path = tmp_path / "dump.txt"
    path.write_text(out)
    text = subprocess.run(["lspci", "-F", str(path), "-vvv", "-nn"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert f"[{device}]" in text and "Ethernet controller [0200]" in text
    assert re.search(rf"Capabilities: \[98\] MSI-X: Enable- Count={count} Masked-", text)
    for kind in ("CommonCfg", "ISR", "DeviceCfg", "Notify"):
        assert f"Vendor Specific Information: VirtIO: {kind}" in text
    assert "multiplier=00000004" in text


def test_output_file_on_a_full_disk_is_one_error_line(capsys):
    """A write that fails (a full disk) is named with its file, exit 2, no traceback, for
    every output sim writes; the pcap writer never makes the traffic suffer for it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full not found")
    for flag in ("--pcap", "--timeline", "--trace-json"):
        rc, out, err = run(capsys, "sim", flag, "/dev/full")
        # argparse's own form for the command, as its argument errors read
        assert rc == 2 and err.strip() == "virtio-msix sim: error: /dev/full: No space left on device"
        assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("flag", ["--pcap", "--timeline", "--trace-json"])
def test_dash_is_not_a_file_name_for_outputs(capsys, tmp_path, monkeypatch, flag):
    """`-` would have made a file named "-" (standard output carries the report): refused
    before the run, one line naming the option."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["sim", flag, "-"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: -: give a file name" in err
    assert not (tmp_path / "-").exists()


def test_replay_names_the_device_and_lines(capsys, tmp_path):
    rc, out, _ = run(capsys, "replay", str(DATA / "qemu-q35-vectors2.jsonl"))
    assert rc == 0 and out.splitlines()[0] == (
        "device: virtio-net-pci,vectors=2 (netdev user; from qemu-q35-vectors2.meta.json)")
    records = [json.loads(line) for line in (DATA / "qemu-q35.jsonl").read_text().splitlines()]
    i = next(i for i, r in enumerate(records) if r.get("op") == "r" and r["space"] == "common")
    records[i]["value"] ^= 1
    rc, out, _ = run(capsys, "replay", write_trace(tmp_path / "t.jsonl", records))
    assert rc == 1 and out.splitlines()[1].startswith(f"line {i + 1}: common+")  # 1-based


def test_a_refused_probe_says_why(capsys):
    rc, out, _ = run(capsys, "sim", "--device", "virtio-net-pci,ctrl_vq=off", "--color", "never")
    assert rc == 1
    assert ("kernel: virtio_net virtio0: device advertises feature VIRTIO_NET_F_CTRL_RX but not "
            "VIRTIO_NET_F_CTRL_VQ") in out  # fmt: skip
    assert "(no traffic: the driver did not probe)" in out
    assert "device status 0x83 (ACKNOWLEDGE|DRIVER|FAILED)" in out


def test_argument_errors_are_one_line(capsys):
    """Not argparse's usage block above the message: the message, and where the usage is."""
    for argv, message in ((["sim", "--vectors", "x"], "argument --vectors: invalid integer: 'x'"),
                          (["boot", "--timeout", "0"], "argument --timeout:"),
                          (["frob"], "invalid choice: 'frob'")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        assert message in err and err.rstrip().endswith("(--help for usage)")


def test_boot_device_module_refuses_virtio_net_flags(capsys):
    module = str(Path(__file__).resolve().parent.parent / "examples" / "rng.py")
    for extra, named in ((["--device", "virtio-net-pci,mq=on"], "--device"),
                         (["--net", "tap"], "--net"), (["--netdev", "tap"], "--netdev")):  # fmt: skip
        rc, _out, err = run(capsys, "boot", "--device-module", module, *extra)
        assert rc == 2 and named in err and "--device-module brings its own" in err


def test_sim_says_which_files_it_wrote(capsys, tmp_path):
    paths = {flag: tmp_path / name for flag, name in (("--pcap", "f.pcapng"),
             ("--trace-json", "t.jsonl"), ("--timeline", "t.json"))}  # fmt: skip
    rc, out, err = run(capsys, "sim", "--json", *(a for f, p in paths.items() for a in (f, str(p))))
    assert rc == 0 and json.loads(out)  # stdout stays the JSON document alone
    for p in paths.values():
        assert f"wrote {p} ({p.stat().st_size} bytes)" in err.splitlines()
