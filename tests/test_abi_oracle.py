"""The layout tables against an independent oracle: the Linux uapi headers installed by
Debian's linux-libc-dev, compiled with the host gcc (as Linux's own check_offsets() holds
virtio_pci_modern_dev.c's constants against the structs). Each value the C program prints
must equal the table's."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from virtio_msix.abi import ring, uml, virtio
from virtio_msix.pci import regs as pci
from virtio_msix.virtio import net
from virtio_msix.virtio import regs as vregs

HEADERS = ("linux/virtio_pci.h", "linux/virtio_ring.h", "linux/virtio_net.h",
           "linux/virtio_config.h", "linux/pci_regs.h", "linux/virtio_ids.h")  # fmt: skip

# struct virtio_pci_common_cfg member → our field name (the uapi names of 6.1).
COMMON_FIELDS = {
    "device_feature_select": "device_feature_select", "device_feature": "device_feature",
    "guest_feature_select": "driver_feature_select", "guest_feature": "driver_feature",
    "msix_config": "msix_config", "num_queues": "num_queues", "device_status": "device_status",
    "config_generation": "config_generation", "queue_select": "queue_select",
    "queue_size": "queue_size", "queue_msix_vector": "queue_msix_vector",
    "queue_enable": "queue_enable", "queue_notify_off": "queue_notify_off",
    "queue_desc_lo": "queue_desc_lo", "queue_desc_hi": "queue_desc_hi",
    "queue_avail_lo": "queue_driver_lo", "queue_avail_hi": "queue_driver_hi",
    "queue_used_lo": "queue_device_lo", "queue_used_hi": "queue_device_hi",
}  # fmt: skip
CAP_FIELDS = ("cap_vndr", "cap_next", "cap_len", "cfg_type", "bar", "offset", "length")


def expected() -> dict[str, int]:
    """Name (a C expression) → the value our tables give it."""
    e: dict[str, int] = {}
    for c_name, ours in COMMON_FIELDS.items():
        e[f"offsetof(struct virtio_pci_common_cfg, {c_name})"] = vregs.COMMON[ours].offset
        e[f"sizeof(((struct virtio_pci_common_cfg *)0)->{c_name})"] = vregs.COMMON[ours].size
    e["sizeof(struct virtio_pci_common_cfg)"] = vregs.COMMON_CFG_LEN
    for f in CAP_FIELDS:
        if f in vregs.CAP:
            e[f"offsetof(struct virtio_pci_cap, {f})"] = vregs.CAP[f].offset
            e[f"sizeof(((struct virtio_pci_cap *)0)->{f})"] = vregs.CAP[f].size
    e["sizeof(struct virtio_pci_cap)"] = vregs.VIRTIO_PCI_CAP_LEN
    e["sizeof(struct virtio_pci_notify_cap)"] = vregs.VIRTIO_PCI_NOTIFY_CAP_LEN
    e["offsetof(struct virtio_pci_notify_cap, notify_off_multiplier)"] = (
        vregs.NOTIFY_OFF_MULTIPLIER.offset
    )
    e["sizeof(struct virtio_pci_cfg_cap)"] = vregs.VIRTIO_PCI_CFG_CAP_LEN
    e["offsetof(struct virtio_pci_cfg_cap, pci_cfg_data)"] = vregs.PCI_CFG_DATA.offset
    for n in ("COMMON_CFG", "NOTIFY_CFG", "ISR_CFG", "DEVICE_CFG", "PCI_CFG"):
        e[f"VIRTIO_PCI_CAP_{n}"] = getattr(vregs, f"VIRTIO_PCI_CAP_{n}")
    e["VIRTIO_PCI_ISR_CONFIG"] = vregs.VIRTIO_PCI_ISR_CONFIG
    e["VIRTIO_MSI_NO_VECTOR"] = virtio.VIRTIO_MSI_NO_VECTOR
    # Legacy registers (linux/virtio_pci.h VIRTIO_PCI_*), and the config offsets after them.
    for c_name, ours in (("HOST_FEATURES", "host_features"), ("GUEST_FEATURES", "guest_features"),
                         ("QUEUE_PFN", "queue_address"), ("QUEUE_NUM", "queue_size"),
                         ("QUEUE_SEL", "queue_select"), ("QUEUE_NOTIFY", "queue_notify"),
                         ("STATUS", "device_status"), ("ISR", "isr_status"),
                         ("MSI_CONFIG_VECTOR", "config_msix_vector"),
                         ("MSI_QUEUE_VECTOR", "queue_msix_vector")):  # fmt: skip
        c_name = c_name if "MSI" not in c_name else c_name.removeprefix("MSI_")
        e[("VIRTIO_MSI_" if c_name.endswith("VECTOR") else "VIRTIO_PCI_") + c_name] = vregs.LEGACY[
            ours
        ].offset
    e["VIRTIO_PCI_CONFIG_OFF(1)"] = vregs.LEGACY_CONFIG_OFFSET_MSIX
    e["VIRTIO_PCI_CONFIG_OFF(0)"] = vregs.LEGACY_CONFIG_OFFSET
    e["VIRTIO_PCI_QUEUE_ADDR_SHIFT"] = vregs.LEGACY_PFN_SHIFT
    e["VIRTIO_PCI_VRING_ALIGN"] = vregs.LEGACY_VRING_ALIGN
    # Status and feature bits.
    for n in ("ACKNOWLEDGE", "DRIVER", "DRIVER_OK", "FEATURES_OK", "NEEDS_RESET", "FAILED"):
        e[f"VIRTIO_CONFIG_S_{n}"] = getattr(virtio, "DEVICE_NEEDS_RESET" if n == "NEEDS_RESET"
                                            else n)  # fmt: skip
    for n in ("NOTIFY_ON_EMPTY", "ANY_LAYOUT", "VERSION_1", "ACCESS_PLATFORM", "RING_PACKED",
              "IN_ORDER", "ORDER_PLATFORM", "SR_IOV"):  # fmt: skip
        e[f"VIRTIO_F_{n}"] = getattr(virtio, f"VIRTIO_F_{n}")
    e["VIRTIO_RING_F_INDIRECT_DESC"] = virtio.VIRTIO_F_INDIRECT_DESC
    e["VIRTIO_RING_F_EVENT_IDX"] = virtio.VIRTIO_F_EVENT_IDX
    e["VIRTIO_TRANSPORT_F_START"] = virtio.VIRTIO_TRANSPORT_F_START
    e["VIRTIO_TRANSPORT_F_END"] = virtio.VIRTIO_TRANSPORT_F_END
    # Split ring.
    for n in ("DESC_F_NEXT", "DESC_F_WRITE", "DESC_F_INDIRECT", "AVAIL_F_NO_INTERRUPT",
              "USED_F_NO_NOTIFY"):  # fmt: skip
        e[f"VRING_{n}"] = getattr(ring, f"VRING_{n}")
    e["sizeof(struct vring_desc)"] = ring.DESC_SIZE
    e["sizeof(struct vring_used_elem)"] = ring.USED_ELEM_SIZE
    e["offsetof(struct vring_avail, idx)"] = ring.AVAIL_IDX
    e["offsetof(struct vring_avail, ring)"] = ring.AVAIL_RING
    e["offsetof(struct vring_used, idx)"] = ring.USED_IDX
    e["offsetof(struct vring_used, ring)"] = ring.USED_RING
    for num in (1, 8, 64, 256, 1024):
        for align in (64, 4096):
            e[f"vring_size({num}, {align})"] = ring.vring_size(num, align)
            _, avail, used = ring.vring_layout(num, align)
            e[f"layout_avail({num}, {align})"] = avail
            e[f"layout_used({num}, {align})"] = used
            e[f"layout_used_event({num}, {align})"] = avail + ring.used_event(num)
            e[f"layout_avail_event({num}, {align})"] = used + ring.avail_event(num)
    for ev, new, old in ((0, 1, 0), (5, 5, 4), (5, 7, 6), (0xFFFF, 0, 0xFFFE), (3, 10, 2)):
        e[f"vring_need_event({ev}, {new}, {old})"] = int(ring.vring_need_event(ev, new, old))
    # PCI: MSI-X capability and table entry (linux/pci_regs.h).
    e["PCI_CAP_ID_MSIX"] = pci.PCI_CAP_ID_MSIX
    e["PCI_CAP_ID_VNDR"] = pci.PCI_CAP_ID_VNDR
    e["PCI_MSIX_FLAGS"] = pci.MSIX["message_control"].offset
    e["PCI_MSIX_TABLE"] = pci.MSIX["table_offset_bir"].offset
    e["PCI_MSIX_PBA"] = pci.MSIX["pba_offset_bir"].offset
    e["PCI_MSIX_FLAGS_ENABLE"] = pci.PCI_MSIX_FLAGS_ENABLE
    e["PCI_MSIX_FLAGS_MASKALL"] = pci.PCI_MSIX_FLAGS_MASKALL
    e["PCI_MSIX_FLAGS_QSIZE"] = pci.PCI_MSIX_FLAGS_QSIZE
    e["PCI_CAP_MSIX_SIZEOF"] = pci.MSIX_CAP_LEN
    e["PCI_MSIX_ENTRY_SIZE"] = pci.PCI_MSIX_ENTRY_SIZE
    e["PCI_MSIX_ENTRY_LOWER_ADDR"] = pci.MSIX_ENTRY_FIELDS["msg_addr_lo"].offset
    e["PCI_MSIX_ENTRY_UPPER_ADDR"] = pci.MSIX_ENTRY_FIELDS["msg_addr_hi"].offset
    e["PCI_MSIX_ENTRY_DATA"] = pci.MSIX_ENTRY_FIELDS["msg_data"].offset
    e["PCI_MSIX_ENTRY_VECTOR_CTRL"] = pci.MSIX_ENTRY_FIELDS["vector_control"].offset
    e["PCI_MSIX_ENTRY_CTRL_MASKBIT"] = pci.PCI_MSIX_ENTRY_CTRL_MASKBIT
    for n in ("IO", "MEMORY", "MASTER", "PARITY", "SERR", "INTX_DISABLE"):
        e[f"PCI_COMMAND_{n}"] = getattr(pci, f"PCI_COMMAND_{n}")
    e["PCI_STATUS_CAP_LIST"] = pci.PCI_STATUS_CAP_LIST
    e["PCI_STATUS_INTERRUPT"] = pci.PCI_STATUS_INTERRUPT
    for c_name, ours in (("VENDOR_ID", "vendor_id"), ("DEVICE_ID", "device_id"),
                         ("COMMAND", "command"), ("STATUS", "status"),
                         ("REVISION_ID", "revision_id"), ("SUBSYSTEM_VENDOR_ID",
                         "subsystem_vendor_id"), ("SUBSYSTEM_ID", "subsystem_id"),
                         ("CAPABILITY_LIST", "capabilities_pointer"),
                         ("INTERRUPT_LINE", "interrupt_line"),
                         ("INTERRUPT_PIN", "interrupt_pin")):  # fmt: skip
        if ours in pci.HEADER:
            e[f"PCI_{c_name}"] = pci.HEADER[ours].offset
    # virtio ids and virtio-net.
    e["VIRTIO_ID_NET"], e["VIRTIO_ID_RNG"] = 1, 4
    for n in ("MAC", "MTU", "STATUS", "CTRL_VQ", "CTRL_RX", "MQ", "MRG_RXBUF", "GUEST_ANNOUNCE",
              "CTRL_MAC_ADDR", "CTRL_VLAN", "HASH_REPORT", "RSS", "SPEED_DUPLEX", "STANDBY",
              "NOTF_COAL", "GUEST_CSUM", "CSUM", "CTRL_GUEST_OFFLOADS"):  # fmt: skip
        e[f"VIRTIO_NET_F_{n}"] = getattr(net, f"VIRTIO_NET_F_{n}")
    e["VIRTIO_NET_S_LINK_UP"] = net.VIRTIO_NET_S_LINK_UP
    e["VIRTIO_NET_S_ANNOUNCE"] = net.VIRTIO_NET_S_ANNOUNCE
    e["VIRTIO_NET_OK"] = net.VIRTIO_NET_OK
    e["VIRTIO_NET_CTRL_RX"], e["VIRTIO_NET_CTRL_MAC"] = net.CTRL_RX, net.CTRL_MAC
    e["VIRTIO_NET_CTRL_MQ"] = net.CTRL_MQ
    e["sizeof(struct virtio_net_hdr_mrg_rxbuf)"] = net.HDR_LEN
    e["sizeof(struct virtio_net_hdr)"] = net.HDR_LEN_LEGACY
    CONFIG = {name: off for name, off, _size, _bit in net.CONFIG_FIELDS}
    for f, ours in (("mac", "mac"), ("status", "status"),
                    ("max_virtqueue_pairs", "max_virtqueue_pairs"), ("mtu", "mtu")):  # fmt: skip
        e[f"offsetof(struct virtio_net_config, {f})"] = CONFIG[ours]
    return e


def c_program(exprs: list[str]) -> str:
    includes = "".join(f"#include <{h}>\n" for h in HEADERS)
    helpers = """
static unsigned layout_avail(unsigned n, unsigned a) { struct vring v; vring_init(&v, n, 0, a);
  return (unsigned long)v.avail; }
static unsigned layout_used(unsigned n, unsigned a) { struct vring v; vring_init(&v, n, 0, a);
  return (unsigned long)v.used; }
static unsigned layout_used_event(unsigned n, unsigned a) { struct vring v;
  vring_init(&v, n, 0, a); return (unsigned long)&vring_used_event(&v); }
static unsigned layout_avail_event(unsigned n, unsigned a) { struct vring v;
  vring_init(&v, n, 0, a); return (unsigned long)&vring_avail_event(&v); }
"""
    body = "".join(f'  printf("%s=%lu\\n", "{x}", (unsigned long)({x}));\n' for x in exprs)
    return (f"#include <stddef.h>\n#include <stdio.h>\n{includes}{helpers}"
            f"int main(void) {{\n{body}  return 0;\n}}\n")  # fmt: skip


def test_tables_match_the_linux_uapi_headers(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed for the uapi oracle (apt-get install gcc linux-libc-dev)")
    want = expected()
    src = tmp_path / "oracle.c"
    src.write_text(c_program(list(want)))
    exe = tmp_path / "oracle"
    build = subprocess.run([gcc, "-w", "-o", str(exe), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = dict(line.rsplit("=", 1) for line in out.splitlines())
    assert len(got) == len(want)
    wrong = {k: (v, int(got[k])) for k, v in want.items() if int(got[k]) != v}
    assert not wrong, "ours vs uapi: " + repr(wrong)


def test_spec_values_the_headers_here_lack():
    # virtio 1.2 §4.1.4.3: queue_notify_data and queue_reset follow queue_device (Linux 6.1's
    # struct virtio_pci_modern_common_cfg; bookworm's uapi header predates them).
    assert vregs.COMMON["queue_notify_data"].offset == 0x38
    assert vregs.COMMON["queue_reset"].offset == 0x3A
    assert vregs.MODERN_COMMON_CFG_LEN == 60  # sizeof(struct virtio_pci_modern_common_cfg)
    assert virtio.VIRTIO_F_RING_RESET == 40
    assert virtio.VIRTIO_F_NOTIFICATION_DATA == 38
    assert vregs.VIRTIO_PCI_VENDOR_ID == 0x1AF4  # PCI_VENDOR_ID_REDHAT_QUMRANET (§4.1.2)
    assert uml.UML_MSI_ADDRESS == 0xA0000
