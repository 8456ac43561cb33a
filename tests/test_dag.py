"""Ray Core's DAG API: f.bind, Actor.bind, actor_node.method.bind, InputNode, MultiOutputNode,
dag.execute; nodes nested in arguments, reuse within one execute, options, errors."""

import collections
import importlib
import os

import pytest

from _backend import BACKEND, IS_RAY, ray

dag_mod = importlib.import_module(f"{BACKEND}.dag")
InputNode = dag_mod.InputNode
MultiOutputNode = dag_mod.MultiOutputNode


@ray.remote
def add(a, b=0):
    return a + b


@ray.remote
def pair(x, y=None):
    return (x, y)


@ray.remote
def pid_of(_x=None):
    return os.getpid()


@ray.remote
def show(value):
    """What the task received, with nested ObjectRefs named rather than resolved."""
    def walk(v):
        if isinstance(v, ray.ObjectRef):
            return ("ref", ray.get(v))
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return type(v)(*[walk(x) for x in v])
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v
    return walk(value)


@ray.remote
def assigned_cpus():
    return ray.get_runtime_context().get_assigned_resources().get("CPU")


@ray.remote
def fail(x):
    raise KeyError(f"no key {x}")


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def add(self, d=1):
        self.value += d
        return self.value

    def get(self):
        return self.value

    def pid(self):
        return os.getpid()


@pytest.mark.timeout(60)
def test_exported_where_ray_exports_them():
    from importlib import import_module
    assert import_module(f"{BACKEND}.dag.input_node").InputNode is InputNode
    assert import_module(f"{BACKEND}.dag.output_node").MultiOutputNode is MultiOutputNode
    assert isinstance(add.bind(1), dag_mod.DAGNode)
    assert isinstance(add.bind(1), dag_mod.FunctionNode)


@pytest.mark.timeout(60)
def test_function_chain_runs_as_tasks_in_workers(ray_start):
    with InputNode() as inp:
        dag = add.bind(add.bind(inp, 1), b=10)
    ref = dag.execute(5)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == 16
    assert ray.get(dag.execute(0)) == 11   # the same DAG runs again with a new input
    assert ray.get(pid_of.bind().execute()) != os.getpid()


@pytest.mark.timeout(60)
def test_dag_without_input_node(ray_start):
    assert ray.get(add.bind(2, b=3).execute()) == 5


@pytest.mark.timeout(60)
def test_input_node_indexing_and_attributes(ray_start):
    with InputNode() as inp:
        dag = pair.bind(inp[0], y=inp[1])
    assert ray.get(dag.execute("a", "b")) == ("a", "b")

    with InputNode() as inp:
        dag = pair.bind(inp.lr, y=inp["n"])
    assert ray.get(dag.execute(lr=0.1, n=3)) == (0.1, 3)

    # one positional argument: inp[i] / inp.k index into it / take its attribute
    with InputNode() as inp:
        dag = pair.bind(inp[1])
    assert ray.get(dag.execute([7, 8])) == (8, None)
    with InputNode() as inp:
        dag = pair.bind(inp.real, y=inp.imag)
    assert ray.get(dag.execute(3 + 4j)) == (3.0, 4.0)


@pytest.mark.timeout(60)
def test_input_node_errors_name_the_missing_argument(ray_start):
    with InputNode() as inp:
        dag = pair.bind(inp[2])
    with pytest.raises(IndexError):
        dag.execute("only", "two")
    with InputNode() as inp:
        dag = pair.bind(inp.missing)
    with pytest.raises(KeyError):
        dag.execute(1, present=2)
    with pytest.raises((ValueError, AssertionError)):   # only one InputNode per DAG
        with InputNode() as a, InputNode() as b:
            pair.bind(a, y=b).execute(1)


@pytest.mark.timeout(60)
def test_multi_output_node_returns_a_list_of_refs(ray_start):
    with InputNode() as inp:
        dag = MultiOutputNode([add.bind(inp, 1), add.bind(inp, 2), pair.bind(inp)])
    refs = dag.execute(10)
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == [11, 12, (10, None)]


@pytest.mark.timeout(60)
def test_nested_nodes_become_refs(ray_start):
    with InputNode() as inp:
        a = add.bind(inp, 1)
        dag = show.bind([a, {"k": a}, (add.bind(inp, 2),)])
    assert ray.get(dag.execute(1)) == [("ref", 2), {"k": ("ref", 2)}, (("ref", 3),)]
    Point = collections.namedtuple("Point", "x y")
    assert ray.get(show.bind(Point(add.bind(1), 5)).execute()) == Point(("ref", 1), 5)


@pytest.mark.timeout(60)
def test_reused_node_runs_once_per_execute(ray_start):
    counter = Counter.remote()

    @ray.remote
    def tick(c):
        return ray.get(c.add.remote())

    with InputNode() as inp:
        shared = tick.bind(inp)
        dag = MultiOutputNode([pair.bind(shared, y=shared), add.bind(shared, b=shared)])
    first, second = ray.get(dag.execute(counter))
    assert first == (1, 1) and second == 2          # one tick for the whole execute
    ray.get(dag.execute(counter))
    assert ray.get(counter.get.remote()) == 2       # and one more for the second execute


@pytest.mark.timeout(60)
def test_options_then_bind(ray_start):
    ref = add.options(num_cpus=0.5, name="half").bind(1, b=2).execute()
    assert ray.get(ref) == 3
    assert ray.get(assigned_cpus.options(num_cpus=0.5).bind().execute()) == 0.5
    handle = Counter.options(name="dag_named_counter").bind(4).execute()
    assert ray.get(ray.get_actor("dag_named_counter").get.remote()) == 4
    ray.kill(handle)
    assert ray.get(Counter.bind(3).add.options(name="plus").bind(2).execute()) == 5


@pytest.mark.timeout(60)
def test_actor_nodes_calls_in_order_new_actor_per_execute(ray_start):
    with InputNode() as inp:
        actor = Counter.bind(100)
        first = actor.add.bind(inp)
        second = actor.add.bind(first)
        dag = MultiOutputNode([first, second, actor.get.bind(), actor.pid.bind()])
    a = ray.get(dag.execute(1))
    assert a[:3] == [101, 202, 202]
    assert a[3] != os.getpid()
    assert ray.get(dag.execute(1))[:3] == [101, 202, 202]   # a fresh actor each execute
    handle = Counter.bind(7).execute()
    assert ray.get(handle.get.remote()) == 7


@pytest.mark.timeout(60)
def test_bind_on_a_live_actor_handle(ray_start):
    counter = Counter.remote(5)
    with InputNode() as inp:
        dag = counter.add.bind(inp)
    assert ray.get(dag.execute(2)) == 7
    assert ray.get(dag.execute(3)) == 10    # the same actor: state carries over
    assert ray.get(counter.get.remote()) == 10


@pytest.mark.timeout(60)
def test_errors_propagate_with_their_type(ray_start):
    with InputNode() as inp:
        dag = add.bind(fail.bind(inp), 1)
    ref = dag.execute("x")
    with pytest.raises(KeyError) as info:
        ray.get(ref)
    assert isinstance(info.value, ray.exceptions.RayTaskError)
    assert "no key x" in str(info.value)


@pytest.mark.timeout(60)
def test_misuse_gives_clear_errors(ray_start):
    node = add.bind(1)
    with pytest.raises(AttributeError, match="execute"):
        node.remote()
    with pytest.raises(TypeError):
        node()
    with pytest.raises(AttributeError):
        Counter.bind().no_such_method
    with pytest.raises(AttributeError):
        Counter.bind().add.remote(1)


@pytest.mark.skipif(IS_RAY, reason="Ray compiles graphs; Luminary does not support experimental_compile")
@pytest.mark.timeout(60)
def test_experimental_compile_not_supported():
    with InputNode() as inp:
        dag = add.bind(inp)
    with pytest.raises(NotImplementedError, match="experimental_compile"):
        dag.experimental_compile()


@pytest.mark.timeout(60)
def test_execute_inside_a_task(ray_start):
    @ray.remote
    def run_dag(x):
        with InputNode() as inp:
            dag = add.bind(add.bind(inp, 1), 1)
        return ray.get(dag.execute(x))
    assert ray.get(run_dag.remote(1)) == 3


@pytest.mark.timeout(60)
def test_long_chain(ray_start):
    node = add.bind(0, 1)
    for _ in range(300):
        node = add.bind(node, 1)
    assert ray.get(node.execute()) == 301
