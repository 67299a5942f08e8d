"""tollhouse: one governed MCP and A2A front door."""

__version__ = "0.1.0"
