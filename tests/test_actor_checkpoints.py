"""Actor checkpoints (beyond Ray): a restarted actor resumes from its last checkpoint."""
import os

import pytest

from _backend import IS_RAY, ray

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(IS_RAY, reason="checkpoint_interval is a Luminary extension")]


def test_restart_resumes_from_last_checkpoint(ray_start):
    @ray.remote(max_restarts=2, checkpoint_interval=1)
    class Account:
        def __init__(self):
            self.balance = 0
            self.inits = 1

        def deposit(self, x):
            self.balance += x
            return self.balance

        def crash(self):
            os._exit(1)

        def state(self):
            return self.balance, self.inits, ray.get_runtime_context().was_current_actor_reconstructed

    a = Account.remote()
    assert ray.get([a.deposit.remote(10), a.deposit.remote(5)]) == [10, 15]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.crash.remote())
    balance, inits, reconstructed = ray.get(a.state.remote())
    assert balance == 15            # every reply received was covered by a checkpoint
    assert inits == 1               # __init__ did not run again
    assert reconstructed is True


def test_interval_bounds_what_a_crash_can_lose(ray_start):
    @ray.remote(max_restarts=1, checkpoint_interval=3)
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return len(self.items)

        def crash(self):
            os._exit(1)

        def items_(self):
            return self.items

    log = Log.remote()
    ray.get([log.add.remote(i) for i in range(5)])   # checkpoint after the 3rd call
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(log.crash.remote())
    assert ray.get(log.items_.remote()) == [0, 1, 2]


def test_getstate_and_setstate_hooks_are_used(ray_start):
    @ray.remote(max_restarts=1, checkpoint_interval=1)
    class Model:
        def __init__(self):
            self.weights = [0.0]
            self.cache = object()            # not picklable state is rebuilt by __setstate__

        def __getstate__(self):
            return {"weights": self.weights}

        def __setstate__(self, state):
            self.weights = state["weights"]
            self.cache = "rebuilt"

        def step(self):
            self.weights = [w + 1 for w in self.weights]
            return self.weights

        def crash(self):
            os._exit(1)

        def peek(self):
            return self.weights, self.cache

    m = Model.remote()
    ray.get([m.step.remote(), m.step.remote()])
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(m.crash.remote())
    assert ray.get(m.peek.remote()) == ([2.0], "rebuilt")
