"""The KV-cache sampler with its state, rows and cache sharded."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
  the whole output (gathered from all processes' devices); or, with `prompt_offset`, each process
  passes only its own prompts (items `[prompt_offset, prompt_offset + len(prompts))` of the global
  prompt list) and receives only their rows (read from its own devices, no all-gather of the
  output). The prompt token ids (small) are exchanged so that every process runs the same global
  computation: the output rows equal those of one process sampling the whole list.
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

  def __call__(self, prompts: Any, *, prompt_offset: int | None = None, **kwargs: Any) -> Any:
    """Samples; see `postrain.sampling.Sampler.__call__` for the arguments.

    prompt_offset: None (every process passes all prompts and gets all rows), or the index of this
      process's first prompt in the global list (it passes its prompts, token-id lists, and gets
      their `len(prompts) * n` rows). One process: the offset must be 0 (all prompts).
    """
    with activation_sharding(self.mesh, self._logical):
      if prompt_offset is None or jax.process_count() == 1:
        if prompt_offset not in (None, 0):
          raise ValueError(f"`prompt_offset`={prompt_offset}: one process holds every prompt (0).")
        return self._sampler(prompts, **kwargs)
      return self._sample_local(prompts, prompt_offset, **kwargs)

  def _sample_local(
    self, prompts: Any, offset: int, *, prompt_lengths: Any = None, **kwargs: Any
  ) -> Any:
    if prompt_lengths is not None or isinstance(prompts, (np.ndarray, jax.Array)):
      raise TypeError("with `prompt_offset`, `prompts` must be a list of token-id lists.")
    s, count = self._sampler, len(prompts)
    p, mode = s._prepare(_gather_prompts(prompts, offset), None, **kwargs)
    logits, cache = self._run_prefill(p, mode)
    out = self._decode(
      logits,
      cache,
      p,
      mode,
      key=kwargs["key"],
      temperature=kwargs.get("temperature", 1.0),
      top_p=kwargs.get("top_p"),
      stop_tokens=kwargs.get("stop_tokens", ()),
    )
    rows = slice(offset * mode.n, (offset + count) * mode.n)
    tokens, slp, mlp, lengths = (jnp.asarray(_process_rows(x, rows)) for x in out[:4])
    distinct = slice(offset, offset + count)
    mine = self._mod.PreparedPrompts(
      tokens=p.tokens[rows],
      valid=p.valid[rows],
      positions=p.positions[rows],
      lengths=p.lengths[rows],
      distinct_tokens=p.distinct_tokens[distinct],
      distinct_valid=p.distinct_valid[distinct],
      distinct_positions=p.distinct_positions[distinct],
    )
    arrays = self._mod._assemble(
      mine, tokens, slp, mlp, lengths, max_new_tokens=mode.max_new_tokens
    )
    return self._mod.SampleOutput(
      **arrays, lengths=lengths, prompt_lengths=mine.lengths, prompt_len=int(p.tokens.shape[1])
    )

  def update(self, model_or_state: nnx.Module | nnx.State) -> None:
    """Replaces the parameters (moved to their shardings; no recompilation)."""
    self._sampler.update(model_or_state)
    self._sampler.state = _put(self._sampler.state, self.state_shardings)

  @property
  def state(self) -> nnx.State:
    return self._sampler.state

  def jit_in_mesh(self, name: str, fn: Any, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)`, cached on this sampler under `name`, called (and so traced)
    inside `activation_sharding` of its mesh. No explicit in/out shardings: those of the inputs
    propagate (the state by the parameter rules, a KV cache as the prefill placed it). Used by
    `sampling.Conversation` for its observation append and decode loop."""
    if name not in self._jits:
      self._jits[name] = jax.jit(fn, **jit_kwargs)
    jitted = self._jits[name]

    def call(*args: Any, **kwargs: Any) -> Any:
      with activation_sharding(self.mesh, self._logical):
        return jitted(*args, **kwargs)

    return call

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

  def _run_decode(self, logits, cache, p, mode, **kwargs: Any) -> Any:
    out = self._decode(logits, cache, p, mode, **kwargs)
    if jax.process_count() > 1:
      # Several processes: every process gets the whole rollout (an all-gather of the tokens and
      # log-probs), so the sampler's output is process-local like the unsharded sampler's.
      from jax.experimental import multihost_utils

      host = multihost_utils.process_allgather(out[:4], tiled=True)
      out = (*(jnp.asarray(x) for x in host), out[4])
    return out

  def _decode(self, logits, cache, p, mode, *, key, temperature, top_p, stop_tokens) -> Any:
    """The decode jit on the mesh: global (tokens, sample_logp, model_logp, lengths, cache)."""
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
    return self._jits[jit_key](s.graphdef, s.state, cache, logits, lengths, stop, key, temp, tp)


def _gather_prompts(prompts: list[Any], offset: int) -> list[list[int]]:
  """Every process's (offset, prompts) -> the global prompt list, identical on every process (an
  all-gather of the small padded token-id arrays; overlapping items must agree)."""
  from jax.experimental import multihost_utils

  rows = [np.asarray(r, np.int32).reshape(-1) for r in prompts]
  width = max((r.size for r in rows), default=0)
  meta = np.asarray(
    multihost_utils.process_allgather(np.array([offset, len(rows), width], np.int32))
  )
  count, width = int(meta[:, 1].max()), int(meta[:, 2].max())
  ids = np.zeros((max(count, 1), max(width, 1)), np.int32)
  lens = np.full((max(count, 1),), -1, np.int32)
  for i, r in enumerate(rows):
    ids[i, : r.size], lens[i] = r, r.size
  all_ids = np.asarray(multihost_utils.process_allgather(ids))
  all_lens = np.asarray(multihost_utils.process_allgather(lens))
  total = int((meta[:, 0] + meta[:, 1]).max())
  out: list[list[int] | None] = [None] * total
  for proc, (start, num, _) in enumerate(meta.tolist()):
    for i in range(num):
      row = all_ids[proc, i, : all_lens[proc, i]].tolist()
      if out[start + i] is not None and out[start + i] != row:
        raise ValueError(f"processes disagree on prompt {start + i} of the step.")
      out[start + i] = row
  missing = [i for i, r in enumerate(out) if r is None]
  if missing:
    raise ValueError(f"no process passed prompts {missing}; the offsets leave a gap.")
  return out  # type: ignore[return-value]


def _process_rows(x: jax.Array, rows: slice) -> np.ndarray:
  """Rows `rows` of a global array, read from this process's devices only (no communication).

  ValueError when this process's devices do not hold all of them (the caller asked for rows of
  another process).
  """
  if x.is_fully_addressable:
    return np.asarray(x)[rows]
  pieces: dict[int, Any] = {}
  for shard in x.addressable_shards:
    idx = shard.index[0] if shard.index else slice(None)
    start = idx.start or 0
    stop = x.shape[0] if idx.stop is None else idx.stop
    if start < rows.stop and stop > rows.start and start not in pieces:
      pieces[start] = (stop, shard.data)
  out, at = [], rows.start
  for start in sorted(pieces):
    stop, data = pieces[start]
    if start > at:
      break
    if stop > at:
      out.append(np.asarray(data)[at - start : min(stop, rows.stop) - start])
      at = min(stop, rows.stop)
  if at < rows.stop:
    raise ValueError(
      f"rows [{rows.start}, {rows.stop}) of an array of shape {x.shape}: this process's devices "
      f"hold only up to row {at}."
    )
  return np.concatenate(out, axis=0)
