"""Teachability-aware release for on-policy distillation (arXiv 2605.13643, "Prefix Teach, Suffix Fade").

Late in a strong-to-weak OPD rollout the teacher stops separating the student's plausible next
tokens ("local teachability collapse"). The release rule keeps dense OPD supervision on the prefix
and drops the suffix after a detected downward change point::

  M_t   = log π_t(a⁽¹⁾) − log π_t(a⁽²⁾),  a⁽¹⁾, a⁽²⁾ the teacher's best two of the student's top-K ids
  S_i   = log(1 + mean_{t ∈ sentence i} M_t)                                  (segment series)
  BIC_0 = n log((RSS_0 + ε)/n) + k0 log n,   BIC_1(τ) = n log((RSS_1(τ) + ε)/n) + k1 log n
  τ*    = argmin_τ BIC_1(τ) over τ ∈ {1..n−1} with mean(S_{>τ}) < mean(S_{≤τ})   (= max RSS drop)
  release iff such τ exists and BIC_0 − BIC_1(τ*) > min_gain                 (paper: min_gain = 0)
  q_t   = 1 on tokens before the first token of segment τ* + 1, 0 after (q ≡ mask if no release)

`release_weights` turns q into the paper's mass-preserving weights q_t · Σ_t l_t / Σ_t l_t q_t,
to multiply into the OPD advantage A_t = log π_t(y_t) − log π_s(y_t) (Alg. 1, line 25).
Everything is jit-compatible given a static maximum number of segments N: the BIC is evaluated
for all N − 1 split points at once. Segment ids come from host-side sentence splitting.

Placed in `advantages/` because it reshapes the per-token advantage/mask, not the loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V


def _dtype(*xs: Any) -> jnp.dtype:
  """float32, or float64 under x64; never bf16."""
  return jnp.result_type(*[jnp.result_type(x) for x in xs], jnp.float32)


def _check_static(name: str, value: Any, lo: float, *, integer: bool = False) -> None:
  types = (int, np.integer) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, types):
    kind = "int" if integer else "number"
    raise TypeError(f"`{name}` must be a static Python {kind}, got {type(value).__name__}.")
  if value < lo:
    raise ValueError(f"`{name}` must be >= {lo}, got {value}.")


def _check_mask(mask: Any, shape: tuple[int, ...], like: str) -> None:
  V.check_shape("mask", mask, shape, like=like)
  dtype = jnp.result_type(mask)
  if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
    raise TypeError(f"`mask` must be a bool, integer or float array, got dtype {dtype}.")


def candidate_margin(teacher_candidate_logp: jnp.ndarray) -> jnp.ndarray:
  """M_t = top-1 − top-2 of the teacher's log-probs over the student's K candidates, f32[B, T].

  Args:
    teacher_candidate_logp: f[B, T, K] teacher log-probs (or logits: only differences matter) of
      the student's top-K ids at each prefix, K >= 2 (paper: K = 4).

  Returns:
    f32[B, T], >= 0. Constant (stop-gradient): a diagnostic, not a training signal.
  """
  V.check_floating("teacher_candidate_logp", teacher_candidate_logp)
  V.check_rank("teacher_candidate_logp", teacher_candidate_logp, 3)
  if np.shape(teacher_candidate_logp)[-1] < 2:
    raise ValueError(
      f"`teacher_candidate_logp` needs K >= 2 candidates, got shape {np.shape(teacher_candidate_logp)}."
    )
  x = jax.lax.stop_gradient(jnp.asarray(teacher_candidate_logp, _dtype(teacher_candidate_logp)))
  top2 = jax.lax.top_k(x, 2)[0]
  return top2[..., 0] - top2[..., 1]


def teacher_margin(
  student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, *, k: int = 4
) -> jnp.ndarray:
  """M_t from full logits: the student's top-k ids, the teacher's best-two gap among them, f32[B, T].

  Args:
    student_logits: f[B, T, V] student logits at the sampled prefixes (defines C_t = top-k ids).
    teacher_logits: f[B, T, V] teacher logits at the same prefixes (same vocabulary).
    k: static candidate-set size, 2 <= k <= V (paper: 4).
  """
  for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
    V.check_floating(name, x)
    V.check_rank(name, x, 3)
  V.check_shape("teacher_logits", teacher_logits, np.shape(student_logits), like="student_logits")
  _check_static("k", k, 2, integer=True)
  if k > np.shape(student_logits)[-1]:
    raise ValueError(f"`k`={k} exceeds the vocabulary size {np.shape(student_logits)[-1]}.")
  ids = jax.lax.top_k(
    jax.lax.stop_gradient(jnp.asarray(student_logits, _dtype(student_logits))), int(k)
  )[1]
  t = jnp.asarray(teacher_logits, _dtype(teacher_logits))
  # Log-softmax shifts all candidates equally, so logits give the same margin as log-probs.
  return candidate_margin(jnp.take_along_axis(t, ids, axis=-1))


def segment_scores(
  margin: jnp.ndarray, segment_ids: jnp.ndarray, mask: jnp.ndarray, *, num_segments: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Sentence series S_i = log(1 + mean of M_t over the tokens of segment i), per row.

  Args:
    margin: f32[B, T] per-token margin M_t (`teacher_margin`).
    segment_ids: i32[B, T] segment (sentence) index of each token, -1 for padding; ids outside
      [0, num_segments) are ignored.
    mask: f32|bool[B, T]; only tokens with mask != 0 enter the means.
    num_segments: static N, the maximum number of segments per row.

  Returns:
    (scores f32[B, N], valid bool[B, N]); valid = the segment has >= 1 counted token; scores of
    invalid segments are 0.
  """
  V.check_floating("margin", margin)
  V.check_rank("margin", margin, 2)
  V.check_shape("segment_ids", segment_ids, np.shape(margin), like="margin")
  if not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer):
    raise TypeError(
      f"`segment_ids` must be an integer array, got dtype {jnp.result_type(segment_ids)}."
    )
  _check_mask(mask, tuple(np.shape(margin)), like="margin")
  _check_static("num_segments", num_segments, 1, integer=True)
  n = int(num_segments)
  dtype = _dtype(margin)
  m = jax.lax.stop_gradient(jnp.asarray(margin, dtype))
  on = (jnp.asarray(mask) != 0) & (segment_ids >= 0) & (segment_ids < n)
  ids = jnp.where(on, segment_ids, n)  # id n is out of range: dropped by segment_sum.
  seg_sum = jax.vmap(lambda x, i: jax.ops.segment_sum(x, i, num_segments=n))
  total = seg_sum(jnp.where(on, m, 0.0), ids)
  count = seg_sum(on.astype(dtype), ids)
  valid = count > 0
  return jnp.where(valid, jnp.log1p(total / jnp.maximum(count, 1.0)), 0.0), valid


def bic_change_point(
  scores: jnp.ndarray,
  valid: jnp.ndarray,
  *,
  k0: float = 1.0,
  k1: float = 3.0,
  eps: float = 1e-8,
  min_gain: float = 0.0,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Profiled RSS-BIC test for one downward mean shift in each row's segment series.

  The valid entries of each row, in order, form the series S_1..S_n (invalid entries are skipped).
  One Gaussian mean (BIC_0) is compared with two means split after τ (BIC_1(τ)), σ² profiled::

    BIC_0    = n log((RSS_0 + ε)/n) + k0 log n
    BIC_1(τ) = n log((RSS_1(τ) + ε)/n) + k1 log n,   τ ∈ {1..n−1},  mean(S_{>τ}) < mean(S_{≤τ})
    τ* = argmin BIC_1 (the split with the largest likelihood gain); release iff BIC_0 − BIC_1(τ*) > min_gain

  k0 = 1, k1 = 3 (two means + location) and min_gain = 0 are the paper's; ε is not given there
  (1e-8 here). RSS is computed from centred residuals for all τ at once ([B, N−1, N]), so a
  constant series has RSS ≈ 0 exactly and is never released.

  Args:
    scores: f32[B, N] segment series (`segment_scores`).
    valid: bool[B, N] which entries exist.
    k0, k1, eps, min_gain: static Python numbers (see above).

  Returns:
    (tau i32[B], release bool[B], gain f32[B]): tau = number of valid segments kept (1..n−1; 0 if
    there is no downward candidate), gain = BIC_0 − BIC_1(τ*) (0 if there is no candidate).
  """
  V.check_floating("scores", scores)
  V.check_rank("scores", scores, 2)
  V.check_shape("valid", valid, np.shape(scores), like="scores")
  for name, value, lo in (
    ("k0", k0, 0.0),
    ("k1", k1, 0.0),
    ("eps", eps, 0.0),
    ("min_gain", min_gain, -np.inf),
  ):
    _check_static(name, value, lo)
  dtype = _dtype(scores)
  valid = jnp.asarray(valid).astype(bool)
  n_seg = np.shape(scores)[1]
  # Compact each row: valid entries first, in order (stable sort on ~valid).
  order = jnp.argsort(~valid, axis=-1, stable=True)
  x = jnp.take_along_axis(
    jnp.where(valid, jax.lax.stop_gradient(jnp.asarray(scores, dtype)), 0.0), order, -1
  )
  n = jnp.sum(valid, axis=-1).astype(dtype)  # [B]
  pos = jnp.arange(n_seg)
  live = pos[None, :] < n[:, None]  # [B, N]
  n_safe = jnp.maximum(n, 1.0)
  mean0 = jnp.sum(jnp.where(live, x, 0.0), -1) / n_safe
  rss0 = jnp.sum(jnp.where(live, (x - mean0[:, None]) ** 2, 0.0), -1)
  bic0 = n * jnp.log((rss0 + eps) / n_safe) + k0 * jnp.log(n_safe)

  tau = jnp.arange(1, max(n_seg, 2))  # [S] candidate split points (S = N − 1)
  pre = pos[None, None, :] < tau[None, :, None]  # [1, S, N]
  post = (~pre) & live[:, None, :]  # [B, S, N]
  pre = pre & live[:, None, :]
  n_pre, n_post = jnp.sum(pre, -1).astype(dtype), jnp.sum(post, -1).astype(dtype)  # [B, S]
  xs = x[:, None, :]
  mean_pre = jnp.sum(jnp.where(pre, xs, 0.0), -1) / jnp.maximum(n_pre, 1.0)
  mean_post = jnp.sum(jnp.where(post, xs, 0.0), -1) / jnp.maximum(n_post, 1.0)
  resid = jnp.where(pre, xs - mean_pre[..., None], jnp.where(post, xs - mean_post[..., None], 0.0))
  rss1 = jnp.sum(resid**2, -1)
  bic1 = n[:, None] * jnp.log((rss1 + eps) / n_safe[:, None]) + k1 * jnp.log(n_safe)[:, None]
  ok = (tau[None, :] <= n[:, None] - 1) & (mean_post < mean_pre)
  bic1 = jnp.where(ok, bic1, jnp.inf)
  best = jnp.argmin(bic1, axis=-1)
  any_ok = jnp.any(ok, axis=-1)
  gain = jnp.where(any_ok, bic0 - jnp.take_along_axis(bic1, best[:, None], -1)[:, 0], 0.0)
  release = any_ok & (gain > min_gain)
  return jnp.where(any_ok, tau[best], 0).astype(jnp.int32), release, gain


def release_mask(
  segment_ids: jnp.ndarray,
  mask: jnp.ndarray,
  valid: jnp.ndarray,
  tau: jnp.ndarray,
  release: jnp.ndarray,
) -> jnp.ndarray:
  """Truncation mask q: f32[B, T] = mask on the prefix before the first token of the (τ+1)-th
  valid segment, 0 from there on; q = mask where `release` is False.

  The cut is a token position, so q is a prefix of `mask` (tokens with id -1 inside the prefix are
  kept). Segments are assumed to appear in order along T.

  Args:
    segment_ids: i32[B, T] (-1 padding); mask: f32|bool[B, T].
    valid: bool[B, N], tau: i32[B], release: bool[B] from `segment_scores` / `bic_change_point`.
  """
  V.check_rank("segment_ids", segment_ids, 2)
  shape = tuple(np.shape(segment_ids))
  _check_mask(mask, shape, like="segment_ids")
  V.check_rank("valid", valid, 2)
  if np.shape(valid)[0] != shape[0]:
    raise ValueError(
      f"`valid` must have B = {shape[0]} rows (`segment_ids` {shape}), got {np.shape(valid)}."
    )
  V.check_shape("tau", tau, shape[:1], like="segment_ids[:, 0]")
  V.check_shape("release", release, shape[:1], like="segment_ids[:, 0]")
  n_seg = np.shape(valid)[1]
  valid = jnp.asarray(valid).astype(bool)
  rank = jnp.cumsum(valid, axis=-1) - 1  # compacted index of each valid segment
  on = (jnp.asarray(mask) != 0) & (segment_ids >= 0) & (segment_ids < n_seg)
  tok_rank = jnp.take_along_axis(rank, jnp.clip(segment_ids, 0, n_seg - 1), axis=-1)
  dropped = (
    on
    & jnp.take_along_axis(valid, jnp.clip(segment_ids, 0, n_seg - 1), -1)
    & (tok_rank >= tau[:, None])
  )
  t_idx = jnp.arange(shape[1])
  cut = jnp.min(jnp.where(dropped, t_idx[None, :], shape[1]), axis=-1)  # first dropped token
  keep = ~jnp.asarray(release)[:, None] | (t_idx[None, :] < cut[:, None])
  m = jnp.asarray(mask)
  return jnp.where(keep, m, 0).astype(_dtype(m))


def teachability_release(
  margin: jnp.ndarray,
  segment_ids: jnp.ndarray,
  mask: jnp.ndarray,
  *,
  num_segments: int,
  k0: float = 1.0,
  k1: float = 3.0,
  eps: float = 1e-8,
  min_gain: float = 0.0,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The full release rule: margin -> segment series -> BIC change point -> truncation mask.

  Args:
    margin: f32[B, T] per-token teacher margin (`teacher_margin` / `candidate_margin`).
    segment_ids: i32[B, T] sentence index per token (-1 padding), < num_segments.
    mask: f32|bool[B, T] response mask.
    num_segments: static N; k0, k1, eps, min_gain: see `bic_change_point`.

  Returns:
    (q f32[B, T], info) with q the truncated mask (multiply into the OPD advantage or token
    weights, or pass to `release_weights`) and info {"tau": i32[B], "release": bool[B],
    "gain": f32[B], "scores": f32[B, N], "valid": bool[B, N]}.
  """
  scores, valid = segment_scores(margin, segment_ids, mask, num_segments=num_segments)
  tau, release, gain = bic_change_point(scores, valid, k0=k0, k1=k1, eps=eps, min_gain=min_gain)
  q = release_mask(segment_ids, mask, valid, tau, release)
  return q, {"tau": tau, "release": release, "gain": gain, "scores": scores, "valid": valid}


def release_weights(keep: jnp.ndarray, mask: jnp.ndarray, *, eps: float = 1e-8) -> jnp.ndarray:
  """Mass-preserving per-token weights q_t · Σ_t l_t / max(Σ_t l_t q_t, ε), f32[B, T] (Alg. 1 l. 25).

  A'_t = A_t · weights_t keeps each sample's total supervision weight Σ_t l_t q_t w_t = Σ_t l_t.
  All-masked rows give 0.

  Args:
    keep: f32|bool[B, T] truncation mask q (`teachability_release`).
    mask: f32|bool[B, T] loss mask l.
    eps: static floor of the kept mass.
  """
  V.check_rank("keep", keep, 2)
  _check_mask(mask, tuple(np.shape(keep)), like="keep")
  _check_static("eps", eps, 0.0)
  dtype = _dtype(keep, mask)
  q = jnp.asarray(keep, dtype)
  lm = jnp.asarray(mask, dtype)
  total, kept = jnp.sum(lm, -1, keepdims=True), jnp.sum(lm * q, -1, keepdims=True)
  return jax.lax.stop_gradient(q * total / jnp.maximum(kept, eps))
