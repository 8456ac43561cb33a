"""``MultiOutputNode``: several results from one ``execute``."""
from __future__ import annotations

from .dag_node import DAGNode


class MultiOutputNode(DAGNode):
    """``MultiOutputNode([a, b]).execute(...)`` returns ``[ref_a, ref_b]``."""

    def __init__(self, outputs):
        if not isinstance(outputs, (list, tuple)):
            raise TypeError(f"MultiOutputNode takes a list of DAG nodes, e.g. MultiOutputNode([a, b]); "
                            f"got {type(outputs).__name__}.")
        super().__init__(tuple(outputs))

    def _run(self, ctx, results):
        args, _ = self._resolved_args(results)
        return list(args)

    def __repr__(self):
        return f"MultiOutputNode({list(self._bound_args)!r})"
