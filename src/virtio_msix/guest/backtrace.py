"""Kernel-style backtraces taken from the driver model's real Python call stack.

Every modelled kernel function has the Linux name; a backtrace keeps the stack frames whose
function names are in SOURCES (where that function lives in Linux 6.1) and prints them in the
form of the seed: ``#0  pci_msi_domain_write_msg (...) at drivers/pci/msi/irqdomain.c:39``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

# Where each modelled function is defined in Debian's linux-source-6.1 (file:line of the
# definition), so a reader can open the real code beside ours.
SOURCES: dict[str, str] = {
    "pci_msi_domain_write_msg": "drivers/pci/msi/irqdomain.c:39",
    "__pci_write_msi_msg": "drivers/pci/msi/msi.c:151",
    "irq_chip_write_msi_msg": "kernel/irq/msi.c:463",
    "msi_domain_activate": "kernel/irq/msi.c:510",
    "__irq_domain_activate_irq": "kernel/irq/irqdomain.c:1821",
    "irq_domain_activate_irq": "kernel/irq/irqdomain.c:1850",
    "__msi_domain_alloc_irqs": "kernel/irq/msi.c:850",
    "msi_domain_alloc_irqs_descs_locked": "kernel/irq/msi.c:929",
    "msi_domain_alloc_irqs": "kernel/irq/msi.c:957",
    "pci_msi_setup_msi_irqs": "drivers/pci/msi/irqdomain.c:11",
    "msix_capability_init": "drivers/pci/msi/msi.c:630",
    "__pci_enable_msix": "drivers/pci/msi/msi.c:814",
    "__pci_enable_msix_range": "drivers/pci/msi/msi.c:947",
    "pci_alloc_irq_vectors_affinity": "drivers/pci/msi/msi.c:1024",
    "pci_alloc_irq_vectors": "include/linux/pci.h:1990",
    "vp_request_msix_vectors": "drivers/virtio/virtio_pci_common.c:104",
    "vp_find_vqs_msix": "drivers/virtio/virtio_pci_common.c:286",
    "vp_find_vqs_intx": "drivers/virtio/virtio_pci_common.c:362",
    "vp_find_vqs": "drivers/virtio/virtio_pci_common.c:401",
    "vp_modern_find_vqs": "drivers/virtio/virtio_pci_modern.c:347",
    "virtio_find_vqs_ctx": "include/linux/virtio_config.h:231",
    "virtnet_find_vqs": "drivers/net/virtio_net.c:3553",
    "init_vqs": "drivers/net/virtio_net.c:3689",
    "virtnet_probe": "drivers/net/virtio_net.c:3832",
    "virtio_dev_probe": "drivers/virtio/virtio.c:237",
    "call_driver_probe": "drivers/base/dd.c:552",
    "really_probe": "drivers/base/dd.c:583",
    "__driver_probe_device": "drivers/base/dd.c:763",
    "driver_probe_device": "drivers/base/dd.c:828",
    "__device_attach_driver": "drivers/base/dd.c:925",
    "bus_for_each_drv": "drivers/base/bus.c:416",
    "__device_attach": "drivers/base/dd.c:1004",
    "device_initial_probe": "drivers/base/dd.c:1081",
    "bus_probe_device": "drivers/base/bus.c:480",
    "device_add": "drivers/base/core.c:3579",
    "register_virtio_device": "drivers/virtio/virtio.c:447",
    "virtio_pci_probe": "drivers/virtio/virtio_pci_common.c:524",
    "local_pci_probe": "drivers/pci/pci-driver.c:334",
    "pci_call_probe": "drivers/pci/pci-driver.c:379",
    "__pci_device_probe": "drivers/pci/pci-driver.c:436",
    "pci_device_probe": "drivers/pci/pci-driver.c:474",
    "pci_msi_unmask_irq": "drivers/pci/msi/msi.c:110",
    "pci_msi_mask_irq": "drivers/pci/msi/msi.c:98",
    "unmask_irq": "kernel/irq/chip.c:431",
    "mask_irq": "kernel/irq/chip.c:420",
    "irq_enable": "kernel/irq/chip.c:334",
    "__irq_startup": "kernel/irq/chip.c:235",
    "irq_startup": "kernel/irq/chip.c:254",
    "irq_activate": "kernel/irq/chip.c:288",
    "irq_setup_affinity": "kernel/irq/manage.c:589",
    "irq_do_set_affinity": "kernel/irq/manage.c:212",
    "msi_domain_set_affinity": "kernel/irq/msi.c:493",
    "__setup_irq": "kernel/irq/manage.c:1497",
    "request_threaded_irq": "kernel/irq/manage.c:2138",
    "request_irq": "include/linux/interrupt.h:165",
    "free_irq": "kernel/irq/manage.c:2018",
    "irq_move_masked_irq": "kernel/irq/migration.c:38",
    "irq_move_irq": "include/linux/irq.h:611",
    "handle_edge_irq": "kernel/irq/chip.c:775",
    "vp_config_changed": "drivers/virtio/virtio_pci_common.c:50",
    "vring_interrupt": "drivers/virtio/virtio_ring.c:2459",
    "vp_vring_interrupt": "drivers/virtio/virtio_pci_common.c:59",
    "vp_interrupt": "drivers/virtio/virtio_pci_common.c:82",
    "setup_vq": "drivers/virtio/virtio_pci_modern.c:291",
    "vp_setup_vq": "drivers/virtio/virtio_pci_common.c:176",
    "vp_del_vqs": "drivers/virtio/virtio_pci_common.c:234",
    "pci_free_irq_vectors": "drivers/pci/msi/msi.c:1077",
    "pci_disable_msix": "drivers/pci/msi/msi.c:871",
    "virtnet_remove": "drivers/net/virtio_net.c:4137",
    "virtnet_set_affinity": "drivers/net/virtio_net.c:2350",
    "virtio_device_ready": "include/linux/virtio_config.h:268",
}

# The same functions in Debian's linux-source-6.12 (sim --kernel 6.12), located there.
SOURCES_612: dict[str, str] = {
    "pci_msi_domain_write_msg": "drivers/pci/msi/irqdomain.c:40",
    "__pci_write_msi_msg": "drivers/pci/msi/msi.c:239",
    "irq_chip_write_msi_msg": "kernel/irq/msi.c:633",
    "msi_domain_activate": "kernel/irq/msi.c:680",
    "__irq_domain_activate_irq": "kernel/irq/irqdomain.c:1949",
    "irq_domain_activate_irq": "kernel/irq/irqdomain.c:1978",
    "__msi_domain_alloc_irqs": "kernel/irq/msi.c:1222",
    "pci_msi_setup_msi_irqs": "drivers/pci/msi/irqdomain.c:11",
    "msix_capability_init": "drivers/pci/msi/msi.c:714",
    "__pci_enable_msix_range": "drivers/pci/msi/msi.c:795",
    "pci_alloc_irq_vectors_affinity": "drivers/pci/msi/api.c:254",
    "pci_alloc_irq_vectors": "drivers/pci/msi/api.c:234",
    "vp_request_msix_vectors": "drivers/virtio/virtio_pci_common.c:126",
    "vp_find_vqs_msix": "drivers/virtio/virtio_pci_common.c:376",
    "vp_find_vqs_intx": "drivers/virtio/virtio_pci_common.c:457",
    "vp_find_vqs": "drivers/virtio/virtio_pci_common.c:518",
    "vp_modern_find_vqs": "drivers/virtio/virtio_pci_modern.c:625",
    "virtnet_find_vqs": "drivers/net/virtio_net.c:6153",
    "init_vqs": "drivers/net/virtio_net.c:6276",
    "virtnet_probe": "drivers/net/virtio_net.c:6471",
    "virtio_dev_probe": "drivers/virtio/virtio.c:270",
    "call_driver_probe": "drivers/base/dd.c:632",
    "really_probe": "drivers/base/dd.c:663",
    "__driver_probe_device": "drivers/base/dd.c:838",
    "driver_probe_device": "drivers/base/dd.c:903",
    "__device_attach_driver": "drivers/base/dd.c:1000",
    "bus_for_each_drv": "drivers/base/bus.c:445",
    "__device_attach": "drivers/base/dd.c:1079",
    "device_initial_probe": "drivers/base/dd.c:1156",
    "bus_probe_device": "drivers/base/bus.c:571",
    "device_add": "drivers/base/core.c:3576",
    "register_virtio_device": "drivers/virtio/virtio.c:457",
    "virtio_pci_probe": "drivers/virtio/virtio_pci_common.c:682",
    "local_pci_probe": "drivers/pci/pci-driver.c:314",
    "pci_call_probe": "drivers/pci/pci-driver.c:359",
    "__pci_device_probe": "drivers/pci/pci-driver.c:416",
    "pci_device_probe": "drivers/pci/pci-driver.c:444",
    "pci_msi_unmask_irq": "drivers/pci/msi/msi.c:146",
    "pci_msi_mask_irq": "drivers/pci/msi/msi.c:134",
    "unmask_irq": "kernel/irq/chip.c:432",
    "mask_irq": "kernel/irq/chip.c:421",
    "irq_enable": "kernel/irq/chip.c:335",
    "__irq_startup": "kernel/irq/chip.c:235",
    "irq_startup": "kernel/irq/chip.c:254",
    "irq_activate": "kernel/irq/chip.c:288",
    "irq_setup_affinity": "kernel/irq/manage.c:595",
    "irq_do_set_affinity": "kernel/irq/manage.c:223",
    "msi_domain_set_affinity": "kernel/irq/msi.c:663",
    "__setup_irq": "kernel/irq/manage.c:1507",
    "request_threaded_irq": "kernel/irq/manage.c:2148",
    "request_irq": "include/linux/interrupt.h:169",
    "free_irq": "kernel/irq/manage.c:2028",
    "irq_move_masked_irq": "kernel/irq/migration.c:38",
    "irq_move_irq": "include/linux/irq.h:624",
    "handle_edge_irq": "kernel/irq/chip.c:787",
    "vp_config_changed": "drivers/virtio/virtio_pci_common.c:73",
    "vring_interrupt": "drivers/virtio/virtio_ring.c:2570",
    "vp_vring_interrupt": "drivers/virtio/virtio_pci_common.c:83",
    "vp_interrupt": "drivers/virtio/virtio_pci_common.c:106",
    "setup_vq": "drivers/virtio/virtio_pci_modern.c:566",
    "vp_setup_vq": "drivers/virtio/virtio_pci_common.c:206",
    "vp_del_vqs": "drivers/virtio/virtio_pci_common.c:267",
    "pci_free_irq_vectors": "drivers/pci/msi/api.c:376",
    "pci_disable_msix": "drivers/pci/msi/api.c:194",
    "virtnet_remove": "drivers/net/virtio_net.c:6859",
    "virtnet_set_affinity": "drivers/net/virtio_net.c:3714",
    "virtio_device_ready": "include/linux/virtio_config.h:272",
}
# Frames 6.12 renamed or folded on the same path: the 6.12 name and place, or None where 6.12
# has no such frame (__pci_enable_msix went into __pci_enable_msix_range). Frames that only
# 6.12 has (vp_find_one_vq_msix, msi_domain_alloc_irqs_range...) are not modelled: a 6.12
# backtrace shows 6.12's names and places for the frames the model has.
RENAMED_612: dict[str, tuple[str, str] | None] = {
    "msi_domain_alloc_irqs": ("msi_domain_alloc_irqs_all_locked", "kernel/irq/msi.c:1398"),
    "msi_domain_alloc_irqs_descs_locked": ("msi_domain_alloc_locked", "kernel/irq/msi.c:1326"),
    "virtio_find_vqs_ctx": ("virtio_find_vqs", "include/linux/virtio_config.h:221"),
    "__pci_enable_msix": None,
}


@dataclass
class Frame:
    function: str
    where: str
    args: str = ""


@dataclass
class Backtrace:
    title: str
    frames: list[Frame]

    def format(self) -> str:
        lines = [f"# {self.title}"]
        for i, f in enumerate(self.frames):
            lines.append(f"#{i:<2} {f.function} ({f.args}) at {f.where}")
        return "\n".join(lines)


def _args(frame) -> str:
    """A short rendering of the interesting arguments of a modelled function."""
    out = []
    for name in frame.f_code.co_varnames[: frame.f_code.co_argcount]:
        if name in ("k", "kernel"):
            continue
        value = frame.f_locals.get(name)
        if isinstance(value, bool | int | str) or value is None:
            text = (
                f"{value:#x}"
                if isinstance(value, int) and not isinstance(value, bool) and value > 9
                else repr(value)
            )
        else:
            text = getattr(value, "short", None) or type(value).__name__
        out.append(f"{name}={text}")
    return ", ".join(out)


def where(name: str, version: str = "6.1") -> tuple[str, str] | None:
    """(function name, file:line) of a modelled function in ``version``; None if not a kernel
    frame there."""
    if version == "6.1":
        return (name, SOURCES[name]) if name in SOURCES else None
    if name in RENAMED_612:
        return RENAMED_612[name]
    return (name, SOURCES_612[name]) if name in SOURCES_612 else None


def capture(title: str, skip: int = 1, version: str = "6.1") -> Backtrace:
    """The modelled kernel frames of the current Python stack, innermost first, named and
    placed as in ``version``'s source."""
    frames: list[Frame] = []
    f = sys._getframe(skip)
    while f is not None:
        found = where(f.f_code.co_name, version)
        if found is not None:
            frames.append(Frame(found[0], found[1], _args(f)))
        f = f.f_back
    return Backtrace(title, frames)
