"""The driver model on many CPUs against real Linux 6.1 on QEMU 7.2 with ``-smp N``
(capture-qemu; each capture's first record says how it was made): the x86 vector matrix places
every MSI-X vector where the real kernel did, so the probe's accesses are equal with values
(MSI addresses and data included); after DRIVER_OK the affinity hints are applied lazily at
each vector's first interrupt, and the model writes the same mask / message(s) / unmask as the
real kernel when its interrupts arrive in the captured order."""

from __future__ import annotations

import json
import re

import pytest
from capture_sets import CAPTURES, DATA, load

from virtio_msix.guest.compare import diff, format_key, key, phase, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.virtio_net import virtnet_set_affinity
from virtio_msix.irq.x86 import (
    FIRST_EXTERNAL_VECTOR,
    FIRST_SYSTEM_VECTOR,
    VectorMatrix,
    x86_boot_vectors,
)
from virtio_msix.virtio.net import QEMU_72_TAP_VNET_FEATURES, QEMU_72_USER_NETDEV_FEATURES

# Linux 6.1 captures with more than one CPU (tests/data; the first record is the meta record).
SMP_CAPTURES = (
    "qemu-q35-smp2",
    "qemu-q35-smp3",
    "qemu-q35-smp4",
    "qemu-q35-smp8",
    "qemu-q35-smp9",  # more than 8 CPUs: physical destination mode (apic_physflat)
    "qemu-q35-smp2-vectors2",
    "qemu-q35-smp4-vectors2",
    "qemu-q35-smp2-vectors0",
    "qemu-q35-mq2-v6",
    "qemu-q35-mq2-v5",
    "qemu-q35-mq2-v3",
    "qemu-q35-mq4-smp2",
    "qemu-q35-mq2-smp4",
    "qemu-q35-mq4-smp4",
    "qemu-pc-mq2-v6",
    "qemu612-q35-mq2-v6",  # Linux 6.12: physical destination mode, the same placement rules
)
# One CPU: the run phase's lazy moves (nothing moves, the same message is written again).
ONE_CPU_CAPTURES = ("qemu-q35", "qemu-pc", "qemu-q35-vectors2")
# Captures without a meta record that are not 6.1 on one CPU.
OLD_CAPTURE_OPTIONS = {"qemu612-q35-smp2": {"kernel": "6.12", "cpus": 2}}


def sim_options(records: list[dict], name: str = "") -> SimOptions:
    """The sim options for a capture, from its meta record (QEMU's -device string, the
    netdev, -smp); the old captures without one are on one CPU, with capture_sets' vectors."""
    meta = records[0] if records and records[0].get("space") == "meta" else {}
    if not meta:
        if name in OLD_CAPTURE_OPTIONS:
            return SimOptions(**OLD_CAPTURE_OPTIONS[name])
        return SimOptions(vectors=CAPTURES[name])
    props = dict(p.split("=", 1) for p in meta.get("device", "").split(",")[1:] if "=" in p)
    netdev = dict(p.split("=", 1) for p in meta.get("netdev", "").split(",")[1:] if "=" in p)
    pairs = int(netdev.get("queues", 1)) if props.get("mq") == "on" else 1
    return SimOptions(
        vectors=int(props["vectors"]) if "vectors" in props else None,
        queue_pairs=pairs,
        cpus=int(meta.get("smp", 1)),
        disable_legacy=props.get("disable-legacy") == "on",
        kernel=meta.get("kernel_version", "6.1"),
    )


def tap_offloads(records: list[dict]) -> bool:
    meta = records[0] if records and records[0].get("space") == "meta" else {}
    return meta.get("netdev", "").startswith("tap") and "vnet_hdr=off" not in meta["netdev"]


FEATURE_OFFSETS = {0x04, 0x0C}  # device_feature (read), driver_feature (write)


def feature_masked(records: list[dict], offloads: bool) -> list[dict]:
    """With a vnet-header TAP, QEMU offers the TAP's offload features (the peer model is not
    this test's subject): those bits are taken out of the feature words on both sides."""
    if not offloads:
        return records
    extra = QEMU_72_TAP_VNET_FEATURES ^ QEMU_72_USER_NETDEV_FEATURES
    keep = ~((extra & 0xFFFFFFFF) | extra >> 32) & 0xFFFFFFFF  # either 32-bit window
    out = []
    for r in records:
        if r["space"] == "common" and r["offset"] in FEATURE_OFFSETS and r["size"] == 4:
            r = {**r, "value": r["value"] & keep}
        out.append(r)
    return out


@pytest.mark.parametrize("name", SMP_CAPTURES)
def test_probe_equals_real_kernel_on_many_cpus(name):
    """From the first common-config access through DRIVER_OK: every access equal, values
    included — each MSI-X message (reservation on the shutdown vector, then the CPU and vector
    the matrix chose, twice) as the real kernel wrote it."""
    real_all = load(name)
    opts = sim_options(real_all)
    assert opts.cpus > 1
    offloads = tap_offloads(real_all)
    # 6.12 binds virtio_pci at boot and again for the capture (qemu/capture.py): its probe
    # phase is the second bind, from virtio_pci's first access
    window = virtio_phase if opts.kernel == "6.1" else phase
    real = feature_masked(window(real_all), offloads)
    model = feature_masked(window(run_sim(opts).recorder.records), offloads)
    assert len(real) > 50
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
    if opts.vectors != 0:
        writes = [r for r in real if r["space"] == "msix-table" and r["op"] == "w"]
        assert {r["value"] for r in writes if r["offset"] % 16 == 8} - {0xEF}, "real vectors"


def test_offload_masking_keeps_the_comparison_honest():
    """The feature masking above only removes the TAP's offload bits: the mq capture's
    feature words differ from the model's by exactly those."""
    real = virtio_phase(load("qemu-q35-mq2-v6"))
    model = virtio_phase(run_sim(sim_options(load("qemu-q35-mq2-v6"))).recorder.records)
    differences = diff(real, model)
    assert [d.expected[2] for d in differences] == [0x04, 0x0C]
    extra = QEMU_72_TAP_VNET_FEATURES ^ QEMU_72_USER_NETDEV_FEATURES
    for d in differences:
        assert d.expected[4] ^ d.got[4] == extra & 0xFFFFFFFF


def test_model_without_the_matrix_would_differ():
    """The comparison is not vacuous: on 4 CPUs, the placement of one CPU's machine (all on
    CPU0) gives other messages."""
    real = virtio_phase(load("qemu-q35-smp4"))
    one = virtio_phase(run_sim(SimOptions()).recorder.records)
    assert diff(real, one)


# -- after DRIVER_OK: the lazy affinity moves --------------------------------------------------


def run_msix(records: list[dict]) -> list[tuple]:
    """The MSI-X table accesses after DRIVER_OK, before any teardown."""
    out = []
    for r in records:
        if r.get("phase") != "run" or "op" not in r:
            continue
        if r["space"] == "common" and r["op"] == "w" and r["offset"] == 0x14 and r["value"] == 0:
            break  # a reset: the removal path, not this test's subject
        if r["space"] == "msix-table":
            out.append(key(r))
    return out


def replay_interrupts(real: list[dict], opts: SimOptions) -> list[dict]:
    """Probe with the model, then raise the device's used-buffer notifications in the order
    the capture's QEMU raised them (its virtio_notify events), those the guest got between two
    of its accesses together, as the real CPUs found them pending."""
    opts.packets, opts.teardown = 0, False
    res = run_sim(opts)
    batch: list[int] = []
    for r in real:
        if r.get("phase") != "run":
            continue
        if r.get("space") == "event" and r.get("kind") == "queue-notify":
            batch.append(r["queue"])
        elif "op" in r and batch:
            for q in batch:
                res.device.notify_queue(q)
            batch = []
            res.kernel.take_interrupts()
    for q in batch:
        res.device.notify_queue(q)
    res.kernel.take_interrupts()
    return res.recorder.records


@pytest.mark.parametrize("name", SMP_CAPTURES + ONE_CPU_CAPTURES + tuple(OLD_CAPTURE_OPTIONS))
def test_lazy_moves_equal_real_kernel(name):
    """At each vector's first interrupt after the hints: mask, flush read, the message once
    (nothing moves: the same values again) or twice (it moves: the new vector on the old CPU,
    then on the new CPU), unmask — every access with its value, per MSI-X entry. (Which of two
    CPUs taking interrupts at the same moment writes first is a race in the real machine: the
    order between entries is compared only on one CPU.)"""
    real_all = load(name)
    opts = sim_options(real_all, name)
    real = run_msix(real_all)
    model_all = replay_interrupts(real_all, opts)
    model = run_msix(model_all)
    if opts.vectors == 0:
        assert real == model == []
        return
    assert real, "the capture has the moves"
    assert len(model) == len(real)
    real_moves, model_moves = moves(real_all), moves(model_all)
    assert real_moves and sorted(real_moves) == sorted(model_moves)
    for entry, episodes in real_moves.items():
        shown = "\n".join(format_key(k) for k in model_moves[entry][0])
        assert model_moves[entry] == episodes, f"entry {entry}; model:\n{shown}"
    if opts.cpus == 1:
        assert model == real


def moves(records: list[dict]) -> dict[int, list[list[tuple]]]:
    """Per MSI-X entry, each masked update in the run phase (mask write .. unmask write)."""
    acc = [r for r in records if r.get("phase") == "run" and "op" in r]
    out: dict[int, list[list[tuple]]] = {}
    i = 0
    while i < len(acc):
        r = acc[i]
        if r["space"] == "msix-table" and r["op"] == "w" and r["offset"] % 16 == 12 and r["value"] & 1:
            entry, episode = r["offset"] // 16, [key(r)]
            for j in range(i + 1, len(acc)):
                if acc[j]["space"] != "msix-table":
                    break
                episode.append(key(acc[j]))
                if acc[j]["op"] == "w" and acc[j]["offset"] == 16 * entry + 12 and not acc[j]["value"] & 1:
                    out.setdefault(entry, []).append(episode)
                    i = j
                    break
        i += 1
    return out


@pytest.mark.parametrize("name", ["qemu-q35-mq2-v6", "qemu-q35-mq2-smp4", "qemu-q35-smp4"])
def test_sim_traffic_moves_like_the_real_kernel(name):
    """`sim` on its own (each CPU sending on its XPS queue, a peer queue per pair): every
    entry the real kernel moved is moved the same way, with the same values."""
    real_all = load(name)
    real = moves(real_all)
    model = moves(run_sim(sim_options(real_all)).recorder.records)
    assert real and set(real) <= set(model)
    for entry, episodes in real.items():
        assert model[entry][0] == episodes[0], f"entry {entry}"


@pytest.mark.parametrize("name", ["qemu-q35-mq2-v6", "qemu-q35-mq2-smp4"])
def test_a_move_writes_the_message_twice(name):
    """A queue whose hint names other CPUs moves: (old CPU, new vector), then (new CPU, new
    vector) — x86 MSI without remapping (msi_set_affinity); seen in the capture and the model."""
    for records in (load(name), run_sim(sim_options(load(name))).recorder.records):
        two_step = [ep for eps in moves(records).values() for ep in eps
                    if sum(1 for k in ep if k[1] == "w" and k[2] % 16 == 8) == 2]  # fmt: skip
        assert two_step
        for ep in two_step:
            addr = [k[4] for k in ep if k[1] == "w" and k[2] % 16 == 0]
            data = [k[4] for k in ep if k[1] == "w" and k[2] % 16 == 8]
            assert addr[0] != addr[1] and data[0] == data[1]


# -- the boot interrupts, the matrix, the hints and XPS ------------------------------------------


def proc_interrupts(console: str) -> tuple[int, dict[int, list[int]]]:
    """The IO-APIC lines of the last /proc/interrupts the guest printed: irq → per-CPU counts."""
    block = console.rsplit("VMSIX-INTERRUPTS-", 1)[-1].splitlines()
    cpus = len(next(line for line in block if line.strip().startswith("CPU0")).split())
    rows = {}
    for line in block:
        m = re.match(r"\s*(\d+):\s+((?:\d+\s+){" + str(cpus) + r"})IO-APIC", line)
        if m:
            rows[int(m.group(1))] = [int(c) for c in m.group(2).split()]
    return cpus, rows


@pytest.mark.parametrize("name", [n for n in SMP_CAPTURES if n != "qemu-q35-smp2-vectors0"])
def test_boot_interrupts_are_where_proc_interrupts_shows_them(name):
    """Each boot-time interrupt that fired was counted only on the CPU the model gives it."""
    cpus, rows = proc_interrupts((DATA / f"{name}.console.txt").read_text(errors="replace"))
    _matrix, placed = x86_boot_vectors(cpus)
    where = {irq: cpu for irq, cpu, _vector in placed}
    fired = {irq: [c for c, n in enumerate(counts) if n] for irq, counts in rows.items()}
    assert sum(1 for cpus_ in fired.values() if cpus_) >= 4
    for irq, on in fired.items():
        if on:
            assert on == [where[irq]], f"irq {irq}"


def test_matrix_best_cpu_is_the_one_with_most_available_lowest_on_a_tie():
    m = VectorMatrix(3)
    for cpu in range(3):
        m.irq_matrix_online(cpu)
    everyone = frozenset(range(3))
    assert [m.irq_matrix_alloc(everyone, False) for _ in range(4)] == [
        (0, 0x20), (1, 0x20), (2, 0x20), (0, 0x21)]  # fmt: skip
    assert m.irq_matrix_alloc(frozenset({2}), False) == (2, 0x21)
    # CPU0 2 allocated, CPU1 1, CPU2 2: CPU1 has the most available
    assert m.irq_matrix_alloc(everyone, False) == (1, 0x21)
    m.irq_matrix_free(0, 0x20)
    # now CPU0 has 1: it ties with none, it has the most; its lowest free vector is 0x20 again
    assert m.irq_matrix_alloc(everyone, False) == (0, 0x20)
    assert m.irq_matrix_alloc(frozenset({5}), False) is None  # no online CPU in the mask


def test_matrix_reservation_is_book_keeping_and_full_cpus_give_enospc():
    m, _ = x86_boot_vectors(1)
    before = m.free_count(0)
    m.irq_matrix_reserve()
    assert m.free_count(0) == before and m.global_reserved == 1
    assert m.irq_matrix_alloc(frozenset({0}), reserved=True) is not None
    assert m.global_reserved == 0
    while m.irq_matrix_alloc(frozenset({0}), False) is not None:
        pass
    assert m.free_count(0) == 0
    used = m.used[0]
    assert 0x20 not in used and 0x80 not in used and 0x32 not in used  # system vectors
    assert len(used) == FIRST_SYSTEM_VECTOR - FIRST_EXTERNAL_VECTOR - 3


def test_matrix_managed_reservation_and_allocation():
    m = VectorMatrix(2)
    for cpu in range(2):
        m.irq_matrix_online(cpu)
    assert m.irq_matrix_reserve_managed(frozenset({0, 1})) == 0
    assert m.free_count(0) == m.free_count(1) == FIRST_SYSTEM_VECTOR - FIRST_EXTERNAL_VECTOR - 1
    # a managed vector comes from the reservation, on the CPU with fewest managed in use
    assert m.irq_matrix_alloc_managed(frozenset({0, 1})) == (0, 0x20)
    assert m.irq_matrix_alloc_managed(frozenset({0, 1})) == (1, 0x20)
    # non-managed allocations skip the managed reservations
    assert m.irq_matrix_alloc(frozenset({0}), False) == (0, 0x21)


@pytest.mark.parametrize(
    "cpus,pairs,groups",
    [(2, 1, [[0, 1]]), (2, 2, [[0], [1]]), (4, 2, [[0, 1], [2, 3]]), (3, 2, [[0, 1], [2]]),
     (2, 4, [[0], [1]])],
)  # fmt: skip
def test_virtnet_set_affinity_spreads_pairs_with_stride_and_xps(cpus, pairs, groups):
    """virtnet_set_affinity: pair i's RX and TX interrupts hinted to its group of CPUs, TX queue
    i's XPS the same group; with more pairs than CPUs only one pair per CPU is used."""
    res = run_sim(SimOptions(cpus=cpus, queue_pairs=pairs, packets=0, teardown=False))
    view = res.vector_placement_after_probe
    assert view["xps"] == {f"tx-{i}": g for i, g in enumerate(groups)}
    hints = {r["name"]: r["affinity_hint"] for r in view["irqs"]}
    assert hints["virtio0-config"] is None
    for i, g in enumerate(groups):
        assert hints[f"virtio0-input.{i}"] == hints[f"virtio0-output.{i}"] == g
    virtnet_set_affinity(res.kernel, res.net)  # again: the same hints
    assert res.kernel.xps == {f"tx-{i}": frozenset(g) for i, g in enumerate(groups)}


def test_views_show_placement_and_xps():
    res = run_sim(SimOptions(cpus=2, queue_pairs=2, vectors=6))
    view = res.vector_placement
    assert view["destination_mode"] == "logical (flat)"
    assert [c["cpu"] for c in view["cpus"]] == [0, 1]
    on = {r["name"]: (r["cpu"], r["vector"]) for r in view["irqs"]}
    assert on["virtio0-input.0"][0] == 0 and on["virtio0-input.1"][0] == 1  # moved to its hint
    assert any(v["irq"].endswith("timer") for v in view["cpus"][0]["vectors"])


def test_sim_cli_shows_placement_and_xps(capsys):
    """`virtio-msix sim --queue-pairs 2 --vectors 6 --cpus 4`: the text view has the per-CPU
    vectors, each queue interrupt's hint and the XPS map; --json the same data."""
    from virtio_msix.cli import main

    assert main(["sim", "--queue-pairs", "2", "--vectors", "6", "--cpus", "4", "--color", "never"]) == 0
    text = capsys.readouterr().out
    assert "Vector placement at the end of the run (x86 vector matrix" in text
    assert re.search(r"CPU2: +\d+ free \| .*irq 24 virtio0-config", text)
    assert "irq 27 virtio0-input.1: CPU3 vector 0x22, affinity hint 2-3" in text
    assert "XPS tx-0: CPU 0-1" in text and "XPS tx-1: CPU 2-3" in text
    assert main(["sim", "--queue-pairs", "2", "--vectors", "6", "--cpus", "4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vector_placement"]["xps"] == {"tx-0": [0, 1], "tx-1": [2, 3]}
    after_probe = {r["name"]: (r["cpu"], r["vector"]) for r in doc["vector_placement_after_probe"]["irqs"]}
    # as the real kernel placed them on 4 CPUs (qemu-q35-mq2-smp4): config on CPU2 at 0x22
    assert after_probe["virtio0-config"] == (2, 0x22)


def test_more_than_8_cpus_use_physical_destination_mode():
    """6.1 picks flat logical up to 8 CPUs and physical flat beyond (the captures' addresses:
    0xFEE01004 = logical CPU0 on 8, 0xFEE00000 = APIC ID 0 on 9)."""
    for name, logical in (("qemu-q35-smp8", True), ("qemu-q35-smp9", False)):
        real = [r for r in virtio_phase(load(name)) if r["space"] == "msix-table"
                and r["op"] == "w" and r["offset"] % 16 == 0]  # fmt: skip
        assert all(bool(r["value"] & 4) == logical for r in real), name
        res = run_sim(sim_options(load(name)))
        assert res.vector_placement["destination_mode"] == ("logical (flat)" if logical else "physical")


def test_every_pair_carries_traffic_with_a_multi_queue_peer():
    """sim with 2 pairs on 2 CPUs: CPU i sends on TX queue i (XPS), the peer (a queue per
    pair, as a multi-queue TAP) answers on the same pair, so every queue interrupts."""
    res = run_sim(SimOptions(cpus=2, queue_pairs=2, vectors=6, packets=8))
    counts = {r["name"]: sum(r["counts"]) for r in res.interrupts}
    for name in ("input.0", "output.0", "input.1", "output.1"):
        assert counts[f"virtio0-{name}"] > 0, name
    assert res.net.rx_packets == res.net.tx_packets == 8
    # one pair: every CPU sends on queue 0 (XPS names all CPUs for it)
    one = run_sim(SimOptions(cpus=2, packets=4))
    assert one.vector_placement["xps"] == {"tx-0": [0, 1]} and one.net.rx_packets == 4


def test_managed_interrupt_reserves_on_its_cpus_and_starts_on_one_of_them():
    """A managed interrupt (PCI_IRQ_AFFINITY): a vector set aside on each CPU of its mask at
    allocation, one of them taken at activation, given back to the reservation (not to the
    free pool) at deactivation, the reservation gone when the descriptor is freed."""
    from virtio_msix.guest.kernel import Kernel
    from virtio_msix.pci.bus import PciBus
    from virtio_msix.virtio.memory import SparseMemory

    k = Kernel(PciBus(), SparseMemory(), cpus=2)
    m = k.x86.vectors
    free = [m.free_count(c) for c in range(2)]
    desc = k.irq_alloc_desc("PCI-MSIX", 0)
    assert k.reserve_managed_vector(desc, frozenset({1})) == 0
    assert [m.free_count(c) for c in range(2)] == [free[0], free[1] - 1]
    assert k.assign_vector(desc) == 0
    assert desc.cpu == 1 and desc.vector in m.maps[1].managed_map
    assert [m.free_count(c) for c in range(2)] == [free[0], free[1] - 1]  # no second vector
    first = desc.vector
    k.release_vector(desc)
    assert desc.vector is None and m.free_count(1) == free[1] - 1
    assert k.assign_vector(desc) == 0 and (desc.cpu, desc.vector) == (1, first)
    k.irq_free_desc(desc)
    assert [m.free_count(c) for c in range(2)] == free
