"""Issue 8, defect 11: no DMA and no MSI while COMMAND.Bus Master is clear (PCI 3.0 §6.2.2),
and a PCI function reset resets the virtio device with it."""

from __future__ import annotations

from rig import ACK, DRIVER, DRIVER_OK, F_WRITE, FEATURES_OK, Rig, frame


def offer_traffic(rig: Rig, n: int = 3) -> None:
    for i in range(n):
        rig.rx.set_desc(i, rig.buffer(2048), 2048, F_WRITE)
    rig.rx.offer(*range(n))
    for i in range(n):
        buf = rig.buffer(12 + 64)
        rig.mem.poke(buf + 12, frame(64, tag=i))
        rig.tx.set_desc(i, buf, 12 + 64)
    rig.tx.offer(*range(n))
    for i in range(n):
        rig.inject(frame(60, tag=0x40 + i))


def test_bus_master_cleared_means_zero_dma_and_zero_msi_even_if_the_driver_insists():
    rig = Rig()
    offer_traffic(rig)
    rig.dev.cfg_write(4, 2, 0x2)  # memory decode on, Bus Master off
    # A hostile driver sets DRIVER_OK again without Bus Master and kicks everything.
    rig.wr("device_status", ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    snapshot = bytes(rig.mem.buf)
    rig.mem.reads = rig.mem.writes = 0
    msis = len(rig.sink.msis)
    for ring in rig.rings:
        rig.kick(ring)
    rig.dev.poll()
    rig.net.set_link(False)  # a config interrupt would be an MSI: dropped too
    assert rig.mem.reads == 0 and rig.mem.writes == 0
    assert bytes(rig.mem.buf) == snapshot
    assert len(rig.sink.msis) == msis
    h = rig.dev.health()
    assert h["counters"]["msi_dropped_no_bus_master"] == 1
    assert h["counters"]["rx_frames"] == 0 and h["counters"]["tx_frames"] == 0
    # Bus Master back on: the kicks made meanwhile are served, nothing was lost.
    rig.dev.cfg_write(4, 2, 0x6)
    assert rig.rx.used_idx() == 3 and rig.tx.used_idx() == 3
    c = rig.dev.health()["counters"]
    assert c["tx_frames"] == 3 and c["rx_frames"] == 3 and rig.dev.health()["dropped"] == {}


def test_clearing_bus_master_while_running_stops_dma():
    rig = Rig()
    offer_traffic(rig)
    rig.dev.cfg_write(4, 2, 0x2)
    rig.mem.reads = rig.mem.writes = 0
    rig.kick(rig.tx)
    rig.dev.poll()
    assert rig.mem.reads == 0 and rig.mem.writes == 0
    assert not rig.status() & DRIVER_OK  # QEMU: clearing Bus Master clears DRIVER_OK


def test_function_reset_resets_the_virtio_device():
    rig = Rig()
    assert rig.status() == ACK | DRIVER | FEATURES_OK | DRIVER_OK
    rig.dev.function_reset()
    assert rig.dev.command == 0
    assert rig.dev.device.status == 0 and rig.rd("device_status") == 0
    assert not any(q.enabled for q in rig.net.queues)
    # With COMMAND=0 and the virtio device reset, nothing moves.
    offer_traffic(rig)
    rig.mem.reads = rig.mem.writes = 0
    rig.dev.poll()
    for ring in rig.rings:
        rig.kick(ring)
    assert rig.mem.reads == 0 and rig.mem.writes == 0
    assert rig.dev.health()["counters"]["rx_frames"] == 0
