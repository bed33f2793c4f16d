"""Temporal credit scheduling (arXiv 2605.25381, "Not only where, but when").

The credit-allocation rule itself is scheduled over training. The main instance, TP-Schedule,
trains early on only the last fraction of each response and widens the trained window backwards
until the whole response is trained (plain GRPO) at `end` of training. The schedule value
ρ ∈ [0, ρ0] is the fraction of each response that is context-only (no credit).

All functions take the training `progress` (step / total_steps, in [0, 1]) as a scalar that may
be traced, so one compiled train step serves the whole run. The note's step floors
(k_min = ⌊K r_min⌋) are dropped: progress is continuous, which differs by less than one step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from postrain._validation import check_choice, check_floating, check_rank, check_shape
from postrain.advantages._group import float_dtype

Array = jax.Array

SCHEDULES = ("linear", "sigmoid", "gamma")


def _check_progress(progress) -> None:
  if not isinstance(progress, (int, float)) or isinstance(progress, bool):
    check_floating("progress", progress)
  check_rank("progress", progress, 0)


def _check_schedule(schedule, rho0, start, end, gamma, sharpness) -> None:
  check_choice("schedule", schedule, SCHEDULES)
  if not 0.0 <= rho0 <= 1.0:
    raise ValueError(f"`rho0` must be in [0, 1], got {rho0}.")
  if not 0.0 <= start < end:
    raise ValueError(f"`start` and `end` must satisfy 0 <= start < end, got {start}, {end}.")
  if gamma <= 0 or sharpness <= 0:
    raise ValueError(f"`gamma` and `sharpness` must be > 0, got {gamma}, {sharpness}.")


def _ratio(progress, schedule, rho0, start, end, gamma, sharpness) -> Array:
  progress = jnp.asarray(progress)
  p = jnp.clip((progress.astype(float_dtype(progress)) - start) / (end - start), 0.0, 1.0)
  if schedule == "linear":
    return rho0 * (1.0 - p)
  if schedule == "sigmoid":

    def sig(q):
      return jax.nn.sigmoid(-sharpness * (q - 0.5))  # 1 / (1 + exp(s (q - 0.5))), decreasing

    return rho0 * (sig(p) - sig(1.0)) / (sig(0.0) - sig(1.0))
  return (rho0 * (1.0 - p)) ** gamma


def schedule_ratio(
  progress: Array | float,
  *,
  schedule: str = "linear",
  rho0: float = 0.99,
  start: float = 0.0,
  end: float = 0.8,
  gamma: float = 2.0,
  sharpness: float = 8.0,
) -> Array:
  """The schedule value ρ (fraction of each response without credit) at training `progress`.

    p = clip((progress - start) / (end - start), 0, 1)
    linear:   ρ = ρ0 (1 - p)
    sigmoid:  ρ = ρ0 (σ(p) - σ(1)) / (σ(0) - σ(1)),  σ(q) = 1 / (1 + exp(sharpness (q - 0.5)))
    gamma:    ρ = (ρ0 (1 - p))^γ   (the official code raises ρ0 too, so ρ(start) = ρ0^γ)

  ρ decreases from its start value to 0 at `end` and stays 0 afterwards (arXiv 2605.25381,
  defaults ρ0 = 0.99, start = 0, end = 0.8, linear).

  Args:
    progress: f32[] training progress in [0, 1] (may be traced).
    schedule: "linear" | "sigmoid" | "gamma".
    rho0, start, end, gamma, sharpness: static schedule constants.

  Returns:
    f32[] ρ.
  """
  _check_progress(progress)
  _check_schedule(schedule, rho0, start, end, gamma, sharpness)
  return _ratio(progress, schedule, rho0, start, end, gamma, sharpness)


def _response_mask(mask) -> tuple[Array, Array]:
  check_rank("mask", mask, 2)
  mask = jnp.asarray(mask)
  dtype = float_dtype(mask)
  return mask.astype(dtype), (mask != 0).astype(dtype)


def temporal_window(
  mask: Array,
  progress: Array | float,
  *,
  schedule: str = "linear",
  rho0: float = 0.99,
  start: float = 0.0,
  end: float = 0.8,
  gamma: float = 2.0,
  sharpness: float = 8.0,
) -> Array:
  """TP-Schedule token weights: the trained suffix of each response (arXiv 2605.25381).

  With `L_i = #{t : mask[i, t] != 0}`, `pos[i, t]` the index of token t among row i's response
  tokens (robust to left padding and mask holes) and ρ = `schedule_ratio(progress, ...)`:

    P_i = min(⌊ρ L_i⌋, L_i - 1)
    window[i, t] = mask[i, t] · 1[pos[i, t] >= P_i]

  Early (ρ ≈ 0.99) only the last ~1% of each response is trained, at least one token per
  non-empty response; from `end` on ρ = 0 and the window equals `mask`. The result multiplies
  the mask, so it is a drop-in loss mask: pass it as `mask` to `losses.ppo_clip` for the paper's
  token mean over trained tokens, or keep the full `mask` and pass the window as `is_weights`
  for a fixed denominator (the note's alternative).

  Args:
    mask: [B, T] response mask (bool or float; nonzero = response token).
    progress: f32[] training progress in [0, 1] (may be traced).
    schedule, rho0, start, end, gamma, sharpness: see `schedule_ratio`.

  Returns:
    f32[B, T] scheduled mask.
  """
  _check_progress(progress)
  _check_schedule(schedule, rho0, start, end, gamma, sharpness)
  values, binary = _response_mask(mask)
  rho = _ratio(progress, schedule, rho0, start, end, gamma, sharpness)
  dtype = jnp.promote_types(values.dtype, rho.dtype)
  values, binary, rho = values.astype(dtype), binary.astype(dtype), rho.astype(dtype)
  length = jnp.sum(binary, axis=-1, keepdims=True)
  prefix = jnp.minimum(jnp.floor(rho * length), length - 1)
  pos = jnp.cumsum(binary, axis=-1) - 1
  return values * (pos >= prefix).astype(values.dtype)


def forking_token_window(
  entropy: Array,
  mask: Array,
  progress: Array | float,
  *,
  schedule: str = "linear",
  rho0: float = 0.99,
  start: float = 0.0,
  end: float = 0.8,
  gamma: float = 2.0,
  sharpness: float = 8.0,
) -> Array:
  """Scheduled forking-token mask: the top-k entropy tokens of each response (arXiv 2605.25381).

    k_i = ⌈(1 - ρ) L_i⌉,   window[i, t] = mask[i, t] · 1[H[i, t] is among row i's k_i largest]

  Ties are broken by position (earlier first). Training moves from the ~1% highest-entropy
  ("forking") tokens to all tokens at `end`.

  Args:
    entropy: f32[B, T] token entropies of the old policy (treated as constants).
    mask: [B, T] response mask.
    progress: f32[] training progress (may be traced).

  Returns:
    f32[B, T] scheduled mask.
  """
  _check_progress(progress)
  _check_schedule(schedule, rho0, start, end, gamma, sharpness)
  check_floating("entropy", entropy)
  check_rank("entropy", entropy, 2)
  check_shape("mask", mask, np.shape(entropy), like="entropy")
  values, binary = _response_mask(mask)
  rho = _ratio(progress, schedule, rho0, start, end, gamma, sharpness)
  dtype = jnp.promote_types(values.dtype, rho.dtype)
  values, binary, rho = values.astype(dtype), binary.astype(dtype), rho.astype(dtype)
  k = jnp.ceil((1.0 - rho) * jnp.sum(binary, axis=-1, keepdims=True))
  ent = jax.lax.stop_gradient(jnp.asarray(entropy).astype(jnp.float32))
  score = jnp.where(binary > 0, ent, -jnp.inf)
  order = jnp.argsort(-score, axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1, stable=True)
  return values * (ranks < k).astype(values.dtype)


def entropy_shaped_advantages(
  advantages: Array,
  entropy: Array,
  mask: Array,
  progress: Array | float,
  *,
  alpha: float = 0.4,
  kappa: float = 2.0,
  schedule: str = "linear",
  rho0: float = 0.99,
  start: float = 0.0,
  end: float = 0.8,
  gamma: float = 2.0,
  sharpness: float = 8.0,
) -> Array:
  """Scheduled entropy-shaped token advantages (arXiv 2605.25381, after arXiv 2506.14758).

    A'[i, t] = (A_i + ρ · min(α · sg[H[i, t]], |A_i| / κ)) · mask[i, t]

  The bonus is capped at |A_i| / κ (so with κ > 1 it never flips a negative advantage's sign)
  and fades to 0 with ρ.

  Args:
    advantages: f32[B] sequence advantages.
    entropy: f32[B, T] token entropies (stop-gradient is applied).
    mask: [B, T] response mask.
    progress: f32[] training progress (may be traced).
    alpha, kappa: bonus scale and cap divisor (> 0).

  Returns:
    f32[B, T] token advantages.
  """
  _check_progress(progress)
  _check_schedule(schedule, rho0, start, end, gamma, sharpness)
  check_floating("advantages", advantages)
  check_rank("advantages", advantages, 1)
  check_floating("entropy", entropy)
  check_rank("entropy", entropy, 2)
  check_shape("advantages", advantages, np.shape(entropy)[:1], like="entropy.shape[:1]")
  check_shape("mask", mask, np.shape(entropy), like="entropy")
  if alpha < 0 or kappa <= 0:
    raise ValueError(f"`alpha` must be >= 0 and `kappa` > 0, got {alpha}, {kappa}.")
  values, _ = _response_mask(mask)
  adv = jnp.asarray(advantages)
  dtype = jnp.promote_types(values.dtype, float_dtype(adv))
  adv = adv.astype(dtype)[:, None]
  rho = _ratio(progress, schedule, rho0, start, end, gamma, sharpness).astype(dtype)
  ent = jax.lax.stop_gradient(jnp.asarray(entropy).astype(dtype))
  bonus = jnp.minimum(alpha * ent, jnp.abs(adv) / kappa)
  return (adv + rho * bonus) * values.astype(dtype)
