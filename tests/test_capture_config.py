"""capture-qemu's configuration: QEMU's own -device syntax with the capture's fixed properties,
the netdev, and the meta record that heads every new capture (read back by replay)."""

from __future__ import annotations

import json
import re

import pytest

from virtio_msix.cli import main
from virtio_msix.devcli import spec_for_records
from virtio_msix.qemu.capture import device_string, parse_netdev
from virtio_msix.trace import trace_meta


def test_device_string_adds_the_fixed_properties_first():
    assert device_string("virtio-net-pci,mq=on,vectors=6") == (
        "virtio-net-pci,netdev=n0,addr=0x3,ioeventfd=off,mq=on,vectors=6"
    )
    # the old flags are shorthands; the same value given twice is not a conflict
    assert device_string(None, 2, True).endswith(",vectors=2,disable-legacy=on")
    assert device_string("virtio-net-pci,vectors=2,addr=03.0,ioeventfd=off", 2).endswith(
        "ioeventfd=off,vectors=2"
    )


@pytest.mark.parametrize(
    "device, vectors, message",
    [
        ("virtio-net-pci,addr=0x4", None, "addr=0x4 is not possible"),
        ("virtio-net-pci,netdev=net1", None, "netdev=net1 is not possible"),
        ("virtio-net-pci,ioeventfd=on", None, "ioeventfd=on is not possible"),
        ("e1000,mac=52:54:00:12:34:56", None, "not 'e1000'"),
        ("virtio-net-pci,vectors=3", 2, "vectors=3, the shorthand says 2"),
        ("virtio-net-pci,mq", None, "needs a value"),
        ("virtio-net-pci,mq=on,mq=off", None, "mq given twice"),
        # before QEMU boots, in QEMU's words (QEMU 7.2 says the same after starting)
        ("virtio-net-pci,foo=1", None, r"Property 'virtio-net-pci\.foo' not found"),
    ],
)
def test_device_string_refuses(device, vectors, message):
    with pytest.raises(ValueError, match=message):
        device_string(device, vectors)


def test_netdev_syntax():
    assert str(parse_netdev("user")) == "user"
    assert str(parse_netdev("tap")) == "tap,queues=1,vnet_hdr=on"
    tap = parse_netdev("tap,queues=4,vnet_hdr=off")
    assert (tap.queues, tap.vnet_hdr) == (4, False)
    assert "queues=4,vnet_hdr=off" in tap.qemu_arg() and "script=no" in tap.qemu_arg()
    for bad in ("socket", "tap,queues=0", "tap,fd=3", "user,hostfwd=x", "tap,vnet_hdr=maybe"):
        with pytest.raises(ValueError):
            parse_netdev(bad)


@pytest.mark.parametrize(
    "text, words",
    [
        # the one netdev parser (devspec's, as sim and boot use it), in QEMU's words
        ("tap,queues=x", "Parameter 'queues' expects uint32_t"),
        ("tap,fd=3", "Invalid parameter 'fd'"),
        ("tap,queues=2000", "tap takes 1..1024 queues"),  # past QEMU's own limit
        # then what a capture can run
        ("tap,queues=300", "the host's tun opens at most 256"),  # QEMU takes it, tun does not
        ("tap,ifname=mytap", "ifname is set by capture-qemu itself"),
        ("user,id=net7", "id is set by capture-qemu itself"),
        ("responder", "user or tap"),  # ours, not QEMU's
    ],
)
def test_netdev_refusals_name_the_rule(text, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_netdev(text)
    assert parse_netdev("tap,queues=256").queues == 256


def test_device_string_keeps_qemu_escaped_commas():
    # ",," is a literal comma inside a value (QEMU's option syntax), passed on as written
    out = device_string("virtio-net-pci,romfile=/tmp/a,,b.rom")
    assert out.endswith(",romfile=/tmp/a,,b.rom")  # one value for QEMU, not romfile + b.rom


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--device", "virtio-net-pci,addr=5"], "addr=5"),
        (["--netdev", "tap,queues=x"], "queues=x"),
        (["--device", "virtio-net-pci,vectors=3", "--vectors", "2"], "shorthand"),
    ],
)
def test_cli_refuses_in_one_line(capsys, tmp_path, argv, words):
    try:
        rc = main(["capture-qemu", str(tmp_path / "t.jsonl"), *argv])
    except SystemExit as e:  # argparse's refusal
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err.splitlines()[-1], err
    assert not (tmp_path / "t.jsonl").exists()


def test_replay_takes_the_device_from_the_meta_record(tmp_path, capsys):
    meta = {"space": "meta", "device": "virtio-net-pci,netdev=n0,mq=on,vectors=6",
            "netdev": "tap,queues=2,vnet_hdr=on"}  # fmt: skip
    spec = spec_for_records([meta])
    assert (spec.vectors, spec.queue_pairs, spec.disable_legacy) == (6, 2, False)
    assert spec_for_records([{"space": "cfg", "op": "r"}]) is None
    assert trace_meta([meta, {"space": "cfg"}]) is meta
    assert trace_meta([{"space": "cfg"}, meta]) is None
    # a trace whose max_virtqueue_pairs read (device config, virtio 1.2 §5.1.4) says 2 pairs
    # replays only as that device (num_queues would say 3 here: QEMU adds the second pair only
    # when the driver accepts MQ)
    records = [meta, {"space": "device", "op": "r", "offset": 8, "size": 2, "value": 2}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["replay", str(path)]) == 0
    assert main(["replay", str(path), "--queue-pairs", "3"]) == 1
    capsys.readouterr()


def test_device_help_needs_no_output_file(capsys):
    from virtio_msix.cli import main

    assert main(["capture-qemu", "--device", "help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("virtio-net-pci options") and "page-per-vq=" in out
