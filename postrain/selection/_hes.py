"""HES: High-Entropy Sum data selection (arXiv 2605.22389).

A sample's HES is the sum of its n_b largest per-token entropies over the response tokens,

  L_b = Σ_t mask[b, t],   n_b = min(L_b, max(min_tokens, ⌈ρ · L_b⌉)),   HES_b = Σ_{i ≤ n_b} H_b,(i)

where H_b,(i) is the i-th largest entropy of row b (order statistics, so ties do not add tokens).
ρ = 0.005 by default ("forking tokens"). The paper's Eq. (1) writes the sum over a normalised rank;
we implement the order-statistics reading a reviewer quotes, with ρ·L_b rounded up (default,
`rounding="ceil"`) so that short responses keep at least one token.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as V

_ROUNDINGS = ("ceil", "floor", "round")


@functools.lru_cache(maxsize=64)
def _count_table(length: int, ratio: float, min_tokens: int, rounding: str) -> np.ndarray:
  """n(L) for L = 0..length, in exact rational arithmetic on the decimal literal of `ratio`.

  Reading `ratio` as its decimal literal (0.005 == 1/200 exactly) avoids float artefacts such as
  ceil(0.005 * 200) == 2. The table is a static constant of the traced function.
  """
  r = Fraction(repr(float(ratio)))
  table = np.zeros(length + 1, np.int32)
  for n_tok in range(1, length + 1):
    x = r * n_tok
    if rounding == "ceil":
      k = math.ceil(x)
    elif rounding == "floor":
      k = math.floor(x)
    else:  # round half up
      k = math.floor(x + Fraction(1, 2))
    table[n_tok] = min(n_tok, max(min_tokens, k))
  return table


def hes_token_counts(
  lengths: Any,
  max_length: int,
  *,
  ratio: float = 0.005,
  min_tokens: int = 1,
  rounding: str = "ceil",
) -> jax.Array:
  """n_b = min(L_b, max(min_tokens, round(ρ · L_b))): how many tokens HES sums per sample.

  Args:
    lengths: i32[B], response lengths L_b (0 <= L_b <= max_length).
    max_length: static upper bound on the lengths (usually T).
    ratio: ρ in (0, 1].
    min_tokens: lower bound on n_b for non-empty rows (the "at least one token" rule).
    rounding: how ρ·L_b becomes an integer: "ceil" (default), "floor" or "round" (half up).

  Returns:
    i32[B]; 0 for empty rows.
  """
  V.check_choice("rounding", rounding, _ROUNDINGS)
  if not 0.0 < ratio <= 1.0:
    raise ValueError(f"`ratio` must be in (0, 1], got {ratio}.")
  if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
    raise ValueError(f"`min_tokens` must be a non-negative int, got {min_tokens!r}.")
  table = jnp.asarray(_count_table(int(max_length), float(ratio), int(min_tokens), rounding))
  return table[jnp.clip(jnp.asarray(lengths, jnp.int32), 0, max_length)]


def _check_entropy(entropy: Any, mask: Any) -> None:
  V.check_rank("entropy", entropy, 2)
  V.check_floating("entropy", entropy)
  V.check_shape("mask", mask, np.shape(entropy), like="entropy")


def hes_score(
  entropy: jax.Array,
  mask: jax.Array,
  *,
  ratio: float = 0.005,
  min_tokens: int = 1,
  rounding: str = "ceil",
) -> jax.Array:
  """High-Entropy Sum per sample (arXiv 2605.22389, Eq. 1, order-statistics reading).

  HES_b = Σ_{i=1}^{n_b} H_b,(i), the sum of the n_b largest entropies among the masked tokens,
  n_b = min(L_b, max(min_tokens, ⌈ρ L_b⌉)) (see `hes_token_counts` for the rounding options).
  Sort-based: one descending sort per row and a gather at the per-row dynamic count, so it is
  pure and jit-able with a static T.

  Args:
    entropy: f32[B, T] per-token predictive entropies (any float dtype; summed in float32).
    mask: [B, T] bool/float, nonzero = response token that counts.
    ratio: ρ, the fraction of each sample's tokens that are summed (default 0.5 %).
    min_tokens: at least this many tokens for a non-empty sample (default 1).
    rounding: "ceil" (default), "floor" or "round" for ρ·L_b.

  Returns:
    f32[B]; 0 for rows with no masked token.
  """
  _check_entropy(entropy, mask)
  m = jnp.asarray(mask) != 0
  h = jnp.asarray(entropy, jnp.float32)
  n = hes_token_counts(
    m.sum(-1), h.shape[-1], ratio=ratio, min_tokens=min_tokens, rounding=rounding
  )
  s = -jnp.sort(jnp.where(m, -h, jnp.inf), axis=-1)  # descending, masked entries last as -inf
  csum = jnp.cumsum(jnp.where(jnp.isfinite(s), s, 0.0), axis=-1)
  top = jnp.take_along_axis(csum, jnp.maximum(n - 1, 0)[:, None], axis=-1)[:, 0]
  return jnp.where(n > 0, top, 0.0)


def entropy_variants(
  entropy: jax.Array,
  mask: jax.Array,
  *,
  ratio: float = 0.005,
  min_tokens: int = 1,
  tau: float | None = None,
) -> dict[str, jax.Array]:
  """The ablation scores of arXiv 2605.22389 §2.3, each f32[B].

  - "hes": `hes_score` (ceil rounding);
  - "es": Σ_t H_t over the masked tokens;
  - "avg_e": ES / L;
  - "avg_he": HES / n (mean of the top-ρ entropies);
  - "hes_abs" (only if `tau` is given): Σ_t H_t 1[H_t >= τ], one fixed threshold for all samples.
  Empty rows give 0 everywhere.
  """
  _check_entropy(entropy, mask)
  m = jnp.asarray(mask) != 0
  h = jnp.where(m, jnp.asarray(entropy, jnp.float32), 0.0)
  length = m.sum(-1)
  n = hes_token_counts(length, h.shape[-1], ratio=ratio, min_tokens=min_tokens)
  hes = hes_score(entropy, mask, ratio=ratio, min_tokens=min_tokens)
  es = h.sum(-1)
  out = {
    "hes": hes,
    "es": es,
    "avg_e": es / jnp.maximum(length, 1),
    "avg_he": hes / jnp.maximum(n, 1),
  }
  if tau is not None:
    out["hes_abs"] = jnp.where(m & (h >= tau), h, 0.0).sum(-1)
  return out


def token_entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """H_t = -Σ_v p_t(v) log p_t(v) from logits, in float32.

  Args:
    logits: [B, T, V] (any float dtype).
    mask: optional [B, T]; entries where it is 0 are set to 0.

  Returns:
    f32[B, T].
  """
  V.check_rank("logits", logits, 3)
  V.check_floating("logits", logits)
  lp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  h = -jnp.sum(jnp.exp(lp) * lp, axis=-1)
  if mask is not None:
    V.check_shape("mask", mask, np.shape(logits)[:2], like="logits[..., 0]")
    h = jnp.where(jnp.asarray(mask) != 0, h, 0.0)
  return h
