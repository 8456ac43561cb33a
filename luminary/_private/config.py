"""Tunables, each a named constant with its trade-off.  Nothing here reads the environment."""

# Objects at most this large travel inside messages and live in their owner's memory;
# larger ones go to the node's shared-memory store (a message copy beats a store round trip).
INLINE_MAX_BYTES = 100 * 1024
# Store allocations are page aligned so each object can be mapped on its own (pinning by mapping).
STORE_ALIGN = 4096
# Buffers inside an object are aligned for SIMD-friendly numpy views.
BUFFER_ALIGN = 64
# Default store capacity as a share of RAM, as in Ray.
DEFAULT_STORE_FRACTION = 0.30
# Past this share of capacity, primary copies are spilled to disk in a batch.
SPILL_THRESHOLD = 0.8
# Tasks pushed to one leased worker ahead of completion: higher amortises round trips, lower
# spreads work across workers sooner.  A worker that blocks in get hands queued tasks back.
PIPELINE_DEPTH = 16
# Lease requests in flight per scheduling key.
MAX_PENDING_LEASES = 16
# How often nodes report to the GCS and how many missed reports make a node dead.
HEARTBEAT_S = 1.0
HEARTBEAT_MISSES = 5
# An idle worker beyond the node's CPU count is ended after this long.
IDLE_WORKER_TIMEOUT_S = 30.0
# Default retries, as in Ray.
DEFAULT_MAX_RETRIES = 3
