"""ConSPO: group-wise InfoNCE over length-normalised sequence log-probs (arXiv 2605.12969)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from postrain import _validation as V
from postrain.losses import _inputs as I
from postrain.losses._aggregation import compute_dtype

MARGIN_KINDS = ("cosine", "linear")


def sequence_scores(logp: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Length-normalised sequence log-prob s_i = Σ_t m·logp / max(Σ_t m, 1) (ConSPO §2.2): f32[B].

  Args:
    logp: f32[B, T] log π_θ of the sampled tokens. mask: f32|bool[B, T].
  """
  V.check_floating("logp", logp)
  V.check_rank("logp", logp, 2)
  I.check_mask("mask", mask, tuple(jnp.shape(logp)), like="logp")
  dtype = compute_dtype(logp)
  mask = jnp.asarray(mask, dtype)
  return _scores(logp, mask, dtype)[0]


def _scores(logp, mask, dtype):
  count = jnp.sum(mask, axis=-1)
  # Padding may hold anything (NaN, -inf): selected away, so it reaches neither value nor gradient.
  total = jnp.sum(jnp.where(mask != 0, logp.astype(dtype) * mask, 0.0), axis=-1)
  return total / jnp.maximum(count, 1.0), count


def conspo(
  logp: jnp.ndarray,
  mask: jnp.ndarray,
  rewards: jnp.ndarray,
  *,
  group_size: int,
  tau: float = 10.0,
  margin: float | jnp.ndarray = 0.01,
  pos_threshold: float = 0.5,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """ConSPO loss: each positive against its group's negatives, InfoNCE with a margin (Eq. 13).

  With s_i the length-normalised log-prob of rollout i (`sequence_scores`), P/N the positives and
  negatives of a group (N⁺ = |P|, N⁻ = |N|) and m the margin, the per-group loss is::

    L_q = −(1/N⁺) Σ_{i∈P} τ·log[ e^{(s_i−m)/τ} / (e^{(s_i−m)/τ} + Σ_{j∈N} e^{s_j/τ}) ]
        =  (τ/N⁺) Σ_{i∈P} log(1 + Σ_{j∈N} exp((s_j − s_i + m)/τ))

  with the paper's τ prefactor (gradients free of 1/τ: ∂L/∂s_i⁺ = −(1−P_i⁺)/N⁺). Only the
  group's negatives are in the denominator and the margin is subtracted from the positive. The
  batch loss is the mean of L_q over groups with N⁺ ≥ 1 and N⁻ ≥ 1 (the paper drops groups
  without contrast; their batch aggregation is unstated, the note recommends this mean). Groups
  without contrast contribute exactly zero, and a batch in which no group has contrast gives loss
  0 and zero gradients. Masked positions may hold any finite value. Paper defaults: τ = 10, M = 0.01 (nats/token, reached through `margin_schedule`
  with α = 0.3).

  Readings chosen (parameters where uncertain): a rollout is positive when
  `reward > pos_threshold` (the paper has binary rewards; 0.5 splits {0, 1}), negative otherwise;
  rows with no response token (Σ_t mask = 0, e.g. padding) are neither, since their score 0 would
  be the highest possible log-prob. Scores use π_θ directly, no importance ratio (on-policy).

  Args:
    logp: f32[B, T] log π_θ of the sampled tokens, groups contiguous (B = P·G).
    mask: f32|bool[B, T] response mask.
    rewards: f32[B] verifier rewards.
    group_size: static G dividing B.
    tau: contrastive temperature τ > 0.
    margin: m ≥ 0, a Python number or a traced scalar (e.g. `margin_schedule(step, ...)`).
    pos_threshold: rewards strictly above it are positives.

  Returns:
    (loss f32[], aux): `contrast_frac` (fraction of groups with both positives and negatives),
    `pos_score` / `neg_score` (mean score of positive / negative rows with tokens; 0 if none).
  """
  V.check_floating("logp", logp)
  V.check_rank("logp", logp, 2)
  shape = tuple(jnp.shape(logp))
  I.check_mask("mask", mask, shape, like="logp")
  I.check_real("rewards", rewards)
  V.check_rank("rewards", rewards, 1)
  V.check_shape("rewards", rewards, shape[:1], like="logp[:, 0]")
  V.check_group_size(group_size, shape[0], batch_name="logp")
  I.check_python_number("tau", tau, allow_zero=False)
  I.check_python_number("margin", margin)
  if isinstance(pos_threshold, bool) or not isinstance(pos_threshold, (int, float)):
    if jnp.ndim(pos_threshold) != 0:
      raise ValueError(f"`pos_threshold` must be a scalar, got shape {jnp.shape(pos_threshold)}.")

  dtype = compute_dtype(logp)
  mask = jnp.asarray(mask, dtype)
  scores, count = _scores(logp, mask, dtype)
  has_tokens = count > 0
  rewards = jax.lax.stop_gradient(jnp.asarray(rewards, dtype))
  pos = has_tokens & (rewards > pos_threshold)
  neg = has_tokens & ~(rewards > pos_threshold)

  g = group_size
  s = scores.reshape(-1, g)  # [P, G]
  pos_g, neg_g = pos.reshape(-1, g), neg.reshape(-1, g)
  # z[p, i, j] = (s_j − s_i + m)/τ for negatives j; index 0 of the last axis is the "1 +" term.
  z = (s[:, None, :] - s[:, :, None] + margin) / tau  # [P, G(i), G(j)]
  z = jnp.where(neg_g[:, None, :], z, 0.0)  # finite filler, weight 0 below
  zeros = jnp.zeros((*z.shape[:-1], 1), dtype)
  ones = jnp.ones((*z.shape[:-1], 1), dtype)
  weights = jnp.broadcast_to(neg_g[:, None, :], z.shape).astype(dtype)
  per_pos = tau * jax.nn.logsumexp(
    jnp.concatenate([zeros, z], axis=-1), axis=-1, b=jnp.concatenate([ones, weights], axis=-1)
  )  # [P, G]: τ log(1 + Σ_j e^{z_ij})
  n_pos = jnp.sum(pos_g, axis=-1).astype(dtype)
  n_neg = jnp.sum(neg_g, axis=-1).astype(dtype)
  valid = (n_pos > 0) & (n_neg > 0)
  group_loss = jnp.sum(jnp.where(pos_g, per_pos, 0.0), axis=-1) / jnp.maximum(n_pos, 1.0)
  group_loss = jnp.where(valid, group_loss, 0.0)
  num_valid = jnp.sum(valid.astype(dtype))
  loss = jnp.sum(group_loss) / jnp.maximum(num_valid, 1.0)

  s_sg = jax.lax.stop_gradient(scores)
  posf, negf = pos.astype(dtype), neg.astype(dtype)
  aux = {
    "contrast_frac": num_valid / valid.shape[0],
    "pos_score": jnp.sum(s_sg * posf) / jnp.maximum(jnp.sum(posf), 1.0),
    "neg_score": jnp.sum(s_sg * negf) / jnp.maximum(jnp.sum(negf), 1.0),
  }
  return loss, aux


def margin_schedule(
  step: Any,
  total_steps: int,
  *,
  max_margin: float = 0.01,
  warmup_frac: float = 0.3,
  kind: str = "cosine",
) -> jnp.ndarray:
  """ConSPO's curriculum margin m_t (arXiv 2605.12969, §2.4), jit-safe with a traced `step`.

  λ = step / total_steps, ρ = clip(λ / α, 0, 1)::

    "cosine"  m = (M/2)(1 − cos(π ρ))    the paper's half-cosine warm-up
    "linear"  m = M ρ

  so m rises from 0 to M over the first α of training and stays at M. Paper defaults:
  M = 0.01, α = 0.3 (and τ = 10 in `conspo`).

  Args:
    step: current step (Python number or traced scalar).
    total_steps: total training steps (> 0).
    max_margin: M ≥ 0.
    warmup_frac: α in (0, 1].
    kind: "cosine" or "linear" (static).

  Returns:
    f32[] margin.
  """
  V.check_choice("kind", kind, MARGIN_KINDS)
  I.check_python_number("total_steps", total_steps, allow_zero=False)
  I.check_python_number("max_margin", max_margin)
  I.check_python_number("warmup_frac", warmup_frac, allow_zero=False)
  if isinstance(warmup_frac, (int, float)) and warmup_frac > 1:
    raise ValueError(f"`warmup_frac` must be in (0, 1], got {warmup_frac}.")
  if jnp.ndim(step) != 0:
    raise ValueError(f"`step` must be a scalar, got shape {jnp.shape(step)}.")
  dtype = (
    compute_dtype(step) if jnp.issubdtype(jnp.result_type(step), jnp.floating) else jnp.float32
  )
  progress = jnp.asarray(step, dtype) / jnp.asarray(total_steps, dtype)
  rho = jnp.clip(progress / warmup_frac, 0.0, 1.0)
  if kind == "cosine":
    return 0.5 * max_margin * (1.0 - jnp.cos(jnp.pi * rho))
  return max_margin * rho
