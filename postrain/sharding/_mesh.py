"""The device mesh: axes (data, fsdp, tensor), sizes from a config dict."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg: Mapping[str, int] | Any, *, devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with axes `("data", "fsdp", "tensor")` over `devices` (default: all devices).

  Args:
    mesh_cfg: axis name -> size (a dict or `ConfigDict`); a missing axis has size 1 and at most one
      axis may be -1, "all the remaining devices".
    devices: the devices to use (default `jax.devices()`, every process's devices).

  Raises:
    ValueError naming the axis: an unknown axis, a size that is not a positive int or -1, two -1
    sizes, or sizes whose product is not the device count.
  """
  cfg = dict(mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else mesh_cfg)
  for name in cfg:
    if name not in MESH_AXES:
      raise ValueError(f"mesh axis {name!r} is unknown; the axes are {list(MESH_AXES)}.")
  sizes = {a: cfg.get(a, 1) for a in MESH_AXES}
  for a, s in sizes.items():
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not (s == -1 or s >= 1):
      raise ValueError(f"mesh axis {a!r}: size must be a positive int or -1, got {s!r}.")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  rest = [a for a, s in sizes.items() if s == -1]
  if len(rest) > 1:
    raise ValueError(f"mesh axes {rest} are both -1; at most one axis may take the rest.")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if rest:
    if n % fixed:
      raise ValueError(
        f"mesh axis {rest[0]!r}=-1: the other axes' product {fixed} does not divide the "
        f"{n} devices."
      )
    sizes[rest[0]] = n // fixed
  elif fixed != n:
    shape = " x ".join(f"{a}={s}" for a, s in sizes.items())
    raise ValueError(f"mesh {shape} has {fixed} devices, but there are {n}; set one axis to -1.")
  shape = tuple(int(sizes[a]) for a in MESH_AXES)
  # Auto axes: jit in/out shardings and with_sharding_constraint drive GSPMD propagation.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
