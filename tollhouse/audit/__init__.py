"""The audit trail: hash-chained, checkpointed records of every request and admin action."""
