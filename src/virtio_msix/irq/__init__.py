"""irq layer (see docs/DESIGN.md)."""
