"""SmolLM2-135M on an accelerator (GPU / TPU) in under 5 minutes, written to JSON.

  python benchmarks/accelerator.py [--out accelerator.json] [--repeats 3]

Measured in one process (medians over `--repeats`, after a compile):
- rooflines: a large matmul's FLOP rate (bf16 and f32: 8192^3) and a large copy's bandwidth
  (1 GiB read + written);
- decode: the sampler at 64 and 256 rows (16-token prompts, 128 new tokens, no stop token, greedy)
  in generated tokens/s, against the HBM roofline of a decode step (reading the parameters and
  the live KV cache once per step: tokens/s <= rows x bandwidth / bytes per step);
- update: one RL update (GSPO, AdamW, remat "block") of 64 rows x 256 tokens, model FLOP
  utilisation = 6 x params x tokens / time / the matmul rate of the same dtype, bf16 compute (f32
  master weights) and f32;
- log-probs: the Pallas kernel (`model.logprob_impl="pallas"`) against the chunked path, value and
  gradient of sum(logp) at 8192 tokens x d 576 x vocab 49152.

On a CPU-only host it says so and exits 0 (never part of CI). The random-initialised model has the
GGUF model's shapes (`models.get_config("smollm2-135m")`); speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats):
  jax.block_until_ready(fn())  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def rooflines(repeats):
  out = {}
  n = 8192
  for dt in ("bfloat16", "float32"):
    a = jnp.ones((n, n), dt)
    mm = jax.jit(lambda a: a @ a)
    out[f"matmul_tflops_{dt}"] = 2 * n**3 / _median_time(lambda a=a, mm=mm: mm(a), repeats) / 1e12
  x = jnp.ones((2**28,), jnp.float32)  # 1 GiB
  cp = jax.jit(lambda x: x * 1.0001)
  out["copy_gb_s"] = 2 * x.nbytes / _median_time(lambda: cp(x), repeats) / 1e9
  return out


def _model(dtype="float32", param_dtype="float32", remat="none"):
  from flax import nnx

  from postrain import models

  cfg = models.get_config("smollm2-135m", dtype=dtype, param_dtype=param_dtype, remat=remat)
  return cfg, models.Decoder(cfg, rngs=nnx.Rngs(0))


def decode(rows_list, repeats, bandwidth):
  from postrain import sampling

  cfg, model = _model()
  n_params = sum(x.size for x in jax.tree.leaves(model))
  out = {}
  new, plen = 128, 16
  for rows in rows_list:
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (rows, plen)).tolist()
    run = functools.partial(
      sampling.sample, model, prompts, key=jax.random.key(0), max_new_tokens=new,
      temperature=0.0, cache_size=plen + new,
    )  # fmt: skip
    s = _median_time(lambda run=run: run().tokens, repeats)
    # One decode step reads the parameters and (on average) half the final KV cache.
    kv = 2 * cfg.num_layers * rows * (plen + new / 2) * cfg.num_kv_heads * cfg.head_dim * 4
    step_bytes = 4 * n_params + kv
    roof = rows * bandwidth * 1e9 / step_bytes
    out[f"decode_rows{rows}"] = dict(
      tokens_per_s=rows * new / s, roofline_tokens_per_s=roof, fraction=rows * new / s / roof
    )
  return out


def gspo_update(graphdef, rest, microbatch_rows=0):
  """(AdamW, the jitted GSPO update of `pt.make_update`) with the benchmarks' fixed settings."""
  from postrain import train as pt

  tx = pt.make_optimizer(
    lr=1e-6, steps=10, warmup_steps=1, min_lr_ratio=0.1, weight_decay=0.0, b1=0.9, b2=0.98,
    grad_clip=1.0,
  )  # fmt: skip
  spec = pt.RLSpec(
    algorithm="gspo", group_size=8, eps_low=3e-4, eps_high=4e-4, dual_clip=None,
    agg="seq_mean_token_mean", max_len=None, kl_coef=0.0, kl_kind="k3", entropy_coef=0.0,
    conspo_tau=10.0, logprob_impl="chunked",
  )  # fmt: skip
  fn = pt.make_update(
    functools.partial(pt.rl_loss, spec=spec), tx, graphdef, rest,
    counts_fn=functools.partial(pt.rl_counts, spec=spec) if microbatch_rows else None,
    microbatch_rows=microbatch_rows, group_size=8,
  )  # fmt: skip
  return tx, fn


def update(repeats, tflops):
  from flax import nnx

  out = {}
  rows, t = 64, 256
  for dtype in ("bfloat16", "float32"):
    cfg, model = _model(dtype, "float32", "block")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    tx, fn = gspo_update(graphdef, rest)
    rng = np.random.default_rng(0)
    batch = dict(
      tokens=jnp.asarray(rng.integers(3, cfg.vocab_size, (rows, t)), jnp.int32),
      valid=jnp.ones((rows, t), bool), mask=jnp.ones((rows, t)), loss_mask=jnp.ones((rows, t)),
      old_logp=jnp.full((rows, t), -2.0), advantages=jnp.asarray(rng.normal(size=rows)),
      rewards=jnp.zeros(rows),
    )  # fmt: skip
    args = (params, tx.init(params), batch, jnp.float32(0.0))
    s = _median_time(lambda fn=fn, args=args: fn(*args)[2]["loss"], repeats)
    flops = 6 * n_params * rows * t
    out[f"update_{dtype}"] = dict(
      seconds=s, model_tflops=flops / s / 1e12, mfu=flops / s / 1e12 / tflops[dtype]
    )
  return out


def logprob_kernels(repeats):
  from postrain.kernels import fused_logprobs

  n, d, v = 8192, 576, 49152
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(n, d)) * 0.1, jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)) * 0.05, jnp.float32)
  tgt = jnp.asarray(rng.integers(0, v, n), jnp.int32)
  out = {}
  for impl in ("chunked", "pallas"):
    f = jax.jit(jax.grad(lambda h, w, impl=impl: jnp.sum(fused_logprobs(h, w, tgt, impl=impl)[0])))
    try:
      out[f"logprob_{impl}_s"] = _median_time(lambda f=f: f(h, w), repeats)
    except Exception as e:  # a kernel that does not lower here is reported, not fatal
      out[f"logprob_{impl}_error"] = repr(e)[:300]
  if "logprob_pallas_s" in out:
    out["logprob_pallas_speedup"] = out["logprob_chunked_s"] / out["logprob_pallas_s"]
  return out


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="accelerator.json")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  platform = jax.devices()[0].platform
  if platform not in ("gpu", "tpu"):
    print(f"no GPU or TPU (JAX platform {platform!r}): nothing to measure; exiting.")
    return 0
  start = time.perf_counter()
  result = {"device": jax.devices()[0].device_kind, "platform": platform}
  roof = rooflines(args.repeats)
  result.update(roof)
  result.update(decode((64, 256), args.repeats, roof["copy_gb_s"]))
  tf = {"bfloat16": roof["matmul_tflops_bfloat16"], "float32": roof["matmul_tflops_float32"]}
  result.update(update(args.repeats, tf))
  result.update(logprob_kernels(args.repeats))
  result["wall_s"] = time.perf_counter() - start
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
