"""guest layer (see docs/DESIGN.md)."""
