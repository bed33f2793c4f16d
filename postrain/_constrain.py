"""`constrain`: the models' hook for activation sharding, in a leaf module (imports only jax).

`postrain.sharding.activation_sharding(mesh, rules)` sets `ACTIVATIONS` while a sharded jit
traces; outside it `constrain` is the identity. Living here (not in `postrain.sharding`) keeps the
layers acyclic: models -> _constrain, and sharding -> sampling -> models.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# (mesh, {logical axis: mesh axes}) while tracing inside `sharding.activation_sharding`.
ACTIVATIONS: contextvars.ContextVar[tuple[Mesh, dict[str, tuple[str, ...]]] | None] = (
  contextvars.ContextVar("activation_sharding", default=None)
)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint(x, logical axes)` inside `activation_sharding`, else the identity.

  The model hook: e.g. `x_BTD = constrain(x_BTD, ("batch", "length", "embed_act"))`. A dimension
  whose size the mesh axes do not divide, or an unknown logical name, is left unconstrained.
  """
  ctx = ACTIVATIONS.get()
  if ctx is None:
    return x
  mesh, table = ctx
  spec, used = [], set()
  for axis, size in zip(logical, x.shape):
    axes = tuple(a for a in table.get(axis, ()) if a not in used) if axis else ()
    ways = math.prod(mesh.shape[a] for a in axes)
    if not axes or size % ways:
      spec.append(None)
      continue
    used |= set(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
