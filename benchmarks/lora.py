"""LoRA / QLoRA memory and step time: full fine-tuning vs LoRA r=16 vs LoRA r=16 on an NF4 base.

  python benchmarks/lora.py memory [--models smollm2-135m,qwen3-0.6b,qwen3-1.7b] [--fsdp 1,8]
      [--kinds full,lora,qlora] [--qlora-embed bfloat16|float32]
  python benchmarks/lora.py step [--steps 3] [--model tiny|smollm2] [--runs full,lora16-merged,...]

`memory`: the RL update (GSPO, the trainer's AdamW, blocks rematerialised) lowered for abstract
inputs on 8 fake CPU devices (mesh data = 8 / fsdp, fsdp) and compiled; per device: the bytes of
the trainable parameters + optimiser state, of the frozen base (LoRA: an argument of the update),
and XLA's `memory_analysis()` arguments, temporaries and peak. Weights from the configs' shapes
(random, nothing allocated); float32 parameters (the full run's master weights), the LoRA base in
float32, or for QLoRA NF4 projections (codes + scales) with the embedding in bfloat16
(`models.quantize_base`). Qwen3-1.7B: the qwen3-0.6b config with d 2048, MLP 6144.

`step`: seconds per RL step (sample -> score -> update) through the Trainer, full vs LoRA r=16
with the merged sampling copy vs LoRA with adapters applied while decoding, in one process, one
run after another; the median of the steps after the first (compilation). `--model tiny`:
`configs/default.py:scale=smoke` (the 2-layer model); `--model smollm2`: SmolLM2-135M-Instruct
(GGUF weights) at 4 prompts x 4 samples x 32 new tokens.
"""

import os
import sys

if "memory" in sys.argv[1:2]:  # 8 fake CPU devices for the meshes (read when JAX starts)
  os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
  )

import argparse
import functools
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import models, sharding, train

MiB = 2**20
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def model_config(name: str) -> models.ModelConfig:
  if name == "qwen3-1.7b":  # Qwen/Qwen3-1.7B config.json
    return models.get_config("qwen3-0.6b", embed_dim=2048, mlp_dim=6144, remat="block")
  return models.get_config(name, remat="block")


def _per_device(abstract, shardings) -> int:
  leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
  return sum(int(np.prod(s.shard_shape(x.shape))) * x.dtype.itemsize for x, s in leaves)


def measure(
  name: str, kind: str, fsdp: int, rows: int = 8, length: int = 64, embed_dtype: str = "bfloat16"
) -> dict:
  """kind: "full", "lora" (r=16) or "qlora" (r=16, NF4 base, the embedding in `embed_dtype`)."""
  cfg = model_config(name)
  mesh = sharding.make_mesh({"data": 8 // fsdp, "fsdp": fsdp, "tensor": 1})
  rules = sharding.default_rules()

  def build():
    m = models.Decoder(cfg, rngs=nnx.Rngs(0))
    if kind != "full":
      models.add_lora(m, rank=16, alpha=32.0)
      models.quantize_base(
        m, "nf4" if kind == "qlora" else "none", embed_dtype=jnp.dtype(embed_dtype)
      )
    return m

  abstract = nnx.eval_shape(build)
  if kind == "full":
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    frozen = None
  else:
    graphdef, params, base, rest = nnx.split(abstract, nnx.LoRAParam, nnx.Param, ...)
    frozen = nnx.merge_state(base, rest)
  tx = train.make_optimizer(
    lr=1e-5, steps=100, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.01, b1=0.9, b2=0.98,
    grad_clip=1.0,
  )  # fmt: skip
  opt = jax.eval_shape(tx.init, params)
  p_sh = sharding.param_shardings(params, mesh, rules)
  o_sh = sharding.opt_state_shardings(tx, opt, params, p_sh, mesh)
  f_sh = None if frozen is None else sharding.param_shardings(frozen, mesh, rules)
  bsh = sharding.batch_sharding(mesh)
  spec = train.RLSpec(
    algorithm="gspo", group_size=4, eps_low=3e-4, eps_high=4e-4, dual_clip=None,
    agg="seq_mean_token_mean", max_len=None, kl_coef=0.0, kl_kind="k3", entropy_coef=0.0,
    conspo_tau=10.0, logprob_impl="chunked",
  )  # fmt: skip
  loss = functools.partial(train.rl_loss, spec=spec)
  update = sharding.shard_update(
    train.make_update(loss, tx, graphdef, rest if frozen is None else None),
    p_sh, o_sh, bsh, rest_shardings=f_sh,
  )  # fmt: skip

  def sds(x, s):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

  with_sh = lambda tree, shs: jax.tree.map(sds, tree, shs)  # noqa: E731
  bt = (rows, length)
  f32 = jax.ShapeDtypeStruct(bt, jnp.float32, sharding=bsh)
  batch = dict(
    tokens=jax.ShapeDtypeStruct(bt, jnp.int32, sharding=bsh),
    valid=jax.ShapeDtypeStruct(bt, jnp.bool_, sharding=bsh),
    mask=f32, loss_mask=f32, old_logp=f32,
    advantages=jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=bsh),
    rewards=jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=bsh),
  )  # fmt: skip
  margin = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
  kw = {} if frozen is None else {"rest": with_sh(frozen, f_sh)}
  start = time.perf_counter()
  compiled = update.lower(with_sh(params, p_sh), with_sh(opt, o_sh), batch, margin, **kw).compile()
  seconds = time.perf_counter() - start
  mem = train.analyse_memory(compiled)
  return dict(
    trainable=(_per_device(params, p_sh) + _per_device(opt, o_sh)) / MiB,
    frozen=0.0 if frozen is None else _per_device(frozen, f_sh) / MiB,
    arguments=mem.arguments / MiB,
    temporaries=mem.temporaries / MiB,
    peak=mem.peak / MiB,
    compile_s=seconds,
  )


def memory(args) -> None:
  print(f"RL update per-device MiB (XLA memory_analysis, {jax.devices()[0].platform}, 8 devices)")
  print(
    f"{'model':>13} {'fsdp':>4} {'kind':>6} {'train+opt':>10} {'frozen':>9} {'args':>9} "
    f"{'temp':>9} {'peak':>9} {'peak/full':>9} {'compile_s':>9}"
  )
  for name in args.models.split(","):
    for fsdp in (int(f) for f in args.fsdp.split(",")):
      full = None
      for kind in ("full", *(k for k in args.kinds.split(",") if k != "full")):
        r = measure(name, kind, fsdp, embed_dtype=args.qlora_embed)
        full = full or r["peak"]
        print(
          f"{name:>13} {fsdp:>4} {kind:>6} {r['trainable']:10.1f} {r['frozen']:9.1f} "
          f"{r['arguments']:9.1f} {r['temporaries']:9.1f} {r['peak']:9.1f} "
          f"{r['peak'] / full:9.3f} {r['compile_s']:9.1f}",
          flush=True,
        )


def _step_config(model: str):
  """The RL step's config: the tiny 2-layer model of `default.py:scale=smoke`, or SmolLM2-135M
  (`smollm2_arithmetic_gspo.py:scale=cpu`, the GGUF weights) at 4 prompts x 4 samples x 32 tokens,
  one optimiser step in micro-batches of 8 rows."""
  from postrain.train.config import load_config_file

  if model == "tiny":
    c = load_config_file(os.path.join(REPO, "configs", "default.py"), "scale=smoke")
  else:
    c = load_config_file(os.path.join(REPO, "configs", "smollm2_arithmetic_gspo.py"), "scale=cpu")
    c.rl.prompts_per_step, c.rl.group_size, c.rl.max_new_tokens = 4, 4, 32
    c.rl.updates_per_batch, c.rl.microbatch_rows = 1, 8
  c.sft.steps, c.progress_bar, c.memory.check = 0, False, "off"
  return c


RUNS = (("full", 0, True), ("lora16-merged", 16, True), ("lora16-on-the-fly", 16, False))


def step_time(args) -> None:
  """The runs (`--runs`, in that order) one after another in this process (one trainer alive at a
  time: three SmolLM2 trainers side by side took 7 GB); medians of the steps after the first."""
  import gc

  sys.path.insert(0, os.path.join(REPO, "configs"))
  c = _step_config(args.model)
  rows = c.rl.prompts_per_step * c.rl.group_size
  print(
    f"RL step seconds, {args.model} ({rows} rows x {c.rl.max_new_tokens} new tokens, "
    f"{jax.devices()[0].platform}, 1 device); median of steps 2..{args.steps}"
  )
  out = {}
  runs = {label: (rank, merged) for label, rank, merged in RUNS}
  for label in args.runs.split(","):
    if label not in runs:
      raise ValueError(f"--runs: {label!r} is not one of {list(runs)}")
  for label in args.runs.split(","):
    rank, merged = runs[label]
    c = _step_config(args.model)
    c.rl.steps = args.steps
    c.model.lora.rank, c.model.lora.sample_merged = rank, merged
    times, parts = [], []
    with tempfile.TemporaryDirectory() as d:
      tr = train.Trainer(c, d)
      tr._enter_rl()
      for _ in range(args.steps):
        start = time.perf_counter()
        m = tr._rl_step()
        tr.step += 1
        times.append(time.perf_counter() - start)
        parts.append(m["response_len"] * rows / m["sample_tokens_per_s"])  # sampling seconds
      del tr
      gc.collect()
      jax.clear_caches()
    out[label] = float(np.median(times[1:]))
    sample_s = float(np.median(parts[1:]))
    print(
      f"{label:>18}: {out[label]:.3f} s/step (sampling {sample_s:.3f}, rest "
      f"{out[label] - sample_s:.3f}; first step {times[0]:.1f} s; all "
      f"{', '.join(f'{t:.2f}' for t in times)})",
      flush=True,
    )
  for a, b in (("lora16-merged", "full"), ("lora16-on-the-fly", "full"),
               ("lora16-merged", "lora16-on-the-fly")):  # fmt: skip
    if a in out and b in out:
      print(f"{a} / {b}: {out[a] / out[b]:.3f}")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  m = sub.add_parser("memory")
  m.add_argument("--models", default="smollm2-135m,qwen3-0.6b,qwen3-1.7b")
  m.add_argument("--fsdp", default="1,8")
  m.add_argument("--kinds", default="full,lora,qlora", help="full is always measured (the ratio)")
  m.add_argument("--qlora-embed", default="bfloat16", help="the QLoRA base's embedding dtype")
  s = sub.add_parser("step")
  s.add_argument("--steps", type=int, default=3)
  s.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
  s.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="which runs, in this order")
  a = p.parse_args()
  memory(a) if a.cmd == "memory" else step_time(a)


if __name__ == "__main__":
  main()
