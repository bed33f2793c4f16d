"""Importance weights for off-policy samples: rollout-engine correction and F-TIS.

Both produce stop-gradient weights `f32[B, T]` (zero on padding) meant for the `is_weights`
argument of `losses.ppo_clip`, which multiplies them into the per-token clipped objective:

  * `rollout_correction`: the sampler's (rollout engine's) log-probs differ from the trainer's
    for the same policy (precision, kernels, staleness); truncated (TIS) or masked (MIS) ratios
    π_train / π_rollout correct it (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; verl's rollout correction).
  * `ftis_correction`: F-TIS (arXiv 2605.22537) trains a learner on samples from a *different*
    model: capped ratios π_θ / π_gen, plus a filter that zeroes the negative advantages of
    samples far (in KL) from the learner.

Log-ratios are clamped to ±`max_log_ratio` before `exp`, so huge or -inf log-probs give finite
weights; padded positions never enter a sum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from postrain._validation import check_choice, check_floating, check_rank, check_shape
from postrain.advantages._group import float_dtype

Array = jax.Array

LEVELS = ("token", "sequence", "geometric")
MODES = ("truncate", "mask", "reject")
KL_ESTIMATORS = ("k1", "k2", "k3", "k3_gen")
KL_REDUCES = ("sum", "mean")


def _check_logps(name_a: str, logp_a, name_b: str, logp_b, mask) -> None:
  check_floating(name_a, logp_a)
  check_rank(name_a, logp_a, 2)
  check_floating(name_b, logp_b)
  check_shape(name_b, logp_b, np.shape(logp_a), like=name_a)
  check_rank("mask", mask, 2)
  check_shape("mask", mask, np.shape(logp_a), like=name_a)


def _check_max_log_ratio(max_log_ratio) -> None:
  if not max_log_ratio > 0:
    raise ValueError(f"`max_log_ratio` must be > 0, got {max_log_ratio}.")


def _masked_log_ratio(logp_a, logp_b, mask) -> tuple[Array, Array]:
  """(log(a/b) with padding set to 0, binary mask), both in the compute dtype (>= float32)."""
  logp_a, logp_b = jnp.asarray(logp_a), jnp.asarray(logp_b)
  dtype = jnp.promote_types(float_dtype(logp_a), float_dtype(logp_b))
  valid = jnp.asarray(mask) != 0
  log_ratio = jnp.where(valid, logp_a.astype(dtype) - logp_b.astype(dtype), 0.0)
  return log_ratio, valid.astype(dtype)


def _level_log_ratio(log_ratio, valid, level: str, max_log_ratio: float) -> Array:
  """Clamped log-ratio per token (`token`) or per row broadcast to [B, T] (`sequence`, `geometric`)."""
  if level == "token":
    out = log_ratio
  else:
    total = jnp.sum(log_ratio, axis=-1, keepdims=True)
    if level == "geometric":
      total = total / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1.0)
    out = jnp.broadcast_to(total, log_ratio.shape)
  return jnp.clip(out, -max_log_ratio, max_log_ratio)


def rollout_correction(
  logp_train: Array,
  logp_rollout: Array,
  mask: Array,
  *,
  level: str = "token",
  mode: str = "truncate",
  lo: float | None = None,
  hi: float = 2.0,
  max_log_ratio: float = 20.0,
) -> Array:
  """Importance weights correcting the rollout engine's sampling distribution.

  With per-token ratio ρ_t = π_train(y_t) / π_rollout(y_t) (both for the same behaviour policy;
  π_train is the trainer's recomputation, π_rollout the sampler's log-probs):

    level="token":      ρ = ρ_t
    level="sequence":   ρ = Π_t ρ_t = exp(Σ_t log ρ_t)           (broadcast over the row)
    level="geometric":  ρ = exp(Σ_t log ρ_t / max(L, 1))       (broadcast over the row)

    mode="truncate":  w = clip(ρ, lo, hi)              TIS; lo defaults to 0 (upper cap only)
    mode="mask":      w = ρ · 1[lo <= ρ <= hi]         MIS; lo defaults to 1 / hi
    mode="reject":    w = 1[lo <= ρ <= hi]             rejection only, no reweighting

  The weights are stop-gradient constants and 0 on padding. Masked/rejected tokens still count in
  `ppo_clip`'s token denominator; to drop them from it too, pass `mask * (w > 0)` as the mask.

  Args:
    logp_train: f32[B, T] trainer log-probs of the sampled tokens.
    logp_rollout: f32[B, T] the sampler's log-probs of the same tokens.
    mask: [B, T] response mask (nonzero = counts).
    level: "token" | "sequence" | "geometric".
    mode: "truncate" | "mask" | "reject".
    lo: lower bound (>= 0, < hi); None picks the mode's default above.
    hi: upper bound / cap (> 0).
    max_log_ratio: |log ρ| is clamped to this before exp.

  Returns:
    f32[B, T] weights for `losses.ppo_clip(..., is_weights=w)`.
  """
  _check_logps("logp_train", logp_train, "logp_rollout", logp_rollout, mask)
  check_choice("level", level, LEVELS)
  check_choice("mode", mode, MODES)
  _check_max_log_ratio(max_log_ratio)
  if lo is None:
    lo = 0.0 if mode == "truncate" else 1.0 / hi if hi > 0 else 0.0
  if not (hi > 0 and 0 <= lo < hi):
    raise ValueError(f"`lo` and `hi` must satisfy 0 <= lo < hi and hi > 0, got lo={lo}, hi={hi}.")
  log_ratio, valid = _masked_log_ratio(logp_train, logp_rollout, mask)
  ratio = jnp.exp(_level_log_ratio(log_ratio, valid, level, max_log_ratio))
  inside = ((ratio >= lo) & (ratio <= hi)).astype(ratio.dtype)
  if mode == "truncate":
    weights = jnp.clip(ratio, lo, hi)
  elif mode == "mask":
    weights = ratio * inside
  else:
    weights = inside
  return jax.lax.stop_gradient(weights * valid)


def sequence_kl(
  learner_logp: Array,
  generator_logp: Array,
  mask: Array,
  *,
  estimator: str = "k3",
  reduce: str = "sum",
  max_log_ratio: float = 20.0,
) -> Array:
  """Per-sample KL(π_θ ‖ π_gen) estimate from the sampled tokens (F-TIS filter, arXiv 2605.22537).

  With d_t = log π_gen(y_t) - log π_θ(y_t) (clamped to ±max_log_ratio):

    k1:      -d_t                 k2: d_t² / 2
    k3:      exp(d_t) - d_t - 1   (the TRL/GRPO per-token KL with π_gen as reference; default)
    k3_gen:  exp(-d_t) + d_t - 1  (unbiased for KL(π_gen ‖ π_θ) under the generator's samples)

  Reading chosen: the paper's estimator is not visible; k3 is the GRPO-code convention for
  "D_KL(π_θ ‖ π_ref)" and is large exactly when the learner would rarely produce the sample.
  k1 is signed and is *negative* for such samples, so it is a poor filter statistic.
  `reduce="sum"` (nats per sequence; the threshold g = 50 fits a sum) or `"mean"` per token.

  Args:
    learner_logp: f32[B, T] learner log-probs of the sampled tokens.
    generator_logp: f32[B, T] the generator's log-probs of the same tokens.
    mask: [B, T] response mask.

  Returns:
    f32[B] stop-gradient KL estimates (0 for all-masked rows).
  """
  _check_logps("learner_logp", learner_logp, "generator_logp", generator_logp, mask)
  check_choice("estimator", estimator, KL_ESTIMATORS)
  check_choice("reduce", reduce, KL_REDUCES)
  _check_max_log_ratio(max_log_ratio)
  return _sequence_kl(learner_logp, generator_logp, mask, estimator, reduce, max_log_ratio)


def _sequence_kl(learner_logp, generator_logp, mask, estimator, reduce, max_log_ratio) -> Array:
  log_ratio, valid = _masked_log_ratio(generator_logp, learner_logp, mask)
  d = jnp.clip(log_ratio, -max_log_ratio, max_log_ratio)
  if estimator == "k1":
    kl = -d
  elif estimator == "k2":
    kl = 0.5 * jnp.square(d)
  elif estimator == "k3":
    kl = jnp.expm1(d) - d
  else:
    kl = jnp.expm1(-d) + d
  total = jnp.sum(kl * valid, axis=-1)
  if reduce == "mean":
    total = total / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
  return jax.lax.stop_gradient(total)


class FTISResult(NamedTuple):
  """Output of `ftis_correction` (a pytree, so it passes through jit)."""

  is_weights: Array  # f32[B, T] capped, stop-gradient weights, 0 on padding
  advantages: Array  # f32[B] (or f32[B, T]) with filtered negative advantages zeroed
  filtered: Array  # bool[B] samples whose negative advantage was zeroed
  kl: Array  # f32[B] the per-sample KL estimate used by the filter
  metrics: dict[str, Array]  # scalars


def ftis_correction(
  learner_logp: Array,
  generator_logp: Array,
  advantages: Array,
  mask: Array,
  *,
  cap: float = 2.0,
  kl_threshold: float = 50.0,
  level: str = "token",
  use_is: bool = True,
  use_filter: bool = True,
  kl_estimator: str = "k3",
  kl_reduce: str = "sum",
  max_log_ratio: float = 20.0,
) -> FTISResult:
  """F-TIS: capped generator->learner importance weights and the KL filter (arXiv 2605.22537).

    ρ̄_{i,t} = sg[min(π_θ(y_{i,t}) / π_gen(y_{i,t}), C)]          (level="token", the default)
    Â_i     = A_i  if A_i > 0 or KL_i < g,   else 0            (KL_i from `sequence_kl`)

  The loss (with R = π_θ / sg[π_θ], or π_θ / π_old over several epochs) is

    losses.ppo_clip(logp, old_logp, res.advantages, mask, is_weights=res.is_weights,
                    agg="seq_mean_token_mean", ...)

  (the paper's (1/G) Σ_i (1/|a_i|) Σ_t normaliser). Filtering happens after the generator's group
  normalisation, so zeroed samples still count in the statistics that produced A_i. When the
  learner is the generator, ρ̄ = 1 and KL = 0: nothing changes and the loss is plain GRPO.

  Readings chosen: per-token ρ̄ (the restated formula); `level="sequence"` caps
  exp(Σ_t log ρ_t) and `"geometric"` caps exp(mean_t log ρ_t) per row. A sample is filtered when
  A_i < 0 and KL_i >= g. Token-level advantages f32[B, T] are accepted: negative entries of
  filtered rows are zeroed. Ablations: `use_is=False` (NoIS: weights = mask), `use_filter=False`.

  Args:
    learner_logp: f32[B, T] learner log-probs of the sampled tokens.
    generator_logp: f32[B, T] generator log-probs (received with the samples).
    advantages: f32[B] (or f32[B, T]) advantages, normalised at the generator.
    mask: [B, T] response mask.
    cap: C > 0 (paper: 2).
    kl_threshold: g (paper: 50, nats per sequence with `kl_reduce="sum"`).
    level: "token" | "sequence" | "geometric".
    kl_estimator, kl_reduce: see `sequence_kl`.

  Returns:
    FTISResult(is_weights, advantages, filtered, kl, metrics) with scalar metrics
    `filtered_count`, `filtered_frac`, `is_weight_mean`, `is_weight_max`, `capped_frac`
    (over valid tokens) and `kl_mean`.
  """
  _check_logps("learner_logp", learner_logp, "generator_logp", generator_logp, mask)
  check_floating("advantages", advantages)
  check_rank("advantages", advantages, (1, 2))
  batch_shape = np.shape(learner_logp)
  want = batch_shape[:1] if np.ndim(advantages) == 1 else batch_shape
  check_shape("advantages", advantages, want, like="learner_logp")
  check_choice("level", level, LEVELS)
  check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
  check_choice("kl_reduce", kl_reduce, KL_REDUCES)
  _check_max_log_ratio(max_log_ratio)
  if not cap > 0:
    raise ValueError(f"`cap` must be > 0, got {cap}.")

  log_ratio, valid = _masked_log_ratio(learner_logp, generator_logp, mask)
  ratio = jnp.exp(_level_log_ratio(log_ratio, valid, level, max_log_ratio))
  weights = jnp.minimum(ratio, cap) * valid if use_is else valid
  weights = jax.lax.stop_gradient(weights)

  kl = _sequence_kl(learner_logp, generator_logp, mask, kl_estimator, kl_reduce, max_log_ratio)
  adv = jnp.asarray(advantages)
  adv = adv.astype(float_dtype(adv))
  far = (kl >= kl_threshold) if use_filter else jnp.zeros_like(kl, dtype=bool)
  if adv.ndim == 1:
    filtered = far & (adv < 0)
    adv_out = jnp.where(filtered, 0.0, adv)
  else:
    negative = adv < 0
    filtered = far & jnp.any(negative & (valid > 0), axis=-1)
    adv_out = jnp.where(far[:, None] & negative, 0.0, adv)

  num_valid = jnp.maximum(jnp.sum(valid), 1.0)
  metrics = {
    "filtered_count": jnp.sum(filtered.astype(jnp.float32)),
    "filtered_frac": jnp.mean(filtered.astype(jnp.float32)),
    "is_weight_mean": jnp.sum(weights) / num_valid,
    "is_weight_max": jnp.max(weights),
    "capped_frac": jnp.sum((ratio > cap) * valid) / num_valid if use_is else jnp.zeros(()),
    "kl_mean": jnp.mean(kl),
  }
  return FTISResult(weights, adv_out, filtered, kl, metrics)
