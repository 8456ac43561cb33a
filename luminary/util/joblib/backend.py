"""The joblib backend: every batch of calls joblib hands over is one Luminary task.

joblib groups calls into batches (sized automatically from measured durations), pickles each
batch and asks the backend to run it; here a batch travels as the argument of a task, its
result comes back through the ObjectRef's future, and joblib's callback fires when it is done.
``n_jobs=-1`` means every CPU of the cluster; ``n_jobs=1`` runs the calls in the calling
process, as joblib (and Ray's backend) do.  ``ray_remote_args`` (given to ``parallel_backend``
or ``Parallel``) are the task options, e.g. ``{"num_cpus": 2}``.
"""
from __future__ import annotations

import threading

from joblib._parallel_backends import (AutoBatchingMixin, FallbackToBackend, ParallelBackendBase,
                                       SequentialBackend)

import luminary


def _run_batch(batch):
    return batch()


_run_batch_task = None


def _batch_task():
    global _run_batch_task
    if _run_batch_task is None:
        _run_batch_task = luminary.remote(_run_batch)
    return _run_batch_task


class LuminaryBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib parallel backend that runs each batch of calls as a Luminary task."""

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None, ray_remote_args=None, **kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        self.ray_remote_args = _check_remote_args(ray_remote_args)
        self._task = None
        self._pending = set()
        self._lock = threading.Lock()

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning; use a positive number of "
                             "parallel tasks, or -1 for every CPU of the cluster.")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not luminary.is_initialized():
                luminary.init()
            cpus = int(luminary.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, ray_remote_args=None,
                  **kwargs):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        if not luminary.is_initialized():
            luminary.init()
        remote_args = _check_remote_args(ray_remote_args) if ray_remote_args is not None \
            else self.ray_remote_args
        task = _batch_task()
        self._task = task.options(**remote_args) if remote_args else task
        self.parallel = parallel
        return n_jobs

    def submit(self, func, callback=None):
        ref = self._task.remote(func)
        future = ref.future()
        future._luminary_ref = ref
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future):
        with self._lock:
            self._pending.discard(future)

    def retrieve_result_callback(self, future):
        return future.result()

    def retrieve_result(self, future, timeout=None):
        return future.result(timeout=timeout)

    def abort_everything(self, ensure_ready=True):
        """A call failed: cancel the batches still queued or running."""
        with self._lock:
            pending, self._pending = list(self._pending), set()
        for future in pending:
            try:
                luminary.cancel(future._luminary_ref)
            except Exception:  # already finished or gone: nothing to cancel
                pass
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self):
        self.reset_batch_stats()


def _check_remote_args(args):
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise TypeError(f"ray_remote_args must be a dict of task options such as {{'num_cpus': 2}}, "
                        f"got {type(args).__name__}.")
    return dict(args)
