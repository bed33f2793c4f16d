"""Per-device memory of the RL update for the SmolLM2-135M shape under FSDP = 1, 2, 4, 8.

  python benchmarks/sharding_memory.py [--fsdp 1,2,4,8] [--batch 8] [--length 64]

Runs on 8 fake CPU devices (the mesh is data = 8 / fsdp, fsdp, tensor = 1) and allocates nothing
real: the update (`train.rl_loss` GSPO + the trainer's AdamW, via `sharding.shard_update`) is
lowered for `jax.ShapeDtypeStruct` inputs that carry their shardings and compiled, and XLA's
`memory_analysis()` of the per-device program gives the bytes of its arguments (parameters +
optimiser state + batch), outputs, aliased (donated) buffers and temporaries. "params+opt/dev"
counts the shards of the parameters and the optimiser state exactly; the goal is that it is within
10% of (total / fsdp).
"""

import os

os.environ["XLA_FLAGS"] = (
  f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
)

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import models, sharding, train

MiB = 2**20


def _bytes_per_device(abstract, shardings) -> int:
  leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
  return sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize for x, s in leaves)


def _total_bytes(abstract) -> int:
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))


def measure(fsdp: int, batch: int, length: int) -> dict[str, float]:
  cfg = models.get_config("smollm2-135m")
  mesh = sharding.make_mesh({"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1})
  rules = sharding.default_rules()
  abstract = nnx.eval_shape(lambda: models.Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
  tx = train.make_optimizer(
    lr=1e-5,
    steps=100,
    warmup_steps=10,
    min_lr_ratio=0.1,
    weight_decay=0.01,
    b1=0.9,
    b2=0.98,
    grad_clip=1.0,
  )
  abs_opt = jax.eval_shape(tx.init, abs_params)
  p_sh = sharding.param_shardings(abs_params, mesh, rules)
  o_sh = sharding.opt_state_shardings(tx, abs_opt, abs_params, p_sh, mesh)
  bsh = sharding.batch_sharding(mesh)
  spec = train.RLSpec(
    algorithm="gspo",
    group_size=4,
    eps_low=3e-4,
    eps_high=4e-4,
    dual_clip=None,
    agg="seq_mean_token_mean",
    max_len=None,
    kl_coef=0.0,
    kl_kind="k3",
    entropy_coef=0.0,
    conspo_tau=10.0,
    logprob_impl="naive",
  )
  update = sharding.shard_update(
    train.make_update(functools.partial(train.rl_loss, spec=spec), tx, graphdef, rest),
    p_sh,
    o_sh,
    bsh,
  )

  def sds(shape, dtype, s):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

  bt = (batch, length)
  abs_batch = dict(
    tokens=sds(bt, jnp.int32, bsh),
    valid=sds(bt, jnp.bool_, bsh),
    mask=sds(bt, jnp.float32, bsh),
    loss_mask=sds(bt, jnp.float32, bsh),
    old_logp=sds(bt, jnp.float32, bsh),
    advantages=sds((batch,), jnp.float32, bsh),
    rewards=sds((batch,), jnp.float32, bsh),
  )
  with_sh = lambda tree, shs: jax.tree.map(lambda x, s: sds(x.shape, x.dtype, s), tree, shs)  # noqa: E731
  start = time.perf_counter()
  compiled = update.lower(
    with_sh(abs_params, p_sh),
    with_sh(abs_opt, o_sh),
    abs_batch,
    sds((), jnp.float32, sharding.replicated(mesh)),
  ).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  state_total = _total_bytes(abs_params) + _total_bytes(abs_opt)
  state_dev = _bytes_per_device(abs_params, p_sh) + _bytes_per_device(abs_opt, o_sh)
  return dict(
    fsdp=fsdp,
    data=8 // fsdp,
    state_total=state_total / MiB,
    state_dev=state_dev / MiB,
    ideal=state_total / fsdp / MiB,
    ratio=state_dev / (state_total / fsdp),
    args=mem.argument_size_in_bytes / MiB,
    out=mem.output_size_in_bytes / MiB,
    alias=mem.alias_size_in_bytes / MiB,
    temp=mem.temp_size_in_bytes / MiB,
    peak=(
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
    )
    / MiB,
    compile_s=seconds,
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fsdp", default="1,2,4,8")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=64)
  args = parser.parse_args()
  print(
    f"SmolLM2-135M, AdamW, RL update (GSPO), batch {args.batch} x {args.length}, "
    f"{jax.device_count()} {jax.devices()[0].platform} devices; MiB per device"
  )
  head = (
    "fsdp",
    "data",
    "params+opt/dev",
    "total/fsdp",
    "ratio",
    "args",
    "out",
    "alias",
    "temp",
    "peak",
  )
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for fsdp in (int(f) for f in args.fsdp.split(",")):
    r = measure(fsdp, args.batch, args.length)
    print(
      f"| {r['fsdp']} | {r['data']} | {r['state_dev']:.1f} | {r['ideal']:.1f} | {r['ratio']:.3f} | "
      f"{r['args']:.1f} | {r['out']:.1f} | {r['alias']:.1f} | {r['temp']:.1f} | {r['peak']:.1f} |",
      flush=True,
    )
  print(f"params + AdamW state, all devices together: {r['state_total']:.1f} MiB")


if __name__ == "__main__":
  main()
