"""Selecting samples by score: dataset top fraction (SFT), per-query top-k (RFT), and the
in-group down-sampling of HES for RL (arXiv 2605.22389 §2.4; also GRACE, arXiv 2605.13130 Eq. 2).

Dataset-level selection runs on the host (numpy): it is a sort over the pool, not part of a
training step. The RL down-sampling runs inside the step and is jit-able.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V


def _host_scores(scores: Any, valid: Any | None) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64)
  if s.ndim != 1:
    raise ValueError(f"`scores` must have rank 1, got shape {s.shape}.")
  if valid is None:
    v = np.ones(s.shape, bool)
  else:
    v = np.asarray(valid).astype(bool)
    V.check_shape("valid", v, s.shape, like="scores")
  return s, v & ~np.isnan(s)


def select_top_k(scores: Any, k: int, *, valid: Any | None = None) -> np.ndarray:
  """Keeps the k highest-scoring valid samples; ties go to the lower index.

  Args:
    scores: [N] scores (higher is kept first).
    k: how many to keep (fewer if fewer are valid).
    valid: optional bool[N]; invalid (and NaN) samples are never kept.

  Returns:
    bool[N] keep mask.
  """
  s, v = _host_scores(scores, valid)
  if k < 0:
    raise ValueError(f"`k` must be >= 0, got {k}.")
  order = np.lexsort((np.arange(s.size), -np.where(v, s, -np.inf)))  # by score desc, then index
  order = order[v[order]][:k]
  keep = np.zeros(s.shape, bool)
  keep[order] = True
  return keep


def select_top_fraction(
  scores: Any, fraction: float, *, valid: Any | None = None, rounding: str = "ceil"
) -> np.ndarray:
  """Keeps the top `fraction` of the valid samples by score (GRACE Eq. 2, HES SFT selection).

  k = ⌈fraction · N_valid⌉ (`rounding="ceil"`, GRACE's ⌈ρ|D|⌉) or ⌊fraction · N_valid⌋
  ("floor"); the fraction is read as its decimal literal so 0.2 · 10 is exactly 2. N_valid
  counts only the valid samples (e.g. the correct ones: HES is applied within correct samples).

  Returns:
    bool[N] keep mask.
  """
  V.check_choice("rounding", rounding, ("ceil", "floor"))
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
  _, v = _host_scores(scores, valid)
  x = Fraction(repr(float(fraction))) * int(v.sum())
  k = math.ceil(x) if rounding == "ceil" else math.floor(x)
  return select_top_k(scores, k, valid=valid)


def select_top_k_per_group(
  scores: Any, *, group_size: int, k: int, valid: Any | None = None
) -> np.ndarray:
  """Per-query top-k (RFT, arXiv 2605.22389 §2.4 (a), k ∈ {2, 4, 8}): groups are contiguous.

  Args:
    scores: [B] with B = num_queries * group_size (e.g. HES of each response).
    group_size: responses per query.
    k: responses kept per query (fewer where fewer are valid).
    valid: optional bool[B], e.g. "response is correct".

  Returns:
    bool[B] keep mask.
  """
  s, v = _host_scores(scores, valid)
  V.check_group_size(group_size, s.size, "scores")
  keep = np.zeros(s.shape, bool)
  for start in range(0, s.size, group_size):
    sl = slice(start, start + group_size)
    keep[sl] = select_top_k(s[sl], k, valid=v[sl])
  return keep


def _group_rank(score_PG: jax.Array) -> jax.Array:
  """Rank of each entry in its row by descending score, ties to the lower index."""
  order = jnp.argsort(-score_PG, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def hes_group_downsample(
  hes: jax.Array,
  correct: jax.Array,
  key: jax.Array,
  *,
  group_size: int,
  n_pos: int,
  n_neg: int,
) -> jax.Array:
  """ "Pos-High, Neg-Rand" rollout down-sampling for GRPO (arXiv 2605.22389 §2.4 (3)).

  Per group: keep the min(n_pos, |P|) correct rollouts with the highest HES (ties to the lower
  index) and min(n_neg, |N|) incorrect rollouts chosen uniformly at random.

  Args:
    hes: f32[B] HES of each rollout, B = num_prompts * group_size, groups contiguous.
    correct: bool[B] (or 0/1 rewards) verifier outcome.
    key: PRNG key for the random negatives.
    group_size: G (static).
    n_pos, n_neg: static counts per group.

  Returns:
    bool[B] keep mask.
  """
  V.check_rank("hes", hes, 1)
  V.check_floating("hes", hes)
  V.check_shape("correct", correct, np.shape(hes), like="hes")
  V.check_group_size(group_size, np.shape(hes)[0], "hes")
  V.check_positive("n_pos", n_pos, allow_zero=True)
  V.check_positive("n_neg", n_neg, allow_zero=True)
  pos = (jnp.asarray(correct) != 0).reshape(-1, group_size)
  h = jnp.asarray(hes, jnp.float32).reshape(-1, group_size)
  u = jax.random.uniform(key, h.shape)
  keep_pos = pos & (_group_rank(jnp.where(pos, h, -jnp.inf)) < n_pos)
  keep_neg = ~pos & (_group_rank(jnp.where(pos, -jnp.inf, u)) < n_neg)
  return (keep_pos | keep_neg).reshape(-1)


def kept_group_advantages(
  rewards: jax.Array,
  keep: jax.Array,
  *,
  group_size: int,
  eps: float = 1e-6,
  scale_by_std: bool = True,
) -> jax.Array:
  """GRPO advantages recomputed over the kept rollouts of each group; dropped rollouts get 0.

  A_i = (r_i - mean_{j kept} r_j) / (std_{j kept} r_j + eps) for kept i. The HES paper does not
  say whether statistics are recomputed on the subset (§6 of the note); this is the PODS-style
  reading. A group with one kept rollout or zero variance gives 0.

  Args:
    rewards: f32[B]; keep: bool[B]; group_size: G (static).

  Returns:
    f32[B].
  """
  V.check_rank("rewards", rewards, 1)
  V.check_floating("rewards", rewards)
  V.check_shape("keep", keep, np.shape(rewards), like="rewards")
  V.check_group_size(group_size, np.shape(rewards)[0])
  k = (jnp.asarray(keep) != 0).reshape(-1, group_size)
  r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
  cnt = jnp.maximum(k.sum(-1, keepdims=True), 1)
  mean = jnp.where(k, r, 0.0).sum(-1, keepdims=True) / cnt
  centered = jnp.where(k, r - mean, 0.0)
  if scale_by_std:
    std = jnp.sqrt((centered**2).sum(-1, keepdims=True) / cnt)
    # Zero-variance groups stay at 0 even with eps = 0.
    centered = jnp.where(std > 0, centered / (std + eps), 0.0)
  return centered.reshape(-1)
