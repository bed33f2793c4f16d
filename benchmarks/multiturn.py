"""Multi-turn rollout throughput: a 3-turn episode over one KV cache vs one turn of the same length.

Config "tiny-qwen3" (4 layers, d 256, vocab 32000, float32), batch 8, prompt 32 tokens, stop
tokens disabled (every row generates every token: the work is fixed). Three runs, alternating in
one process, median over repeats (the first call of each compiles and is not timed):

  single turn:  `Sampler` with max_new_tokens = 3 * M + 2 * O (one decode loop)
  3 turns:      `Conversation.start` (M tokens), then twice `extend` with an O-token observation
                per row (appended to the cache in one forward pass) and M more tokens
  3 turns, re-prefill: the naive alternative, a fresh `Sampler` call per turn on the whole
                conversation so far (what `Conversation` avoids)

Both episodes end with the same number of tokens after the prompt (3 M model + 2 O observation
tokens). Rollout tokens/s counts them all (what the trainer's batch holds); "generated tokens/s"
counts the model's tokens only (3 M vs 3 M + 2 O). Timings include the host work between turns
(building the observation chunk, reading the turn back), not an environment.

  python benchmarks/multiturn.py                 # M = 64, O = 32, 5 repeats
  python benchmarks/multiturn.py --repeats 9 --turn-tokens 128 --obs-tokens 64
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--turn-tokens", type=int, default=64, help="M, model tokens per turn")
  ap.add_argument("--obs-tokens", type=int, default=32, help="O, observation tokens per turn")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--config", default="tiny-qwen3")
  args = ap.parse_args()

  import jax
  from flax import nnx

  from postrain import models, sampling

  cfg = models.get_config(args.config)
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  b, m, o = args.batch, args.turn_tokens, args.obs_tokens
  prompts = rng.integers(1, cfg.vocab_size, (b, args.prompt)).tolist()
  obs = [rng.integers(1, cfg.vocab_size, (b, o)).tolist() for _ in range(2)]
  total = 3 * m + 2 * o
  tp = sampling.bucket_length(args.prompt, "pow2")
  chunk = -(-(o + 1) // 16) * 16
  cache = tp + 3 * m + 2 * chunk
  sampler = sampling.Sampler(model)
  single_sampler = sampling.Sampler(model, cache_size=tp + total)

  def single():
    out = single_sampler(prompts, key=jax.random.key(0), max_new_tokens=total)
    return np.asarray(out.tokens)

  def multi():
    conv = sampling.Conversation(sampler, cache_size=cache)
    conv.start(prompts, key=jax.random.key(0), max_new_tokens=m)
    for k in range(2):
      conv.extend(obs[k], key=jax.random.key(k + 1), max_new_tokens=m)
    out = conv.result()
    assert int(np.asarray(out.valid).sum()) == b * args.prompt + b * total
    return np.asarray(out.tokens)

  def reprefill():
    convs = [list(p) for p in prompts]
    for k in range(3):
      if k:
        convs = [c + x for c, x in zip(convs, obs[k - 1])]
      out = sampler(convs, key=jax.random.key(k), max_new_tokens=m)
      gen = np.asarray(out.tokens)[:, out.prompt_len :]
      convs = [c + g.tolist() for c, g in zip(convs, gen)]
    assert all(len(c) == args.prompt + total for c in convs)
    return convs

  runs = {"single turn": single, "3 turns": multi, "3 turns, re-prefill": reprefill}
  for fn in runs.values():
    fn()  # compile
  times = {k: [] for k in runs}
  for _ in range(args.repeats):
    for k, fn in runs.items():
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
  t = {k: np.asarray(v) for k, v in times.items()}
  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform}; {args.config}, batch {b}, prompt "
    f"{args.prompt}, M={m} model tokens per turn, O={o} observation tokens, cache {cache}; "
    f"median of {args.repeats}"
  )
  print(f"{'run':22s} {'s':>7s} {'rollout tok/s':>14s} {'generated tok/s':>16s}")
  gen = {"single turn": total, "3 turns": 3 * m, "3 turns, re-prefill": 3 * m}
  for k in runs:
    s = float(np.median(t[k]))
    print(f"{k:22s} {s:7.3f} {b * total / s:14.0f} {b * gen[k] / s:16.0f}")
  ratio = np.median(t["single turn"] / t["3 turns"])
  print(f"rollout tok/s, 3 turns / single turn (median of per-repeat ratios): {ratio:.2f}")
  gen_ratio = ratio * 3 * m / total
  print(f"generated tok/s, 3 turns / single turn: {gen_ratio:.2f}")
  naive = np.median(t["3 turns, re-prefill"] / t["3 turns"])
  print(f"time, re-prefill / Conversation (median of per-repeat ratios): {naive:.2f}")


if __name__ == "__main__":
  main()
