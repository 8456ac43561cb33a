"""``Actor.bind(...)`` and ``actor_node.method.bind(...)``: actors and actor calls in a DAG.

Each ``execute`` creates the actor anew (as Ray does); calls bound on it run on that actor in
the order the graph reaches them.  ``handle.method.bind(...)`` on a live actor handle binds
calls to that existing actor instead.
"""
from __future__ import annotations

from .dag_node import DAGNode


class ClassNode(DAGNode):
    """An actor class bound to its constructor arguments; ``execute`` returns an actor handle."""

    def __init__(self, actor_class, args, kwargs, submitter=None):
        super().__init__(args, kwargs)
        self._body = actor_class
        self._submitter = submitter if submitter is not None else actor_class

    def _run(self, ctx, results):
        args, kwargs = self._resolved_args(results)
        return self._submitter.remote(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_body", "_submitter", "_bound_args", "_bound_kwargs"):
            raise AttributeError(name)
        cls = getattr(self._body, "_cls", None)
        if cls is not None and not hasattr(cls, name):
            raise AttributeError(f"The actor class {cls.__name__} has no method {name!r}; "
                                 f"bind one of its methods, e.g. node.{_first_method(cls)}.bind(...).")
        return UnboundClassMethod(self, name, {})

    def __repr__(self):
        return f"ClassNode({getattr(self._body, '__name__', '?')}, args={self._bound_args!r})"


def _first_method(cls):
    names = [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None))]
    return names[0] if names else "method"


class UnboundClassMethod:
    """``actor_node.method``: call ``.bind(...)`` (or ``.options(...).bind(...)``) on it."""

    def __init__(self, parent, name, options):
        self._parent = parent
        self._name = name
        self._options = options

    def bind(self, *args, **kwargs):
        return ClassMethodNode(self._parent, self._name, args, kwargs, self._options)

    def options(self, **options):
        return UnboundClassMethod(self._parent, self._name, dict(self._options, **options))

    def remote(self, *args, **kwargs):
        raise AttributeError(f".remote() cannot be used on the method {self._name!r} of an actor node: "
                             f"use .bind() to add the call to the DAG, then .execute() the DAG.")

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Methods of an actor node cannot be called directly; use "
                        f"'{self._name}.bind(...)' and execute the DAG.")


class ClassMethodNode(DAGNode):
    """An actor method call; ``parent`` is a ClassNode (actor made per execute) or a handle."""

    def __init__(self, parent, method_name, args, kwargs, options=None):
        super().__init__(args, kwargs)
        self._parent = parent
        self._method_name = method_name
        self._options = dict(options or {})

    def _dependencies(self):
        deps = [self._parent] if isinstance(self._parent, DAGNode) else []
        return deps + super()._dependencies()

    def _run(self, ctx, results):
        handle = results[id(self._parent)] if isinstance(self._parent, DAGNode) else self._parent
        method = getattr(handle, self._method_name)
        if self._options:
            method = method.options(**self._options)
        args, kwargs = self._resolved_args(results)
        return method.remote(*args, **kwargs)

    def __repr__(self):
        return f"ClassMethodNode({self._method_name}, args={self._bound_args!r})"


def bind_actor_method(actor_method, args, kwargs):
    """``handle.method.bind(...)`` on a live actor handle."""
    return ClassMethodNode(actor_method._handle, actor_method._name, args, kwargs,
                           getattr(actor_method, "_options", None))
