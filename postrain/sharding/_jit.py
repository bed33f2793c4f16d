"""The train step and the log-prob function jitted with explicit shardings; activation constraints."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from postrain._constrain import ACTIVATIONS, constrain  # noqa: F401  (re-exported)
from postrain._device_put import put as _put
from postrain.sharding._mesh import replicated
from postrain.sharding._rules import LogicalRule, _logical_table, _mesh_axes


def _own_trace(fn: Callable[..., Any]) -> Callable[..., Any]:
  """A new function object that calls `fn` (its Python function, when `fn` is a `jax.jit`).

  JAX caches traces per function object, ignoring `activation_sharding`: a trace of `fn` taken
  outside the context (a plain call of a jitted `fn`) must not be reused inside the sharded jit,
  nor the constrained trace by a plain call. Unwrapping the jit makes the sharded jit trace the
  body itself, under its own cache entry.
  """
  body = getattr(fn, "__wrapped__", fn)

  def traced(*args):
    return body(*args)

  traced.__name__ = getattr(fn, "__name__", "fn")
  return traced


def check_batch(batch: Any, sharding: NamedSharding, name: str = "batch") -> None:
  """ValueError naming the array whose leading dimension the batch mesh axes do not divide."""
  spec = sharding.spec
  ways = math.prod(sharding.mesh.shape[a] for a in _mesh_axes(spec[0] if spec else None))
  for keys, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
    rows = np.shape(x)[0] if np.ndim(x) else None
    if rows is None or rows % ways:
      raise ValueError(
        f"`{name}{jax.tree_util.keystr(keys)}` (shape {np.shape(x)}): the batch dimension must be "
        f"divisible by the batch mesh axes {spec[0] if spec else ()} (size {ways})."
      )


def shard_state_update(
  update_fn: Callable[..., Any],
  state_shardings: Any,
  batch_sharding_: NamedSharding,
  *,
  donate: bool = True,
  logical_rules: Sequence[LogicalRule] | None = None,
  rest_shardings: Any = None,
) -> Callable[..., Any]:
  """`update_fn(state, batch, *extra) -> (state, aux)` jitted with explicit shardings: the state
  (any pytree, e.g. a `train.TrainState`) keeps `state_shardings` in and out, every batch array
  is split on dimension 0, the extras (scalars such as the ConSPO margin) and the aux metrics are
  replicated. With `donate`, the old state's buffers are reused for the new.
  `logical_rules` are those `constrain` uses while the step is traced.

  `rest_shardings` (LoRA): `update_fn(state, rest, batch, *extra)` takes the frozen base as an
  argument (`rest=` of the call), in `rest_shardings`, never donated.
  """
  rep = replicated(batch_sharding_.mesh)
  jits: dict[int, Any] = {}
  with_rest = rest_shardings is not None
  mid = (rest_shardings,) if with_rest else ()

  def jitted(n_extra: int):
    if n_extra not in jits:
      jits[n_extra] = jax.jit(
        _own_trace(update_fn),
        in_shardings=(state_shardings, *mid, batch_sharding_) + (rep,) * n_extra,
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,) if donate else (),
      )
    return jits[n_extra]

  def _rest(rest):
    if with_rest != (rest is not None):
      raise ValueError("`rest=` is required exactly when the update was built with rest_shardings.")
    return (rest,) if with_rest else ()

  def call(state, batch, *extra, rest=None):
    check_batch(batch, batch_sharding_)
    state, batch = _put(state, state_shardings), _put(batch, batch_sharding_)
    extra, rest_arg = _put(extra, (rep,) * len(extra)), _put(_rest(rest), mid)
    with activation_sharding(batch_sharding_.mesh, logical_rules):
      return jitted(len(extra))(state, *rest_arg, batch, *extra)

  def lower(state, batch, *extra, rest=None):
    """The lowered computation for (abstract) arguments: `.compile().memory_analysis()`."""
    check_batch(batch, batch_sharding_)
    with activation_sharding(batch_sharding_.mesh, logical_rules):
      return jitted(len(extra)).lower(state, *_rest(rest), batch, *extra)

  call.lower = lower
  return call


def shard_update(
  update_fn: Callable[..., Any],
  param_shardings_: Any,
  opt_shardings: Any,
  batch_sharding_: NamedSharding,
  *,
  donate: bool = True,
  logical_rules: Sequence[LogicalRule] | None = None,
  rest_shardings: Any = None,
) -> Callable[..., Any]:
  """`update_fn(params, opt_state, batch, *extra) -> (params, opt_state, aux)` (`train.make_update`)
  jitted as `shard_state_update` does, the state being the pair (params, optimiser state): params
  / optimiser state keep their shardings, the batch is split on dimension 0, extras and aux are
  replicated, the old params and optimiser state donated. LoRA (`rest_shardings`):
  `update_fn(params, opt_state, rest, batch, *extra)`, called with `rest=`.
  """

  body = getattr(update_fn, "__wrapped__", update_fn)  # a jitted update: its Python function

  def pair_fn(pair, *args):
    params, opt_state, aux = body(*pair, *args)
    return (params, opt_state), aux

  pair_fn.__name__ = getattr(update_fn, "__name__", "update")
  inner = shard_state_update(
    pair_fn,
    (param_shardings_, opt_shardings),
    batch_sharding_,
    donate=donate,
    logical_rules=logical_rules,
    rest_shardings=rest_shardings,
  )

  def call(params, opt_state, batch, *extra, rest=None):
    (params, opt_state), aux = inner((params, opt_state), batch, *extra, rest=rest)
    return params, opt_state, aux

  call.lower = lambda params, opt_state, batch, *extra, rest=None: inner.lower(
    (params, opt_state), batch, *extra, rest=rest
  )
  return call


def shard_logprob_fn(
  fn: Callable[..., Any],
  param_shardings_: Any,
  batch_sharding_: NamedSharding,
  *,
  logical_rules: Sequence[LogicalRule] | None = None,
) -> Callable[..., Any]:
  """`fn(params, tokens, mask, valid) -> logp` (`train._update.make_logprob_fn`) with the batch split on
  dimension 0 in and out (`shard_batch_fn`, plus a check that names the batch array)."""
  b = batch_sharding_
  inner = shard_batch_fn(fn, (param_shardings_, b, b, b), b, logical_rules=logical_rules)

  def call(params, tokens, mask, valid):
    check_batch({"tokens": tokens, "mask": mask, "valid": valid}, b, name="")
    return inner(params, tokens, mask, valid)

  def lower(params, tokens, mask, valid):
    """The lowered computation for (abstract) arguments, traced with the activation rules."""
    check_batch({"tokens": tokens, "mask": mask, "valid": valid}, b, name="")
    return inner.lower(params, tokens, mask, valid)

  call.lower = lower
  return call


def shard_batch_fn(
  fn: Callable[..., Any],
  in_shardings: tuple[Any, ...],
  batch_sharding_: NamedSharding,
  *,
  logical_rules: Sequence[LogicalRule] | None = None,
) -> Callable[..., Any]:
  """`fn(*args)` jitted with explicit shardings: `in_shardings[i]` for argument i (a parameter
  shardings tree, or `batch_sharding_` for a batch array), every output split on dimension 0
  (e.g. a teacher pass over the batch, `train/_distill_local.py`). `.lower(*args)` gives the
  lowered computation, traced with the activation rules."""
  jitted = jax.jit(_own_trace(fn), in_shardings=in_shardings, out_shardings=batch_sharding_)
  mesh = batch_sharding_.mesh

  def call(*args):
    args = _put(args, tuple(in_shardings))
    with activation_sharding(mesh, logical_rules):
      return jitted(*args)

  def lower(*args):
    with activation_sharding(mesh, logical_rules):
      return jitted.lower(*args)

  call.lower = lower
  return call


# -- activation constraints -------------------------------------------------------------------------

_ACTIVATIONS = ACTIVATIONS  # defined beside `constrain` in the leaf module postrain._constrain


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, logical_rules: Sequence[LogicalRule] | None = None):
  """While tracing inside this context, `constrain` pins activations to their logical axes."""
  token = _ACTIVATIONS.set((mesh, _logical_table(logical_rules)))
  try:
    yield
  finally:
    _ACTIVATIONS.reset(token)
