"""The virtio-pci transport (virtio 1.2 §4.1), laid out as QEMU 7.2's virtio-pci does.

Modern interface: vendor capabilities for common / ISR / device / notify structures in a 64-bit
prefetchable BAR (QEMU's virtio_pci_modern_regions_init places each in its own page), the
PCI_CFG access window, MSI-X in its own BAR. Transitional devices also have the legacy register
block in an I/O BAR0 (§4.1.4.10).

Where QEMU and the spec differ, the device follows the spec and the comment says so:
- queue_size accepts only a power of two no larger than the queue's maximum (§2.7: split queue
  sizes are powers of two; §4.1.4.3: the reset value is the maximum). QEMU accepts any 1..1024.
- Fields of a queue that does not exist (queue_size 0) ignore writes and read 0, and its
  queue_msix_vector reads NO_VECTOR (§4.1.5.1.2.1: a mapping that cannot be made reads back
  NO_VECTOR). QEMU stores vectors and addresses for any select below 1024.
- DEVICE_NEEDS_RESET is followed by a configuration change notification when DRIVER_OK is set
  (§2.1.2). QEMU marks the device broken first and then suppresses that notification.
- No used-buffer notification and no buffer processing before DRIVER_OK (§2.1.2, §3.1.1); a kick
  that arrives earlier is remembered and served once DRIVER_OK is set.
- config_generation changes whenever device configuration changes (§4.1.4.3.1), also before
  DRIVER_OK; QEMU bumps it only with a notification.
- The PCI_CFG window dispatches to the BAR its ``bar`` field names (§4.1.4.9.1); QEMU 7.2
  ignores ``bar`` and always uses the modern BAR.
- Without COMMAND.Bus Master the device does no DMA and sends no MSI (PCI 3.0 §6.2.2): kicks
  are remembered and served once Bus Master (and DRIVER_OK) are back. QEMU reaches the same
  end through its disabled bus-master address space, where a driver that sets DRIVER_OK
  again would see its rings read as errors.
- A PCI function reset also resets the virtio device (QEMU's virtio_pci_reset).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..pci.function import PciFunction
from ..pci.msix import exclusive_bar_layout
from ..pci.region import Region
from ..pci.regs import HEADER, PCI_CAP_ID_VNDR, PCI_COMMAND_MASTER, PCI_MSIX_FLAGS_ENABLE
from ..pci.sink import InterruptSink
from ..trace import Recorder
from .device import (
    DEVICE_NEEDS_RESET as NEEDS_RESET,
)
from .device import (
    DRIVER_OK,
    FEATURES_OK,
    VIRTIO_F_VERSION_1,
    VirtioDevice,
)
from .memory import GuestMemory, GuestMemoryError, Memory
from .pci_common import CommonCfg, QueueStaging
from .pci_legacy import LegacyInterface
from .queue import VirtQueue, VirtqueueError
from .regs import (
    CAP,
    COMMON_BY_OFFSET,
    LEGACY_BY_OFFSET,
    LEGACY_CONFIG_OFFSET,
    LEGACY_CONFIG_OFFSET_MSIX,
    MODERN_LAYOUT,
    MODERN_REGION_SIZE,
    NOTIFY_OFF_MULTIPLIER,
    PCI_CFG_DATA,
    PCI_SUBDEVICE_ID_QEMU,
    QUEUE_NOTIFY_MULTIPLIER,
    TRANSITIONAL_DEVICE_IDS,
    VIRTIO_MSI_NO_VECTOR,
    VIRTIO_PCI_CAP_LEN,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
    VIRTIO_PCI_CFG_CAP_LEN,
    VIRTIO_PCI_DEVICE_ID_MODERN_BASE,
    VIRTIO_PCI_ISR_CONFIG,
    VIRTIO_PCI_ISR_QUEUE,
    VIRTIO_PCI_NOTIFY_CAP_LEN,
    VIRTIO_PCI_VENDOR_ID,
    VIRTIO_QUEUE_MAX,
)

_COMMAND = HEADER["command"].offset
assert PCI_COMMAND_MASTER < 0x100  # _kick tests COMMAND's low byte

MODERN_BAR = 4
MSIX_BAR = 1
LEGACY_BAR = 0
MSIX_BAR_SIZE = 0x1000  # up to 128 vectors (pci/msix.py exclusive_bar_layout)
MSIX_PBA_OFFSET = 0x800
NOTIFY_PAGE_MULTIPLIER = 0x1000  # QEMU_VIRTIO_PCI_QUEUE_MEM_MULT (page-per-vq=on)
MODERN_IO_BAR = 2  # modern-pio-notify's I/O BAR (QEMU's modern_io_bar_idx)
NOTIFY_PIO_SIZE = 4
DEFAULT_ROM_SIZE = 256 * 1024
ERRORS_KEPT = 16

# Registers the driver only writes (§4.1.4.10: the legacy queue notify register); a read of
# one returns all ones, as QEMU's.
WRITE_ONLY = {("legacy", "queue_notify")}

PCI_CLASS_BY_DEVICE = {1: 0x020000, 2: 0x010000, 3: 0x078000, 4: 0x00FF00, 5: 0x00FF00}


def _pow2ceil(n: int) -> int:
    return 1 << (n - 1).bit_length()


class VirtioPciDevice(CommonCfg, LegacyInterface, PciFunction):
    """A virtio device behind the virtio-pci transport; also its TransportHooks."""

    def __init__(
        self,
        device: VirtioDevice,
        vectors: int = 0,
        disable_legacy: bool = False,
        rom_size: int = DEFAULT_ROM_SIZE,
        *,
        disable_modern: bool = False,
        page_per_vq: bool = False,
        modern_pio_notify: bool = False,
        memory: Memory | None = None,
        sink: InterruptSink | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        vid = device.device_id
        legacy = not disable_legacy
        modern = not disable_modern
        if not legacy and not modern:
            raise ValueError(
                "neither modern nor legacy interface: disable-legacy or disable-modern"
            )
        if legacy and vid not in TRANSITIONAL_DEVICE_IDS:
            raise ValueError(f"virtio device id {vid} has no transitional PCI id")
        super().__init__(
            vendor_id=VIRTIO_PCI_VENDOR_ID,
            device_id=TRANSITIONAL_DEVICE_IDS[vid]
            if legacy
            else VIRTIO_PCI_DEVICE_ID_MODERN_BASE + vid,
            class_code=PCI_CLASS_BY_DEVICE.get(vid, 0xFF0000),
            # §4.1.2.1: transitional devices have revision 0, modern-only ones 1 or more;
            # transitional devices carry the virtio device id as subsystem id.
            revision=0 if legacy else 1,
            subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
            subsystem_id=vid if legacy else PCI_SUBDEVICE_ID_QEMU,
            interrupt_pin=1,
            recorder=recorder,
            sink=sink,
        )
        self.device = device
        self.memory: Memory = memory if memory is not None else GuestMemory(0)
        self.legacy = legacy
        self.modern = modern
        self.pci_cfg_cap = 0  # the PCI_CFG capability's offset (modern interface only)
        self.nvectors = vectors
        # QEMU's virtio_pci_queue_mem_mult: 4 bytes per queue, or a page with page-per-vq;
        # the notify structure covers VIRTIO_QUEUE_MAX queues either way.
        self.notify_multiplier = NOTIFY_PAGE_MULTIPLIER if page_per_vq else QUEUE_NOTIFY_MULTIPLIER
        self.notify_size = self.notify_multiplier * VIRTIO_QUEUE_MAX
        self.isr = 0
        self.config_generation = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_feature_words = [0, 0]
        self.queue_select = 0
        self.broken = False
        self.needs_reset_reason: str | None = None
        # Every device error (guest-caused ring faults and the like), most recent last.
        self.errors: deque[str] = deque(maxlen=ERRORS_KEPT)
        self.ring_errors = 0
        self.staging = [QueueStaging() for _ in device.queues]
        self._deferred_kicks: set[int] = set()
        # Called just before a reset takes a running driver's device away (DRIVER_OK set): a
        # host that shows the device as the driver programmed it looks once more at what the
        # guest said before (boot reads the console there; its views are taken at a marker).
        self.before_driver_reset: Callable[[], None] | None = None
        self._common_handlers = self._handlers(COMMON_BY_OFFSET, "common")
        self._legacy_handlers = self._handlers(LEGACY_BY_OFFSET, "legacy")

        # BARs in QEMU's order: legacy I/O, MSI-X, modern.
        if legacy:
            legacy_size = _pow2ceil(
                (LEGACY_CONFIG_OFFSET_MSIX if vectors else LEGACY_CONFIG_OFFSET) + device.config_len
            )
            bar0 = self.add_bar(LEGACY_BAR, max(legacy_size, 4), is_io=True)
            bar0.regions.add(Region("legacy", 0, bar0.size, self._legacy_read, self._legacy_write))
        msix_layout = exclusive_bar_layout(vectors) if vectors else None
        if msix_layout:
            self.add_bar(MSIX_BAR, msix_layout[0])
        if modern:
            self._add_modern_interface(modern_pio_notify)
        if msix_layout:
            self.add_msix(vectors, MSIX_BAR, msix_layout[1], msix_layout[2])
        if rom_size:
            self.add_rom(rom_size)
        self.on_config_write(0x04, 2, self._command_hook)
        device.attach(self)
        self.reset()

    def _add_modern_interface(self, pio_notify: bool = False) -> None:
        """virtio_pci_modern_regions_init: common, ISR, device and notify structures in a
        64-bit prefetchable BAR, each page-aligned; their vendor capabilities, then PCI_CFG.
        ``pio_notify`` (QEMU's modern-pio-notify): a second notify structure, 4 bytes in I/O
        BAR2 with multiplier 0 — the queue index written there kicks that queue."""
        sizes = {"common": MODERN_REGION_SIZE, "isr": MODERN_REGION_SIZE,
                 "device": MODERN_REGION_SIZE, "notify": self.notify_size}  # fmt: skip
        end = max(offset + sizes[name] for name, _t, offset in MODERN_LAYOUT)
        modern = self.add_bar(MODERN_BAR, _pow2ceil(end), is_64=True, prefetchable=True)
        region_fns: dict[str, tuple[Callable[[int, int], int], Callable[[int, int, int], None]]] = {
            "common": (self._common_read, self._common_write),
            "isr": (self._isr_read, lambda o, s, v: None),
            "device": (self._device_read, self._device_write),
            "notify": (lambda o, s: 0, self._notify_write),
        }
        for name, cfg_type, offset in MODERN_LAYOUT:
            read_fn, write_fn = region_fns[name]
            modern.regions.add(Region(name, offset, sizes[name], read_fn, write_fn))
            self._add_virtio_cap(cfg_type, MODERN_BAR, offset, sizes[name])
        if pio_notify:
            bar2 = self.add_bar(MODERN_IO_BAR, NOTIFY_PIO_SIZE, is_io=True)
            bar2.regions.add(Region("notify-pio", 0, NOTIFY_PIO_SIZE, lambda o, s: 0,
                                    self._notify_pio_write))  # fmt: skip
            pos = self._add_virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, MODERN_IO_BAR, 0, NOTIFY_PIO_SIZE)
            self.set_config(pos + NOTIFY_OFF_MULTIPLIER.offset, 4, 0)
        self.pci_cfg_cap = self._add_virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0)

    # -- capabilities ---------------------------------------------------------------------------
    def _add_virtio_cap(self, cfg_type: int, bar: int, offset: int, length: int) -> int:
        cap_len = {
            VIRTIO_PCI_CAP_NOTIFY_CFG: VIRTIO_PCI_NOTIFY_CAP_LEN,
            VIRTIO_PCI_CAP_PCI_CFG: VIRTIO_PCI_CFG_CAP_LEN,
        }.get(cfg_type, VIRTIO_PCI_CAP_LEN)
        pos = self.add_capability(PCI_CAP_ID_VNDR, cap_len)
        for name, value in (
            ("cap_len", cap_len),
            ("cfg_type", cfg_type),
            ("bar", bar),
            ("offset", offset),
            ("length", length),
        ):
            reg = CAP[name]
            self.set_config(pos + reg.offset, reg.size, value)
        if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
            self.set_config(pos + NOTIFY_OFF_MULTIPLIER.offset, 4, self.notify_multiplier)
        if cfg_type == VIRTIO_PCI_CAP_PCI_CFG:
            # bar, offset, length and pci_cfg_data are the driver's to write (§4.1.4.9).
            for reg in (CAP["bar"], CAP["offset"], CAP["length"], PCI_CFG_DATA):
                self._set_masks(pos + reg.offset, reg.size, (1 << (8 * reg.size)) - 1, 0)
            data = pos + PCI_CFG_DATA.offset
            self.on_config_write(data, 1, self._pci_cfg_write)
            self.on_config_read(data, 1, self._pci_cfg_read)
        return pos

    def _pci_cfg_window(self) -> tuple[Region | None, int, int]:
        pos = self.pci_cfg_cap
        bar = self.config[pos + CAP["bar"].offset]
        offset = self.config_long(pos + CAP["offset"].offset)
        length = self.config_long(pos + CAP["length"].offset)
        if length not in (1, 2, 4) or bar >= 6 or self.bars[bar] is None:
            return None, 0, 0
        b = self.bars[bar]
        assert b is not None
        region = b.regions.find(offset)
        if region is None or offset + length > region.offset + region.size:
            return None, 0, 0
        return region, offset - region.offset, length

    def _pci_cfg_write(self, _off: int, _size: int) -> None:
        region, offset, length = self._pci_cfg_window()
        if region is None:
            return
        data = self.config_long(self.pci_cfg_cap + PCI_CFG_DATA.offset) & ((1 << 8 * length) - 1)
        self.recorder.access(region.name, "w", offset, length, data, via="pci_cfg")
        region.dispatch_write(offset, length, data)

    def _pci_cfg_read(self, _off: int, _size: int) -> None:
        region, offset, length = self._pci_cfg_window()
        if region is None:
            return
        value = region.dispatch_read(offset, length)
        self.recorder.access(region.name, "r", offset, length, value, via="pci_cfg")
        data = self.pci_cfg_cap + PCI_CFG_DATA.offset
        self.config[data : data + length] = value.to_bytes(length, "little")

    def _command_hook(self, _off: int, _size: int) -> None:
        # Clearing Bus Master stops the device: QEMU clears DRIVER_OK so the driver must
        # re-initialise it (virtio_write_config). Without Bus Master the function may not
        # master the bus at all (PCI 3.0 §6.2.2): no DMA (dma_allowed) and no MSI (send_msi).
        if not self.command & PCI_COMMAND_MASTER and self.device.status & DRIVER_OK:
            self.device.set_status(self.device.status & ~DRIVER_OK)
        elif self.command & PCI_COMMAND_MASTER:
            self._serve_deferred_kicks()

    def dma_allowed(self) -> bool:
        """TransportHooks: the device may touch guest memory only while Bus Master is on, and
        not while it needs a reset (§2.1.2; QEMU's virtqueue_pop returns nothing while the
        device is broken), whatever the driver writes to device_status meanwhile."""
        # (bus_master, inline: Bus Master is in COMMAND's low byte)
        return bool(self.config[_COMMAND] & PCI_COMMAND_MASTER) and not self.broken

    # -- dispatch tables --------------------------------------------------------------------------
    def _handlers(
        self, table: dict, prefix: str
    ) -> dict[int, tuple[Callable | None, Callable | None]]:
        """offset → (read, write) from the register table: ``_{prefix}_r_{name}`` and, for an
        "rw" register, ``_{prefix}_w_{name}``. A register without its handler, or a write
        handler for a read-only one, is a TypeError here (at construction), not a register
        that silently reads 0 or drops writes."""
        out: dict[int, tuple[Callable | None, Callable | None]] = {}
        for offset, reg in table.items():
            read = getattr(self, f"_{prefix}_r_{reg.name}", None)
            write = getattr(self, f"_{prefix}_w_{reg.name}", None)
            if read is None and (prefix, reg.name) not in WRITE_ONLY:
                raise TypeError(f"{prefix} register {reg.name}: no _{prefix}_r_{reg.name}")
            if reg.access == "rw" and write is None:
                raise TypeError(f"{prefix} register {reg.name} is rw: no _{prefix}_w_{reg.name}")
            if reg.access != "rw" and write is not None:
                raise TypeError(f"{prefix} register {reg.name} is {reg.access}: it has a writer")
            out[offset] = (read, write)
        return out

    # -- TransportHooks -------------------------------------------------------------------------
    @property
    def driver_ok(self) -> bool:
        return bool(self.device.status & DRIVER_OK)

    def event_vectors(self, queue_names: list[str]) -> list[tuple[str, int]]:
        """Which MSI-X vector each event uses (msix_config, then each queue_msix_vector)."""
        out = [("config", self.config_vector)]
        current = list(self.device.queue_names)
        if len(current) == len(self.device.queues):
            queue_names = current  # the device's own names for the queues it has now
        for q in self.device.queues:
            name = queue_names[q.index] if q.index < len(queue_names) else f"queue{q.index}"
            out.append((name, q.vector))
        return out

    def notify_queue(self, index: int) -> None:
        """A used-buffer notification for queue ``index`` (§4.1.5.3 / §4.1.5.4)."""
        device = self.device
        if not device.status & DRIVER_OK:  # driver_ok
            self.record_event("notify-suppressed", queue=index, reason="before DRIVER_OK")
            return
        self.isr |= VIRTIO_PCI_ISR_QUEUE
        vector = device.queues[index].vector
        msix = self.msix
        if msix is not None and msix.control & PCI_MSIX_FLAGS_ENABLE:
            # _notify_vector's MSI-X case, inline (§4.1.5.3.1: NO_VECTOR means no interrupt)
            if vector != VIRTIO_MSI_NO_VECTOR:
                msix.notify(vector)
        else:
            self._notify_vector(vector)

    def notify_config(self) -> None:
        """Device configuration changed (§4.1.5.3)."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if not self.driver_ok:
            return
        self.isr |= VIRTIO_PCI_ISR_QUEUE | VIRTIO_PCI_ISR_CONFIG
        self._notify_vector(self.config_vector)

    def device_error(self, reason: str) -> None:
        """§2.1.2: set DEVICE_NEEDS_RESET and tell the driver; stop processing queues."""
        self.record_event("device-error", reason=reason)
        self.errors.append(reason)
        self.ring_errors += 1
        if not self.broken:
            self.needs_reset_reason = reason
        self.broken = True
        # DEVICE_NEEDS_RESET exists for drivers of the 1.x interface only; a driver that has not
        # accepted VERSION_1 would not understand it (QEMU's virtio_error makes the same test).
        if self.device.has_feature(VIRTIO_F_VERSION_1):
            self.device.status |= NEEDS_RESET
            self.notify_config()

    def _notify_vector(self, vector: int) -> None:
        msix = self.msix
        if msix is not None and msix.enabled:
            # §4.1.5.3.1/§4.1.5.4.1: with MSI-X enabled, NO_VECTOR means no interrupt.
            if vector != VIRTIO_MSI_NO_VECTOR:
                msix.notify(vector)
        else:
            self.set_irq_level(bool(self.isr & VIRTIO_PCI_ISR_QUEUE))

    # -- reset ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Device reset (status 0, §2.4): unmap every event, disable queues, clear ISR."""
        if self.device.status & DRIVER_OK and self.before_driver_reset is not None:
            self.before_driver_reset()
        self.device.reset()
        self.isr = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_select = 0
        self.broken = False
        self.needs_reset_reason = None
        self._deferred_kicks.clear()
        for q in self.device.queues:
            q.vector = VIRTIO_MSI_NO_VECTOR
        self.staging = [QueueStaging() for _ in self.device.queues]
        if self.msix is not None:
            self.msix.unuse_all()
        self.set_irq_level(False)

    def function_reset(self) -> None:
        """A PCI function reset (FLR, bus reset) resets the virtio device with it (QEMU's
        virtio_pci_reset runs on every PCI reset): status 0, queues off, vectors unmapped."""
        self.reset()
        super().function_reset()

    # -- health -----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What went wrong, for a user: frames dropped by reason, device errors (most recent
        last, bounded), the reason NEEDS_RESET is set (or None), and activity counters."""
        counters = dict(self.device.counters())
        counters["ring_errors"] = self.ring_errors
        counters["msi_dropped_no_bus_master"] = self.msi_dropped
        counters["kicks_deferred"] = len(self._deferred_kicks)
        return {
            "dropped": dict(self.device.dropped),
            "errors": list(self.errors),
            "needs_reset": self.needs_reset_reason,
            "counters": counters,
        }

    # -- vectors ----------------------------------------------------------------------------------
    def _map_vector(self, old: int, new: int) -> int:
        """Release ``old`` and take ``new``; a vector the table lacks maps to NO_VECTOR."""
        if self.msix is not None and old != VIRTIO_MSI_NO_VECTOR:
            self.msix.vector_unuse(old)
        if self.msix is None or not self.msix.vector_use(new):
            return VIRTIO_MSI_NO_VECTOR
        return new

    # -- features and status ------------------------------------------------------------------------
    def _set_driver_features(self, features: int) -> None:
        # Features cannot change once FEATURES_OK is set (§3.1.1 step 5-6).
        if self.device.status & FEATURES_OK:
            return
        before = list(self.device.queues)
        self.device.set_driver_features(features)
        if self.device.queues != before:
            # The device changed its queues with the features (virtio-net's MQ): a queue that
            # went away gives its vector back; the staging follows the new layout.
            for q in before:
                if q not in self.device.queues and q.vector != VIRTIO_MSI_NO_VECTOR:
                    self._map_vector(q.vector, VIRTIO_MSI_NO_VECTOR)
            kept = min(len(before), len(self.device.queues))
            self.staging = [
                self.staging[i] if i < kept and before[i] is self.device.queues[i] else QueueStaging()
                for i in range(len(self.device.queues))
            ]

    def _set_status(self, value: int) -> None:
        value &= 0xFF
        dev = self.device
        if value == 0:
            self.reset()
            return
        if (
            value & FEATURES_OK
            and not dev.status & FEATURES_OK
            and dev.has_feature(VIRTIO_F_VERSION_1)
            and not dev.validate_features()
        ):
            return  # refused: FEATURES_OK stays clear (§2.2.2)
        if self.broken:
            value |= NEEDS_RESET
        became_ok = value & DRIVER_OK and not dev.status & DRIVER_OK
        dev.set_status(value)
        if became_ok:
            self._serve_deferred_kicks()

    def _queue(self) -> VirtQueue | None:
        sel = self.queue_select
        queues = self.device.queues
        if sel < len(queues) and queues[sel].max_size:
            return queues[sel]
        return None

    # -- ISR, notify, device config ---------------------------------------------------------------------
    def _isr_read(self, offset: int, size: int) -> int:
        # §4.1.4.5: reading ISR returns and clears it, and de-asserts INTx.
        value, self.isr = self.isr, 0
        self.set_irq_level(False)
        return value

    def _notify_pio_write(self, offset: int, size: int, value: int) -> None:
        # virtio_pci_notify_write_pio: the value written is the queue index.
        if offset == 0:
            self._kick(value & 0xFFFF)

    def _notify_write(self, offset: int, size: int, value: int) -> None:
        # The queue is found from the notify address (queue_notify_off * multiplier).
        self._kick(offset // self.notify_multiplier)

    def _kick(self, index: int) -> None:
        device = self.device
        queues = device.queues
        if index >= len(queues) or not queues[index].enabled or self.broken:
            return
        # driver_ok and bus_master, inline (Bus Master is in COMMAND's low byte)
        if not device.status & DRIVER_OK or not self.config[_COMMAND] & PCI_COMMAND_MASTER:
            # Served once DRIVER_OK is set and Bus Master is on (no DMA without it).
            self._deferred_kicks.add(index)
            return
        try:
            self.device.queue_notify(index)
        except (VirtqueueError, GuestMemoryError) as e:
            # A device that lets a ring fault escape (as a device written against the public
            # API may): the fault is the guest's, so it becomes DEVICE_NEEDS_RESET (§2.1.2),
            # never an exception in the host's loop.
            self.device_error(f"queue {index}: {e}")

    def _serve_deferred_kicks(self) -> None:
        if not self.driver_ok or not self.bus_master:
            return
        kicks = sorted(self._deferred_kicks)
        self._deferred_kicks.clear()
        for index in kicks:
            self._kick(index)

    def _device_read(self, offset: int, size: int) -> int:
        if offset + size > self.device.config_len:
            return (1 << (8 * size)) - 1
        return self.device.config_read(offset, size)

    def _device_write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= self.device.config_len:
            self.device.config_write(offset, size, value)

    def poll(self) -> int:
        """Let the device's backend deliver pending work (only once DRIVER_OK, §2.1.2, and
        while Bus Master is on)."""
        if not self.driver_ok or self.broken or not self.bus_master:
            return 0
        return self.device.poll()
