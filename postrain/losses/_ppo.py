"""PPO-clip surrogate at token level (GRPO/DAPO), sequence level (GSPO) and GSPO-token."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from postrain import _validation as V
from postrain.losses import _inputs as I
from postrain.losses._aggregation import check_agg, row_weights

LEVELS = ("token", "sequence", "sequence_token")


def ppo_clip(
  logp: jnp.ndarray,
  old_logp: jnp.ndarray,
  advantages: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  eps_low: float,
  eps_high: float,
  level: str = "token",
  agg: str = "token_mean",
  dual_clip: float | None = None,
  is_weights: jnp.ndarray | None = None,
  max_len: float | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Clipped policy-gradient surrogate of PPO / GRPO / DAPO / GSPO / GSPO-token.

  Per token (A = advantage broadcast to [B, T], w = `is_weights` or 1)::

    ℓ_{i,t} = −w_{i,t} · min( ρ·A_{i,t}, clip(ρ, 1−eps_low, 1+eps_high)·A_{i,t} )
    with dual clip (arXiv 1912.09729), for A < 0:  −w · max( min(...), c·A )  (loss bounded by −c·A)

  and the ratio ρ depends on `level`:

    "token"           ρ_{i,t} = exp(logp − old_logp)                       GRPO (arXiv 2402.03300), DAPO
    "sequence"        ρ_i = s_i = exp( Σ_t m·(logp − old_logp) / |y_i| )   GSPO Eq. 7 (arXiv 2507.18071)
    "sequence_token"  ρ_{i,t} = exp( sg[log s_i] + logp − sg[logp] )        GSPO-token Eq. 14

  with |y_i| = Σ_t mask (weighted). At "sequence" level the per-sequence term
  −min(s_i A_{i,t}, clip(s_i) A_{i,t}) is broadcast to the tokens of row i (gradient through s_i
  reaches every token of the row) and then aggregated like any per-token loss, so with
  `agg="seq_mean_token_mean"` and per-sequence advantages the loss is exactly GSPO's Eq. 5,
  −(1/G) Σ_i min(s_i Â_i, clip(s_i) Â_i) averaged over the rows that have tokens; "token_mean"
  instead weights each sequence by its length. "sequence_token" has the same value and clipping
  decisions as "sequence"; its gradient is s_i·A_{i,t}·∇logp_{i,t} per token (with per-sequence
  advantages it equals the "sequence" gradient under every `agg`). Per-token advantages are
  allowed at every level. Log-ratios are clamped at 20 before `exp` (zero gradient beyond).
  Masked positions may hold anything, NaN and ±inf included: they are selected away (`where`)
  at the boundary and change neither the value, the aux metrics nor the gradient (exactly 0
  there). At *unmasked* positions nothing is hidden: NaN in `logp`/`old_logp` gives a NaN loss,
  and an infinite advantage gives ±inf or NaN (inf·0 at a clipped token); the trainer's
  `check_finite` option names the first non-finite metric and step.

  Implementation: "token" and "sequence_token" use a custom VJP with the analytic gradient
  (−A·w·ρ on tokens whose branch is not clipped, times the aggregation weight); this makes them
  reverse-mode only (`jax.grad`/`vjp`, not `jax.jvp`/`jacfwd`). "sequence" uses plain autodiff.
  "token" evaluates the clipped term as A·exp(clamp(log ρ, lo, hi)) with per-row log-space bounds
  (e.g. (−inf, log(1+eps_high)) for A > 0), which equals min(ρA, clip(ρ)A) since exp is
  monotone: one exp per token, computed once in an elementwise pass whose output the loss sums
  and the backward reuses as the gradient (ρ, not exp(log ρ) twice). Clip decisions, in the value
  as in the gradient, compare log ρ with log(1±eps) (within an ulp of comparing ρ with 1±eps).

  Args:
    logp: f32[B, T] log π_θ of the sampled tokens (the only input that gets a gradient; bf16 ok).
    old_logp: f32[B, T] log π_old (constant: stop-gradiented).
    advantages: f32[B] (per sequence) or f32[B, T] (per token), constant.
    mask: f32|bool[B, T], 1 on response tokens that count (float = per-token weight).
    eps_low: lower clip, ρ ≥ 1 − eps_low (GRPO 0.2; GSPO 3e-4); static Python number in [0, 1]
      (1: bound 0, no lower clip; > 1 is refused).
    eps_high: upper clip, ρ ≤ 1 + eps_high (DAPO 0.28; GSPO 4e-4); static Python number ≥ 0.
    level: "token", "sequence" or "sequence_token" (static).
    agg: "token_mean", "seq_mean_token_mean", "seq_mean_token_sum" or
      "seq_mean_token_sum_norm" (see `postrain.losses.aggregate`; static).
    dual_clip: None or c > 1, the dual-clip bound for negative advantages (static).
    is_weights: optional f32[B, T] per-token importance weights (e.g. truncated π_old/π_rollout
      rollout-engine correction), treated as constants and multiplied into ℓ.
    max_len: static normaliser for agg="seq_mean_token_sum_norm" (Dr.GRPO).

  Returns:
    (loss f32[], aux) with aux masked token means (per-sequence quantities broadcast to tokens):
    `clip_frac_low` (A < 0 and ρ < 1 − eps_low), `clip_frac_high` (A > 0 and ρ > 1 + eps_high),
    `dual_clip_frac` (A < 0 and ρ > c; 0 without dual clip), `ratio_mean` (mean ρ), and
    `approx_kl` = mean ½(logp − old_logp)² per token whatever the level (the k2 estimator of the
    KL between old and new policy: second-order accurate, non-negative, and unlike k3 it needs
    no extra exp pass). Exact ties with a clip bound count ½.
  """
  V.check_choice("level", level, LEVELS)
  check_agg(agg, max_len)
  I.check_python_number("eps_low", eps_low, traced_ok=False)
  I.check_python_number("eps_high", eps_high, traced_ok=False)
  if eps_low > 1:  # 1 − eps_low < 0: a bound no ratio can cross, i.e. a silent typo
    raise ValueError(
      f"`eps_low` must be in [0, 1] (1 - eps_low is the ratio's lower bound; 1 turns the lower "
      f"clip off), got {eps_low}."
    )
  if dual_clip is not None:
    I.check_python_number("dual_clip", dual_clip, traced_ok=False)
    if dual_clip <= 1:
      raise ValueError(f"`dual_clip` must be > 1, got {dual_clip}.")
  logp, old_logp, adv, mask, is_weights, dtype = I.prepare_policy_inputs(
    logp, old_logp, advantages, mask, is_weights
  )
  clip = _Clip(
    1.0 - float(eps_low), 1.0 + float(eps_high), None if dual_clip is None else float(dual_clip)
  )
  count = jnp.sum(mask, axis=-1)  # |y_i|: f32[B]
  # A·min(ρ, 1+eps_high) for A > 0 and A·max(ρ, 1−eps_low) for A < 0 (see _objective): split A
  # once here, on [B, 1] when advantages are per sequence.
  pos, neg = I.is_positive(adv), I.is_positive(-adv)
  consts = {
    "old": old_logp,
    "mask": mask,
    "a_pos": adv * pos,
    "a_neg": adv * neg,
    "row_w": row_weights(count, agg, max_len)[:, None],
    "count": count[:, None],
  }
  if is_weights is not None:
    consts["w"] = is_weights
  if level == "token":
    consts["coef"] = adv * consts["row_w"]  # f_i·A: [B, 1], or [B, T] for per-token A
    consts["lo"], consts["hi"] = _log_bounds(adv, clip, dtype)
    loss = _token_loss(logp, consts, clip)
    rho_aux = None
  else:
    seq = I.row_sum(logp.astype(dtype) - old_logp, mask) / jnp.maximum(count, 1.0)  # log s_i
    if level == "sequence":
      loss = _sequence_value(seq, consts, clip)
    else:
      consts["seq"] = jax.lax.stop_gradient(seq)
      loss = _sequence_token_loss(logp, consts, clip)
    rho_aux = I.clamped_exp(jax.lax.stop_gradient(seq))[:, None]
  # Barrier: aux terms share no subexpression with the loss, which keeps the loss's kernels as
  # they are without aux on XLA:CPU (and lets XLA drop the aux entirely when it is unused).
  lp, old, mask_, bound = jax.lax.optimization_barrier(
    jax.lax.stop_gradient(
      (logp.astype(dtype), old_logp, mask, jnp.asarray(I.LOG_RATIO_CLIP, dtype))
    )
  )
  return loss, _aux(lp - old, rho_aux, adv, mask_, count, clip, bound)


class _Clip(NamedTuple):
  """Static ratio bounds: ρ ∈ [lo, hi], dual cap for A < 0."""

  lo: float
  hi: float
  dual: float | None


def _objective(rho, c, clip):
  """−ℓ/w = A_pos·min(ρ, hi) + A_neg·max(ρ, lo) [capped at the dual bound]: equals
  min(ρA, clip(ρ, lo, hi)·A), and max(·, c·A) for A < 0 under dual clip."""
  lower = jnp.maximum(rho, clip.lo)
  if clip.dual is not None:
    lower = jnp.minimum(lower, clip.dual)
  obj = c["a_pos"] * jnp.minimum(rho, clip.hi) + c["a_neg"] * lower
  return obj * c["w"] if "w" in c else obj


def _reduce(per_token, c):
  """Σ_i f_i Σ_t mask·ℓ (see `row_weights`); a per-row ℓ: [B, 1] uses the counts instead."""
  if per_token.shape[-1] == 1 and c["mask"].shape[-1] != 1:
    return jnp.sum(c["row_w"] * per_token * c["count"])
  return jnp.sum(c["row_w"] * per_token * c["mask"])


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def _active(log_rho, c, clip):
  """Tokens whose surrogate is not clipped (derivative ρ), from the log-ratio: [B, T] bool.

  Compared in log space, which also keeps XLA from sharing the forward's constants (sharing
  makes XLA:CPU materialise them and split the fused forward reduction)."""
  up = (c["a_pos"] > 0) & (log_rho < math.log(clip.hi))
  down = (c["a_neg"] < 0) & (log_rho > (math.log(clip.lo) if clip.lo > 0 else -math.inf))
  if clip.dual is not None:
    down = down & (log_rho < math.log(clip.dual))
  return up | down


def _grad_weight(c):
  """Per-token −A·w·(aggregation weight), the common factor of every level's gradient."""
  g = -(c["a_pos"] + c["a_neg"]) * c["row_w"] * c["mask"]
  return g * c["w"] if "w" in c else g


# --- token level (GRPO / DAPO): custom VJP, one exp per token ----------------------------------


def _log_bounds(adv, clip, dtype):
  """Bounds (lo, hi) on the log-ratio, [B, 1] (or [B, T] for per-token A), such that the
  clipped objective is A·exp(clamp(log ρ, lo, hi)) and a token is unclipped iff lo < log ρ < hi.

  exp is monotone, so min(ρ, 1+eps_high) = exp(min(log ρ, log(1+eps_high))) for A > 0 and
  max(ρ, 1−eps_low) = exp(max(log ρ, log(1−eps_low))) for A < 0 (capped at log c under dual
  clip): (lo, hi) = (−inf, log(1+eps_high)) for A > 0, (log(1−eps_low), log c) for A < 0. The
  upper bound is at most LOG_RATIO_CLIP, the clamp before exp. The clip decisions are thus made
  on the log-ratio against constants computed once, and each token needs a single exp."""
  cap = I.LOG_RATIO_CLIP
  neg_hi = cap if clip.dual is None else min(math.log(clip.dual), cap)
  neg_lo = math.log(clip.lo) if clip.lo > 0 else -math.inf
  lo = jnp.where(adv < 0, jnp.asarray(neg_lo, dtype), jnp.asarray(-math.inf, dtype))
  hi = jnp.where(adv > 0, jnp.asarray(min(math.log(clip.hi), cap), dtype), neg_hi)
  return lo, hi


def _token_objective(logp, c):
  """f·A·w·mask·exp(clamp(log ρ, lo, hi)): f32[B, T], the per-token −ℓ times the aggregation
  weight f (`row_weights`), so that the loss is −Σ of it."""
  log_rho = logp.astype(c["old"].dtype) - c["old"]
  obj = c["coef"] * jnp.exp(jnp.minimum(jnp.maximum(log_rho, c["lo"]), c["hi"]))
  obj = obj * c["w"] if "w" in c else obj
  return obj * c["mask"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _token_loss(logp, c, clip):
  del clip  # in c["lo"], c["hi"]; static here for the custom VJP's signature
  return -jnp.sum(_token_objective(logp, c))  # value only: one fused reduction


def _token_fwd(logp, c, clip):
  # The exp runs once per token, in an elementwise pass (XLA:CPU splits those across threads,
  # whereas an exp inside one of its fused reductions costs ~1.25x the reduction): `obj` has
  # two consumers, the loss's plain sum and the backward, so XLA materialises it rather than
  # duplicate the exp, and the backward needs no exp. (An optimization_barrier here gives the
  # same kernels but schedules the sum after the backward pass, measured ~8% slower.)
  obj = _token_objective(logp, c)
  return -jnp.sum(obj), (logp, c, obj)


def _token_bwd(clip, res, g):
  # ∂ℓ/∂logp = −f·A·w·mask·ρ = −obj on unclipped tokens (lo < log ρ < hi), 0 on clipped ones.
  del clip
  logp, c, obj = res
  log_rho = logp.astype(c["old"].dtype) - c["old"]
  grad = jnp.where((log_rho > c["lo"]) & (log_rho < c["hi"]), obj, 0.0) * -g
  return grad.astype(logp.dtype), _zeros_like(c)


_token_loss.defvjp(_token_fwd, _token_bwd)


# --- sequence levels (GSPO / GSPO-token) ---------------------------------------------------------


def _sequence_value(seq, c, clip):
  """Loss from log s_i: f32[B]; per-row terms stay [B, 1] unless A or w are per token."""
  s = I.clamped_exp(seq)[:, None]
  return -_reduce(_objective(s, c, clip), c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _sequence_token_loss(logp, c, clip):
  del logp  # the value is GSPO's; logp enters through the gradient only (Eq. 14)
  return _sequence_value(c["seq"], c, clip)


def _sequence_token_fwd(logp, c, clip):
  return _sequence_token_loss(logp, c, clip), (logp, c)


def _sequence_token_bwd(clip, res, g):
  # ∂/∂logp_{i,t} of s_{i,t} = sg[s_i]·π/sg[π] is s_i: per-token weight −A·w·s_i·[not clipped].
  logp, c = res
  seq = c["seq"][:, None]
  active = _active(seq, c, clip) & (jnp.abs(seq) < I.LOG_RATIO_CLIP)
  grad = jnp.where(active, I.clamped_exp(seq), 0.0) * _grad_weight(c)
  return (g * grad).astype(logp.dtype), _zeros_like(c)


_sequence_token_loss.defvjp(_sequence_token_fwd, _sequence_token_bwd)


def _tie_step(x):
  """[x > 0] with ½ at x = 0, as compares and selects (XLA:CPU's fused reductions run these
  ~2x faster than the sign-based `I.step`)."""
  return jnp.where(x > 0, 1.0, jnp.where(x < 0, 0.0, 0.5)).astype(x.dtype)


def _aux(log_r, rho, adv, mask, count, clip, bound):
  """Masked token means of the clip indicators, ρ and ½(log r)²; per-row quantities ([B, 1])
  are reduced with the row counts, per-token ones in as few [B, T] passes as possible."""
  pos, neg = I.is_positive(adv), I.is_positive(-adv)
  if rho is not None:  # sequence levels: ρ is per row
    high, low = I.step(rho - clip.hi), I.step(clip.lo - rho)
    clipped = pos * high + neg * low
    dual = None if clip.dual is None else I.step(rho - clip.dual)
  else:  # token level: compare in log space, so no aux pass recomputes exp
    # The clamp bound comes through the barrier (a constant shared with the loss is materialised).
    rho = jnp.exp(jnp.minimum(log_r, bound))
    # Clipped on the side of its advantage iff x = s·log r − b > 0, with (s, b) =
    # (1, log(1+eps_high)) for A > 0, (−1, −log(1−eps_low)) for A < 0, (0, 1) for A = 0: one
    # compare per token for both sides (x = 0 exactly at a tie, counted ½).
    neg_b = -math.log(clip.lo) if clip.lo > 0 else math.inf
    b = jnp.where(adv > 0, math.log(clip.hi), jnp.where(adv < 0, neg_b, 1.0)).astype(log_r.dtype)
    clipped = _tie_step(jnp.sign(adv) * log_r - b)
    high = low = clipped  # the per-token-advantage branch below masks them with pos / neg
    dual = None if clip.dual is None else _tie_step(log_r - math.log(clip.dual))
  total = jnp.maximum(jnp.sum(count), 1.0)
  if adv.shape[-1] == 1:  # one pass counts both sides, split per row by the sign of A
    rows = clipped[:, 0] * count if clipped.shape[-1] == 1 else I.row_sum(clipped, mask)
    clip_high = jnp.sum(pos[:, 0] * rows) / total
    clip_low = jnp.sum(neg[:, 0] * rows) / total
  else:
    clip_high = I.token_mean(pos * high, mask, count)
    clip_low = I.token_mean(neg * low, mask, count)
  zero = jnp.zeros((), log_r.dtype)
  return {
    "clip_frac_low": clip_low,
    "clip_frac_high": clip_high,
    "dual_clip_frac": zero if dual is None else I.token_mean(neg * dual, mask, count),
    "ratio_mean": I.token_mean(rho, mask, count),
    "approx_kl": 0.5 * I.token_mean(jnp.square(log_r), mask, count),
  }
