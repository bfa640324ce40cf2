"""The admin listener (SPEC §12)."""
