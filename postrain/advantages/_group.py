"""Group-relative outcome advantages: GRPO, Dr.GRPO, batch-std scaling, RLOO.

Batch layout (DESIGN.md): rewards are a flat `f32[B]` with the `G = group_size` rollouts of each
prompt contiguous, `B = P * G`; functions reshape to `[P, G]` inside. A group whose rewards are all
equal carries no learning signal and gets advantages that are exactly zero (never NaN), whatever
the floating-point rounding of its mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from postrain._validation import (
  check_choice,
  check_floating,
  check_group_size,
  check_positive,
  check_rank,
)

Array = jax.Array

SCALES = ("group", "batch", "none")


def float_dtype(x) -> jnp.dtype:
  """The compute dtype: the input's float dtype promoted to at least float32."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return jnp.promote_types(dtype, jnp.float32)


def _grouped(x: Array, group_size: int) -> Array:
  """`[B, ...] -> [P, G, ...]`."""
  return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])


def _constant_groups(xg: Array) -> Array:
  """bool[P, 1, ...]: True where every rollout of the group has the same value (exact test)."""
  return jnp.max(xg, axis=1, keepdims=True) == jnp.min(xg, axis=1, keepdims=True)


def _safe_std(x: Array, axis: int) -> Array:
  """Population std along `axis` (keepdims) whose gradient stays finite at zero variance."""
  centered = x - jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.mean(jnp.square(centered), axis=axis, keepdims=True)
  positive = var > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def _safe_div(num: Array, den: Array) -> Array:
  """num / den, with den == 0 replaced by 1 so neither value nor gradient becomes inf/NaN."""
  return num / jnp.where(den > 0, den, 1.0)


def normalize_groups(x: Array, group_size: int, scale: str, eps: float) -> Array:
  """Group-centred (and optionally scaled) values of `x: float[B, ...]` along the group axis.

  Unvalidated internal helper shared with SCRL, which normalises each subproblem position
  (`x: f32[B, K]`) independently. Columns of a group with all-equal values give exactly 0.
  """
  xg = _grouped(x, group_size)
  centered = xg - jnp.mean(xg, axis=1, keepdims=True)
  if scale == "group":
    adv = _safe_div(centered, _safe_std(xg, axis=1) + eps)
  elif scale == "batch":
    # One std over all B rows (per trailing position), broadcast over [P, G].
    adv = _safe_div(centered, _safe_std(x, axis=0)[None] + eps)
  else:
    adv = centered
  adv = jnp.where(_constant_groups(xg), 0.0, adv)
  return adv.reshape(x.shape)


def _check_rewards(rewards, group_size: int, *, require_float: bool = True) -> None:
  if require_float:
    check_floating("rewards", rewards)
  check_rank("rewards", rewards, 1)
  check_group_size(group_size, np.shape(rewards)[0], "rewards")


def group_normalized(
  rewards: Array,
  *,
  group_size: int,
  scale: str = "group",
  eps: float = 1e-6,
) -> Array:
  """Group-normalised outcome advantages (GRPO, Dr.GRPO, batch-std).

  With the rewards of prompt p's G rollouts `r[p, 1..G]`, mean `μ_p` and population std `σ_p`:

    scale="group":  A[p, i] = (r[p, i] - μ_p) / (σ_p + eps)   GRPO (arXiv 2402.03300)
    scale="none":   A[p, i] =  r[p, i] - μ_p                  Dr.GRPO (arXiv 2503.20783)
    scale="batch":  A[p, i] = (r[p, i] - μ_p) / (σ_B + eps)   group mean, batch std (arXiv 2508.08221)

  where `σ_B` is the population std of all B rewards. Groups whose rewards are all equal get
  exactly 0 (not a rounding residue of `r - μ`), so they never produce NaN or gradient noise.

  Args:
    rewards: f32[B] scalar rewards, groups contiguous (`B = P * G`).
    group_size: static G >= 2; must divide B (G = 1 is refused: every advantage would be 0).
    scale: "group" | "batch" | "none".
    eps: added to the std in the denominator (>= 0).

  Returns:
    f32[B] advantages (float64 if `rewards` is float64).
  """
  _check_rewards(rewards, group_size)
  if group_size < 2:  # r − μ = 0 for a group of one: every advantage 0, nothing learned
    raise ValueError(
      f"`group_size` must be >= 2 for group_normalized (a group of one sample has advantage "
      f"r - mean = 0 whatever its reward), got {group_size}."
    )
  check_choice("scale", scale, SCALES)
  check_positive("eps", eps, allow_zero=True)
  rewards = jnp.asarray(rewards)
  return normalize_groups(rewards.astype(float_dtype(rewards)), group_size, scale, eps)


def rloo(rewards: Array, *, group_size: int) -> Array:
  """REINFORCE leave-one-out advantages (RLOO, arXiv 2402.14740).

    A[p, i] = r[p, i] - (1 / (G - 1)) Σ_{j ≠ i} r[p, j]  =  G / (G - 1) · (r[p, i] - μ_p)

  Groups with all-equal rewards get exactly 0.

  Args:
    rewards: f32[B] scalar rewards, groups contiguous.
    group_size: static G >= 2 dividing B (a single rollout has no leave-one-out baseline).

  Returns:
    f32[B] advantages.
  """
  _check_rewards(rewards, group_size)
  if group_size < 2:
    raise ValueError(f"`group_size` must be >= 2 for RLOO (leave-one-out), got {group_size}.")
  rewards = jnp.asarray(rewards)
  rg = _grouped(rewards.astype(float_dtype(rewards)), group_size)
  baseline = (jnp.sum(rg, axis=1, keepdims=True) - rg) / (group_size - 1)
  adv = jnp.where(_constant_groups(rg), 0.0, rg - baseline)
  return adv.reshape(rewards.shape)


def zero_variance_groups(rewards: Array, *, group_size: int) -> Array:
  """bool[B]: True for each row whose group has all-equal rewards (no GRPO signal).

  DAPO's dynamic sampling (arXiv 2503.14476) drops or resamples these groups. Any numeric or
  bool dtype is accepted (only equality is tested).

  Args:
    rewards: [B] rewards, groups contiguous.
    group_size: static G dividing B.
  """
  _check_rewards(rewards, group_size, require_float=False)
  rg = _grouped(jnp.asarray(rewards), group_size)
  return jnp.broadcast_to(_constant_groups(rg), rg.shape).reshape(-1)


def zero_variance_fraction(rewards: Array, *, group_size: int) -> Array:
  """f32[]: fraction of groups whose rewards are all equal (a DAPO / GRPO health metric)."""
  _check_rewards(rewards, group_size, require_float=False)
  rg = _grouped(jnp.asarray(rewards), group_size)
  return jnp.mean(_constant_groups(rg).astype(jnp.float32))
