"""Fused log-prob / entropy vs the naive `[N, V]` logits: compiled memory and CPU time.

For value-and-grad (w.r.t. hidden and weight) of `sum(a * logp + b * entropy)`:
1. the compiler's memory analysis (`jit(f).lower(...).compile().memory_analysis()`, nothing runs)
   at the full size N=8192, D=1024, V=151936 (Qwen3 vocabulary), float32 and bfloat16, for naive,
   chunked (several chunk sizes) and Pallas (on CPU: interpret mode, which pads every operand to
   whole blocks and so is not the memory of a compiled Mosaic/Triton kernel);
2. CPU time of naive vs chunked in one process, interleaved, median over repeats, at a reduced N
   (same D and V) because the full size takes minutes per step on a 2-core CPU.

  python benchmarks/logprob.py                      # defaults below
  python benchmarks/logprob.py --time-n 512 --repeats 5 --chunks 4096,8192
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from postrain.kernels import fused_logprobs


def value_and_grad_fn(impl: str, chunk_size: int | None):
  def loss(h, w, t, a, b):
    logp, entropy = fused_logprobs(h, w, t, impl=impl, chunk_size=chunk_size)
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


def memory_table(n, d, v, chunks, pallas_block):
  print(f"## compiled memory, value_and_grad, N={n} D={d} V={v} (backend {jax.default_backend()})")
  print("| dtype | impl | chunk | temp MB | args MB | outputs MB | temp / naive |")
  print("|---|---|---|---|---|---|---|")
  for dtype in (jnp.float32, jnp.bfloat16):
    configs = [("naive", None)] + [("chunked", c) for c in chunks] + [("pallas", pallas_block)]
    naive_temp = None
    for impl, chunk in configs:
      stats = value_and_grad_fn(impl, chunk).lower(*specs(n, d, v, dtype)).compile()
      stats = stats.memory_analysis()
      temp = stats.temp_size_in_bytes
      naive_temp = temp if impl == "naive" else naive_temp
      name = "pallas (interpret)" if impl == "pallas" and jax.default_backend() == "cpu" else impl
      print(
        f"| {jnp.dtype(dtype).name} | {name} | {chunk or '-'} | {temp / 1e6:.1f} | "
        f"{stats.argument_size_in_bytes / 1e6:.1f} | {stats.output_size_in_bytes / 1e6:.1f} | "
        f"{temp / naive_temp:.3f} |",
        flush=True,
      )


def time_table(n, d, v, chunks, repeats, dtype):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(n, d)) / np.sqrt(d), dtype)
  w = jnp.asarray(rng.normal(size=(d, v)), dtype)
  t = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)
  a = jnp.asarray(rng.normal(size=n), jnp.float32)
  b = jnp.asarray(rng.normal(size=n), jnp.float32)
  fns = {"naive": value_and_grad_fn("naive", None)}
  fns |= {f"chunked/{c}": value_and_grad_fn("chunked", c) for c in chunks}
  for f in fns.values():  # compile + warm up
    jax.block_until_ready(f(h, w, t, a, b))
  times = {k: [] for k in fns}
  for _ in range(repeats):  # interleaved, so load changes hit every variant alike
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(h, w, t, a, b))
      times[k].append(time.perf_counter() - t0)
  base = statistics.median(times["naive"])
  print(
    f"## CPU time, value_and_grad, N={n} D={d} V={v} {jnp.dtype(dtype).name}, median of {repeats}"
  )
  print("| impl | median s | time / naive |")
  print("|---|---|---|")
  for k, ts in times.items():
    med = statistics.median(ts)
    print(f"| {k} | {med:.3f} | {med / base:.2f} |", flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=8192)
  p.add_argument("--d", type=int, default=1024)
  p.add_argument("--v", type=int, default=151936)
  p.add_argument("--chunks", default="2048,4096,8192,16384")
  p.add_argument("--pallas-block", type=int, default=1024)
  p.add_argument("--time-n", type=int, default=512)
  p.add_argument("--time-dtypes", default="float32")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--skip-memory", action="store_true")
  p.add_argument("--skip-time", action="store_true")
  args = p.parse_args()
  chunks = [int(c) for c in args.chunks.split(",")]
  if not args.skip_memory:
    memory_table(args.n, args.d, args.v, chunks, args.pallas_block)
  if not args.skip_time:
    for dtype in args.time_dtypes.split(","):
      time_table(args.time_n, args.d, args.v, chunks, args.repeats, jnp.dtype(dtype))


if __name__ == "__main__":
  main()
