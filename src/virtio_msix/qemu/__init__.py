"""qemu layer (see DESIGN.md)."""
