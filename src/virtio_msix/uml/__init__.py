"""uml layer (see DESIGN.md)."""
