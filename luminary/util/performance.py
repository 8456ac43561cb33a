"""``luminary.util.report(path)``: one self-contained HTML report of a block of a program, like
Dask's ``performance_report`` (task stream, durations per function, worker utilisation, memory
over time, failures with tracebacks, top objects)."""
from __future__ import annotations

import contextlib
import os
import time

from .._private import report as _report
from .._private.worker import events as _events


@contextlib.contextmanager
def report(filename="luminary-report.html"):
    """Record what the cluster runs inside the ``with`` block and write ``filename`` at its end."""
    from . import state
    t0 = time.time()
    yield
    from .._private.worker import state as _state
    core = _state.core
    if core is None:
        raise RuntimeError("luminary.util.report needs a connected driver: call luminary.init() first.")
    core.events.flush_wait()
    # workers send their batches at most every FLUSH_S: wait that long (twice) for their last one
    time.sleep(2.5 * _events.FLUSH_S)
    tasks = [t for t in state.list_tasks(limit=10_000_000, detail=True)
             if (t.get("creation_time_ms") or 0) >= t0 * 1000 - 1]
    info = state.cluster_info()
    samples = []
    if info.get("history_dir") and os.path.isdir(info["history_dir"]):
        samples = _report.load_history(info["history_dir"], since=t0).samples
    try:
        objects = state.list_objects(limit=10_000_000)
    except Exception:  # noqa: BLE001 - the report does not need every process to answer
        objects = []
    snap = _report.Snapshot(tasks, state.list_actors(limit=10_000_000, detail=True), (), samples, objects,
                            title=f"block of {time.time() - t0:.2f} s")
    _report.write_report(filename, snap)
