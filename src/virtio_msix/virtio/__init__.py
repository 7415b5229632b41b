"""virtio layer (see DESIGN.md)."""
