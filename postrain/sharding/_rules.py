"""Partition rules: parameter path regex -> logical axes -> mesh axes (big_vision style: the rules
live in the config).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from postrain.sharding._mesh import BATCH_AXES, MESH_AXES, make_mesh, replicated

_LOG = logging.getLogger(__name__)


Rule = tuple[str, tuple[str | None, ...]]
LogicalRule = tuple[str, str | tuple[str, ...] | None]


def default_rules() -> list[Rule]:
  """Parameter path regex -> logical axes for `models.Decoder` (all Llama / Qwen3 configs).

  Every matching rule is applied (`re.search` on paths like `layers/3/attn/q`): a parameter must
  match at least one rule, and all the rules it matches must agree.
  """
  return [
    (r"^embedding$", ("vocab", "embed")),  # [V, D]
    (r"^lm_head$", ("embed", "vocab")),  # [D, V]
    (r"attn/q$", ("embed", "heads", "head_dim")),  # [D, N, H]
    (r"attn/[kv]$", ("embed", "kv_heads", "head_dim")),  # [D, K, H]
    (r"attn/o$", ("heads", "head_dim", "embed")),  # [N, H, D]
    (r"mlp/(gate|up)$", ("embed", "mlp")),  # [D, F]
    (r"mlp/down$", ("mlp", "embed")),  # [F, D]
    (r"norm/scale$", ("norm",)),  # [D] or [H] (q/k norm): tiny, replicated
    # LoRA adapters (`models.add_lora`): A [in, r], B [r, out] with the flattened input / output
    # axes laid out like the base weight's; the rank dimension replicated.
    (r"attn/(q|k|v)_lora/lora_a$", ("embed", None)),  # [D, r]
    (r"attn/q_lora/lora_b$", (None, "lora_heads")),  # [r, N*H]
    (r"attn/[kv]_lora/lora_b$", (None, "lora_kv_heads")),  # [r, K*H]
    (r"attn/o_lora/lora_a$", ("lora_heads", None)),  # [N*H, r]
    (r"attn/o_lora/lora_b$", (None, "embed")),  # [r, D]
    (r"mlp/(gate|up)_lora/lora_a$", ("embed", None)),  # [D, r]
    (r"mlp/(gate|up)_lora/lora_b$", (None, "lora_mlp")),  # [r, F]
    (r"mlp/down_lora/lora_a$", ("lora_mlp", None)),  # [F, r]
    (r"mlp/down_lora/lora_b$", (None, "embed")),  # [r, D]
  ]


def default_logical_axis_rules() -> list[LogicalRule]:
  """Logical axis -> mesh axes: FSDP on embed, tensor parallelism on heads / MLP / vocabulary.

  The `*_act` names are activations only (`constrain` in the model; MaxText's `activation_*`):
  the residual stream `[batch, length, embed_act]` is split over the batch and replicated over
  tensor (Megatron layout: it feeds every tensor shard), the MLP hidden `[batch, length, mlp_act]`
  and the logits `[batch, length, vocab_act]` are split over tensor like their weights. Attention
  activations reuse `heads` / `kv_heads` / `head_dim`. A config without these names still works:
  `constrain` leaves a dimension with an unknown name unconstrained.
  """
  return [
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    # An adapter factor's wide dimension (B [r, out] of q/k/v/gate/up, A [in, r] of o/down) over
    # tensor like its weight's and over fsdp too: the weight's other dimension (embed) carries
    # fsdp there, so without it every fsdp device would hold these factors and their Adam moments
    # whole (LoRA r=16 + NF4 at fsdp=8: 0.39 of full fine-tuning's bytes). Gathered at use, FSDP-style.
    ("lora_heads", ("tensor", "fsdp")),
    ("lora_kv_heads", ("tensor", "fsdp")),
    ("lora_mlp", ("tensor", "fsdp")),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
    ("cache_slots", None),
    ("layers", None),
    ("embed_act", None),
    ("mlp_act", "tensor"),
    ("vocab_act", "tensor"),
  ]


def _mesh_axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _logical_table(logical_rules: Sequence[LogicalRule] | None) -> dict[str, tuple[str, ...]]:
  table: dict[str, tuple[str, ...]] = {}
  for item in default_logical_axis_rules() if logical_rules is None else logical_rules:
    name, entry = item
    axes = _mesh_axes(entry)
    for a in axes:
      if a not in MESH_AXES:
        raise ValueError(
          f"logical axis {name!r} maps to unknown mesh axis {a!r}; the axes are {list(MESH_AXES)}."
        )
    if name in table and table[name] != axes:
      raise ValueError(f"logical axis {name!r} is mapped twice ({table[name]} and {axes}).")
    table[name] = axes
  return table


def logical_to_spec(
  logical: Sequence[str | None],
  shape: Sequence[int],
  mesh: Mesh,
  logical_rules: Sequence[LogicalRule] | None = None,
  *,
  allow_replication: bool = False,
  name: str = "array",
) -> P:
  """The `PartitionSpec` of an array of `shape` whose dimensions carry the `logical` axis names.

  A logical axis of None is replicated. A dimension not divisible by the size of its mesh axes is
  an error, or, with `allow_replication`, replicated (that dimension only, with a warning).
  """
  table = _logical_table(logical_rules)
  if len(logical) != len(shape):
    raise ValueError(
      f"{name}: {len(logical)} logical axes {tuple(logical)} for an array of rank {len(shape)} "
      f"(shape {tuple(shape)})."
    )
  spec, used = [], set()
  for dim, (axis, size) in enumerate(zip(logical, shape)):
    if axis is None:
      spec.append(None)
      continue
    if axis not in table:
      raise ValueError(
        f"{name}: logical axis {axis!r} has no logical->mesh rule; known: {sorted(table)}."
      )
    axes = table[axis]
    if used & set(axes):
      raise ValueError(f"{name}: mesh axes {sorted(used & set(axes))} are used by two dimensions.")
    ways = math.prod(mesh.shape[a] for a in axes)
    if size % ways:
      if not allow_replication:
        raise ValueError(
          f"{name}: dim {dim} ({axis!r}, size {size}) is not divisible by mesh axes {axes} "
          f"(size {ways}); change the mesh or the rules, or allow replication of this dimension "
          "(`allow_replication=True`, config `sharding_allow_replication`)."
        )
      _LOG.warning(
        "%s: dim %d (%s, size %d) replicated (not divisible by %d)", name, dim, axis, size, ways
      )
      axes = ()
    used |= set(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def _key_name(k: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path(keys: Sequence[Any]) -> str:
  return "/".join(_key_name(k) for k in keys)


def _is_var(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def match_rules(path: str, rules: Sequence[Rule]) -> tuple[str | None, ...]:
  """The logical axes the rules give the parameter at `path` (ValueError on none or a conflict)."""
  hits = [(pattern, tuple(axes)) for pattern, axes in rules if re.search(pattern, path)]
  if not hits:
    raise ValueError(
      f"parameter {path!r} matches no sharding rule; add a (regex, logical axes) rule."
    )
  for pattern, axes in hits[1:]:
    if axes != hits[0][1]:
      raise ValueError(
        f"parameter {path!r}: conflicting sharding rules {hits[0][0]!r} -> {hits[0][1]} and "
        f"{pattern!r} -> {axes}."
      )
  return hits[0][1]


def param_specs(
  tree: Any,
  mesh: Mesh,
  rules: Sequence[Rule],
  *,
  logical_rules: Sequence[LogicalRule] | None = None,
  allow_replication: bool = False,
) -> Any:
  """A tree like `tree` (an `nnx.State` or nested dict of arrays / `ShapeDtypeStruct`s) of specs.

  `nnx.Param` leaves (and bare arrays) follow the rules; other nnx variables (RNG state, counters)
  are replicated. `nnx.Variable` wrappers are kept, so the result has `tree`'s exact structure.
  """

  def one(keys, leaf):
    value = leaf.get_value() if _is_var(leaf) else leaf
    if _is_var(leaf) and not isinstance(leaf, nnx.Param):
      spec = P()
    else:
      path = _path(keys)
      spec = logical_to_spec(
        match_rules(path, rules),
        np.shape(value),
        mesh,
        logical_rules,
        allow_replication=allow_replication,
        name=f"parameter {path!r}",
      )
      if hasattr(value, "qvalue"):  # a quantised base weight (qwix QArray, `models.quantize_base`)
        spec = _qarray_specs(value, spec, mesh)
    return leaf.replace(spec) if _is_var(leaf) else spec

  return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_var)


def _qarray_specs(q: Any, spec: P, mesh: Mesh) -> Any:
  """The weight's spec for the codes of a qwix `QArray`; its scales (and zero points) keep a
  split dimension only where the mesh axes divide theirs (blocks per shard), else replicate it."""

  def small(x):
    if x is None:
      return None
    out = []
    for entry, size in zip(tuple(spec) + (None,) * (x.ndim - len(spec)), x.shape):
      ways = math.prod(mesh.shape[a] for a in _mesh_axes(entry))
      out.append(entry if size % ways == 0 else None)
    return P(*out)

  return q.replace(qvalue=spec, scale=small(q.scale), zero_point=small(q.zero_point))


def param_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule], **kwargs: Any) -> Any:
  """`param_specs` as `NamedSharding`s on `mesh` (the tree jit's in/out_shardings take)."""
  specs = param_specs(tree, mesh, rules, **kwargs)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, logical_rules: Sequence[LogicalRule] | None = None) -> NamedSharding:
  """Dimension 0 (the batch) split over the mesh axes of the logical "batch" axis (data x fsdp)."""
  axes = _logical_table(logical_rules).get("batch", BATCH_AXES)
  return NamedSharding(mesh, P(axes or None))


def opt_state_shardings(
  tx: optax.GradientTransformation,
  abstract_opt_state: Any,
  abstract_params: Any,
  param_shardings_: Any,
  mesh: Mesh,
) -> Any:
  """Shardings of `tx`'s state: a leaf that mirrors a parameter (same shape: Adam's mu and nu)
  takes that parameter's sharding; everything else (step counts, factored statistics) is
  replicated."""
  rep = replicated(mesh)

  def mirror(x, p, s):
    return s if np.shape(x) == np.shape(p) else rep

  return optax.tree_map_params(
    tx,
    mirror,
    abstract_opt_state,
    abstract_params,
    param_shardings_,
    transform_non_params=lambda _: rep,
  )


def from_config(config: Any) -> tuple[Mesh, dict[str, Any]]:
  """`(mesh, rule kwargs)` from a run config's `mesh`, `sharding_rules`, `logical_axis_rules`
  and `sharding_allow_replication` keys; `init_sharded(factory, tx, mesh, **kwargs)`."""
  mesh = make_mesh(config.mesh)
  kwargs = dict(
    rules=[(str(r), tuple(a)) for r, a in config.sharding_rules],
    logical_rules=[
      (str(n), a if a is None or isinstance(a, str) else tuple(a))
      for n, a in config.get("logical_axis_rules", default_logical_axis_rules())
    ],
    allow_replication=bool(config.get("sharding_allow_replication", False)),
  )
  return mesh, kwargs
