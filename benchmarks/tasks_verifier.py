"""Cost of deadline-guarded verification relative to scoring in-process.

Scores the same N completions (half right, half wrong; an RL batch of B = N rollouts) with
`tasks.score_batch(..., timeout_s=None)` (in-process, no deadline: the baseline) and through a
`VerifierPool` with 1 and 2 workers (per-item deadline, one socket round trip per item). Workers
are started and warmed before timing. Rounds interleave the variants; each ratio is the median
over rounds of (variant time / in-process time in the same round).

  python benchmarks/tasks_verifier.py [--repeats 7] [--n 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

from postrain import tasks


def _completions(problems):
  return [
    f"step\nanswer: {p.answer if i % 2 == 0 else p.answer + '1'}" for i, p in enumerate(problems)
  ]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--n", type=int, default=512)
  args = parser.parse_args()
  cases = {
    "chain_sum": args.n,
    "gsm_symbolic": args.n,
    "countdown": max(8, args.n // 16),  # sympy parse per score: a slow scorer
  }
  pools = {"pool1": tasks.VerifierPool(1), "pool2": tasks.VerifierPool(2)}
  for name, n in cases.items():
    task = tasks.get_task(name)
    problems = task.generate("train", n, seed=0)
    if name == "countdown":
      completions = [f"answer: {p.metadata['expression']}" for p in problems]
    else:
      completions = _completions(problems)
    for pool in pools.values():
      tasks.score_batch(task, problems[:2], completions[:2], pool=pool)  # start + load the task
    ratios = {k: [] for k in pools}
    base_times = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      expected, _ = tasks.score_batch(task, problems, completions, timeout_s=None)
      base = time.perf_counter() - start
      base_times.append(base)
      for key, pool in pools.items():
        start = time.perf_counter()
        rewards, stats = tasks.score_batch(task, problems, completions, pool=pool)
        ratios[key].append((time.perf_counter() - start) / base)
        assert stats.timeouts == 0 and stats.errors == 0, stats
        assert (rewards == expected).all()
    per_item_us = 1e6 * statistics.median(base_times) / n
    line = ", ".join(f"{k}/inline {statistics.median(v):.2f}x" for k, v in ratios.items())
    print(f"{name:14s} N={n:4d}  inline {per_item_us:8.1f} us/item (this run)  {line}")
  for pool in pools.values():
    pool.close()


if __name__ == "__main__":
  main()
