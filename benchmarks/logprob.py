"""Fused log-prob / entropy vs the naive `[N, V]` logits: compiled memory and time.

For value-and-grad (w.r.t. hidden and weight) of `sum(a * logp + b * entropy)`:
1. the compiler's memory analysis (`jit(f).lower(...).compile().memory_analysis()`, nothing runs)
   at the full size N=8192, D=1024, V=151936 (Qwen3 vocabulary), float32 and bfloat16, for naive,
   chunked (several chunk sizes) and both Pallas formulations ("tpu" and "gpu"). On CPU the Pallas
   kernels run in interpret mode, whose buffers (the interpreter pads operands to whole blocks)
   are not those of a compiled Mosaic / Triton kernel, so each Pallas row also gets an analytic
   count of the HBM temporaries the compiled kernels allocate (`pallas_hbm_bytes`);
2. CPU time of naive vs chunked in one process, interleaved, median over repeats, at a reduced N
   (same D and V) because the full size takes minutes per step on a 2-core CPU;
3. `--device-check` (run on a GPU host): the compiled Triton kernels against naive and chunked:
   agreement of values and gradients, compiled memory and time (interleaved, median), at the full
   size, for one or more Pallas block shapes.

  python benchmarks/logprob.py                      # 1 and 2, defaults below
  python benchmarks/logprob.py --time-n 512 --repeats 5 --chunks 4096,8192
  python benchmarks/logprob.py --device-check --dtypes bfloat16,float32 --gpu-blocks 64x128,64x128x8,128x128
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from postrain.kernels import fused_logprobs, pallas_logprobs


def value_and_grad_fn(impl: str, chunk_size: int | None, **kw):
  def loss(h, w, t, a, b):
    if impl == "pallas":  # direct, for the kernel-only options (num_warps, ...)
      logp, entropy = pallas_logprobs(h, w, t, block_v=chunk_size, **kw)
    else:
      logp, entropy = fused_logprobs(h, w, t, impl=impl, chunk_size=chunk_size, **kw)
    return jnp.sum(a * logp + b * entropy)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def specs(n, d, v, dtype):
  return (
    jax.ShapeDtypeStruct((n, d), dtype),
    jax.ShapeDtypeStruct((d, v), dtype),
    jax.ShapeDtypeStruct((n,), jnp.int32),
    jax.ShapeDtypeStruct((n,), jnp.float32),
    jax.ShapeDtypeStruct((n,), jnp.float32),
  )


def pallas_hbm_bytes(n, d, v, dtype, target, block_n, block_v, block_d=64) -> int:
  """Analytic HBM temporaries of the compiled Pallas value-and-grad (their sum, ~ the peak).

  Counts what the kernels write beyond the inputs and the final outputs: per-row statistics and
  row cotangents (a dozen f32[N]); the float32 dh [N, D] and dW [D, V] the backward kernels
  accumulate into, unless they are the outputs themselves (float32 inputs, no padding); and (GPU)
  the zero-padded copies of h / W when N, D or V are not multiples of the blocks. The `[N, V]`
  logits are never stored.
  """
  item = jnp.dtype(dtype).itemsize
  if target == "tpu":  # Mosaic masks edge blocks: no padded copies
    np_, dp, vp = n, d, v
  else:
    from postrain.kernels._pallas_gpu import _Layout

    lay = _Layout(n, d, v, 0, block_n, block_v, block_d)
    np_, dp, vp = lay.np, lay.dp, lay.vp
  padded = (np_, dp, vp) != (n, d, v)
  pad = (np_ * dp if (np_, dp) != (n, d) else 0) + (dp * vp if (dp, vp) != (d, v) else 0)
  temps = 4 * 12 * np_ + pad * item
  if item != 4 or padded:  # f32 accumulators separate from the outputs
    temps += 4 * (np_ * dp + dp * vp)
  return temps


def memory_table(n, d, v, chunks, pallas_block, dtypes):
  print(f"## compiled memory, value_and_grad, N={n} D={d} V={v} (backend {jax.default_backend()})")
  print("| dtype | impl | chunk | temp MB | args MB | outputs MB | temp / naive | analytic MB |")
  print("|---|---|---|---|---|---|---|---|")
  interp = jax.default_backend() == "cpu"
  for dtype in dtypes:
    configs = [("naive", None, {})] + [("chunked", c, {}) for c in chunks]
    configs += [("pallas", pallas_block, {"target": "tpu"}), ("pallas", 128, {"target": "gpu"})]
    naive_temp = None
    for impl, chunk, kw in configs:
      stats = value_and_grad_fn(impl, chunk, **kw).lower(*specs(n, d, v, dtype)).compile()
      stats = stats.memory_analysis()
      temp = stats.temp_size_in_bytes
      naive_temp = temp if impl == "naive" else naive_temp
      name, analytic = impl, "-"
      if impl == "pallas":
        name = f"pallas/{kw['target']}" + (" (interpret)" if interp else "")
        bn = 256 if kw["target"] == "tpu" else 64
        analytic = f"{pallas_hbm_bytes(n, d, v, dtype, kw['target'], bn, chunk) / 1e6:.1f}"
      print(
        f"| {jnp.dtype(dtype).name} | {name} | {chunk or '-'} | {temp / 1e6:.1f} | "
        f"{stats.argument_size_in_bytes / 1e6:.1f} | {stats.output_size_in_bytes / 1e6:.1f} | "
        f"{temp / naive_temp:.3f} | {analytic} |",
        flush=True,
      )


def _inputs(n, d, v, dtype, seed=0):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(n, d)) / np.sqrt(d), dtype)
  w = jnp.asarray(rng.normal(size=(d, v)), dtype)
  t = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)
  a = jnp.asarray(rng.normal(size=n), jnp.float32)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  return h, w, t, a, b


def _interleaved(fns, args, repeats):
  for f in fns.values():  # compile + warm up
    jax.block_until_ready(f(*args))
  times = {k: [] for k in fns}
  for _ in range(repeats):  # interleaved, so load changes hit every variant alike
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(ts) for k, ts in times.items()}


def time_table(n, d, v, chunks, repeats, dtype):
  fns = {"naive": value_and_grad_fn("naive", None)}
  fns |= {f"chunked/{c}": value_and_grad_fn("chunked", c) for c in chunks}
  med = _interleaved(fns, _inputs(n, d, v, dtype), repeats)
  print(
    f"## CPU time, value_and_grad, N={n} D={d} V={v} {jnp.dtype(dtype).name}, median of {repeats}"
  )
  print("| impl | median s | time / naive |")
  print("|---|---|---|")
  for k, m in med.items():
    print(f"| {k} | {m:.3f} | {m / med['naive']:.2f} |", flush=True)


def device_check(n, d, v, dtypes, gpu_blocks, chunk, repeats):
  """On a GPU: compiled Triton kernels vs naive and chunked (agreement, memory, time)."""
  backend = jax.default_backend()
  print(f"## device check on {jax.devices()[0].device_kind} (backend {backend})")
  if backend not in ("gpu", "cuda", "rocm"):  # still runs (use tiny sizes): checks the script
    print(
      "**not a GPU backend: Pallas runs in the interpreter; these numbers say nothing of Triton**"
    )
  for dtype in dtypes:
    name = jnp.dtype(dtype).name
    args = _inputs(n, d, v, dtype)
    fns = {
      "naive": value_and_grad_fn("naive", None),
      f"chunked/{chunk}": value_and_grad_fn("chunked", chunk),
    }
    for bn, bv, warps in gpu_blocks:
      fns[f"pallas/gpu {bn}x{bv}x{warps or '-'}"] = value_and_grad_fn(
        "pallas", bv, block_n=bn, target="gpu", num_warps=warps
      )
    # Agreement with naive run at HIGHEST precision (XLA's default f32 dot on GPU is TF32).
    with jax.default_matmul_precision("highest"):
      ref_l, (ref_dh, ref_dw) = value_and_grad_fn("naive", None)(*args)
    print(f"### {name}, N={n} D={d} V={v}: agreement with naive/highest (max |diff| / max |ref|)")
    print("| impl | loss | d hidden | d weight |")
    print("|---|---|---|---|")
    for k, f in fns.items():
      loss, (dh, dw) = f(*args)
      rel = [
        float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
        / max(float(jnp.max(jnp.abs(y.astype(jnp.float32)))), 1e-30)
        for x, y in ((loss, ref_l), (dh, ref_dh), (dw, ref_dw))
      ]
      print(f"| {k} | {rel[0]:.2e} | {rel[1]:.2e} | {rel[2]:.2e} |", flush=True)
    print(f"### {name}: compiled memory (the Triton kernels' buffers are XLA temporaries)")
    print("| impl | temp MB | temp / naive | analytic MB |")
    print("|---|---|---|---|")
    naive_temp = None
    for k, f in fns.items():
      temp = f.lower(*args).compile().memory_analysis().temp_size_in_bytes
      naive_temp = naive_temp or temp
      analytic = "-"
      if k.startswith("pallas"):
        bn, bv = (int(x) for x in k.split()[-1].split("x")[:2])
        analytic = f"{pallas_hbm_bytes(n, d, v, dtype, 'gpu', bn, bv) / 1e6:.1f}"
      print(f"| {k} | {temp / 1e6:.1f} | {temp / naive_temp:.3f} | {analytic} |", flush=True)
    med = _interleaved(fns, args, repeats)
    print(f"### {name}: time, interleaved, median of {repeats}")
    print("| impl | median ms | time / naive |")
    print("|---|---|---|")
    for k, m in med.items():
      print(f"| {k} | {m * 1e3:.2f} | {m / med['naive']:.2f} |", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=8192)
  p.add_argument("--d", type=int, default=1024)
  p.add_argument("--v", type=int, default=151936)
  p.add_argument("--chunks", default="2048,4096,8192,16384")
  p.add_argument("--pallas-block", type=int, default=1024, help="TPU-formulation vocab block")
  p.add_argument("--dtypes", default="float32,bfloat16", help="memory table / device check")
  p.add_argument("--time-n", type=int, default=512)
  p.add_argument("--time-dtypes", default="float32")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--skip-memory", action="store_true")
  p.add_argument("--skip-time", action="store_true")
  p.add_argument("--device-check", action="store_true", help="GPU host: Triton kernels vs naive")
  p.add_argument(
    "--gpu-blocks", default="64x128", help="block_n x block_v [x num_warps], comma separated"
  )
  args = p.parse_args()
  chunks = [int(c) for c in args.chunks.split(",")]
  dtypes = [jnp.dtype(x) for x in args.dtypes.split(",")]
  if args.device_check:
    blocks = [[int(x) for x in b.split("x")] for b in args.gpu_blocks.split(",")]
    blocks = [(b[0], b[1], b[2] if len(b) > 2 else None) for b in blocks]
    device_check(args.n, args.d, args.v, dtypes, blocks, 8192, args.repeats)
    return
  if not args.skip_memory:
    memory_table(args.n, args.d, args.v, chunks, args.pallas_block, dtypes)
  if not args.skip_time:
    for dtype in args.time_dtypes.split(","):
      time_table(args.time_n, args.d, args.v, chunks, args.repeats, jnp.dtype(dtype))


if __name__ == "__main__":
  main()
