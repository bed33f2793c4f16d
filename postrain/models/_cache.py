"""The key/value cache: a registered pytree passed into and returned from the decoder."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from postrain._validation import check_positive
from postrain.models._config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """Keys and values of all layers, with one shared write index.

  Attributes:
    k: [L, B, S, K, H] keys (after RoPE and q/k norm).
    v: [L, B, S, K, H] values.
    valid: bool[B, S], True where a slot holds a real (non-padding) token.
    end: i32[], number of slots written so far; the next tokens go to [end, end + T).
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  end: jax.Array

  @property
  def size(self) -> int:
    """S, the number of preallocated slots."""
    return self.k.shape[2]

  @property
  def batch_size(self) -> int:
    return self.k.shape[1]


def init_cache(
  cfg: ModelConfig, *, batch_size: int, cache_size: int, dtype: jnp.dtype = jnp.float32
) -> KVCache:
  """An empty cache with `cache_size` slots per row: k, v zeros [L, B, S, K, H], end = 0."""
  check_positive("batch_size", batch_size)
  check_positive("cache_size", cache_size)
  shape = (cfg.num_layers, batch_size, cache_size, cfg.num_kv_heads, cfg.head_dim)
  return KVCache(
    k=jnp.zeros(shape, dtype),
    v=jnp.zeros(shape, dtype),
    valid=jnp.zeros((batch_size, cache_size), bool),
    end=jnp.zeros((), jnp.int32),
  )
