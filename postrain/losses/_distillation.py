"""On-policy distillation (OPD) losses on student samples.

The student π_s generated the tokens; the teacher π_t scores the same states (prefixes). All
divergences are per token over the last axis (the vocabulary, or k + 1 buckets), then reduced
with `postrain.losses.aggregate`. The teacher never receives a gradient.

* Full vocabulary, per token: reverse KL(π_s ‖ π_t) (Thinking-Machines-style OPD; GKD arXiv
  2306.13649) and the generalised Jensen–Shannon divergence of GKD / MOPD (arXiv 2605.12652).
* Top-k + tail (MOPD): k log-probs of both models on shared ids plus one bucket with the
  remaining mass of each distribution, so a [B, T, V] log-softmax is never materialised.
* Sampled-token ("reverse KL as reward"): r_t = sg(log π_t(y_t) − log π_s(y_t)) on the sampled
  token, used as a per-token advantage in a policy-gradient loss (arXiv 2605.13643 §3,
  arXiv 2605.22731).

Logits or log-probs are accepted wherever logits are: `log_softmax` is idempotent on normalised
log-probs. Softmax/logsumexp run in float32 (float64 under x64) even for bf16 inputs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V
from postrain.losses._aggregation import aggregate_unchecked, check_agg, compute_dtype

# Log-probs are floored here so that -inf entries (masked vocabulary) give exp() = 0 and finite
# gradients through logaddexp; far below any real log-prob, far above float32's min.
_LOG_FLOOR = -1e30


# --------------------------------------------------------------------------------------- checks


def _check_number(name: str, value: Any, lo: float, hi: float | None = None, lo_open=False) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"`{name}` must be a static Python number, got {type(value).__name__}.")
  if (value <= lo if lo_open else value < lo) or (hi is not None and value > hi):
    low = f"> {lo}" if lo_open else f">= {lo}"
    raise ValueError(
      f"`{name}` must be {low}" + (f" and <= {hi}" if hi is not None else "") + f", got {value}."
    )


def _check_logits(name: str, x: Any) -> None:
  V.check_floating(name, x)
  V.check_rank(name, x, 3)


def _check_mask(mask: Any, shape: tuple[int, ...], like: str, name: str = "mask") -> None:
  V.check_shape(name, mask, shape, like=like)
  dtype = jnp.result_type(mask)
  if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
    raise TypeError(f"`{name}` must be a bool, integer or float array, got dtype {dtype}.")


def _check_weights(token_weights: Any, shape: tuple[int, ...], like: str) -> None:
  if token_weights is not None:
    V.check_floating("token_weights", token_weights)
    V.check_shape("token_weights", token_weights, shape, like=like)


def _check_leading(name: str, x: Any, like: str, ref: Any) -> None:
  """[B, T, ·] of `x` must equal [B, T, ·] of `ref`."""
  if tuple(np.shape(x)[:2]) != tuple(np.shape(ref)[:2]):
    raise ValueError(
      f"`{name}` must have leading dims [B, T] = {tuple(np.shape(ref)[:2])} (from `{like}` "
      f"{tuple(np.shape(ref))}), got shape {tuple(np.shape(x))}."
    )


def _check_ids(name: str, ids: Any) -> None:
  if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
    raise TypeError(f"`{name}` must be an integer array, got dtype {jnp.result_type(ids)}.")


def match_vocab(
  student_logits: jnp.ndarray,
  teacher_logits: jnp.ndarray,
  *,
  student_to_teacher: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Returns the teacher's logits on the student's vocabulary, f[..., V_s].

  Without a mapping the vocabularies must have the same size (a padded embedding table of a
  different size is a different vocabulary here: pass `student_to_teacher = arange(V_s)`). With
  `student_to_teacher: i32[V_s]` (student id -> teacher id) the teacher logits are gathered, so the
  teacher distribution is renormalised over the mapped ids.

  Raises:
    ValueError: vocab sizes differ and no mapping is given; mapping of the wrong shape or (when
      concrete) with ids outside [0, V_t).
    TypeError: a non-integer mapping.
  """
  v_s, v_t = np.shape(student_logits)[-1], np.shape(teacher_logits)[-1]
  if student_to_teacher is None:
    if v_s != v_t:
      raise ValueError(
        f"Student vocab size {v_s} (`student_logits` {np.shape(student_logits)}) differs from the "
        f"teacher's {v_t} (`teacher_logits` {np.shape(teacher_logits)}); pass "
        "`student_to_teacher`: i32[V_s] mapping each student id to a teacher id."
      )
    return teacher_logits
  _check_ids("student_to_teacher", student_to_teacher)
  V.check_shape("student_to_teacher", student_to_teacher, (v_s,), like="student_logits[-1]")
  if not isinstance(student_to_teacher, jax.core.Tracer):
    ids = np.asarray(student_to_teacher)
    if ids.size and (ids.min() < 0 or ids.max() >= v_t):
      raise ValueError(
        f"`student_to_teacher` ids must lie in [0, {v_t}) (teacher vocab), got range "
        f"[{ids.min()}, {ids.max()}]."
      )
  return jnp.take(teacher_logits, student_to_teacher, axis=-1)


# ---------------------------------------------------------------------------------- divergences


def kl_divergence(logp: jnp.ndarray, logq: jnp.ndarray) -> jnp.ndarray:
  """KL(P ‖ Q) = Σ_v p_v (log p_v − log q_v) over the last axis; terms with p_v = 0 are 0.

  Args:
    logp, logq: f[..., V] normalised log-probs (same shape; -inf allowed).

  Returns:
    f[...] (inf where q_v = 0 < p_v, as the math says).
  """
  logp = jnp.maximum(logp, _LOG_FLOOR)
  p = jnp.exp(logp)
  diff = jnp.where(p > 0, logp - jnp.maximum(logq, _LOG_FLOOR), 0.0)  # double-where: no 0·inf.
  return jnp.sum(p * diff, axis=-1)


def generalized_jsd(
  student_logp: jnp.ndarray, teacher_logp: jnp.ndarray, *, alpha: float
) -> jnp.ndarray:
  """Generalised Jensen–Shannon divergence over the last axis (GKD arXiv 2306.13649, MOPD).

  With P = student, Q = teacher and α the teacher's weight in the mixture::

    M     = (1 − α) P + α Q                            (computed in log space)
    JSD_α = (1 − α) KL(P ‖ M) + α KL(Q ‖ M)            for 0 < α < 1
    JSD_0 = KL(Q ‖ P)   (forward KL),   JSD_1 = KL(P ‖ Q)   (reverse KL)

  This is GKD's JSD(β) (β = α, P_GKD = teacher) and the convention of the MOPD code (α = 0.5 by
  default). The endpoints are the *rescaled* limits: JSD_α = α KL(Q ‖ P) + O(α²) as α → 0 and
  (1 − α) KL(P ‖ Q) + O((1 − α)²) as α → 1, so JSD_α / α → KL(Q ‖ P) and
  JSD_α / (1 − α) → KL(P ‖ Q); the value itself jumps at α ∈ {0, 1} (as in GKD and MOPD). For
  α = 0.5 it is the symmetric JSD, bounded by log 2.

  Args:
    student_logp, teacher_logp: f[..., V] normalised log-probs.
    alpha: static Python float in [0, 1].

  Returns:
    f[...] per-row divergence (gradients flow into both arguments; callers stop the teacher).
  """
  _check_number("alpha", alpha, 0.0, 1.0)
  if alpha == 0:
    return kl_divergence(teacher_logp, student_logp)
  if alpha == 1:
    return kl_divergence(student_logp, teacher_logp)
  s = jnp.maximum(student_logp, _LOG_FLOOR)
  t = jnp.maximum(teacher_logp, _LOG_FLOOR)
  log_m = jnp.logaddexp(s + math.log1p(-alpha), t + math.log(alpha))
  return (1 - alpha) * kl_divergence(s, log_m) + alpha * kl_divergence(t, log_m)


def _log_softmax(logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  x = jnp.asarray(logits, compute_dtype(logits))
  return jax.nn.log_softmax(x / temperature if temperature != 1 else x, axis=-1)


def _finish(per_token, mask, token_weights, agg, max_len, dtype, extra=None):
  """Aggregates `per_token · token_weights` and builds aux (unweighted masked means)."""
  mask = jnp.asarray(mask, dtype)
  weighted = (
    per_token
    if token_weights is None
    else per_token * jax.lax.stop_gradient(jnp.asarray(token_weights, dtype))
  )
  loss = aggregate_unchecked(weighted, mask, agg, max_len)
  aux = {"num_tokens": jnp.sum(mask)}
  for name, x in {"divergence": per_token, **(extra or {})}.items():
    aux[name] = aggregate_unchecked(jax.lax.stop_gradient(x), mask, "token_mean")
  return loss, aux


def full_vocab_divergence(
  student_logits: jnp.ndarray,
  teacher_logits: jnp.ndarray,
  *,
  alpha: float = 1.0,
  temperature: float = 1.0,
  student_to_teacher: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Per-token JSD_α(π_s, π_t) over the full vocabulary (α = 1: reverse KL(π_s ‖ π_t)).

  Args:
    student_logits: f[B, T, V_s] logits (or log-probs) of the student at its own sampled states.
    teacher_logits: f[B, T, V_t] teacher logits at the same states (stop-gradiented).
    alpha: see `generalized_jsd` (1 = reverse KL, 0 = forward KL, 0.5 = symmetric JSD).
    temperature: static softmax temperature applied to both models.
    student_to_teacher: optional i32[V_s] vocab mapping (see `match_vocab`).

  Returns:
    f32[B, T] (float64 under x64).
  """
  _check_logits("student_logits", student_logits)
  _check_logits("teacher_logits", teacher_logits)
  _check_leading("teacher_logits", teacher_logits, "student_logits", student_logits)
  _check_number("alpha", alpha, 0.0, 1.0)
  _check_number("temperature", temperature, 0.0, None, lo_open=True)
  teacher_logits = match_vocab(
    student_logits, teacher_logits, student_to_teacher=student_to_teacher
  )
  logp_s = _log_softmax(student_logits, temperature)
  logp_t = jax.lax.stop_gradient(_log_softmax(teacher_logits, temperature))
  return generalized_jsd(logp_s, logp_t.astype(logp_s.dtype), alpha=alpha)


def jsd_loss(
  student_logits: jnp.ndarray,
  teacher_logits: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  alpha: float = 0.5,
  agg: str = "token_mean",
  max_len: float | None = None,
  temperature: float = 1.0,
  student_to_teacher: jnp.ndarray | None = None,
  token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Full-vocabulary OPD loss: aggregate over tokens of w_t · JSD_α(π_s(·|s_t), π_t(·|s_t)).

  Args:
    student_logits: f[B, T, V_s] student logits (or log-probs) on the student's samples.
    teacher_logits: f[B, T, V_t] teacher logits at the same states (no gradient).
    mask: f32|bool[B, T], 1 on response tokens that count (float = per-token weight).
    alpha: static, see `generalized_jsd` (MOPD default 0.5; 1 = reverse KL, 0 = forward KL).
    agg, max_len: aggregation mode (see `postrain.losses.aggregate`; MOPD uses "token_mean").
    temperature: static softmax temperature for both models.
    student_to_teacher: optional i32[V_s] vocab mapping (see `match_vocab`).
    token_weights: optional f32[B, T] constant per-token weights (e.g. MOPD's truncated IS ratio
      ρ = min(exp(log π_s − log π_old), 2) or a release mask), multiplied into the loss.

  Returns:
    (loss f32[], aux) with aux `divergence` (masked token mean of JSD_α, unweighted) and
    `num_tokens`. All-masked input gives 0.
  """
  per_token = full_vocab_divergence(
    student_logits,
    teacher_logits,
    alpha=alpha,
    temperature=temperature,
    student_to_teacher=student_to_teacher,
  )
  shape = tuple(np.shape(student_logits)[:2])
  _check_mask(mask, shape, like="student_logits[..., 0]")
  _check_weights(token_weights, shape, like="student_logits[..., 0]")
  check_agg(agg, max_len)
  return _finish(per_token, mask, token_weights, agg, max_len, per_token.dtype)


def reverse_kl_loss(
  student_logits: jnp.ndarray,
  teacher_logits: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  agg: str = "token_mean",
  max_len: float | None = None,
  temperature: float = 1.0,
  student_to_teacher: jnp.ndarray | None = None,
  token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Full-vocabulary reverse-KL OPD: aggregate of KL(π_s ‖ π_t)_t = Σ_v π_s (log π_s − log π_t).

  `jsd_loss` with α = 1; same arguments and aux. Its gradient is the exact per-state gradient of
  which the sampled-token `opd_pg_loss` is an unbiased one-sample estimate.
  """
  return jsd_loss(
    student_logits,
    teacher_logits,
    mask,
    alpha=1.0,
    agg=agg,
    max_len=max_len,
    temperature=temperature,
    student_to_teacher=student_to_teacher,
    token_weights=token_weights,
  )


# -------------------------------------------------------------------------------- top-k + tail


def topk_logprobs(
  logits: jnp.ndarray, ids: jnp.ndarray, *, temperature: float = 1.0
) -> jnp.ndarray:
  """Normalised log-probs at `ids`: logits[ids]/τ − logsumexp(logits/τ), f32[B, T, K].

  One logsumexp over V and a gather: the [B, T, V] log-softmax is never written out.

  Args:
    logits: f[B, T, V] logits (or log-probs).
    ids: i32[B, T, K] vocabulary ids (e.g. `jax.lax.top_k(student_logits, K)[1]`).
    temperature: static softmax temperature.
  """
  _check_logits("logits", logits)
  _check_ids("ids", ids)
  V.check_rank("ids", ids, 3)
  _check_leading("ids", ids, "logits", logits)
  _check_number("temperature", temperature, 0.0, None, lo_open=True)
  x = jnp.asarray(logits, compute_dtype(logits))
  if temperature != 1:
    x = x / temperature
  lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
  return jnp.take_along_axis(x, ids, axis=-1) - lse


def add_tail_bucket(topk_logp: jnp.ndarray, *, tail_eps: float = 1e-7) -> jnp.ndarray:
  """Appends the log of the remaining mass: [..., K] -> [..., K + 1].

  tail = log(1 − Σ_k p_k) = log(−expm1(min(logsumexp(logp_k), −tail_eps))), so the tail mass is at
  least ≈ tail_eps (the MOPD code's clamp, 1e-7): when the k ids cover (almost) all the mass of
  both models, both tails sit at the floor and contribute 0 to any divergence.
  """
  V.check_floating("topk_logp", topk_logp)
  _check_number("tail_eps", tail_eps, 0.0, 1.0, lo_open=True)
  x = jnp.asarray(topk_logp, compute_dtype(topk_logp))
  lse = jnp.minimum(jax.nn.logsumexp(jnp.maximum(x, _LOG_FLOOR), axis=-1, keepdims=True), -tail_eps)
  return jnp.concatenate([x, jnp.log(-jnp.expm1(lse))], axis=-1)


def topk_tail_loss(
  student_topk_logp: jnp.ndarray,
  teacher_topk_logp: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  alpha: float = 0.5,
  tail: bool = True,
  tail_eps: float = 1e-7,
  agg: str = "token_mean",
  max_len: float | None = None,
  token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """MOPD top-k + tail divergence (arXiv 2605.12652, Steps C–E) on precomputed top-k log-probs.

  Both inputs hold full-vocabulary-normalised log-probs of the *same* k ids per token (the ids of
  either model's top-k, e.g. from `topk_logprobs`). With `tail=True` each distribution gets a
  (k+1)-th bucket with its remaining mass (`add_tail_bucket`) and::

    D_t = JSD_α(P_t, Q_t) over the k + 1 buckets,  P = [p_s(ids), 1 − Σ p_s(ids)],  Q likewise

  With k = V the tails are both at the floor and D_t equals the full-vocabulary divergence. With
  `tail=False` the k entries are renormalised instead (MOPD's `distillation_add_tail=False`).

  Args:
    student_topk_logp: f[B, T, K] student log-probs at the ids.
    teacher_topk_logp: f[B, T, K] teacher log-probs at the same ids (no gradient).
    mask: f32|bool[B, T]; alpha, agg, max_len, token_weights: as in `jsd_loss`.
    tail: static, add the tail bucket (True) or renormalise over the k ids (False).
    tail_eps: static floor of the tail mass (see `add_tail_bucket`).

  Returns:
    (loss f32[], aux) with `divergence`, `num_tokens`, `student_tail_mass`, `teacher_tail_mass`
    (masked token means; tail masses of the unclamped inputs, 1 − Σ_k p_k).
  """
  for name, x in (
    ("student_topk_logp", student_topk_logp),
    ("teacher_topk_logp", teacher_topk_logp),
  ):
    V.check_floating(name, x)
    V.check_rank(name, x, 3)
  V.check_shape(
    "teacher_topk_logp", teacher_topk_logp, np.shape(student_topk_logp), like="student_topk_logp"
  )
  shape = tuple(np.shape(student_topk_logp)[:2])
  _check_mask(mask, shape, like="student_topk_logp[..., 0]")
  _check_weights(token_weights, shape, like="student_topk_logp[..., 0]")
  _check_number("alpha", alpha, 0.0, 1.0)
  check_agg(agg, max_len)
  dtype = compute_dtype(student_topk_logp, teacher_topk_logp)
  s = jnp.asarray(student_topk_logp, dtype)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_topk_logp, dtype))
  tails = {
    "student_tail_mass": 1 - jnp.sum(jnp.exp(s), axis=-1),
    "teacher_tail_mass": 1 - jnp.sum(jnp.exp(t), axis=-1),
  }
  if tail:
    s, t = add_tail_bucket(s, tail_eps=tail_eps), add_tail_bucket(t, tail_eps=tail_eps)
  else:
    s = jax.nn.log_softmax(jnp.maximum(s, _LOG_FLOOR), axis=-1)
    t = jax.nn.log_softmax(jnp.maximum(t, _LOG_FLOOR), axis=-1)
  per_token = generalized_jsd(s, t, alpha=alpha)
  return _finish(per_token, mask, token_weights, agg, max_len, dtype, extra=tails)


def topk_jsd_loss(
  student_logits: jnp.ndarray,
  teacher_logits: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  k: int,
  alpha: float = 0.5,
  ids_from: str = "student",
  tail: bool = True,
  tail_eps: float = 1e-7,
  agg: str = "token_mean",
  max_len: float | None = None,
  temperature: float = 1.0,
  student_to_teacher: jnp.ndarray | None = None,
  token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Top-k + tail JSD_α from full logits: `topk_logprobs` of both models + `topk_tail_loss`.

  The ids are the top-k of `ids_from` ("student", MOPD's choice, or "teacher"); each model's
  log-probs come from one logsumexp and a gather. k = V gives the full-vocabulary `jsd_loss`.

  Args:
    student_logits: f[B, T, V_s]; teacher_logits: f[B, T, V_t] (no gradient).
    mask: f32|bool[B, T].
    k: static number of ids, 1 <= k <= V_s (MOPD: 100).
    ids_from: "student" or "teacher" (static).
    Others: as in `topk_tail_loss` and `jsd_loss`.
  """
  _check_logits("student_logits", student_logits)
  _check_logits("teacher_logits", teacher_logits)
  _check_leading("teacher_logits", teacher_logits, "student_logits", student_logits)
  V.check_choice("ids_from", ids_from, ("student", "teacher"))
  v_s = np.shape(student_logits)[-1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= v_s:
    raise ValueError(f"`k` must be a static int in [1, {v_s}] (student vocab), got {k!r}.")
  teacher_logits = jax.lax.stop_gradient(
    match_vocab(student_logits, teacher_logits, student_to_teacher=student_to_teacher)
  )
  source = student_logits if ids_from == "student" else teacher_logits
  ids = jax.lax.top_k(jax.lax.stop_gradient(jnp.asarray(source, compute_dtype(source))), int(k))[1]
  s = topk_logprobs(student_logits, ids, temperature=temperature)
  t = topk_logprobs(teacher_logits, ids, temperature=temperature)
  return topk_tail_loss(
    s,
    t,
    mask,
    alpha=alpha,
    tail=tail,
    tail_eps=tail_eps,
    agg=agg,
    max_len=max_len,
    token_weights=token_weights,
  )


# ------------------------------------------------------------------------------- sampled token


def _check_token_logps(student_logp, teacher_logp, mask):
  V.check_floating("student_logp", student_logp)
  V.check_rank("student_logp", student_logp, 2)
  V.check_floating("teacher_logp", teacher_logp)
  V.check_shape("teacher_logp", teacher_logp, np.shape(student_logp), like="student_logp")
  _check_mask(mask, tuple(np.shape(student_logp)), like="student_logp")


def opd_token_rewards(
  student_logp: jnp.ndarray, teacher_logp: jnp.ndarray, mask: jnp.ndarray
) -> jnp.ndarray:
  """Per-token OPD reward r_t = sg(log π_t(y_t) − log π_s(y_t)) on the sampled tokens, 0 on padding.

  The negative of the one-sample (k1) estimate of KL(π_s ‖ π_t) at state s_t; the advantage A_t
  of arXiv 2605.13643 §3. Feed it as per-token advantages to `opd_pg_loss` or to a clipped PPO
  loss (`postrain.losses.ppo_clip(..., advantages=r)`).

  Args:
    student_logp: f32[B, T] log π_s(y_t | s_t) of the sampled tokens.
    teacher_logp: f32[B, T] log π_t(y_t | s_t) at the same states.
    mask: f32|bool[B, T].

  Returns:
    f32[B, T] constant (stop-gradient) rewards.
  """
  _check_token_logps(student_logp, teacher_logp, mask)
  dtype = compute_dtype(student_logp, teacher_logp)
  r = jnp.asarray(teacher_logp, dtype) - jnp.asarray(student_logp, dtype)
  return jax.lax.stop_gradient(jnp.where(jnp.asarray(mask) != 0, r, 0.0))


def opd_pg_loss(
  student_logp: jnp.ndarray,
  teacher_logp: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  agg: str = "token_mean",
  max_len: float | None = None,
  token_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Sampled-token OPD, "reverse KL as reward": ℓ_t = −w_t · r_t · log π_s(y_t | s_t).

  r_t = `opd_token_rewards` (constant). Since E_{y~π_s}[∇ log π_s(y)] = 0, the expected gradient
  at each state is E_y[(log π_s(y) − log π_t(y)) ∇ log π_s(y)] = ∇ KL(π_s ‖ π_t): the per-state
  gradient of `reverse_kl_loss`, estimated from the sampled token only (the MOPD code's sampled
  form sg(ℓ_s − ℓ_t)·ℓ_s). The loss *value* is a surrogate, not a KL; aux reports the KL estimate.

  Args:
    student_logp: f32[B, T] log π_s of the sampled tokens (gets the gradient; bf16 ok).
    teacher_logp: f32[B, T] teacher log-probs of the same tokens (no gradient).
    mask: f32|bool[B, T]; agg, max_len: see `postrain.losses.aggregate`.
    token_weights: optional f32[B, T] constant weights (IS ratios, release masks).

  Returns:
    (loss f32[], aux) with `reverse_kl_k1` (masked token mean of log π_s − log π_t, the sampled
    estimate of KL(π_s ‖ π_t)) and `num_tokens`.
  """
  _check_token_logps(student_logp, teacher_logp, mask)
  _check_weights(token_weights, tuple(np.shape(student_logp)), like="student_logp")
  check_agg(agg, max_len)
  dtype = compute_dtype(student_logp, teacher_logp)
  reward = opd_token_rewards(student_logp, teacher_logp, mask)
  logp = jnp.where(
    jnp.asarray(mask) != 0, jnp.asarray(student_logp, dtype), 0.0
  )  # padding may be -inf
  loss, aux = _finish(
    -reward * logp, mask, token_weights, agg, max_len, dtype, extra={"reverse_kl_k1": -reward}
  )
  del aux["divergence"]  # the surrogate's value is not a divergence
  return loss, aux


# ------------------------------------------------------------------------------------- teacher


def ema_update(teacher_params: Any, student_params: Any, decay: float | jnp.ndarray) -> Any:
  """EMA teacher: θ_t ← decay · θ_t + (1 − decay) · θ_s, leaf by leaf (pure; returns a new tree).

  MOPD's self-distillation teacher uses update rate η = 1 − decay = 0.05 (decay 0.95); decay = 1
  keeps a frozen teacher, decay = 0 copies the student. Floating leaves are averaged in float32
  (float64 under x64) and cast back to the teacher's dtype; non-float leaves (step counters, RNG
  keys) keep the teacher's value.

  Args:
    teacher_params: pytree of arrays.
    student_params: pytree with the same structure and leaf shapes.
    decay: Python float in [0, 1] or a scalar array (e.g. a schedule value under jit).
  """
  t_def, s_def = jax.tree.structure(teacher_params), jax.tree.structure(student_params)
  if t_def != s_def:
    raise ValueError(
      f"`student_params` tree structure {s_def} differs from `teacher_params` {t_def}."
    )
  if isinstance(decay, (int, float)) and not isinstance(decay, bool):
    _check_number("decay", decay, 0.0, 1.0)
  elif jnp.ndim(decay) != 0:
    raise ValueError(f"`decay` must be a scalar, got shape {jnp.shape(decay)}.")

  def leaf(t, s):
    if np.shape(t) != np.shape(s):
      raise ValueError(
        f"`student_params` leaf shape {np.shape(s)} differs from `teacher_params` leaf {np.shape(t)}."
      )
    if not jnp.issubdtype(jnp.result_type(t), jnp.floating):
      return t
    dtype = compute_dtype(t, s)
    d = jnp.asarray(decay, dtype)
    new = d * jnp.asarray(t, dtype) + (1 - d) * jnp.asarray(s, dtype)
    return new.astype(jnp.result_type(t))

  return jax.tree.map(leaf, teacher_params, student_params)
