"""irq layer (see DESIGN.md)."""
