"""What the real Linux 6.1 kernel (User-Mode Linux) leaves in used_event when our device decides
whether to notify (virtio 1.2 §2.7.10; the device reads it in VirtQueue.should_notify),
against the driver model (``sim --arch um``) under the same device code.

The control queue has no callback: 6.1's virtqueue_vring_init_split puts NO_INTERRUPT in the
shadow and virtqueue_get_buf_ctx_split then never writes used_event, so the device always
reads 0 there. (RX and TX, one frame at a time as the boot's ping sends them, ask for the
next buffer — used_event = the used index before it — in the kernel and in the model alike;
only bursts would tell NAPI's deferred re-enabling apart, and the real kernel's bursts under
UML are not deterministic, so they are not compared here.)"""

from __future__ import annotations

import pytest

from virtio_msix.guest.sim import SimOptions, run_sim
from virtio_msix.uml.boot import BootOptions, run_boot
from virtio_msix.virtio import queue as queue_mod

pytestmark = pytest.mark.uml


def _watch_used_event(monkeypatch) -> list[tuple[int, int, int]]:
    """(queue index, used_event read, used index) at every split-ring notification decision
    with event idx, whoever drives the device."""
    seen: list[tuple[int, int, int]] = []
    original = queue_mod.VirtQueue.should_notify

    def should_notify(self, mem):
        result = original(self, mem)
        if self.event_idx and not self.packed:
            seen.append((self.index, self.used_event(mem), self.used_idx))
        return result

    monkeypatch.setattr(queue_mod.VirtQueue, "should_notify", should_notify)
    return seen


def test_control_queue_used_event_stays_0_in_the_kernel_and_the_model(linux, monkeypatch):
    seen = _watch_used_event(monkeypatch)
    res = run_boot(BootOptions(timeout=120))
    assert res.error is None, res.error
    real = list(seen)
    seen.clear()
    run_sim(SimOptions(arch="um"))
    model = list(seen)
    for who, log in (("kernel", real), ("model", model)):
        cvq = [event for q, event, _used in log if q == 2]
        assert cvq and set(cvq) == {0}, (who, cvq)
        # the data queues: the driver asks for the next used buffer each time
        for q in (0, 1):
            data = [(event, used) for i, event, used in log if i == q]
            assert data and all(event == (used - 1) & 0xFFFF for event, used in data), (who, q)
