"""The RL update's memory for SmolLM2-135M by the compiler's analysis: remat x micro-batches.

  python benchmarks/update_memory.py [--rows 64] [--tokens 130] [--micro 0,8,16,32] \
      [--remat none,block] [--dtype float32] [--param-dtype float32]

One optimiser step (GSPO loss, the trainer's AdamW, params and optimiser state donated) on a
minibatch of `rows` x `tokens`, its gradient accumulated over micro-batches of `--micro` rows
(0: the whole minibatch at once; `rl.microbatch_rows`) with the decoder blocks rematerialised as
`--remat` says (`model.remat`). Nothing real is allocated: the update is lowered for
`jax.ShapeDtypeStruct` inputs and compiled, and XLA's `memory_analysis()` gives the bytes of its
temporaries (activations, gradients, optimiser work) and the peak (arguments + outputs - donated +
temporaries). The parameter shapes are the SmolLM2-135M-Instruct GGUF's (`models.get_config(
"smollm2-135m")`: 30 blocks, d 576, vocab 49152). `--double` adds a row of 2 x rows at the
smallest micro-batch: the peak follows the micro-batch, not the minibatch.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from postrain import models
from postrain import train as pt

GiB = 2**30


def measure(rows, tokens, micro, remat, dtype, param_dtype, impl="chunked"):
  cfg = models.get_config("smollm2-135m", remat=remat, dtype=dtype, param_dtype=param_dtype)
  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  tx = pt.make_optimizer(
    lr=1e-6, steps=100, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.01, b1=0.9, b2=0.98,
    grad_clip=1.0,
  )  # fmt: skip
  opt = jax.eval_shape(tx.init, params)
  spec = pt.RLSpec(
    algorithm="gspo", group_size=8, eps_low=3e-4, eps_high=4e-4, dual_clip=None,
    agg="seq_mean_token_mean", max_len=None, kl_coef=0.0, kl_kind="k3", entropy_coef=0.0,
    conspo_tau=10.0, logprob_impl=impl,
  )  # fmt: skip
  update = pt.make_update(
    functools.partial(pt.rl_loss, spec=spec), tx, graphdef, rest,
    counts_fn=functools.partial(pt.rl_counts, spec=spec), microbatch_rows=micro, group_size=8,
  )  # fmt: skip
  update = jax.jit(update.__wrapped__, donate_argnums=(0, 1))
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
  batch = dict(
    tokens=jax.ShapeDtypeStruct((rows, tokens), jnp.int32),
    valid=jax.ShapeDtypeStruct((rows, tokens), jnp.bool_),
    mask=f32(rows, tokens), loss_mask=f32(rows, tokens), old_logp=f32(rows, tokens),
    advantages=f32(rows), rewards=f32(rows),
  )  # fmt: skip
  start = time.perf_counter()
  mem = pt.analyse_memory(update.lower(params, opt, batch, f32()).compile())
  return mem, time.perf_counter() - start


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=64)
  p.add_argument("--tokens", type=int, default=130)
  p.add_argument("--micro", default="0,8,16,32")
  p.add_argument("--remat", default="none,block")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--param-dtype", default="float32")
  p.add_argument("--double", action="store_true", help="also 2 x rows at the smallest micro")
  a = p.parse_args()
  micros = [int(m) for m in a.micro.split(",")]
  runs = [(r, a.rows, m) for r in a.remat.split(",") for m in micros]
  if a.double:
    runs.append((a.remat.split(",")[-1], 2 * a.rows, min(m for m in micros if m) or a.rows))
  print(
    f"SmolLM2-135M RL update (GSPO, AdamW), {a.tokens} tokens/row, compute {a.dtype}, "
    f"params {a.param_dtype}; {jax.devices()[0].platform}; GiB by XLA memory_analysis()"
  )
  print(
    f"{'remat':>8} {'rows':>5} {'micro':>5} {'temp':>7} {'peak':>7} {'args':>7} {'compile_s':>9}"
  )
  for remat, rows, micro in runs:
    mem, s = measure(rows, a.tokens, micro, remat, a.dtype, a.param_dtype)
    print(
      f"{remat:>8} {rows:>5} {micro or rows:>5} {mem.temporaries / GiB:7.2f} {mem.peak / GiB:7.2f} "
      f"{mem.arguments / GiB:7.2f} {s:9.1f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
