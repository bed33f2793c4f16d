"""RL step throughput on the tiny-qwen3 config: sampling and update tokens/s, measured in one process.

One GSPO step = sample G responses for P prompts with the in-JAX sampler, then `updates_per_batch`
optimiser steps on the rollout batch. Reported: generated tokens/s of sampling, processed
(prompt + response) tokens/s of the update, and the share of the step each takes. Medians over
repeats after a warm-up (compilation excluded).

  python benchmarks/train_step.py [--prompts 8] [--group 8] [--prompt-len 32] [--new 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import advantages, models, train
from postrain.sampling import Sampler


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--prompt-len", type=int, default=32)
  parser.add_argument("--new", type=int, default=64)
  parser.add_argument("--updates", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--logprob-impl", default="chunked")
  args = parser.parse_args()

  cfg = models.get_config("tiny-qwen3")
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = train.make_optimizer(
    lr=1e-5,
    steps=1000,
    warmup_steps=0,
    min_lr_ratio=1.0,
    weight_decay=0.0,
    b1=0.9,
    b2=0.98,
    grad_clip=1.0,
  )
  opt_state = tx.init(params)
  spec = train.RLSpec(
    algorithm="gspo",
    group_size=args.group,
    eps_low=3e-4,
    eps_high=4e-4,
    dual_clip=None,
    agg="seq_mean_token_mean",
    max_len=None,
    kl_coef=0.0,
    kl_kind="k3",
    entropy_coef=0.0,
    conspo_tau=10.0,
    logprob_impl=args.logprob_impl,
  )
  update = train.make_update(functools.partial(train.rl_loss, spec=spec), tx, graphdef, rest)
  sampler = Sampler(model, cache_size=args.prompt_len + args.new)
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, cfg.vocab_size, (args.prompts, args.prompt_len)).tolist()

  def step(i):
    sampler.update(nnx.merge(graphdef, params, rest))
    t0 = time.perf_counter()
    out = sampler(
      prompts, key=jax.random.key(i), max_new_tokens=args.new, temperature=1.0, n=args.group
    )
    jax.block_until_ready(out.tokens)
    t1 = time.perf_counter()
    rewards = jnp.asarray(rng.random(out.tokens.shape[0]) < 0.5, jnp.float32)
    mask = out.response_mask.astype(jnp.float32)
    batch = {
      "tokens": out.tokens,
      "valid": out.valid,
      "mask": mask,
      "loss_mask": mask,
      "old_logp": out.model_logp,
      "rewards": rewards,
      "advantages": advantages.group_normalized(rewards, group_size=args.group),
    }
    rows = out.tokens.shape[0] // args.updates
    p, o = params, opt_state
    for u in range(args.updates):
      mb = jax.tree.map(lambda x, u=u: x[u * rows : (u + 1) * rows], batch)
      p, o, _ = update(p, o, mb, jnp.float32(0.0))
    jax.block_until_ready(p)
    t2 = time.perf_counter()
    return (
      float(np.asarray(out.lengths).sum()),
      float(np.asarray(out.valid).sum()),
      t1 - t0,
      t2 - t1,
    )

  step(0)  # compile
  results = [step(i + 1) for i in range(args.repeats)]
  gen, proc = results[0][0], results[0][1]
  sample_s = statistics.median(r[2] for r in results)
  update_s = statistics.median(r[3] for r in results)
  print(
    f"tiny-qwen3, {args.prompts} prompts x {args.group} samples, prompt {args.prompt_len}, "
    f"{args.new} new tokens, {args.updates} updates/batch, logprob impl {args.logprob_impl}, "
    f"jax {jax.__version__} on {jax.devices()[0].platform}, median of {args.repeats}"
  )
  print(
    f"sampling: {gen / sample_s:9.0f} generated tokens/s  ({sample_s / (sample_s + update_s):.0%} of the step)"
  )
  print(
    f"update:   {proc / update_s:9.0f} processed tokens/s ({update_s / (sample_s + update_s):.0%} of the step)"
  )
  print(f"RL step:  {gen / (sample_s + update_s):9.0f} generated tokens/s end to end")


if __name__ == "__main__":
  main()
