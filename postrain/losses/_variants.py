"""Policy-loss variants other RL libraries ship: CISPO, SAPO, GMPO."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from postrain.losses import _inputs as I
from postrain.losses._aggregation import aggregate_unchecked, check_agg, masked_mean


def _kl_aux(log_r: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """approx_kl as in `ppo_clip`: masked mean of ½(logp − old_logp)² (k2)."""
  return 0.5 * masked_mean(jnp.square(jax.lax.stop_gradient(log_r)), mask)


def cispo(
  logp: jnp.ndarray,
  old_logp: jnp.ndarray,
  advantages: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  eps_high: float,
  eps_low: float | None = None,
  agg: str = "token_mean",
  is_weights: jnp.ndarray | None = None,
  max_len: float | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """CISPO: clipped, stop-gradient importance weight times advantage times log-prob.

  MiniMax-M1 (arXiv 2506.13585), Eq. 4–5::

    ℓ_{i,t} = −sg( clip(r_{i,t}, 1 − eps_low, 1 + eps_high) ) · A_{i,t} · logp_{i,t},
    r_{i,t} = exp(logp − old_logp)

  aggregated with `agg` (the paper's 1/Σ|o_i| normaliser is "token_mean"). Unlike PPO no token is
  dropped: every token keeps a REINFORCE gradient, the weight is only capped. The paper sets no
  lower bound ("ε_low large") and tunes only eps_high, hence `eps_low=None` (no lower clip).

  Args:
    logp, old_logp: f32[B, T] current / old log-probs (old is constant).
    advantages: f32[B] or f32[B, T].
    mask: f32|bool[B, T].
    eps_high: upper bound of the IS weight, r ≤ 1 + eps_high.
    eps_low: None (no lower bound) or r ≥ 1 − eps_low.
    agg, max_len: aggregation (see `aggregate`).
    is_weights: optional constant f32[B, T] extra per-token weights.

  Returns:
    (loss f32[], aux): `clip_frac_high`, `clip_frac_low` (tokens whose weight was capped),
    `ratio_mean`, `approx_kl` (mean ½(log r)², as in `ppo_clip`), all masked token means.
  """
  check_agg(agg, max_len)
  I.check_python_number("eps_high", eps_high)
  if eps_low is not None:
    I.check_python_number("eps_low", eps_low)
    if eps_low > 1:
      raise ValueError(
        f"`eps_low` must be None (no lower bound) or in [0, 1], got {eps_low}: the lower bound "
        "1 - eps_low would be negative."
      )
  logp, old_logp, adv, mask, is_weights, dtype = I.prepare_policy_inputs(
    logp, old_logp, advantages, mask, is_weights
  )
  lp = logp.astype(dtype)
  log_r = jax.lax.stop_gradient(lp - old_logp)
  r = I.clamped_exp(log_r)
  lo = -jnp.inf if eps_low is None else 1.0 - eps_low
  weight = jnp.minimum(jnp.maximum(r, lo), 1.0 + eps_high)
  per_token = -(weight * adv) * lp
  if is_weights is not None:
    per_token = per_token * is_weights
  loss = aggregate_unchecked(per_token, mask, agg, max_len)
  aux = {
    "clip_frac_low": masked_mean((r < lo).astype(dtype), mask),
    "clip_frac_high": masked_mean((r > 1.0 + eps_high).astype(dtype), mask),
    "ratio_mean": masked_mean(r, mask),
    "approx_kl": _kl_aux(log_r, mask),
  }
  return loss, aux


def sapo(
  logp: jnp.ndarray,
  old_logp: jnp.ndarray,
  advantages: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  tau_pos: float = 1.0,
  tau_neg: float = 1.05,
  agg: str = "seq_mean_token_mean",
  is_weights: jnp.ndarray | None = None,
  max_len: float | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """SAPO: a soft sigmoid gate on the token ratio instead of hard clipping.

  Soft Adaptive Policy Optimization (arXiv 2511.20347)::

    ℓ_{i,t} = −f(r_{i,t}) · A_{i,t},   f(r) = (4/τ) · σ(τ (r − 1)),   τ = tau_pos if A > 0 else tau_neg

  so ∂ℓ/∂logp = −4σ(1−σ) · r · A: the on-policy gradient at r = 1 (weight 1), smoothly decaying
  as the token drifts off-policy, faster for negative advantages (tau_neg > tau_pos). The paper's
  objective averages tokens within a sequence then over sequences, hence the default
  agg="seq_mean_token_mean"; defaults tau_pos=1.0, tau_neg=1.05 are the paper's.

  Args:
    logp, old_logp: f32[B, T]. advantages: f32[B] or f32[B, T]. mask: f32|bool[B, T].
    tau_pos, tau_neg: gate temperatures (> 0) for positive / non-positive advantages.
    agg, max_len: aggregation (see `aggregate`). is_weights: optional constant f32[B, T].

  Returns:
    (loss f32[], aux): `gate_mean` (mean gradient weight 4σ(1−σ), 1 on-policy), `ratio_mean`,
    `approx_kl` (mean ½(log r)²), masked token means.
  """
  check_agg(agg, max_len)
  I.check_python_number("tau_pos", tau_pos, allow_zero=False)
  I.check_python_number("tau_neg", tau_neg, allow_zero=False)
  logp, old_logp, adv, mask, is_weights, dtype = I.prepare_policy_inputs(
    logp, old_logp, advantages, mask, is_weights
  )
  log_r = logp.astype(dtype) - old_logp
  r = I.clamped_exp(log_r)
  tau = jnp.where(adv > 0, jnp.asarray(tau_pos, dtype), jnp.asarray(tau_neg, dtype))
  gate = jax.nn.sigmoid(tau * (r - 1.0))
  per_token = -(4.0 / tau) * gate * adv
  if is_weights is not None:
    per_token = per_token * is_weights
  loss = aggregate_unchecked(per_token, mask, agg, max_len)
  gate_sg = jax.lax.stop_gradient(gate)
  aux = {
    "gate_mean": masked_mean(4.0 * gate_sg * (1.0 - gate_sg), mask),
    "ratio_mean": masked_mean(jax.lax.stop_gradient(r), mask),
    "approx_kl": _kl_aux(log_r, mask),
  }
  return loss, aux


def gmpo(
  logp: jnp.ndarray,
  old_logp: jnp.ndarray,
  advantages: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  eps_low: float = 0.4,
  eps_high: float = 0.4,
  agg: str = "seq_mean_token_mean",
  max_len: float | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """GMPO: geometric-mean ratio over the sequence with per-token clipping in log space.

  Geometric-Mean Policy Optimization (arXiv 2507.20673), Eq. 4 in log form::

    J_i = sgn(Â_i) · Π_t |min(ρ_t Â_i, clip(ρ_t, e^{−eps_low}, e^{eps_high}) Â_i)|^{1/|o_i|}
        = Â_i · exp( (1/|o_i|) Σ_t sgn(Â_i) · min(sgn(Â_i) ℓ_t, sgn(Â_i) clip(ℓ_t, −eps_low, eps_high)) )

  with ℓ_t = logp − old_logp: the per-token log-ratio is clamped pessimistically (from above for
  Â > 0, from below for Â < 0), so a clamped token gets no gradient, then averaged over the
  sequence. The per-sequence loss −J_i is broadcast to the row's tokens and aggregated with `agg`;
  the default "seq_mean_token_mean" gives the paper's (1/G) Σ_i. Per-token advantages f32[B, T]
  are reduced to their masked row mean (GMPO is defined for sequence advantages; this is verl's
  reading). The paper's clip range is (e^{−0.4}, e^{0.4}), i.e. eps_low = eps_high = 0.4.

  Args:
    logp, old_logp: f32[B, T]. advantages: f32[B] or f32[B, T]. mask: f32|bool[B, T].
    eps_low, eps_high: clip range of the per-token log-ratio, [−eps_low, eps_high].
    agg, max_len: aggregation (see `aggregate`).

  Returns:
    (loss f32[], aux): `clip_frac_low`, `clip_frac_high` (tokens clamped for Â < 0 / Â > 0),
    `ratio_mean` (the sequence ratio broadcast to tokens), `approx_kl`, masked token means.
  """
  check_agg(agg, max_len)
  I.check_python_number("eps_low", eps_low)
  I.check_python_number("eps_high", eps_high)
  logp, old_logp, adv_in, mask, _, dtype = I.prepare_policy_inputs(logp, old_logp, advantages, mask)
  count_raw = jnp.sum(mask, axis=-1)
  count = jnp.maximum(count_raw, 1.0)
  if adv_in.shape[-1] == 1:
    adv = adv_in[:, 0]
  else:  # per-token advantages: their masked row mean
    adv = jnp.sum(adv_in * mask, axis=-1) / count
  log_r = logp.astype(dtype) - old_logp
  sign = jnp.sign(adv)[:, None]
  log_r_clamped = I.clamp(log_r, -eps_low, eps_high)
  pessimistic = sign * jnp.minimum(sign * log_r, sign * log_r_clamped)
  seq_log_ratio = jnp.sum(pessimistic * mask, axis=-1) / count
  ratio = I.clamped_exp(seq_log_ratio)
  per_seq = -adv * ratio
  loss = aggregate_unchecked(per_seq[:, None], mask, agg, max_len)
  log_r_sg = jax.lax.stop_gradient(log_r)
  adv_b = adv[:, None]
  aux = {
    "clip_frac_low": masked_mean(((adv_b < 0) & (log_r_sg < -eps_low)).astype(dtype), mask),
    "clip_frac_high": masked_mean(((adv_b > 0) & (log_r_sg > eps_high)).astype(dtype), mask),
    "ratio_mean": I.token_mean(jax.lax.stop_gradient(ratio)[:, None], mask, count_raw),
    "approx_kl": _kl_aux(log_r, mask),
  }
  return loss, aux
