"""Glue every host shares (DESIGN.md layer 4): phase tagging of access traces, the decoded
device views, host environment checks and the frame backends. The simulator (guest/), the real
kernel (uml/) and the QEMU captures (qemu/) use these; virtio/ and pci/ know nothing of them."""
