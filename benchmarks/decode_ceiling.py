"""What one XLA:CPU decode step of "tiny-qwen3" can reach: its LM-head matmul against the roofline.

A decode step of batch 8 multiplies [8, D] activations by every weight matrix; in float32 that is
2 * 8 / 4 = 4 FLOP per weight byte, so at the copy bandwidth of the roofline (~30 GB/s on the
2-core host) the matmuls need ~120 GFLOP/s. This script measures, side by side in one process
(each op in a 100-iteration `fori_loop` whose iterations depend on each other):

  copy: the roofline's bandwidth (`sampler.CopyBandwidth`, 256 MiB donated copy, read + write).
  read: a plain reduction over the [V, D] embedding (how fast XLA reads the weights at all).
  head M=8 / 64 / 256: the LM-head matmul [M, D] x [D, V] (GFLOP/s and weight bytes per second);
    M=8 is the sampler's, larger M shows what the same dot reaches once it has work to thread.

and prints the step's roofline time, the time the M=8 head matmul alone takes, and that time as a
share of the step budget that 60% of the roofline allows.

  python benchmarks/decode_ceiling.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from sampler import BATCH, MAX_NEW, PROMPT, CopyBandwidth, decode_bytes

ITERS = 100


def _loop_timer(body_fn, *args):
  """A jitted `fori_loop` of ITERS calls of body_fn(carry, *args) -> carry; returns a timer."""
  import time

  import jax

  fn = jax.jit(lambda c, *a: jax.lax.fori_loop(0, ITERS, lambda i, c: body_fn(c, *a), c))

  def once(carry):
    t = time.perf_counter()
    jax.block_until_ready(fn(carry, *args))
    return (time.perf_counter() - t) / ITERS

  return once


def main(repeats: int) -> None:
  import jax
  import jax.numpy as jnp

  from postrain import models

  cfg = models.get_config("tiny-qwen3")
  v, d = cfg.vocab_size, cfg.embed_dim
  rng = np.random.default_rng(0)
  embed = jnp.asarray(rng.standard_normal((v, d), np.float32))
  head = jnp.asarray(np.asarray(embed).T.copy())  # [D, V], the sampler's output projection

  def matmul(c, w):  # the next input depends on the previous logits (no hoisting, no DCE)
    logits = (c + 1e-9) @ w
    return c + jnp.max(logits, axis=-1, keepdims=True)

  def read(c, e):  # the scale depends on the carry, so the reduction is not hoisted
    return c + jnp.sum(e * (1.0 + c[0, :1] * 1e-30), axis=0)[None] * 1e-9

  carries = {m: jnp.asarray(rng.standard_normal((m, d), np.float32)) for m in (8, 64, 256)}
  timers = {"read": (_loop_timer(read, embed), carries[8])}
  for m, c in carries.items():
    timers[f"head M={m}"] = (_loop_timer(matmul, head), c)
  bw = CopyBandwidth()
  times = {k: [] for k in timers}
  copies = []
  for timer, c in timers.values():
    timer(c)  # compile
  for _ in range(repeats):
    copies.append(min(bw.time_once() for _ in range(3)))
    for k, (timer, c) in timers.items():
      times[k].append(timer(c))
  gbps = bw.gbps(float(np.median(copies)))
  weight_bytes = v * d * 4
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}; copy bandwidth {gbps:.1f} GB/s")
  print(f"{'op':14s} {'ms':>7s} {'weight GB/s':>12s} {'GFLOP/s':>8s}")
  med = {k: float(np.median(t)) for k, t in times.items()}
  for k, t in med.items():
    m = int(k.split("=")[1]) if "=" in k else 0
    flops = f"{2 * m * v * d / t / 1e9:8.1f}" if m else f"{'':8s}"
    print(f"{k:14s} {t * 1e3:7.3f} {weight_bytes / t / 1e9:12.1f} {flops}")
  total, params = decode_bytes(cfg, PROMPT)
  step_s = total / (MAX_NEW - 1) / (gbps * 1e9)
  budget = step_s / 0.6
  print(
    f"decode step (batch {BATCH}): roofline {step_s * 1e3:.2f} ms (parameters "
    f"{params / 2**20:.1f} MiB + live cache); 60% of the roofline allows {budget * 1e3:.2f} ms"
  )
  head8 = med["head M=8"]
  print(
    f"the M={BATCH} LM-head matmul alone: {head8 * 1e3:.2f} ms = {head8 / budget:.0%} of that "
    f"budget ({weight_bytes / 2**20:.1f} MiB of the {params / 2**20:.1f} MiB of parameters)"
  )


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  main(parser.parse_args().repeats)
