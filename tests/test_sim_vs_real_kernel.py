"""The driver model's accesses equal the real Linux 6.1 kernel's, captured from QEMU 7.2
(Debian's kernel package, q35 and pc): from virtio_pci's first access to the DRIVER_OK write,
same spaces, offsets, sizes, order and values — ring addresses aside."""

from __future__ import annotations

import pytest
from capture_sets import CAPTURES, CAPTURES_612, load

from virtio_msix.guest.compare import diff, format_key, phase, virtio_phase
from virtio_msix.guest.sim import SimOptions, run_sim


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_probe_trace_equals_real_kernel(name):
    real = phase(load(name))
    assert len(real) > 100, "the capture must contain the probe"
    model = run_sim(SimOptions(vectors=CAPTURES[name])).probe_records()
    differences = diff(real, model)
    shown = "\n".join(
        f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
        for d in differences[:10]
    )
    assert not differences, f"{len(differences)} differences:\n{shown}"


def test_probe_ends_with_driver_ok_and_msix_unmasks():
    real = phase(load("qemu-q35"))
    last = real[-1]
    assert (last["space"], last["op"], last["offset"], last["value"]) == ("common", "w", 0x14, 0xF)
    unmasks = [r for r in real if r["space"] == "msix-table" and r["op"] == "w"
               and r["offset"] % 16 == 12 and r["value"] == 0]  # fmt: skip
    assert [r["offset"] // 16 for r in unmasks] == [0, 1, 2]


def test_comparison_catches_a_difference():
    """The comparison is not vacuous: a model run with another table size differs."""
    real = phase(load("qemu-q35"))
    model = run_sim(SimOptions(vectors=2)).probe_records()
    assert diff(real, model)


def test_model_vectors_are_the_real_kernels():
    """x86: the message the real kernel wrote (0xFEE01004 / 0x26..0x28) is the model's."""
    real = load("qemu-q35")
    res = run_sim(SimOptions())
    final = {}
    for r in real:
        if r.get("phase") == "probe" and r["space"] == "msix-table" and r["op"] == "w":
            final[r["offset"]] = r["value"]
    for row in res.table_after_probe[:3]:
        assert final[16 * row["entry"]] == row["address"]
        assert final[16 * row["entry"] + 8] == row["data"]


# -- Linux 6.12 (Debian's, bookworm-backports): sim --kernel 6.12 against its captures ----------


@pytest.mark.parametrize("name", sorted(CAPTURES_612))
def test_612_probe_trace_equals_real_kernel(name):
    """virtio_pci's first access (the sysfs bind) to DRIVER_OK, values included; and, as for
    6.1 under UML, the virtio part (first common-config access to DRIVER_OK) on its own."""
    real = phase(load(name))
    assert len(real) > 100, "the capture must contain the probe"
    records = run_sim(SimOptions(vectors=CAPTURES_612[name], kernel="6.12")).recorder.records
    model = phase(records)
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
    assert len(virtio_phase(real)) > 50
    assert not diff(virtio_phase(real), virtio_phase(model))


@pytest.mark.parametrize("name", sorted(CAPTURES_612))
def test_612_captures_are_not_61_probes(name):
    """The comparison tells the versions apart: the 6.1 model differs from every 6.12 capture
    (MSI messages, vectors; the shared rung's extra read), and the 6.12 model from 6.1's."""
    vectors = CAPTURES_612[name]
    six_one = name.replace("qemu612-", "qemu-")
    old_model = run_sim(SimOptions(vectors=vectors)).probe_records()
    new_model = run_sim(SimOptions(vectors=vectors, kernel="6.12")).probe_records()
    if vectors == 0:
        # INTx: no MSI message, no rung gets as far as a read: the versions' probes are equal
        assert not diff(phase(load(name)), old_model)
        return
    assert diff(phase(load(name)), old_model)
    assert diff(phase(load(six_one)), new_model)


def test_612_msi_messages_are_physical_mode():
    """x86 6.12: physical destination mode, CPU0 = 0xFEE00000, CPU1 = 0xFEE01000; the first
    device vector is 0x25 (6.1: logical 0xFEE01004, 0x26)."""
    real = load("qemu612-q35")
    final = {}
    for r in real:
        if r.get("phase") == "probe" and r["space"] == "msix-table" and r["op"] == "w":
            final[r["offset"]] = r["value"]
    res = run_sim(SimOptions(kernel="6.12"))
    rows = res.table_after_probe[:3]
    for row in rows:
        assert final[16 * row["entry"]] == row["address"] == 0xFEE00000
        assert final[16 * row["entry"] + 8] == row["data"]
    assert [row["data"] for row in rows] == [0x25, 0x26, 0x27]
    two = run_sim(SimOptions(kernel="6.12", cpus=2)).table_after_probe
    # each on the CPU with the most free vectors after the boot interrupts were spread over
    # both (captured, qemu612-q35-smp2): config CPU0, input.0 CPU1, output.0 CPU0
    assert [(row["address"], row["data"]) for row in two[:3]] == [
        (0xFEE00000, 0x22), (0xFEE01000, 0x23), (0xFEE00000, 0x23)]
    assert all("physical" in row["decoded"] for row in two[:3])


def test_612_ladder_has_the_shared_slow_rung():
    res = run_sim(SimOptions(vectors=2, kernel="6.12"))
    assert res.vp.ladder == [
        "vp_find_vqs_msix(VP_VQ_VECTOR_POLICY_EACH): error -ENOSPC",
        "vp_find_vqs_msix(VP_VQ_VECTOR_POLICY_SHARED_SLOW): error -ENOSPC",
        "vp_find_vqs_msix(VP_VQ_VECTOR_POLICY_SHARED): ok",
    ]
    assert run_sim(SimOptions(vectors=2)).vp.ladder[-1] == "vp_find_vqs_msix(per_vq_vectors=false): ok"


def test_612_backtraces_name_612_functions_and_places():
    """sim --kernel 6.12 --backtraces: 6.12's names where it renamed a frame, none for the frame
    it folded away (__pci_enable_msix), and file:line from linux-source-6.12."""

    def text(kernel):
        res = run_sim(SimOptions(kernel=kernel, backtraces=True))
        return "\n".join(bt.format() for bt, _ in res.kernel.backtraces)

    new, old = text("6.12"), text("6.1")
    assert "#6  msi_domain_alloc_irqs_all_locked (" in new and "__pci_enable_msix (" not in new
    assert "pci_alloc_irq_vectors_affinity (" in new and "drivers/pci/msi/api.c:254" in new
    assert "virtio_find_vqs (" in new and "virtnet_probe (vp=virtio0) at drivers/net/virtio_net.c:6471" in new
    assert "__pci_enable_msix (" in old and "drivers/pci/msi/msi.c:1024" in old
    assert "msi_domain_alloc_irqs_all_locked" not in old


# Dwords whose values the firmware or the host chose (BARs, expansion ROM, interrupt line):
# the model's firmware assigns its own.
HOST_CHOSEN = {0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30, 0x3C}


def save_state_reads(records: list[dict]) -> list[dict]:
    """6.12's pci_save_state in pci_bus_add_device: the 16 header dwords read in order, then
    one capability walk (status, pointer, each capability's header)."""
    acc = [r for r in records if "op" in r]
    for i in range(len(acc) - 16):
        if all(acc[i + n]["space"] == "cfg" and acc[i + n]["op"] == "r" and acc[i + n]["size"] == 4
               and acc[i + n]["offset"] == 4 * n for n in range(16)):  # fmt: skip
            out = acc[i : i + 18]  # + PCI_STATUS, PCI_CAPABILITY_LIST
            pos = acc[i + 17]["value"]
            for r in acc[i + 18 :]:
                if pos < 0x40 or r["offset"] != pos:
                    break
                out.append(r)
                pos = r["value"] >> 8
            return out
    return []


def _masked(records: list[dict]) -> list[tuple]:
    return [(r["space"], r["op"], r["offset"], r["size"],
             None if r["size"] == 4 and r["offset"] in HOST_CHOSEN else r["value"])
            for r in records]  # fmt: skip


@pytest.mark.parametrize("name", sorted(CAPTURES_612))
def test_612_saves_config_space_before_the_driver(name):
    """Before any driver access 6.12 reads the 16 header dwords and walks the capabilities once
    more (pci_bus_add_device → pci_save_state); the model does, in enumeration, 6.1's does not."""
    vectors = CAPTURES_612[name]
    real = save_state_reads(load(name))
    assert len(real) == (24 if vectors != 0 else 23)  # no MSI-X capability: one fewer
    res = run_sim(SimOptions(vectors=vectors, kernel="6.12"))
    model = save_state_reads(res.recorder.records)
    assert _masked(model) == _masked(real)
    assert all(r["phase"] == "enumeration" for r in model)
    assert save_state_reads(run_sim(SimOptions(vectors=vectors)).recorder.records) == []
    assert save_state_reads(load(name.replace("qemu612-", "qemu-"))) == []


def test_612_two_cpus_equal_the_real_kernel():
    """--smp 2 (captured with 6.12): the model places the boot interrupts and the device's
    vectors as the real kernel did, so every access is equal, values included."""
    real = phase(load("qemu612-q35-smp2"))
    model = run_sim(SimOptions(kernel="6.12", cpus=2)).probe_records()
    differences = diff(real, model)
    shown = "\n".join(f"#{d.index}: kernel {format_key(d.expected)} | model {format_key(d.got)}"
                      for d in differences[:10])  # fmt: skip
    assert not differences, f"{len(differences)} differences:\n{shown}"
