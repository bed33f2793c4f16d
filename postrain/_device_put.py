"""`put`: arrays moved to given shardings, in a leaf module (imports only jax and numpy).

Used by `postrain.sharding` (sharded jits) and by `sampling.Sampler` when it is given shardings;
living here keeps the layers acyclic (sharding -> sampling, never back).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def to_global(x: Any, s: jax.sharding.Sharding) -> jax.Array:
  """A process-local value (host array, or a jax.Array on this process's devices) that every
  process holds identically -> a global array with sharding `s` (each process copies its slices)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(to_global(jax.random.key_data(x), s))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])


def put(tree: Any, shardings: Any) -> Any:
  """Moves committed jax.Arrays whose sharding differs (jit refuses them); host arrays pass.

  `shardings`: a tree of `jax.sharding.Sharding` with the structure of `tree` (or a prefix of it).
  Several processes: jit takes only global arrays for shardings that span processes, so host and
  process-local values (identical on every process) become global arrays here.
  """
  multi = jax.process_count() > 1

  def put_one(s, sub):
    def one(x):
      if multi and not s.is_fully_addressable:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
          return to_global(x, s)
      if isinstance(x, jax.Array) and not x.sharding.is_equivalent_to(s, x.ndim):
        return jax.device_put(x, s)
      return x

    return jax.tree.map(one, sub)

  return jax.tree.map(
    put_one, shardings, tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )
