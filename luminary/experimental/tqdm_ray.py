"""``ray.experimental.tqdm_ray``: a tqdm-shaped progress bar usable in tasks and actors, drawn at
the driver (through the worker's output stream, as marked lines the driver takes out) without
garbling other output.  In the driver itself it draws directly."""
from __future__ import annotations

import os
import time
import uuid as _uuid

from .._private import progress

_FLUSH_S = 1.0


class tqdm:
    def __init__(self, iterable=None, desc=None, total=None, unit="it", position=None,
                 flush_interval_s=_FLUSH_S, **_ignored):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        self._iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.unit = unit
        self.n = 0
        self.pos = position or 0
        self._uuid = _uuid.uuid4().hex
        self._flush_s = flush_interval_s
        self._last = 0.0
        self._closed = False
        self._emit(force=True)

    # --- tqdm's API ------------------------------------------------------------------------------
    def __iter__(self):
        if self._iterable is None:
            raise TypeError("tqdm() was not given an iterable")
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        self._emit()

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""
        self._emit(force=refresh)

    def set_postfix(self, *a, **k):
        pass

    def refresh(self):
        self._emit(force=True)

    def reset(self, total=None):
        self.n = 0
        if total is not None:
            self.total = total
        self._emit(force=True)

    def close(self):
        if not self._closed:
            self._closed = True
            self._emit(force=True)

    # --- drawing ---------------------------------------------------------------------------------
    def _state(self):
        from .._private.worker import state as wstate
        core = wstate.core
        who = None
        if core is not None and core.mode == "worker":
            actor = core.current_actor
            who = actor.meta.get("class_name") if actor is not None else core.current_task_name
        return {"uuid": self._uuid, "pid": os.getpid(), "desc": self.desc, "total": self.total, "n": self.n,
                "pos": self.pos, "closed": self._closed, "who": who}

    def _emit(self, force=False):
        now = time.monotonic()
        if not force and now - self._last < self._flush_s and (self.total is None or self.n < self.total):
            return
        self._last = now
        from .._private.worker import state as wstate
        core = wstate.core
        if core is not None and core.mode == "worker":
            print(progress.encode(self._state()), flush=True)   # taken out of the stream at the driver
        else:
            progress.manager().update(self._state())


def safe_print(*args, **kwargs):
    """Print without garbling the bars (tqdm_ray's helper)."""
    import io
    import sys
    buf = io.StringIO()
    print(*args, file=buf, **kwargs)
    progress.manager().write_above(buf.getvalue(), sys.stdout)
