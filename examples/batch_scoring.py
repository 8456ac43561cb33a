"""A parallel batch-scoring workload on a local cluster (tasks, nested tasks, shared-memory objects).

Batch "inference" over shared-memory objects: a 16 MB weight matrix is put once into the object
store and read zero-copy by every task; 64 batches are scored in parallel, each task submitting
a nested task for its post-processing; results are streamed back with wait() as they finish,
with a progress bar.  Then a Monte Carlo estimate of pi from 200 tasks checks the arithmetic.
"""
import sys
import time

import numpy as np

import luminary as ray


@ray.remote
def normalize(scores):
    return scores / (np.linalg.norm(scores) + 1e-9)


@ray.remote
def score_batch(weights, batch_id, batch_size=128):
    rng = np.random.default_rng(batch_id)
    x = rng.standard_normal((batch_size, weights.shape[0]), dtype=np.float32)
    logits = x @ weights                      # weights is a read-only view of shared memory
    top = logits.argmax(axis=1)
    # tasks submit tasks: post-processing runs as a nested task
    norm = ray.get(normalize.remote(logits.max(axis=1)))
    return batch_id, np.bincount(top, minlength=weights.shape[1]), float(norm.sum())


@ray.remote
def sample_pi(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    return int(((xy ** 2).sum(axis=1) <= 1.0).sum())


def progress(done, total, t0):
    width = 40
    filled = int(width * done / total)
    if not sys.stdout.isatty() and done not in (1, total) and done % 16:
        return
    sys.stdout.write(f"{chr(13) if sys.stdout.isatty() else chr(10)}  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches "
                     f"{time.perf_counter() - t0:5.1f}s")
    sys.stdout.flush()


def main():
    t0 = time.perf_counter()
    ctx = ray.init()
    print(f"Luminary cluster up in {time.perf_counter() - t0:.2f}s: {ray.cluster_resources().get('CPU')} CPUs, "
          f"session {ctx['session_dir']}")
    weights = np.random.default_rng(0).standard_normal((8192, 512), dtype=np.float32)
    w_ref = ray.put(weights)
    print(f"put a {weights.nbytes / 1e6:.0f} MB weight matrix into the shared-memory store")

    total = 64
    pending = [score_batch.remote(w_ref, i) for i in range(total)]
    counts = np.zeros(512, dtype=np.int64)
    done = 0
    t1 = time.perf_counter()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        _, c, _ = ray.get(ready[0])
        counts += c
        done += 1
        progress(done, total, t1)
    print(f"\nscored {total * 128} rows; most frequent class {int(counts.argmax())} "
          f"({int(counts.max())} rows) in {time.perf_counter() - t1:.2f}s")

    n = 200_000
    inside = sum(ray.get([sample_pi.remote(n, s) for s in range(200)]))
    pi = 4 * inside / (200 * n)
    print(f"pi ~= {pi:.5f} from {200 * n:,} samples in 200 tasks (error {abs(pi - np.pi):.5f})")
    assert abs(pi - np.pi) < 0.01
    ray.shutdown()
    print(f"done in {time.perf_counter() - t0:.2f}s. Next: examples/ for more programs, docs/architecture.md "
          "for how it works, benchmarks/run.py to compare with Ray.")


if __name__ == "__main__":
    main()
