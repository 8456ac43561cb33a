"""``InputNode``: the placeholder for what ``execute(...)`` is given.

    with InputNode() as inp:
        dag = f.bind(inp)              # execute(x): f gets x
        dag = g.bind(inp[0], inp[1])   # execute(a, b): g gets a, b
        dag = h.bind(inp.lr, inp["n"]) # execute(lr=..., n=...): h gets them

As in Ray: with exactly one positional argument (and no keywords) ``inp`` is that value and
``inp[k]`` / ``inp.k`` index into it / take its attribute; otherwise ``inp`` is a
``DAGInputData`` and ``inp[i]`` is the i-th positional argument, ``inp["k"]`` and ``inp.k``
the keyword argument ``k``.
"""
from __future__ import annotations

from .dag_node import DAGNode


class DAGInputData:
    """What ``inp`` stands for when ``execute`` gets several arguments or keywords."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.args[key]
        return self.kwargs[key]

    def __repr__(self):
        return f"DAGInputData(args={self.args!r}, kwargs={self.kwargs!r})"


class InputNode(DAGNode):
    """The input of a DAG; create it with ``with InputNode() as inp:``."""

    def __init__(self):
        super().__init__()
        self._entered = False

    def __enter__(self):
        self._entered = True
        return self

    def __exit__(self, *exc):
        return False

    def __getitem__(self, key):
        if not isinstance(key, (int, str)):
            raise TypeError(f"InputNode can be indexed by an int (a positional argument of execute) or "
                            f"a str (a keyword argument), not {type(key).__name__}.")
        return InputAttributeNode(self, key, "index")

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "attr")

    def _run(self, ctx, results):
        if not self._entered:
            raise ValueError("InputNode must be used as a context manager: build the DAG inside "
                             "'with InputNode() as inp:' and bind inp (or inp[i], inp.name).")
        if len(ctx.args) == 1 and not ctx.kwargs:
            return ctx.args[0]
        return DAGInputData(*ctx.args, **ctx.kwargs)

    def __repr__(self):
        return "InputNode()"


class InputAttributeNode(DAGNode):
    """``inp[key]`` or ``inp.key``."""

    def __init__(self, input_node, key, accessor):
        super().__init__()
        self._input = input_node
        self._key = key
        self._accessor = accessor

    def _dependencies(self):
        return [self._input]

    def _run(self, ctx, results):
        value = results[id(self._input)]
        if isinstance(value, DAGInputData):
            if isinstance(self._key, int):
                if self._key >= len(value.args) or self._key < -len(value.args):
                    raise IndexError(f"inp[{self._key}] needs at least {self._key + 1} positional "
                                     f"arguments to execute(), got {len(value.args)}.")
                return value.args[self._key]
            if self._key not in value.kwargs:
                raise KeyError(f"{self._desc()} needs the keyword argument {self._key!r} in execute(...); "
                               f"got keywords {sorted(value.kwargs)}.")
            return value.kwargs[self._key]
        if self._accessor == "attr":
            return getattr(value, self._key)
        return value[self._key]

    def _desc(self):
        return f"inp.{self._key}" if self._accessor == "attr" else f"inp[{self._key!r}]"

    def __repr__(self):
        return f"InputAttributeNode({self._desc()})"
