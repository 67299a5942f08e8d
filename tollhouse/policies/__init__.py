"""tollhouse.policies."""
