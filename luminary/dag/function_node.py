"""``f.bind(...)``: a task in a DAG."""
from __future__ import annotations

from .dag_node import DAGNode


class FunctionNode(DAGNode):
    """A remote function call bound to its arguments; runs as one task per ``execute``."""

    def __init__(self, remote_function, args, kwargs, submitter=None):
        super().__init__(args, kwargs)
        self._body = remote_function
        # what submits the task: the remote function, or what its .options(...) returned
        self._submitter = submitter if submitter is not None else remote_function

    def _run(self, ctx, results):
        args, kwargs = self._resolved_args(results)
        return self._submitter.remote(*args, **kwargs)

    def __repr__(self):
        name = getattr(self._body, "_name", None) or getattr(self._body, "__name__", "?")
        return f"FunctionNode({name}, args={self._bound_args!r}, kwargs={self._bound_kwargs!r})"
