"""Per-token KL penalties to a reference policy and the entropy bonus."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from postrain import _validation as V
from postrain.losses import _inputs as I
from postrain.losses._aggregation import aggregate_unchecked, check_agg, compute_dtype

KL_KINDS = ("k1", "k2", "k3", "k3+")


def kl_penalty(
  logp: jnp.ndarray,
  ref_logp: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  kind: str,
  log_ratio_clip: float = 20.0,
) -> jnp.ndarray:
  """Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled from π_θ.

  With δ = logp − ref_logp (= −log r, r = π_ref/π_θ), following Schulman (2020), "Approximating KL
  divergence", as used by GRPO (arXiv 2402.03300, Eq. 4 is k3)::

    "k1"   δ                                   unbiased, high variance; ∂/∂logp = 1
    "k2"   ½ δ²                                biased, low variance;     ∂/∂logp = δ
    "k3"   exp(−δ) + δ − 1  (δ clamped)        unbiased, ≥ 0;            ∂/∂logp = 1 − exp(−δ)
    "k3+"  value of k3, gradient of k2:  k2 + sg(k3 − k2)   (straight-through)

  k3's δ is clamped to ±`log_ratio_clip` before `exp` (zero gradient beyond). k2's gradient δ is
  the gradient of the true reverse KL under on-policy sampling, which is why "k3+" pairs it with
  k3's low-variance non-negative value.

  Args:
    logp: f32[B, T] log π_θ of the sampled tokens (gets the gradient).
    ref_logp: f32[B, T] log π_ref (constant).
    mask: f32|bool[B, T]; masked positions get exactly 0 (the mask is not multiplied in, so
      `aggregate(kl_penalty(...), mask, agg=...)` weights each token once).
    kind: "k1", "k2", "k3" or "k3+" (static).
    log_ratio_clip: clamp of δ for k3 / k3+ (static, > 0).

  Returns:
    f32[B, T] per-token penalty (float32, or float64 under x64), to be added to a per-token loss
    with a coefficient β, or aggregated with `postrain.losses.aggregate`.
  """
  V.check_choice("kind", kind, KL_KINDS)
  V.check_floating("logp", logp)
  V.check_rank("logp", logp, 2)
  V.check_floating("ref_logp", ref_logp)
  V.check_shape("ref_logp", ref_logp, jnp.shape(logp), like="logp")
  I.check_mask("mask", mask, tuple(jnp.shape(logp)), like="logp")
  I.check_python_number("log_ratio_clip", log_ratio_clip, allow_zero=False, traced_ok=False)
  dtype = compute_dtype(logp, ref_logp)
  mask = jnp.asarray(mask, dtype)
  ref = jax.lax.stop_gradient(jnp.asarray(ref_logp, dtype))
  delta = jnp.where(mask != 0, logp.astype(dtype) - ref, 0.0)
  if kind == "k1":
    return delta
  k2 = 0.5 * jnp.square(delta)
  if kind == "k2":
    return k2
  d = jnp.clip(delta, -log_ratio_clip, log_ratio_clip)
  k3 = jnp.expm1(-d) + d  # exp(−δ) − 1 + δ, accurate near 0
  if kind == "k3":
    return k3
  return k2 + jax.lax.stop_gradient(k3 - k2)


def entropy_bonus(
  entropy: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  agg: str = "token_mean",
  max_len: float | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Entropy bonus as a loss term: −aggregate(entropy).

  Add `coef * loss` to the policy loss to encourage exploration (PPO, arXiv 1707.06347, Eq. 9).

  Args:
    entropy: f32[B, T] per-token entropies H(π_θ(·|x, y_<t)) (e.g. from the log-prob kernel).
    mask: f32|bool[B, T].
    agg, max_len: aggregation (see `aggregate`).

  Returns:
    (loss f32[] = −aggregated entropy, {"entropy": aggregated entropy (no gradient)}).
  """
  V.check_floating("entropy", entropy)
  V.check_rank("entropy", entropy, 2)
  I.check_mask("mask", mask, tuple(jnp.shape(entropy)), like="entropy")
  check_agg(agg, max_len)
  dtype = compute_dtype(entropy)
  mean_entropy = aggregate_unchecked(
    jnp.asarray(entropy, dtype), jnp.asarray(mask, dtype), agg, max_len
  )
  return -mean_entropy, {"entropy": jax.lax.stop_gradient(mean_entropy)}
