"""The base of every DAG node and the interpreter that runs a DAG once per ``execute``.

A DAG is built lazily with ``.bind(...)``: nothing runs until ``node.execute(*args, **kwargs)``.
Each execute walks the graph below the node once (post-order, arguments left to right), submits
each node as an ordinary task / actor creation / actor call, and passes a node's ObjectRef (or
actor handle) to the nodes that use it.  A node reached twice in one execute runs once; the next
execute runs it again.  DAG nodes nested in lists, tuples, dicts and sets inside the arguments
are replaced by their ObjectRefs (which the task receives unresolved, as any nested ref).
"""
from __future__ import annotations

import copy

_CONTAINERS = (list, tuple, dict, set, frozenset)


class DAGNode:
    """A node of a lazily built task graph (what ``.bind(...)`` returns)."""

    def __init__(self, args=(), kwargs=None):
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs or {})

    # ----- what a user calls -------------------------------------------------------------
    def get_args(self):
        """The positional arguments given to ``bind``."""
        return self._bound_args

    def get_kwargs(self):
        """The keyword arguments given to ``bind``."""
        return dict(self._bound_kwargs)

    def execute(self, *args, **kwargs):
        """Run the graph below this node once; ``args``/``kwargs`` feed its ``InputNode``.

        Returns this node's result: an ObjectRef for a task or actor call, an actor handle for
        an actor, a list of them for a ``MultiOutputNode``."""
        return _execute(self, args, kwargs)

    def experimental_compile(self, *args, **kwargs):
        raise NotImplementedError(
            "Compiled graphs (experimental_compile) are not supported by Luminary. Run the DAG "
            "with dag.execute(...) instead: each execute submits ordinary tasks and actor calls.")

    def remote(self, *args, **kwargs):
        raise AttributeError(f".remote() cannot be used on a {type(self).__name__}: it is a node of a "
                             "task graph built with .bind(). Run the graph with .execute() instead.")

    # ----- what the interpreter calls ----------------------------------------------------
    def _dependencies(self):
        """The DAG nodes this node needs before it can run, in submission order."""
        return _scan(self._bound_args) + _scan(self._bound_kwargs)

    def _run(self, ctx, results):
        """Submit this node with its dependencies' ``results`` (node id -> value)."""
        raise NotImplementedError

    def _resolved_args(self, results):
        args = tuple(_replace(a, results) for a in self._bound_args)
        kwargs = {k: _replace(v, results) for k, v in self._bound_kwargs.items()}
        return args, kwargs


class ExecutionContext:
    """The inputs of one ``execute`` call."""

    def __init__(self, args, kwargs):
        self.args = args
        self.kwargs = kwargs
        self.input_node = None


def _scan(value):
    """The DAG nodes inside ``value`` (nested in builtin containers), in order, repeats kept."""
    found = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, DAGNode):
            found.append(v)
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, _CONTAINERS):
            stack.extend(reversed(list(v)))
    return found


def _replace(value, results):
    """``value`` with each DAG node in it replaced by that node's result."""
    if isinstance(value, DAGNode):
        return results[id(value)]
    if isinstance(value, dict):
        if not _scan(value):
            return value
        if type(value) is dict:
            return {k: _replace(v, results) for k, v in value.items()}
        out = copy.copy(value)  # OrderedDict, defaultdict, ...: keep the type
        for k, v in value.items():
            out[k] = _replace(v, results)
        return out
    if isinstance(value, _CONTAINERS):
        if not _scan(value):
            return value
        items = [_replace(v, results) for v in value]
        if hasattr(value, "_fields"):  # namedtuple
            return type(value)(*items)
        return type(value)(items)
    return value


def _topological_order(root):
    """Every node below ``root`` once, each after its dependencies (iterative post-order)."""
    order = []
    state = {}  # id -> 1 (on the stack) / 2 (done)
    stack = [(root, iter(root._dependencies()))]
    state[id(root)] = 1
    while stack:
        node, deps = stack[-1]
        for dep in deps:
            s = state.get(id(dep))
            if s is None:
                state[id(dep)] = 1
                stack.append((dep, iter(dep._dependencies())))
                break
            if s == 1:
                raise ValueError(f"The DAG has a cycle through a {type(dep).__name__}; a task graph "
                                 "must be acyclic.")
        else:
            stack.pop()
            state[id(node)] = 2
            order.append(node)
    return order


def _execute(root, args, kwargs):
    from .input_node import InputNode
    ctx = ExecutionContext(args, kwargs)
    order = _topological_order(root)
    for node in order:
        if isinstance(node, InputNode):
            if ctx.input_node is not None and ctx.input_node is not node:
                raise ValueError("A DAG can have only one InputNode; found two. Create it once with "
                                 "'with InputNode() as inp:' and use inp (or inp[i], inp.name) everywhere.")
            ctx.input_node = node
    results = {}
    for node in order:
        results[id(node)] = node._run(ctx, results)
    return results[id(root)]
