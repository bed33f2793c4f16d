"""Cached decode step: cost follows the live cache length, not the preallocated cache size.

One decode step (B=8 rows, 1 new token) of a 2-layer model whose attention dominates (d 128,
8 heads x 32, 8 KV heads, MLP 256, vocab 512) over a cache of S = 4096 slots, with the cache
donated so it is updated in place. Timed side by side in one process, interleaved, median over
repeats:

  blockwise (block 128), live length 64     -- the reference
  blockwise (block 128), live length 4000
  one block of S slots (block = S = reads the whole cache every step), live length 64

  python benchmarks/models_decode.py [--repeats 30] [--cache 4096]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import models


def make_step(cfg):
  model = models.Decoder(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)

  def step(state, tok, pos, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m(tok, pos, cache=cache)
    return jnp.argmax(m.logits(hidden[:, -1]), -1).astype(jnp.int32), cache

  step = jax.jit(step, donate_argnums=(3,))
  return state, step


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--cache", type=int, default=4096)
  args = parser.parse_args(argv)
  s, b = args.cache, 8
  base = models.get_config(
    "tiny", embed_dim=128, num_heads=8, num_kv_heads=8, head_dim=32, mlp_dim=256
  )
  variants = {
    "block 128, live 64": (base.replace(attention_block=128), 64),
    f"block 128, live {s - 96}": (base.replace(attention_block=128), s - 96),
    f"block {s} (whole cache), live 64": (base.replace(attention_block=s), 64),
  }
  runs = {}
  for name, (cfg, live) in variants.items():
    state, step = make_step(cfg)
    cache = models.init_cache(cfg, batch_size=b, cache_size=s)
    cache = models.KVCache(cache.k, cache.v, cache.valid.at[:, :live].set(True), jnp.int32(live))
    tok = jnp.zeros((b, 1), jnp.int32)
    pos = jnp.full((b, 1), live, jnp.int32)
    runs[name] = [state, step, cache, tok, pos, live]
    _, runs[name][2] = step(state, tok, pos, cache)  # compile + warm up

  times = {name: [] for name in runs}
  for _ in range(args.repeats):
    for name, run in runs.items():
      state, step, cache, tok, pos, live = run
      # Rewind the write index so every step sees the same live length.
      cache = models.KVCache(cache.k, cache.v, cache.valid, jnp.int32(live))
      t = time.perf_counter()
      out, cache = step(state, tok, pos, cache)
      out.block_until_ready()
      times[name].append(time.perf_counter() - t)
      run[2] = cache
  ref = float(np.median(times[next(iter(times))]))
  print(f"decode step, B={b}, cache S={s}, median of {args.repeats}")
  for name, ts in times.items():
    med = float(np.median(ts))
    print(f"  {name:34s} {med * 1e3:8.2f} ms   ratio {med / ref:6.2f}")


if __name__ == "__main__":
  main()
