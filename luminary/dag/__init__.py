"""``luminary.dag``: Ray Core's lazy task graphs (``f.bind``, ``Actor.bind``, ``InputNode``).

    from luminary.dag import InputNode, MultiOutputNode
    with InputNode() as inp:
        dag = MultiOutputNode([f.bind(inp), g.bind(f.bind(inp))])
    refs = dag.execute(3)        # ObjectRefs; each execute submits the graph's tasks anew

Compiled graphs (``experimental_compile``) are not supported.
"""
from __future__ import annotations

from .class_node import ClassMethodNode, ClassNode
from .dag_node import DAGNode
from .function_node import FunctionNode
from .input_node import DAGInputData, InputAttributeNode, InputNode
from .output_node import MultiOutputNode

__all__ = ["DAGNode", "FunctionNode", "ClassNode", "ClassMethodNode", "InputNode", "InputAttributeNode",
           "DAGInputData", "MultiOutputNode"]


def bind(target, args, kwargs, submitter=None):
    """The DAG node for ``target.bind(*args, **kwargs)``: a remote function, an actor class or an
    actor method of a live handle; ``submitter`` is what ``target.options(...)`` returned."""
    from .._private.worker.actor import ActorClass, ActorMethod
    from .._private.worker.remote_function import RemoteFunction
    if isinstance(target, RemoteFunction):
        return FunctionNode(target, args, kwargs, submitter)
    if isinstance(target, ActorClass):
        return ClassNode(target, args, kwargs, submitter)
    if isinstance(target, ActorMethod):
        from .class_node import bind_actor_method
        return bind_actor_method(target, args, kwargs)
    raise TypeError(f".bind() works on remote functions, actor classes and actor methods, "
                    f"not {type(target).__name__}.")
