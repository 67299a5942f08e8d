"""tollhouse.gateway."""
