"""Reinforcement learning with a parameter server, on Luminary actors.

Rollout-worker actors play CartPole-v1 (gymnasium) with the current policy and each computes a
policy gradient (REINFORCE with a baseline) from its episodes; a parameter-server actor holds
the policy (a small numpy MLP, 4 -> 16 -> 2 with a softmax) and applies the averaged gradients
with Adam.  Weights and gradients travel as ObjectRefs from actor to actor: the driver only
reads the episode statistics to print them.

    python examples/rl_parameter_server.py              # 60 iterations, 2 workers
    python examples/rl_parameter_server.py --quick      # a short run
    python examples/rl_parameter_server.py --iterations 80 --workers 4

The average episode reward starts around 20 (a random policy) and climbs to the maximum of 500
within about 30-50 iterations (seconds on two cores).  Only Luminary's public API is used, so
replacing the import with ``import ray as luminary`` runs it on Ray.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import luminary

MAX_REWARD = 500          # CartPole-v1 ends an episode after 500 steps
OBS_DIM, N_ACTIONS = 4, 2


# ---------------------------------------------------------------------------
# the policy: plain numpy
# ---------------------------------------------------------------------------

def init_policy(seed: int, hidden: int = 16) -> dict:
    """Random initial weights of the 4 -> hidden -> 2 policy network."""
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.standard_normal((OBS_DIM, hidden)) / 2.0,
        "b1": np.zeros(hidden),
        "W2": rng.standard_normal((hidden, N_ACTIONS)) * 0.1,
        "b2": np.zeros(N_ACTIONS),
    }


def policy_forward(weights: dict, obs: np.ndarray):
    """Hidden activations and action probabilities for one observation or a batch."""
    h = np.tanh(obs @ weights["W1"] + weights["b1"])
    logits = h @ weights["W2"] + weights["b2"]
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return h, z / z.sum(axis=-1, keepdims=True)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    out = np.empty(len(rewards))
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def policy_gradient(weights: dict, obs: np.ndarray, actions: np.ndarray,
                    advantages: np.ndarray) -> dict:
    """Gradient of sum_t advantage_t * log pi(a_t | s_t) with respect to the weights."""
    h, probs = policy_forward(weights, obs)
    dlogits = -probs
    dlogits[np.arange(len(actions)), actions] += 1.0
    dlogits *= advantages[:, None]
    dh = (dlogits @ weights["W2"].T) * (1.0 - h ** 2)
    return {"W1": obs.T @ dh, "b1": dh.sum(axis=0),
            "W2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}


# ---------------------------------------------------------------------------
# the actors (plain classes; train() makes them remote)
# ---------------------------------------------------------------------------

class RolloutWorker:
    """Plays episodes with the weights it is given; returns a gradient and statistics."""

    def __init__(self, worker_index: int, gamma: float = 0.99):
        import gymnasium as gym
        self.env = gym.make("CartPole-v1")
        self.index = worker_index
        self.gamma = gamma

    def node(self) -> str:
        return luminary.get_runtime_context().get_node_id()

    def rollout(self, weights: dict, num_episodes: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        episodes = []
        for e in range(num_episodes):
            obs, _ = self.env.reset(seed=seed * 1000 + e)
            o_list, a_list, r_list = [], [], []
            while True:
                _, probs = policy_forward(weights, obs)
                action = int(rng.random() < probs[1])
                o_list.append(obs)
                a_list.append(action)
                obs, reward, terminated, truncated, _ = self.env.step(action)
                r_list.append(reward)
                if terminated or truncated:
                    break
            episodes.append((np.array(o_list), np.array(a_list), np.array(r_list)))
        # baseline: the mean return over this batch of episodes (then scaled by its std)
        returns = [discounted_returns(r, self.gamma) for _, _, r in episodes]
        flat = np.concatenate(returns)
        mean, std = flat.mean(), flat.std() + 1e-8
        obs = np.concatenate([o for o, _, _ in episodes])
        actions = np.concatenate([a for _, a, _ in episodes])
        grad = policy_gradient(weights, obs, actions, (flat - mean) / std)
        return {"grad": grad, "steps": len(flat),
                "episode_rewards": [float(r.sum()) for _, _, r in episodes],
                "worker": self.index}


class ParameterServer:
    """Holds the policy weights and applies gradients with Adam (gradient ascent)."""

    def __init__(self, weights: dict, lr: float = 0.02):
        self.weights = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
        self.lr = lr
        self.m = {k: np.zeros_like(v) for k, v in self.weights.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.weights.items()}
        self.t = 0

    def get_weights(self) -> dict:
        return self.weights

    def apply_gradients(self, *results: dict) -> dict:
        """Average the workers' gradients (weighted by their steps), take one Adam step and
        return the new weights."""
        steps = sum(r["steps"] for r in results)
        self.t += 1
        b1, b2 = 0.9, 0.999
        for k, w in self.weights.items():
            g = sum(r["grad"][k] for r in results) / steps
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            m_hat = self.m[k] / (1 - b1 ** self.t)
            v_hat = self.v[k] / (1 - b2 ** self.t)
            self.weights[k] = w + self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        return self.weights

    def num_updates(self) -> int:
        return self.t


# ---------------------------------------------------------------------------
# training loop
# ---------------------------------------------------------------------------

def progress_line(it: int, iterations: int, avg: float, best: float, elapsed: float,
                  width: int = 30) -> str:
    filled = int(round(width * min(avg, MAX_REWARD) / MAX_REWARD))
    bar = "#" * filled + "." * (width - filled)
    return (f"iter {it:3d}/{iterations:<3d} avg reward {avg:6.1f}  best {best:5.0f}  "
            f"[{bar}]  {elapsed:5.1f}s")


def train(iterations: int = 60, num_workers: int = 2, episodes_per_worker: int = 5,
          seed: int = 0, lr: float = 0.02, hidden: int = 16, verbose: bool = True,
          backend=None, spread: bool = False) -> list:
    """Train the policy; return the average episode reward of each iteration.

    ``backend`` is the module providing the API (default: ``luminary``); the cluster must be
    initialized.
    """
    api = backend if backend is not None else luminary
    Server = api.remote(ParameterServer)
    Worker = api.remote(RolloutWorker)

    server = Server.remote(init_policy(seed, hidden), lr)
    if spread:   # one rollout worker per node where possible (a multi-node cluster)
        Worker = Worker.options(num_cpus=1, scheduling_strategy="SPREAD")
    workers = [Worker.remote(i) for i in range(num_workers)]
    if spread and verbose:
        nodes = set(api.get([w.node.remote() for w in workers]))
        print(f"rollout workers placed on {len(nodes)} node(s): {', '.join(sorted(n[:8] for n in nodes))}")
    weights = server.get_weights.remote()
    history = []
    t0 = time.perf_counter()
    for it in range(1, iterations + 1):
        # every worker plays with the same weights (an ObjectRef: fetched once per worker)
        results = [w.rollout.remote(weights, episodes_per_worker,
                                    seed * 1_000_003 + it * 1_009 + i)
                   for i, w in enumerate(workers)]
        # the gradients go from the workers to the server without passing the driver
        weights = server.apply_gradients.remote(*results)
        stats = api.get(results)
        rewards = [r for s in stats for r in s["episode_rewards"]]
        avg = float(np.mean(rewards))
        history.append(avg)
        if verbose:
            print(progress_line(it, iterations, avg, max(rewards), time.perf_counter() - t0),
                  flush=True)
    api.get(weights)  # the last update is applied
    return history


def summarize(history: list, seconds: float, num_workers: int) -> str:
    k = min(5, len(history))
    first, last = float(np.mean(history[:k])), float(np.mean(history[-k:]))
    lines = [
        "",
        "summary",
        f"  iterations        {len(history)} with {num_workers} rollout workers, {seconds:.1f}s",
        f"  average reward    {first:.1f} (first {k} iterations) -> {last:.1f} (last {k})",
        f"  best iteration    {max(history):.1f} (max possible {MAX_REWARD})",
        "",
        "where to look next",
        "  docs/architecture.md   how tasks, actors and objects travel between processes",
        "  benchmarks/            Luminary and Ray side by side (python benchmarks/run.py)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations (default 60, or 30 with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="rollout workers (default 2)")
    parser.add_argument("--episodes", type=int, default=5,
                        help="episodes per worker per iteration (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a short run (30 iterations)")
    parser.add_argument("--address", default=None,
                        help="run on a running cluster (HOST:PORT or 'auto'); default: a private local one")
    args = parser.parse_args(argv)
    iterations = args.iterations or (30 if args.quick else 60)

    luminary.init(address=args.address)
    if args.address:
        nodes = [n for n in luminary.nodes() if n["Alive"]]
        print(f"connected to {args.address}: {len(nodes)} nodes, {luminary.cluster_resources().get('CPU', 0):g} CPUs")
    try:
        print(f"CartPole-v1: {args.workers} rollout workers x {args.episodes} episodes per "
              f"iteration, a parameter server applying REINFORCE gradients with Adam\n")
        t0 = time.perf_counter()
        history = train(iterations, args.workers, args.episodes, args.seed, spread=bool(args.address))
        print(summarize(history, time.perf_counter() - t0, args.workers))
    finally:
        luminary.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
