"""A minimal greedy decoder over the KV cache, for the demo and parity tests.

The library's sampler (`postrain.sampling`) is the real one (temperature, top-k/p, one jitted
while_loop); this loop only has to be obviously correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain.models._cache import init_cache
from postrain.models._decoder import Decoder


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens i32[B, Tp], valid bool[B, Tp]) with each prompt right-aligned."""
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  valid = np.zeros((len(prompts), width), bool)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, width - len(p) :] = p
      valid[i, width - len(p) :] = True
  return tokens, valid


def greedy_generate(
  model: Decoder,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  eos_id: int = -1,
  cache_dtype=jnp.float32,
) -> list[list[int]]:
  """Greedy continuation of each prompt (stopping after `eos_id`, which is kept), via the cache."""
  tokens, valid = left_pad(prompts)
  b, tp = tokens.shape
  graphdef, state = nnx.split(model)
  cache = init_cache(model.cfg, batch_size=b, cache_size=tp + max_new_tokens, dtype=cache_dtype)

  @jax.jit
  def step(state, tokens, positions, valid, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m(tokens, positions, valid=valid, cache=cache)
    return jnp.argmax(m.logits(hidden[:, -1]), axis=-1).astype(jnp.int32), cache

  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  nxt, cache = step(state, tokens, positions, valid, cache)
  pos = positions[:, -1:] + 1
  out = [nxt]
  for _ in range(max_new_tokens - 1):
    nxt, cache = step(state, nxt[:, None], pos, np.ones((b, 1), bool), cache)
    pos = pos + 1
    out.append(nxt)
  gen = np.asarray(jnp.stack(out, axis=1))
  result = []
  for row in gen.tolist():
    if eos_id >= 0 and eos_id in row:
      row = row[: row.index(eos_id) + 1]
    result.append(row)
  return result
