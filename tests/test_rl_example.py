"""examples/rl_parameter_server.py: actors learn CartPole (a short, seeded run)."""

import importlib.util
import os
import sys

import pytest

from _backend import IS_RAY, ray

pytest.importorskip("gymnasium")

# Put the examples on sys.path now (before any cluster starts) so workers import the module
# the actor classes come from.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXAMPLES = os.path.join(_ROOT, "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)
if IS_RAY:
    # The example is written against luminary (it imports it; the tests pass backend=ray), and
    # the oracle's environment may lack it: use the source tree.  Ray's workers find modules
    # through PYTHONPATH (inherited when the cluster starts, after collection).
    if importlib.util.find_spec("luminary") is None:
        sys.path.append(_ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_EXAMPLES, _ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import rl_parameter_server as rl  # noqa: E402


@pytest.mark.timeout(30)
def test_policy_gradient_matches_finite_differences():
    import numpy as np
    w = rl.init_policy(seed=3, hidden=5)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((7, 4))
    actions = rng.integers(0, 2, 7)
    adv = rng.standard_normal(7)

    def objective(weights):
        _, p = rl.policy_forward(weights, obs)
        return float((adv * np.log(p[np.arange(7), actions])).sum())

    grad = rl.policy_gradient(w, obs, actions, adv)
    eps = 1e-6
    for key in w:
        flat = w[key].reshape(-1)
        for i in range(0, flat.size, max(1, flat.size // 4)):
            old = flat[i]
            flat[i] = old + eps
            up = objective(w)
            flat[i] = old - eps
            down = objective(w)
            flat[i] = old
            assert grad[key].reshape(-1)[i] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6)


@pytest.mark.timeout(120)
def test_training_improves_reward(ray_start, capsys):
    history = rl.train(iterations=30, num_workers=2, episodes_per_worker=5, seed=0,
                       backend=ray)
    assert len(history) == 30
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert first < 50, history  # a random policy
    assert last > 100 and last > 2.5 * first, history
    out = capsys.readouterr().out
    assert "iter  30/30" in out and "avg reward" in out


@pytest.mark.timeout(120)
def test_main_quick_run_prints_summary(shutdown_only, capsys, monkeypatch):
    # main() calls init()/shutdown() itself on the module it was written against; under the
    # ray backend point that name at ray.
    monkeypatch.setattr(rl, "luminary", ray)
    assert rl.main(["--quick", "--iterations", "3"]) == 0
    assert not ray.is_initialized()
    out = capsys.readouterr().out
    assert "summary" in out and "where to look next" in out
    assert "docs/architecture.md" in out and "benchmarks/" in out
