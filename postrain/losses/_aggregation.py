"""Token-to-scalar loss aggregation shared by every loss in `postrain.losses`.

Four modes, named as in verl / Dr.GRPO (arXiv 2503.20783). With `n_i = Σ_t mask[i, t]`, `R` the
number of rows with `n_i > 0` and `ℓ: f32[B, T]` a per-token loss:

  token_mean               Σ_{i,t} mask·ℓ / max(Σ_{i,t} mask, 1)          (DAPO, arXiv 2503.14476)
  seq_mean_token_mean      (1/R) Σ_i [Σ_t mask·ℓ / n_i]                   (GRPO, GSPO: (1/G) Σ_i 1/|y_i| Σ_t)
  seq_mean_token_sum       (1/R) Σ_i  Σ_t mask·ℓ
  seq_mean_token_sum_norm  (1/R) Σ_i [Σ_t mask·ℓ / max_len]               (Dr.GRPO, static max_len)

"Mean over rows" counts only rows with at least one (non-zero-weight) token, so a fully masked
padding row neither contributes nor dilutes the mean: masking a row equals slicing it out. A float
`mask` acts as a per-token weight (e.g. a temporal credit window). Masked positions are selected
away (`where`): ±inf or NaN there changes neither the value nor the gradient w.r.t. `ℓ`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from postrain import _validation as V

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def compute_dtype(*arrays: Any) -> jnp.dtype:
  """float32, or float64 when an input is float64 (x64 tests); never bf16/f16."""
  return jnp.result_type(*[jnp.result_type(a) for a in arrays], jnp.float32)


def check_agg(agg: Any, max_len: Any) -> None:
  """Validates the static aggregation options."""
  V.check_choice("agg", agg, AGG_MODES)
  if agg == "seq_mean_token_sum_norm":
    if max_len is None:
      raise ValueError(
        "`max_len` (a static Python number > 0) is required for agg='seq_mean_token_sum_norm'."
      )
    if isinstance(max_len, bool) or not isinstance(max_len, (int, float)):
      raise TypeError(f"`max_len` must be a static Python number, got {type(max_len).__name__}.")
    V.check_positive("max_len", max_len)


def row_weights(count: jnp.ndarray, agg: str, max_len: Any = None) -> jnp.ndarray:
  """f_i such that every mode is Σ_i f_i Σ_t mask·ℓ: f32[B] (count = Σ_t mask per row)."""
  if agg == "token_mean":
    return jnp.broadcast_to(1.0 / jnp.maximum(jnp.sum(count), 1.0), count.shape)
  has_tokens = (count > 0).astype(count.dtype)
  inv_rows = 1.0 / jnp.maximum(jnp.sum(has_tokens), 1.0)
  if agg == "seq_mean_token_mean":
    return has_tokens * inv_rows / jnp.maximum(count, 1.0)
  if agg == "seq_mean_token_sum":
    return jnp.broadcast_to(inv_rows, count.shape)
  return jnp.broadcast_to(inv_rows / max_len, count.shape)  # seq_mean_token_sum_norm


def aggregate_unchecked(
  per_token: jnp.ndarray,
  mask: jnp.ndarray,
  agg: str,
  max_len: Any = None,
  count: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """`aggregate` without input checks (mask already in the compute dtype).

  `per_token` may also be a per-row value f32[B, 1] that stands for itself broadcast over the
  row's tokens; it is then reduced with the row counts and never expanded to [B, T]. `count`
  (f32[B], Σ_t mask) can be passed when the caller already has it.
  """
  if count is None:
    count = jnp.sum(mask, axis=-1)
  if per_token.shape[-1] == 1 and mask.shape[-1] != 1:
    row_sum = per_token[:, 0] * count
  else:
    row_sum = jnp.sum(jnp.where(mask != 0, per_token * mask, 0.0), axis=-1)
  return jnp.sum(row_weights(count, agg, max_len) * row_sum)


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Σ mask·x / max(Σ mask, 1) (token-weighted; used for aux metrics)."""
  return jnp.sum(jnp.where(mask != 0, x * mask, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def aggregate(
  per_token: jnp.ndarray, mask: jnp.ndarray, *, agg: str, max_len: float | None = None
) -> jnp.ndarray:
  """Reduces a per-token loss to a scalar with one of the four aggregation modes.

  Args:
    per_token: f32[B, T] per-token loss (any float dtype; reduced in float32, or float64 under x64).
    mask: f32|bool[B, T], 1 on tokens that count; a float mask is a per-token weight.
    agg: "token_mean", "seq_mean_token_mean", "seq_mean_token_sum" or "seq_mean_token_sum_norm"
      (see the module docstring for the formulas).
    max_len: static Python number > 0, the constant per-row normaliser of
      "seq_mean_token_sum_norm" (Dr.GRPO's MAX_TOKENS); ignored by the other modes.

  Returns:
    f32[] scalar. All-masked input gives exactly 0.
  """
  V.check_floating("per_token", per_token)
  V.check_rank("per_token", per_token, 2)
  V.check_shape("mask", mask, jnp.shape(per_token), like="per_token")
  check_agg(agg, max_len)
  dtype = compute_dtype(per_token)
  return aggregate_unchecked(jnp.asarray(per_token, dtype), jnp.asarray(mask, dtype), agg, max_len)
