"""Boundary checks and shared ratio arithmetic for the policy losses (private)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from postrain import _validation as V
from postrain.losses._aggregation import compute_dtype

# Log-ratios are clamped at LOG_RATIO_CLIP before exp (token level: from above only, since exp of
# a very negative value just underflows to 0): exp(20) ≈ 4.9e8 is finite in float32 and far
# outside any clip range, so the clamp only matters for numerically broken inputs.
LOG_RATIO_CLIP = 20.0


def check_mask(name: str, mask: Any, shape: tuple[int, ...], like: str) -> None:
  V.check_shape(name, mask, shape, like=like)
  dtype = jnp.result_type(mask)
  if not (
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or dtype == jnp.bool_
  ):
    raise TypeError(f"`{name}` must be a bool, integer or float array, got dtype {dtype}.")


def check_real(name: str, x: Any) -> None:
  dtype = jnp.result_type(x)
  if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
    raise TypeError(f"`{name}` must be a real (float or integer) array, got dtype {dtype}.")


def check_python_number(
  name: str, value: Any, *, allow_zero: bool = True, traced_ok: bool = True
) -> None:
  """Checks a scalar hyperparameter: Python numbers are range-checked, arrays must be scalars."""
  if isinstance(value, bool):
    raise TypeError(f"`{name}` must be a number, got bool.")
  if isinstance(value, (int, float)):
    V.check_positive(name, value, allow_zero=allow_zero)
    return
  if not traced_ok:
    raise TypeError(f"`{name}` must be a static Python number, got {type(value).__name__}.")
  if jnp.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {jnp.shape(value)}.")


def prepare_policy_inputs(
  logp: Any,
  old_logp: Any,
  advantages: Any,
  mask: Any,
  is_weights: Any = None,
):
  """Validates the shared `(logp, old_logp, advantages, mask, is_weights)` arguments.

  Returns `(logp, old_logp, adv, mask, is_weights, dtype)` with everything but `logp` cast to
  the compute dtype (float32, or float64 under x64), `old_logp`/`adv`/`is_weights`
  stop-gradiented, and `adv` of shape [B, 1] (per-sequence advantages, broadcast lazily) or
  [B, T]. `logp` keeps its dtype so its gradient keeps it too.

  Masked positions (mask == 0) of every [B, T] input are replaced by 0 with `where` (not a
  multiply: 0·NaN = NaN), so whatever they hold (NaN, ±inf from padding) changes neither the
  loss nor its gradient, which is exactly 0 there.
  """
  V.check_floating("logp", logp)
  V.check_rank("logp", logp, 2)
  shape = tuple(jnp.shape(logp))
  V.check_floating("old_logp", old_logp)
  V.check_shape("old_logp", old_logp, shape, like="logp")
  check_real("advantages", advantages)
  V.check_rank("advantages", advantages, (1, 2))
  if jnp.ndim(advantages) == 1:
    V.check_shape("advantages", advantages, shape[:1], like="logp[:, 0]")
  else:
    V.check_shape("advantages", advantages, shape, like="logp")
  check_mask("mask", mask, shape, like="logp")
  if is_weights is not None:
    V.check_floating("is_weights", is_weights)
    V.check_shape("is_weights", is_weights, shape, like="logp")
  dtype = compute_dtype(logp, old_logp)
  adv = jnp.asarray(advantages, dtype)
  if adv.ndim == 1:
    adv = adv[:, None]
  adv = jax.lax.stop_gradient(adv)
  old_logp = jax.lax.stop_gradient(jnp.asarray(old_logp, dtype))
  mask = jnp.asarray(mask, dtype)
  keep = mask != 0
  logp = select_masked(keep, logp)
  old_logp = select_masked(keep, old_logp)
  # Per-token advantages at masked tokens; per-sequence ones of rows with no token that counts.
  adv = select_masked(keep if adv.shape == keep.shape else jnp.any(keep, -1, keepdims=True), adv)
  if is_weights is not None:
    is_weights = select_masked(keep, jax.lax.stop_gradient(jnp.asarray(is_weights, dtype)))
  return logp, old_logp, adv, mask, is_weights, dtype


def select_masked(keep: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """x where `keep`, else 0 (of x's dtype): masked entries, even NaN / ±inf, reach neither the
  value nor the gradient (the VJP of `where` sends 0 to the unselected branch)."""
  return jnp.where(keep, x, jnp.zeros((), x.dtype))


def clamp(x: jnp.ndarray, lo: Any, hi: Any) -> jnp.ndarray:
  """clip(x, lo, hi) as min(max(x, lo), hi)."""
  return jnp.minimum(jnp.maximum(x, lo), hi)


def step(x: jnp.ndarray) -> jnp.ndarray:
  """[x > 0] as (1 + sign x)/2 (½ at exact ties): fusable, unlike compare + convert."""
  return 0.5 + 0.5 * jnp.sign(x)


def is_positive(x: jnp.ndarray) -> jnp.ndarray:
  """[x > 0] as max(sign x, 0) (0 at x = 0): fusable, unlike compare + convert."""
  return jnp.maximum(jnp.sign(x), 0.0)


def clamped_exp(log_ratio: jnp.ndarray) -> jnp.ndarray:
  return jnp.exp(clamp(log_ratio, -LOG_RATIO_CLIP, LOG_RATIO_CLIP))


def row_sum(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Σ_t mask·x per row: f32[B] (masked entries of x selected away, whatever they hold)."""
  return jnp.sum(jnp.where(mask != 0, x * mask, 0.0), axis=-1)


def token_mean(x: jnp.ndarray, mask: jnp.ndarray, count: jnp.ndarray) -> jnp.ndarray:
  """Σ mask·x / max(Σ mask, 1) for x of shape [B, T] or per-row [B, 1] (then Σ_b x_b·n_b).

  `count` is the per-row token count n: f32[B]. Per-row quantities never touch [B, T] memory.
  """
  total = jnp.maximum(jnp.sum(count), 1.0)
  if x.shape[-1] == 1 and mask.shape[-1] != 1:
    return jnp.sum(x[:, 0] * count) / total
  return jnp.sum(jnp.where(mask != 0, x * mask, 0.0)) / total
