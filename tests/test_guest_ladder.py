"""The vp_find_vqs fallback ladder, faults, masking, teardown and backtraces of the model."""

from __future__ import annotations

import pytest

from virtio_msix.guest.sim import SimOptions, run_sim


def names(res):
    return [r["name"] for r in res.interrupts]


def test_rung1_one_vector_per_queue():
    res = run_sim(SimOptions())
    assert res.vp.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): ok"]
    assert names(res) == ["virtio0-config", "virtio0-input.0", "virtio0-output.0"]
    assert dict(res.event_vectors) == {"config": 0, "input.0": 1, "output.0": 2, "control": 0xFFFF}


def test_rung2_shared_vector_when_table_too_small():
    res = run_sim(SimOptions(vectors=2))
    assert res.vp.ladder[0].endswith("error -ENOSPC")  # 3 vectors wanted, 2 in the table
    assert res.vp.ladder[1].endswith("ok")
    assert names(res) == ["virtio0-config", "virtio0-virtqueues"]
    assert dict(res.event_vectors) == {"config": 0, "input.0": 1, "output.0": 1, "control": 0xFFFF}


def test_rung3_intx_without_msix():
    res = run_sim(SimOptions(vectors=0))
    assert len(res.vp.ladder) == 3 and res.vp.ladder[2] == "vp_find_vqs_intx: ok"
    assert [(r["chip"], r["name"]) for r in res.interrupts] == [("IO-APIC", "virtio0")]
    assert res.net.rx_packets == res.options.packets


def test_fault_queue_vector_refused_falls_back_to_shared():
    res = run_sim(SimOptions(refuse_vectors_from=2))
    assert res.vp.ladder[0].endswith("error -EBUSY")  # from queue_msix_vector
    assert names(res) == ["virtio0-config", "virtio0-virtqueues"]
    # The first rung's interrupts were given back and their numbers reused.
    assert [r["irq"] for r in res.interrupts] == [24, 25]


def test_fault_config_vector_refused_falls_back_to_intx():
    res = run_sim(SimOptions(refuse_config_vector=True))
    assert [s.split(":")[1].strip() for s in res.vp.ladder] == [
        "error -EBUSY",
        "error -EBUSY",
        "ok",
    ]
    assert names(res) == ["virtio0"]
    # The failed MSI-X rungs left MSI-X off and the table masked.
    assert not res.device.msix.enabled
    assert all(e.masked for e in res.device.msix.entries)


def test_fault_every_queue_vector_refused_falls_back_to_intx():
    res = run_sim(SimOptions(refuse_vectors_from=1))
    assert res.vp.ladder[-1] == "vp_find_vqs_intx: ok"
    assert res.net.rx_packets == res.options.packets


@pytest.mark.parametrize("vectors", [None, 2, 0])
def test_traffic_flows_both_ways(vectors):
    res = run_sim(SimOptions(vectors=vectors, packets=20))
    assert res.net.tx_packets == 20 and res.net.rx_packets == 20
    assert res.net.received[0][:12] == res.net.mac * 2
    assert sum(sum(r["counts"]) for r in res.interrupts) > 0


def test_masked_vector_pending_then_delivered_once():
    res = run_sim(SimOptions(mask_during_traffic=True))
    m = res.masked_demo
    assert m["pending_while_masked"] is True
    assert m["interrupts_while_masked"] == 0
    assert m["interrupts_after_unmask"] == 1
    assert m["pending_after_unmask"] is False


def test_teardown_masks_table_and_disables_msix():
    res = run_sim(SimOptions())
    assert res.msix_enabled_after_teardown is False
    assert all(r["entry_masked"] for r in res.table_after_teardown)
    assert res.device.config_vector == 0xFFFF
    assert all(q.vector == 0xFFFF for q in res.device.device.queues)
    # virtio_dev_remove acknowledges the device again after the driver reset it (the real
    # kernel does: tests/data/qemu-q35-teardown.jsonl)
    assert res.device.device.status == 1


def test_backtraces_have_the_seeds_frames():
    res = run_sim(SimOptions(backtraces=True))
    in_probe = [bt for bt, _ in res.kernel.backtraces
                if any(f.function == "virtnet_probe" for f in bt.frames)]  # fmt: skip
    fills = [bt for bt in in_probe if bt.title.endswith("fill")]
    unmasks = [bt for bt in in_probe if bt.title.endswith("unmask")]
    # 3 reservation-mode fills + 2 per request_irq (activation, affinity) for 3 vectors.
    assert len(fills) == 9 and len(unmasks) == 3
    seed_fill = ["pci_msi_domain_write_msg", "irq_chip_write_msi_msg", "msi_domain_activate",
                 "__irq_domain_activate_irq", "irq_domain_activate_irq", "__msi_domain_alloc_irqs",
                 "msi_domain_alloc_irqs", "pci_msi_setup_msi_irqs", "msix_capability_init",
                 "__pci_enable_msix", "__pci_enable_msix_range", "pci_alloc_irq_vectors_affinity",
                 "vp_request_msix_vectors", "vp_find_vqs_msix", "vp_find_vqs", "vp_modern_find_vqs",
                 "virtio_find_vqs_ctx", "virtnet_find_vqs", "init_vqs", "virtnet_probe",
                 "virtio_dev_probe", "call_driver_probe", "really_probe", "__driver_probe_device",
                 "driver_probe_device", "__device_attach_driver", "bus_for_each_drv", "__device_attach",
                 "device_initial_probe", "bus_probe_device", "device_add", "register_virtio_device",
                 "virtio_pci_probe", "local_pci_probe", "pci_call_probe", "__pci_device_probe",
                 "pci_device_probe"]  # fmt: skip
    assert [f.function for f in fills[0].frames] == seed_fill
    seed_unmask_top = ["pci_msi_unmask_irq", "unmask_irq", "irq_enable", "__irq_startup",
                       "irq_startup", "__setup_irq", "request_threaded_irq", "request_irq",
                       "vp_request_msix_vectors", "vp_find_vqs_msix"]  # fmt: skip
    assert [f.function for f in unmasks[0].frames][:10] == seed_unmask_top
    assert unmasks[0].format().splitlines()[1].startswith("#0  pci_msi_unmask_irq (")


def test_uml_flavour_messages_carry_irq_numbers():
    res = run_sim(SimOptions(arch="um"))
    irqs = [r["irq"] for r in res.interrupts]
    assert [(r["address"], r["data"]) for r in res.table_after_probe[:3]] == [
        (0xA0000, i) for i in irqs
    ]
    # UML has no reservation mode: each entry is written once at allocation, never with 0xEF.
    writes = [r for r in res.probe_records() if r["space"] == "msix-table" and r["op"] == "w"
              and r["offset"] % 16 == 8]  # fmt: skip
    assert [w["value"] for w in writes] == irqs


def test_multiple_cpus_spread_vectors():
    res = run_sim(SimOptions(cpus=4, queue_pairs=2))
    cpus = {r["cpu"] for r in res.interrupts}
    assert len(cpus) > 1
    assert res.net.ctrl_results[0] == (4, 0, 0)  # VQ_PAIRS_SET acknowledged
