"""The KV-cache sampler with its state, rows and cache sharded: `sampling.Sampler` given the
`sampling.SamplerShardings` of a mesh and partition rules (its public API only)."""

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

from postrain import models, sampling
from postrain.sharding._jit import activation_sharding
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

  Builds the sampler's `SamplerShardings` from the mesh and rules (`sampler_shardings`): the state
  by the parameter rules, prompts, logits and responses split on the batch dimension
  (data x fsdp), the KV cache `[L, B, S, K, H]` over batch and KV heads; a row count the batch axes
  do not divide (e.g. few prompts before the `n`-fold repeat) is replicated instead; the model's
  activation constraints (`activation_sharding`) while its jits trace. The sampler itself is
  `self.sampler` (a plain `sampling.Sampler`); call and `update` as `Sampler`; greedy decoding
  gives the same tokens as unsharded.
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
    self.mesh = mesh
    self.shardings = sampler_shardings(
      model, mesh, rules, logical_rules=logical_rules, allow_replication=allow_replication
    )
    self.sampler = sampling.Sampler(model, shardings=self.shardings, **sampler_kwargs)
    self.cfg = self.sampler.cfg
    self.state_shardings = self.shardings.state

  def __call__(
    self, prompts: Any, *, prompt_offset: int | None = None, **kwargs: Any
  ) -> sampling.SampleOutput:
    """Samples; see `postrain.sampling.Sampler.__call__` for the arguments.

    prompt_offset: None (every process passes all prompts and gets all rows), or the index of this
      process's first prompt in the global list (it passes its prompts, token-id lists, and gets
      their `len(prompts) * n` rows). One process: the offset must be 0 (all prompts).
    """
    if prompt_offset is None or jax.process_count() == 1:
      if prompt_offset not in (None, 0):
        raise ValueError(f"`prompt_offset`={prompt_offset}: one process holds every prompt (0).")
      out = self.sampler(prompts, **kwargs)
      if jax.process_count() == 1:
        return out
      # Several processes: every process gets the whole rollout (an all-gather of the tokens and
      # log-probs), so the output is process-local like the unsharded sampler's.
      return _map_arrays(out, _gather_rows)
    if kwargs.get("prompt_lengths") is not None or isinstance(prompts, (np.ndarray, jax.Array)):
      raise TypeError("with `prompt_offset`, `prompts` must be a list of token-id lists.")
    n = kwargs.get("n", 1)
    out = self.sampler(_gather_prompts(prompts, prompt_offset), **kwargs)
    rows = slice(prompt_offset * n, (prompt_offset + len(prompts)) * n)
    return _map_arrays(out, lambda x: _process_rows(x, rows))

  def update(self, model_or_state: nnx.Module | nnx.State) -> None:
    """Replaces the parameters (moved to their shardings; no recompilation)."""
    self.sampler.update(model_or_state)

  @property
  def state(self) -> nnx.State:
    return self.sampler.state

  def jit_in_mesh(self, name: str, fn: Any, **jit_kwargs: Any) -> Any:
    """`self.sampler.jit`: `fn` jitted on this sampler, traced inside `activation_sharding` of its
    mesh, the inputs' shardings propagating."""
    return self.sampler.jit(name, fn, **jit_kwargs)


def sampler_shardings(
  model: nnx.Module,
  mesh: Mesh,
  rules: Sequence[Rule],
  *,
  logical_rules: Sequence[LogicalRule] | None = None,
  allow_replication: bool = False,
) -> sampling.SamplerShardings:
  """The `sampling.SamplerShardings` of `model` on `mesh` (see `ShardedSampler`)."""
  state = param_shardings(
    nnx.split(model)[1],
    mesh,
    rules,
    logical_rules=logical_rules,
    allow_replication=allow_replication,
  )
  rep = replicated(mesh)
  b = batch_sharding(mesh, logical_rules)
  ways = math.prod(mesh.shape[a] for a in _mesh_axes(b.spec[0] if b.spec else None))

  def rows(n: int) -> NamedSharding:
    return b if n % ways == 0 else rep

  def cache(n: int) -> models.KVCache:
    cfg = model.cfg
    spec = logical_to_spec(
      ("layers", "batch" if rows(n).spec else None, "cache_slots", "kv_heads", "head_dim"),
      (cfg.num_layers, n, 1, cfg.num_kv_heads, cfg.head_dim),
      mesh,
      logical_rules,
      allow_replication=allow_replication,
      name="KV cache",
    )
    kv = NamedSharding(mesh, spec)
    return models.KVCache(k=kv, v=kv, valid=rows(n), end=rep)

  return sampling.SamplerShardings(
    state=state,
    rows=rows,
    cache=cache,
    replicated=rep,
    context=functools.partial(activation_sharding, mesh, logical_rules),
  )


def _map_arrays(out: sampling.SampleOutput, fn: Any) -> sampling.SampleOutput:
  """`out` with `fn` applied to each of its global arrays (host arrays, e.g. prompt_lengths, are
  identical on every process and already whole: sliced by the same rows when `fn` slices)."""
  fields = {}
  for f in (
    "tokens",
    "response_mask",
    "lengths",
    "sample_logp",
    "model_logp",
    "positions",
    "valid",
  ):
    fields[f] = jnp.asarray(fn(getattr(out, f)))
  return sampling.SampleOutput(
    **fields, prompt_lengths=fn(out.prompt_lengths), prompt_len=out.prompt_len
  )


def _gather_rows(x: Any) -> np.ndarray:
  """A global array -> the whole array on every process (an all-gather)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


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
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
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
