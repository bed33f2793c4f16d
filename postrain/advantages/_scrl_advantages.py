"""SCRL subproblem-curriculum advantages (arXiv 2605.22074).

A curriculum rollout answers K verifiable subproblems in order, each in its own `<pj>…</pj>` block;
the last subproblem is the original problem. The pipeline is

  raw subproblem rewards r[B, K] --progress correction--> R[B, K] (Eqs. 2-3)
  --per-position group normalisation--> A[B, K] (Eq. 4)
  --answer-span ids--> token advantages A[B, T] (Sec. 3.3)

and the mixed-group objective (Eq. 5) puts, inside each group of G rollouts, `num_curriculum`
curriculum rollouts (token span advantages) and `G - num_curriculum` rollouts of the original
prompt (outcome GRPO advantages) into one token-mean loss.

Span ids (host-side parsing decides which tokens belong to which block): `span_ids: i32[B, T]`,
value `k in [0, K)` means the token belongs to the (0-based) k-th subproblem's block, `-1` means
outside every block. Values outside `[0, K)` are treated as -1. Whether the `<pj>` tag tokens are
part of the block is the caller's choice when building `span_ids`; the note suggests including
the closing tag.
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
  check_shape,
)
from postrain.advantages._group import SCALES, float_dtype, normalize_groups

Array = jax.Array

CORRECTIONS = ("cumprod", "none")


def _check_int(name: str, x) -> None:
  if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
    raise TypeError(f"`{name}` must be an integer array, got dtype {jnp.result_type(x)}.")


def _check_format_ok(format_ok, batch: int) -> None:
  if format_ok is not None:
    check_rank("format_ok", format_ok, 1)
    check_shape("format_ok", format_ok, (batch,), like="rewards.shape[:1]")


def _progress(rewards: Array, format_ok: Array | None, correction: str) -> Array:
  r = rewards.astype(float_dtype(rewards))
  if format_ok is not None:
    r = r * (jnp.asarray(format_ok) != 0)[:, None].astype(r.dtype)
  return jnp.cumprod(r, axis=-1) if correction == "cumprod" else r


def scrl_progress_rewards(
  subproblem_rewards: Array,
  format_ok: Array | None = None,
  *,
  correction: str = "cumprod",
) -> Array:
  """Progress-aware subproblem rewards (SCRL Eqs. 2-3, arXiv 2605.22074).

    k_i = max{j : r_i^(1) = … = r_i^(j) = 1},   R_i^(j) = 1[j <= k_i] = Π_{j' <= j} r_i^(j')

  Rewards after the first failed subproblem are zeroed, e.g. (1, 1, 0, 1) -> (1, 1, 0, 0). A
  rollout whose format is violated gets r_i = 0 (it still counts as zeros in the group
  statistics). For binary rewards the cumulative product is exactly Eq. 3; for graded rewards in
  [0, 1] it is the natural generalisation (the reading implemented).

  Args:
    subproblem_rewards: f32[B, K] per-subproblem rewards (K static; the last is the original).
    format_ok: optional bool[B]; False zeroes the whole row.
    correction: "cumprod" (SCRL) or "none" (the paper's ablation without progress correction).

  Returns:
    f32[B, K] corrected rewards R.
  """
  check_floating("subproblem_rewards", subproblem_rewards)
  check_rank("subproblem_rewards", subproblem_rewards, 2)
  _check_format_ok(format_ok, np.shape(subproblem_rewards)[0])
  check_choice("correction", correction, CORRECTIONS)
  return _progress(jnp.asarray(subproblem_rewards), format_ok, correction)


def scrl_subproblem_advantages(
  progress_rewards: Array,
  *,
  group_size: int,
  scale: str = "group",
  eps: float = 1e-6,
) -> Array:
  """Per-position group normalisation (SCRL Eq. 4, arXiv 2605.22074).

    A_i^(j) = (R_i^(j) - mean_{i'} R_{i'}^(j)) / (std_{i'} R_{i'}^(j) + eps)

  Each subproblem position j is normalised on its own over the G rows of the group (population
  std; a position where all rows agree gives exactly 0). `scale` has the meaning of
  `group_normalized` ("batch" uses the std of position j over the whole batch).

  Args:
    progress_rewards: f32[B, K] (usually from `scrl_progress_rewards`), groups contiguous.
    group_size: static G dividing B (here G = the curriculum rollouts of one prompt).
    scale: "group" | "batch" | "none".
    eps: added to the std (>= 0).

  Returns:
    f32[B, K] subproblem advantages.
  """
  check_floating("progress_rewards", progress_rewards)
  check_rank("progress_rewards", progress_rewards, 2)
  check_group_size(group_size, np.shape(progress_rewards)[0], "progress_rewards")
  check_choice("scale", scale, SCALES)
  check_positive("eps", eps, allow_zero=True)
  x = jnp.asarray(progress_rewards)
  return normalize_groups(x.astype(float_dtype(x)), group_size, scale, eps)


def _token_advantages(adv: Array, span_ids: Array, mask: Array, format_ok: Array | None) -> Array:
  num_sub = adv.shape[1]
  span_ids = jnp.asarray(span_ids)
  in_span = (span_ids >= 0) & (span_ids < num_sub) & (jnp.asarray(mask) != 0)
  if format_ok is not None:
    in_span = in_span & (jnp.asarray(format_ok) != 0)[:, None]
  tok = jnp.take_along_axis(adv, jnp.clip(span_ids, 0, num_sub - 1), axis=1)
  return jnp.where(in_span, tok, 0.0)


def _check_spans(span_ids, mask, batch: int) -> None:
  check_rank("span_ids", span_ids, 2)
  _check_int("span_ids", span_ids)
  check_rank("mask", mask, 2)
  if np.shape(span_ids)[0] != batch:
    raise ValueError(
      f"`span_ids` must have {batch} rows (the batch of the rewards), got shape {np.shape(span_ids)}."
    )
  check_shape("mask", mask, np.shape(span_ids), like="span_ids")


def scrl_token_advantages(
  subproblem_advantages: Array,
  span_ids: Array,
  mask: Array,
  *,
  format_ok: Array | None = None,
) -> Array:
  """Token-level credit from answer spans (SCRL Sec. 3.3, arXiv 2605.22074).

    A_{i,t} = A_i^(span_ids[i, t])   if 0 <= span_ids[i, t] < K and mask[i, t] and format_ok[i]
            = 0                      otherwise (outside every block, padding, malformed rollout)

  Args:
    subproblem_advantages: f32[B, K] (from `scrl_subproblem_advantages`).
    span_ids: i32[B, T]; k = token in subproblem k's block (0-based), -1 = none.
    mask: [B, T] response-token mask (bool or float; nonzero = counts).
    format_ok: optional bool[B]; malformed rollouts get zero advantage on every token.

  Returns:
    f32[B, T] token advantages.
  """
  check_floating("subproblem_advantages", subproblem_advantages)
  check_rank("subproblem_advantages", subproblem_advantages, 2)
  batch = np.shape(subproblem_advantages)[0]
  _check_spans(span_ids, mask, batch)
  _check_format_ok(format_ok, batch)
  adv = jnp.asarray(subproblem_advantages)
  return _token_advantages(adv.astype(float_dtype(adv)), span_ids, mask, format_ok)


def scrl_curriculum_rows(batch_size: int, *, group_size: int, num_curriculum: int) -> np.ndarray:
  """bool[B] (static numpy): True for the curriculum rows, the first `num_curriculum` of each group."""
  check_group_size(group_size, batch_size, "batch_size")
  return (np.arange(batch_size) % group_size) < num_curriculum


def scrl_progress_stats(progress_rewards: Array) -> dict[str, Array]:
  """Progress diagnostics of corrected rewards R: f32[B, K] (paper Figs. 6-7).

  For binary R, `k_i = Σ_j R_i^(j)` is the number of leading solved subproblems. Returns scalars
  `progress_mean` (mean k_i / K), `progress_zero_frac` (k_i = 0) and `progress_full_frac` (k_i = K).
  """
  check_floating("progress_rewards", progress_rewards)
  check_rank("progress_rewards", progress_rewards, 2)
  r = jnp.asarray(progress_rewards, jnp.float32)
  k = jnp.sum(r, axis=-1)
  num_sub = r.shape[-1]
  return {
    "progress_mean": jnp.mean(k) / num_sub,
    "progress_zero_frac": jnp.mean((k == 0).astype(jnp.float32)),
    "progress_full_frac": jnp.mean((k == num_sub).astype(jnp.float32)),
  }


def scrl_advantages(
  subproblem_rewards: Array,
  outcome_rewards: Array,
  span_ids: Array,
  mask: Array,
  *,
  group_size: int,
  num_curriculum: int | None = None,
  format_ok: Array | None = None,
  correction: str = "cumprod",
  scale: str = "group",
  eps: float = 1e-6,
) -> tuple[Array, dict[str, Array]]:
  """Token advantages of SCRL's mixed groups (Eq. 5, arXiv 2605.22074).

  Each group of G contiguous rows holds `Gc = num_curriculum` curriculum rollouts first, then
  `Go = G - Gc` rollouts of the original prompt:

    curriculum row i:  A_{i,t} = scrl_token_advantages(A^(j) normalised over the Gc rows)  (Eq. 4)
    original row i:    A_{i,t} = group_normalized(outcome over the Go rows)_i · mask[i, t]

  Reading chosen for the note's ambiguity: each half is normalised over its own rows (the note's
  "G/2 curriculum rollouts of the same problem"), not over all G. Eq. 5 has one token normaliser
  over both halves: pass the full `mask` (not a span mask) with `agg="token_mean"` to
  `losses.ppo_clip`, so tokens outside every span still count in the denominator.
  `num_curriculum=0` is plain GRPO; `num_curriculum=G` trains on curriculum rollouts only.

  Args:
    subproblem_rewards: f32[B, K] raw subproblem rewards (read on curriculum rows only).
    outcome_rewards: f32[B] outcome rewards (read on original rows only).
    span_ids: i32[B, T] answer-span ids (curriculum rows; -1 = none).
    mask: [B, T] response-token mask.
    group_size: static G dividing B.
    num_curriculum: static Gc in [0, G]; default G // 2 (the paper's split).
    format_ok: optional bool[B] format flags of the curriculum rows.
    correction: "cumprod" | "none" (see `scrl_progress_rewards`).
    scale: "group" | "batch" | "none" for both halves.
    eps: added to the std (>= 0).

  Returns:
    (advantages f32[B, T], metrics) with scalar metrics `progress_mean`, `progress_zero_frac`,
    `progress_full_frac` (curriculum rows) and the zero-variance fractions
    `curriculum_zero_variance_frac` (over (prompt, position) columns), `outcome_zero_variance_frac`.
  """
  check_floating("subproblem_rewards", subproblem_rewards)
  check_rank("subproblem_rewards", subproblem_rewards, 2)
  batch, num_sub = np.shape(subproblem_rewards)
  check_floating("outcome_rewards", outcome_rewards)
  check_rank("outcome_rewards", outcome_rewards, 1)
  check_shape("outcome_rewards", outcome_rewards, (batch,), like="subproblem_rewards.shape[:1]")
  check_group_size(group_size, batch, "subproblem_rewards")
  _check_spans(span_ids, mask, batch)
  _check_format_ok(format_ok, batch)
  check_choice("correction", correction, CORRECTIONS)
  check_choice("scale", scale, SCALES)
  check_positive("eps", eps, allow_zero=True)
  if num_curriculum is None:
    num_curriculum = group_size // 2
  if isinstance(num_curriculum, bool) or not isinstance(num_curriculum, (int, np.integer)):
    raise TypeError(f"`num_curriculum` must be a static Python int, got {type(num_curriculum)}.")
  if not 0 <= num_curriculum <= group_size:
    raise ValueError(f"`num_curriculum` must be in [0, {group_size}], got {num_curriculum}.")

  num_prompts, n_cur, n_out = batch // group_size, num_curriculum, group_size - num_curriculum
  dtype = jnp.promote_types(float_dtype(subproblem_rewards), float_dtype(outcome_rewards))
  progress = _progress(jnp.asarray(subproblem_rewards).astype(dtype), format_ok, correction)
  progress_g = progress.reshape(num_prompts, group_size, num_sub)
  outcome_g = jnp.asarray(outcome_rewards).astype(dtype).reshape(num_prompts, group_size)

  # Each half is normalised over its own rows; an empty half (static) is skipped.
  zero_f = jnp.zeros((), jnp.float32)
  sub_adv = jnp.zeros((num_prompts, 0, num_sub), dtype)
  out_adv = jnp.zeros((num_prompts, 0), dtype)
  metrics = {"curriculum_zero_variance_frac": zero_f, "outcome_zero_variance_frac": zero_f}
  metrics |= {"progress_mean": zero_f, "progress_zero_frac": zero_f, "progress_full_frac": zero_f}
  if n_cur:
    cur = progress_g[:, :n_cur].reshape(num_prompts * n_cur, num_sub)
    sub_adv = normalize_groups(cur, n_cur, scale, eps).reshape(num_prompts, n_cur, num_sub)
    cur_g = cur.reshape(num_prompts, n_cur, num_sub)
    const = jnp.max(cur_g, axis=1) == jnp.min(cur_g, axis=1)
    metrics["curriculum_zero_variance_frac"] = jnp.mean(const.astype(jnp.float32))
    metrics |= scrl_progress_stats(cur)
  if n_out:
    out = outcome_g[:, n_cur:].reshape(num_prompts * n_out)
    out_adv = normalize_groups(out, n_out, scale, eps).reshape(num_prompts, n_out)
    out_g = out.reshape(num_prompts, n_out)
    const = jnp.max(out_g, axis=1) == jnp.min(out_g, axis=1)
    metrics["outcome_zero_variance_frac"] = jnp.mean(const.astype(jnp.float32))

  sub_full = jnp.concatenate([sub_adv, jnp.zeros((num_prompts, n_out, num_sub), dtype)], axis=1)
  out_full = jnp.concatenate([jnp.zeros((num_prompts, n_cur), dtype), out_adv], axis=1)
  tok_cur = _token_advantages(sub_full.reshape(batch, num_sub), span_ids, mask, format_ok)
  tok_out = out_full.reshape(batch, 1) * (jnp.asarray(mask) != 0).astype(dtype)
  is_cur = scrl_curriculum_rows(batch, group_size=group_size, num_curriculum=n_cur)
  return jnp.where(is_cur[:, None], tok_cur, tok_out), metrics
