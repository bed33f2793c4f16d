"""Parameters and optimiser state created in their shards; host weights placed shard by shard."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from postrain.sharding._mesh import replicated
from postrain.sharding._rules import (
  LogicalRule,
  Rule,
  opt_state_shardings,
  param_shardings,
)


@dataclasses.dataclass
class ShardedState:
  """Model pieces and optimiser state created sharded, with the shardings the jits need.

  `nnx.merge(graphdef, params, rest)` gives the model back.
  """

  graphdef: Any
  params: Any
  rest: Any
  opt_state: Any
  param_shardings: Any
  rest_shardings: Any
  opt_shardings: Any
  mesh: Mesh


def init_sharded(
  model_factory: Callable[[], nnx.Module],
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules: Sequence[Rule],
  *,
  logical_rules: Sequence[LogicalRule] | None = None,
  allow_replication: bool = False,
) -> ShardedState:
  """Parameters and optimiser state created directly in their shards.

  The model is traced abstractly (`nnx.eval_shape`) to get shapes and shardings, then one jit with
  `out_shardings` runs `model_factory` and `tx.init`: every device computes only its own shards, so
  no parameter is ever materialised whole on one device. With the default partitionable threefry
  RNG the values equal those of an unsharded `model_factory()`.
  """
  abstract = nnx.eval_shape(model_factory)
  graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)
  p_sh = param_shardings(
    abs_params, mesh, rules, logical_rules=logical_rules, allow_replication=allow_replication
  )
  r_sh = jax.tree.map(lambda _: replicated(mesh), abs_rest)
  o_sh = opt_state_shardings(tx, jax.eval_shape(tx.init, abs_params), abs_params, p_sh, mesh)

  def init():
    _, params, rest = nnx.split(model_factory(), nnx.Param, ...)
    return params, rest, tx.init(params)

  params, rest, opt_state = jax.jit(init, out_shardings=(p_sh, r_sh, o_sh))()
  return ShardedState(graphdef, params, rest, opt_state, p_sh, r_sh, o_sh, mesh)


def place_params(numpy_tree: Any, shardings: Any) -> Any:
  """Host arrays (safetensors / GGUF numpy, possibly memory-mapped) -> sharded `jax.Array`s.

  Each device's shard is sliced from the host array by `jax.make_array_from_callback`, so only
  this process's shards are copied and no device holds a whole tensor. `shardings` has the tree's
  structure (or is a prefix of it, e.g. one sharding for everything).
  """

  def put(sharding, sub):
    def one(x):
      shape = np.shape(x)
      sharding.shard_shape(shape)  # ValueError here if a dimension does not divide
      return jax.make_array_from_callback(shape, sharding, lambda idx: np.asarray(x[idx]))

    return jax.tree.map(one, sub)

  return jax.tree.map(
    put, shardings, numpy_tree, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )


def abstract_target(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s with `shardings`: the target orbax restores into (any mesh)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
  )
