"""tollhouse.a2a."""
