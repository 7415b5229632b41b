"""The device's PCI face decoded as a driver would read it, without side effects: header, BARs,
capabilities (MSI-X and the virtio vendor capabilities) and the virtio device behind them. Used
by ``show``, by the simulator's views and by the public API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..pci.regs import MSIX, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL, PCI_MSIX_FLAGS_QSIZE
from .pci import VirtioPciDevice
from .regs import CAP, CFG_TYPE_NAMES, NOTIFY_OFF_MULTIPLIER


def describe(dev: VirtioPciDevice) -> dict[str, Any]:
    """The device's PCI face, decoded, as a driver would read it (no side effects)."""
    cfg = dev.config
    word = dev.config_word
    info: dict[str, Any] = {
        "vendor_id": word(0),
        "device_id": word(2),
        "revision": cfg[8],
        "class": int.from_bytes(cfg[9:12], "little"),
        "subsystem_vendor_id": word(0x2C),
        "subsystem_id": word(0x2E),
        "interrupt_pin": cfg[0x3D],
        "command": word(4),
        "status": word(6),
        "bars": [],
        "capabilities": [],
    }
    for bar in dev.bars:
        if bar is None:
            continue
        info["bars"].append(
            {
                "index": bar.index,
                "kind": "rom"
                if bar.index == 6
                else "io"
                if bar.is_io
                else "mem64"
                if bar.is_64
                else "mem32",
                "prefetchable": bar.prefetchable,
                "size": bar.size,
                "address": dev.bar_address(bar.index),
                "regions": [
                    {"name": r.name, "offset": r.offset, "size": r.size}
                    for r in bar.regions.regions
                ],
            }
        )
    for pos, cap_id, _length in dev.capabilities():
        entry: dict[str, Any] = {"offset": pos, "id": cap_id, "next": cfg[pos + 1]}
        if cap_id == 0x11:
            ctrl = word(pos + MSIX["message_control"].offset)
            table = dev.config_long(pos + MSIX["table_offset_bir"].offset)
            pba = dev.config_long(pos + MSIX["pba_offset_bir"].offset)
            entry.update(
                kind="MSI-X",
                table_size=(ctrl & PCI_MSIX_FLAGS_QSIZE) + 1,
                enable=bool(ctrl & PCI_MSIX_FLAGS_ENABLE),
                function_mask=bool(ctrl & PCI_MSIX_FLAGS_MASKALL),
                table_bir=table & 7,
                table_offset=table & ~7,
                pba_bir=pba & 7,
                pba_offset=pba & ~7,
            )
        elif cap_id == 0x09:
            cfg_type = cfg[pos + CAP["cfg_type"].offset]
            entry.update(
                kind=f"virtio {CFG_TYPE_NAMES.get(cfg_type, '?')}",
                cfg_type=cfg_type,
                cap_len=cfg[pos + CAP["cap_len"].offset],
                bar=cfg[pos + CAP["bar"].offset],
                bar_offset=dev.config_long(pos + CAP["offset"].offset),
                length=dev.config_long(pos + CAP["length"].offset),
            )
            if cfg_type == 2:
                entry["notify_off_multiplier"] = dev.config_long(pos + NOTIFY_OFF_MULTIPLIER.offset)
        info["capabilities"].append(entry)
    if dev.msix is not None:
        info["msix_table"] = [asdict(e) for e in dev.msix.entries]
    info["virtio"] = {
        "device": dev.device.name,
        "device_id": dev.device.device_id,
        "host_features": dev.device.host_features,
        "num_queues": len(dev.device.queues),
        "queue_max_sizes": [q.max_size for q in dev.device.queues],
        "config_len": dev.device.config_len,
    }
    return info
