"""The node manager: local scheduler, worker pool, shared-memory object store."""
