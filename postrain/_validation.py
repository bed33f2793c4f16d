"""Input checks for the public API.

Every public function validates its arguments with these helpers at trace time (shapes and dtypes
are static under jit), so bad input raises a ValueError/TypeError naming the argument instead of
surfacing as an XLA error. None of them looks at array values.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def check_floating(name: str, x: Any) -> None:
  """Raises TypeError unless `x` has a floating dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`{name}` must be a floating-point array, got dtype {dtype}.")


def check_rank(name: str, x: Any, ranks: int | Sequence[int]) -> None:
  """Raises ValueError unless `x.ndim` is one of `ranks`."""
  ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
  ndim = np.ndim(x)
  if ndim not in ranks:
    expected = " or ".join(str(r) for r in ranks)
    raise ValueError(
      f"`{name}` must have rank {expected}, got rank {ndim} with shape {np.shape(x)}."
    )


def check_shape(name: str, x: Any, shape: Sequence[int], like: str | None = None) -> None:
  """Raises ValueError unless `x.shape == shape` (`like` names where `shape` came from)."""
  if tuple(np.shape(x)) != tuple(shape):
    source = f" (the shape of `{like}`)" if like else ""
    raise ValueError(f"`{name}` must have shape {tuple(shape)}{source}, got {tuple(np.shape(x))}.")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def check_group_size(group_size: Any, batch: int, batch_name: str = "rewards") -> None:
  """Raises unless `group_size` is a positive Python int dividing `batch`."""
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
    raise TypeError(f"`group_size` must be a static Python int, got {type(group_size).__name__}.")
  if group_size < 1:
    raise ValueError(f"`group_size` must be >= 1, got {group_size}.")
  if batch % group_size:
    raise ValueError(
      f"`group_size`={group_size} does not divide the batch dimension {batch} of `{batch_name}`."
    )


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
  """Raises ValueError unless the Python number `value` is > 0 (or >= 0)."""
  ok = value >= 0 if allow_zero else value > 0
  if not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"`{name}` must be {bound}, got {value}.")


def import_attr(path: str, what: str, expected: str = "package.module:attr") -> Any:
  """The object `"package.module:attr"` names (a user's loss, tool or environment).

  ValueError `f"{what} {path!r} ({err}); expected '{expected}'"` when the module or the attribute
  cannot be imported (`what` names the config key, e.g. "config.env.name: cannot import").
  """
  module, _, attr = path.partition(":")
  try:
    return getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError) as err:
    raise ValueError(f"{what} {path!r} ({err}); expected '{expected}'") from err
