"""The driver model's resources behave as the kernel's: a full x86 vector space makes
request_irq fail with -ENOSPC and virtio_pci falls down its ladder (no exception), and RX/TX
buffers go back to the allocator on completion, so guest memory stays flat however many
packets pass."""

from __future__ import annotations

from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.guest.vring import SMP_CACHE_BYTES, vring_size
from virtio_msix.irq.x86 import (
    BOOT_USED_VECTORS,
    FIRST_EXTERNAL_VECTOR,
    FIRST_SYSTEM_VECTOR,
    MANAGED_IRQ_SHUTDOWN_VECTOR,
    system_vectors,
)

# 204 device vectors less the system ones among them (0x20, 0x32, 0x80) less the 6 the boot
# interrupts hold on CPU0: 195
FREE_ON_CPU0 = FIRST_SYSTEM_VECTOR - FIRST_EXTERNAL_VECTOR - len(system_vectors()) - len(BOOT_USED_VECTORS)


def names(res):
    return [r["name"] for r in res.interrupts]


def test_vector_space_exhausted_falls_back_to_shared_vectors():
    # 128 pairs want 1 + 256 vectors; one CPU has 198 free: request_irq fails with -ENOSPC.
    res = run_sim(SimOptions(queue_pairs=128, packets=2))
    assert res.probe_rc == 0
    assert res.vp.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): error -ENOSPC",
                             "vp_find_vqs_msix(per_vq_vectors=false): ok"]  # fmt: skip
    assert names(res) == ["virtio0-config", "virtio0-virtqueues"]
    # The first rung gave back every vector it had taken: only the two shared ones are held.
    used = res.kernel.x86.vectors.used[0]
    assert len(used) == len(BOOT_USED_VECTORS)  # after teardown
    assert res.net.rx_packets == 2  # traffic passes on the shared vector
    # Entries past the two in use are masked and carry no live vector: those the first rung
    # activated were cleared on free_irq; those it never reached keep the reservation-mode
    # placeholder (the shutdown vector), as Linux leaves them (never activated, never
    # deactivated).
    rest = res.table_after_probe[2:]
    assert all(r["masked"] for r in rest)
    assert {r["data"] for r in rest} == {0, MANAGED_IRQ_SHUTDOWN_VECTOR}


def test_vector_space_boundary_on_one_cpu():
    fits = (FREE_ON_CPU0 - 1) // 2  # config + 2 per pair
    assert run_sim(SimOptions(queue_pairs=fits, packets=0)).vp.ladder[0].endswith("ok")
    over = run_sim(SimOptions(queue_pairs=fits + 1, packets=0))
    assert over.vp.ladder[0].endswith("error -ENOSPC")


def test_more_cpus_have_room_for_per_queue_vectors():
    res = run_sim(SimOptions(queue_pairs=128, cpus=2, packets=0))
    assert res.vp.ladder == ["vp_find_vqs_msix(per_vq_vectors=true): ok"]
    assert len(res.interrupts_after_probe) == 1 + 2 * 128


def test_guest_memory_stays_flat_for_any_packet_count():
    small = run_sim(SimOptions(packets=50))
    large = run_sim(SimOptions(packets=5000))
    assert large.net.rx_packets == large.net.tx_completed == 5000
    assert large.kernel.pages.peak == small.kernel.pages.peak
    assert large.kernel.pages.next == small.kernel.pages.next  # nothing new carved from RAM
    assert len(large.net.received) <= 64
    assert large.kernel.x86.received >= 10000 and len(large.kernel.x86.log) <= 256


def test_teardown_frees_every_buffer():
    running = run_sim(SimOptions(packets=20, teardown=False))
    rings = sum(vring_size(vq.num, SMP_CACHE_BYTES) for vq in running.vp.vqs)
    assert running.kernel.pages.allocated > rings + 64  # RX buffers posted
    for packets in (0, 20):
        done = run_sim(SimOptions(packets=packets))
        # Left after remove: the rings (the model keeps them) and the control buffer.
        assert done.kernel.pages.allocated == rings + 64


def test_guest_ram_running_out_cuts_rx_refills_short_instead_of_crashing():
    # 255 pairs in use x 256 RX buffers of 1.5 KiB do not fit 64 MiB: the driver posts what
    # fits (try_fill_recv stops on -ENOMEM) and traffic still passes.
    res = run_sim(SimOptions(queue_pairs=511, cpus=255, packets=4))
    assert res.probe_rc == 0 and res.net.rx_oom > 0
    assert res.net.rx_packets == 4
