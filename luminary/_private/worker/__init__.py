"""The core worker: runs in the driver and in every worker process."""
