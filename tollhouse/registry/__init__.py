"""tollhouse.registry."""
