"""Backend switch for the integration tests.

The module under test is chosen by the environment variable
``LUMINARY_TEST_BACKEND`` (default ``luminary``).  Setting it to ``ray`` runs
the very same tests against real Ray, which serves as the oracle for the
semantics encoded here.

Tests do ``from _backend import ray`` and use only Ray's public API on it.
"""

import importlib
import os
import time

BACKEND = os.environ.get("LUMINARY_TEST_BACKEND", "luminary").strip() or "luminary"

ray = importlib.import_module(BACKEND)

IS_RAY = BACKEND == "ray"


def poll_for(predicate, timeout=10.0, interval=0.02, desc=None):
    """Call ``predicate`` until it returns a truthy value; return that value.

    Raises AssertionError naming ``desc`` (or the predicate) if ``timeout``
    seconds pass first.  Use this instead of sleeping to synchronise.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = desc or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
