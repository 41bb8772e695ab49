"""The metadata master: the replicated namespace and, later, placement, leases and HTTP."""
