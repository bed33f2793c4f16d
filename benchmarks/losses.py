"""Value-and-grad cost of the policy losses relative to a same-traffic baseline.

Times `jax.value_and_grad` (w.r.t. logp) of `ppo_clip` at each level and of `conspo` on
[B=64, T=4096] float32, against a baseline with the same memory traffic: the masked mean of
`logp * adv` (adv f32[B, T], so it reads three [B, T] arrays like ppo_clip reads logp, old_logp
and mask) and its gradient. Each loss is timed twice: returning (loss, grad) only, so XLA drops
the unused aux metrics (what a train step that does not log them pays), and "+aux", returning the
aux dict too. All functions run interleaved (shuffled order) in one process; each ratio is the
median over rounds of (loss time / baseline time in the same round). Goal: every ratio <= 1.5.

  python benchmarks/losses.py [--repeats 200] [--batch 64] [--length 4096]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from postrain import losses


def _baseline(logp, adv_bt, mask):
  return jnp.sum(logp * adv_bt * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_cases(batch: int, length: int, group_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(length // 4, length + 1, size=batch)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
  logp = (-np.abs(rng.normal(size=(batch, length))) * 2.0).astype(np.float32)
  old_logp = (logp + 0.05 * rng.normal(size=(batch, length))).astype(np.float32)
  adv = rng.normal(size=batch).astype(np.float32)
  rewards = (rng.random(batch) < 0.5).astype(np.float32)
  adv_bt = np.broadcast_to(adv[:, None], (batch, length)).copy()
  logp, old_logp, mask, adv, adv_bt, rewards = map(
    jnp.asarray, (logp, old_logp, mask, adv, adv_bt, rewards)
  )

  def add(name, f, inputs):
    # "+aux": the aux dict is returned too (computed); plain: only (loss, grad), so XLA drops aux.
    cases[name] = (jax.jit(jax.value_and_grad(lambda *a: f(*a)[0])), inputs)
    cases[name + " +aux"] = (jax.jit(jax.value_and_grad(f, has_aux=True)), inputs)

  cases = {"baseline": (jax.jit(jax.value_and_grad(_baseline)), (logp, adv_bt, mask))}
  for level, eps in (
    ("token", (0.2, 0.28)),
    ("sequence", (3e-4, 4e-4)),
    ("sequence_token", (3e-4, 4e-4)),
  ):
    agg = "token_mean" if level == "token" else "seq_mean_token_mean"

    def f(lp, old, a, m, level=level, eps=eps, agg=agg):
      return losses.ppo_clip(lp, old, a, m, eps_low=eps[0], eps_high=eps[1], level=level, agg=agg)

    add(f"ppo_clip[{level}]", f, (logp, old_logp, adv, mask))
  add(
    "conspo",
    lambda lp, m, r: losses.conspo(lp, m, r, group_size=group_size, margin=0.01),
    (logp, mask, rewards),
  )
  return cases


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=4096)
  parser.add_argument("--group-size", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=200)
  args = parser.parse_args()

  cases = make_cases(args.batch, args.length, args.group_size)
  for fn, inputs in cases.values():  # compile + warm up
    for _ in range(3):
      jax.block_until_ready(fn(*inputs))
  times = {name: [] for name in cases}
  order = list(cases)
  rng = random.Random(0)
  for _ in range(args.repeats):  # interleaved, in a shuffled order, so noise hits every case alike
    rng.shuffle(order)
    for name in order:
      fn, inputs = cases[name]
      start = time.perf_counter()
      jax.block_until_ready(fn(*inputs))
      times[name].append(time.perf_counter() - start)

  # Ratio per round (same seconds of machine load), then the median over rounds.
  ratios = {
    name: statistics.median(t / b for t, b in zip(ts, times["baseline"]))
    for name, ts in times.items()
  }
  print(
    f"value_and_grad w.r.t. logp, [B={args.batch}, T={args.length}] float32, "
    f"{args.repeats} interleaved repeats, jax {jax.__version__} on {jax.devices()[0].platform}"
  )
  print(f"{'case':<30}{'median ms':>10}{'ratio':>8}")
  for name, ts in times.items():
    print(f"{name:<30}{statistics.median(ts) * 1e3:>10.3f}{ratios[name]:>8.2f}")


if __name__ == "__main__":
  main()
