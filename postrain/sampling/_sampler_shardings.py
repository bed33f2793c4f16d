"""`SamplerShardings`: where a `Sampler` places its model state, rows and KV cache.

Plain data (flax `examples/gemma/sampler.py` takes its `data_sharding` the same way): the sampler
knows nothing of meshes or partition rules; `sharding.ShardedSampler` computes these from a mesh
and rules, and a user can build them by hand:

  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rep = NamedSharding(mesh, P())
  rows = lambda b: NamedSharding(mesh, P("data") if b % 8 == 0 else P())
  kv = lambda b: NamedSharding(mesh, P(None, "data") if b % 8 == 0 else P())
  shardings = sampling.SamplerShardings(
    state=jax.tree.map(lambda _: rep, nnx.state(model)),
    rows=rows,
    cache=lambda b: models.KVCache(k=kv(b), v=kv(b), valid=rows(b), end=rep),
    replicated=rep,
  )
  sampler = sampling.Sampler(model, shardings=shardings)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class SamplerShardings:
  """Shardings of a `Sampler`'s arrays; its prefill and decode jit with them as in/out shardings.

  Attributes:
    state: a tree of `jax.sharding.Sharding` with the structure of `nnx.split(model)[1]` (the
      model state): where the parameters live; `Sampler.update` moves new ones there.
    rows: `rows(B) -> Sharding` of an array whose dimension 0 holds B rows (prompts, logits
      [B, V], response tokens and log-probs [B, T], lengths [B]). Called with the number of
      distinct prompts P (prefill inputs) and with the number of rows B = P * n.
    cache: `cache(B) -> models.KVCache` of shardings for a cache of B rows (k, v [L, B, S, K, H],
      valid [B, S], end []).
    replicated: the sharding of the replicated scalars (PRNG key, temperature, top_p, stop ids).
    context: None, or `context() -> context manager` entered while the sampler's jits are traced
      and called (e.g. `functools.partial(sharding.activation_sharding, mesh, logical_rules)`, so
      the model's `constrain` calls pin the activations).
  """

  state: Any
  rows: Callable[[int], jax.sharding.Sharding]
  cache: Callable[[int], Any]
  replicated: jax.sharding.Sharding
  context: Callable[[], AbstractContextManager[Any]] | None = None

  def activation_context(self) -> AbstractContextManager[Any]:
    """`context()`, or a no-op context when there is none."""
    return contextlib.nullcontext() if self.context is None else self.context()
