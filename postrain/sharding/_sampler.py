"""The KV-cache sampler with its state, rows and cache sharded."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from postrain.sampling._prompts import stop_array
from postrain.sharding._jit import _put, activation_sharding
from postrain.sharding._mesh import replicated
from postrain.sharding._rules import (
  LogicalRule,
  Rule,
  _mesh_axes,
  batch_sharding,
  logical_to_spec,
  param_shardings,
)


class ShardedSampler:
  """`sampling.Sampler` with the model state, the rows and the KV cache sharded on `mesh`.

  The sampler's two phases (`_run_prefill`, `_run_decode`) are replaced by jits of the same
  functions with explicit in/out shardings: the state by the parameter rules, prompts, logits and
  responses split on the batch dimension (data x fsdp), the KV cache `[L, B, S, K, H]` over batch
  and KV heads. A row count the batch axes do not divide (e.g. few prompts before the `n`-fold
  repeat) is replicated instead. Call and `update` as `Sampler`; greedy decoding gives the same
  tokens as unsharded.
  Under several processes (`jax.distributed`) every process passes the same prompts and receives
  the whole output (gathered from all processes' devices).
  """

  def __init__(
    self,
    model: nnx.Module,
    mesh: Mesh,
    rules: Sequence[Rule],
    *,
    logical_rules: Sequence[LogicalRule] | None = None,
    allow_replication: bool = False,
    **sampler_kwargs: Any,
  ):
    # Imported here: the models may import `postrain.sharding` (for `constrain`).
    from postrain.sampling import _sampler

    self._mod, self.mesh = _sampler, mesh
    self._logical, self._allow = logical_rules, allow_replication
    self._sampler = _sampler.Sampler(model, **sampler_kwargs)
    self.cfg = self._sampler.cfg
    self.state_shardings = param_shardings(
      self._sampler.state,
      mesh,
      rules,
      logical_rules=logical_rules,
      allow_replication=allow_replication,
    )
    self._sampler.state = _put(self._sampler.state, self.state_shardings)
    self._sampler._run_prefill = self._run_prefill
    self._sampler._run_decode = self._run_decode
    self._jits: dict[Any, Any] = {}

  def __call__(self, prompts: Any, **kwargs: Any) -> Any:
    """Samples; see `postrain.sampling.Sampler.__call__` for the arguments."""
    with activation_sharding(self.mesh, self._logical):
      return self._sampler(prompts, **kwargs)

  def update(self, model_or_state: nnx.Module | nnx.State) -> None:
    """Replaces the parameters (moved to their shardings; no recompilation)."""
    self._sampler.update(model_or_state)
    self._sampler.state = _put(self._sampler.state, self.state_shardings)

  @property
  def state(self) -> nnx.State:
    return self._sampler.state

  def _rows(self, rows: int) -> NamedSharding:
    b = batch_sharding(self.mesh, self._logical)
    ways = math.prod(self.mesh.shape[a] for a in _mesh_axes(b.spec[0] if b.spec else None))
    return b if rows % ways == 0 else replicated(self.mesh)

  def _cache(self, rows: int) -> Any:
    cfg = self.cfg
    batch = "batch" if self._rows(rows).spec else None
    spec = logical_to_spec(
      ("layers", batch, "cache_slots", "kv_heads", "head_dim"),
      (cfg.num_layers, rows, 1, cfg.num_kv_heads, cfg.head_dim),
      self.mesh,
      self._logical,
      allow_replication=self._allow,
      name="KV cache",
    )
    kv = NamedSharding(self.mesh, spec)
    return self._mod.models.KVCache(k=kv, v=kv, valid=self._rows(rows), end=replicated(self.mesh))

  def _run_prefill(self, p: Any, mode: Any) -> Any:
    rows, key = p.distinct_tokens.shape[0], ("prefill", p.distinct_tokens.shape[0], mode)
    if key not in self._jits:
      rows_p, rows_b = self._rows(rows), self._rows(rows * mode.n)
      # jit takes no kwargs with in_shardings: the static arguments are bound.
      fn = functools.partial(
        self._mod._prefill_impl, n=mode.n, cache_size=mode.cache_size, cache_dtype=mode.cache_dtype
      )
      self._jits[key] = jax.jit(
        fn,
        static_argnums=(0,),
        in_shardings=(self.state_shardings, rows_p, rows_p, rows_p),
        out_shardings=(rows_b, self._cache(rows * mode.n)),
      )
    s, rows_p = self._sampler, self._rows(rows)
    args = _put((p.distinct_tokens, p.distinct_valid, p.distinct_positions), (rows_p,) * 3)
    return self._jits[key](s.graphdef, s.state, *args)

  def _run_decode(self, logits, cache, p, mode, *, key, temperature, top_p, stop_tokens) -> Any:
    rows, jit_key = logits.shape[0], ("decode", logits.shape[0], mode)
    if jit_key not in self._jits:
      rep, rows_b, cache_sh = replicated(self.mesh), self._rows(rows), self._cache(rows)
      self._jits[jit_key] = jax.jit(
        functools.partial(self._mod._decode_impl, mode=mode),
        static_argnums=(0,),
        donate_argnums=(2,),
        in_shardings=(self.state_shardings, cache_sh, rows_b, rows_b, rep, rep, rep, rep),
        out_shardings=(rows_b, rows_b, rows_b, rows_b, cache_sh),
      )
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)
    s, rep, rows_b = self._sampler, replicated(self.mesh), self._rows(rows)
    temp, tp = jnp.float32(temperature), jnp.float32(1.0 if top_p is None else top_p)
    stop = stop_array(stop_tokens)
    lengths, stop, key, temp, tp = _put((p.lengths, stop, key, temp, tp), (rows_b, *[rep] * 4))
    out = self._jits[jit_key](s.graphdef, s.state, cache, logits, lengths, stop, key, temp, tp)
    if jax.process_count() > 1:
      # Several processes: every process gets the whole rollout (an all-gather of the tokens and
      # log-probs), so the sampler's output is process-local like the unsharded sampler's.
      from jax.experimental import multihost_utils

      host = multihost_utils.process_allgather(out[:4], tiled=True)
      out = (*(jnp.asarray(x) for x in host), out[4])
    return out
