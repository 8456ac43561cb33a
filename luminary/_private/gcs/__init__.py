"""The global control store: cluster membership, jobs, the KV table, health checks."""
