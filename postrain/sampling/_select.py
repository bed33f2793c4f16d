"""Choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).

Everything here is a pure function of `logits: f32[B, V]` and one uniform number per row, so the
sampler draws `B` random numbers per step instead of `B * V` (Gumbel-max, `jax.random.categorical`,
costs a full-vocabulary threefry draw per step, which dominates a small model's decode step on CPU).

Order of the transforms (Hugging Face `generate` order): divide by the temperature, keep the `top_k`
largest logits, then keep the smallest prefix of the sorted distribution whose mass reaches `top_p`
(nucleus sampling, Holtzman et al. 2019, arXiv:1904.09751), renormalise, sample.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Width of the blocks of the two-level inverse-CDF draw: a cumulative sum over V on XLA:CPU is a
# log-depth window reduction (several ms for V=32k), two short ones are ~10x cheaper.
_BLOCK = 128
_NEG_INF = -jnp.inf


class Selection(NamedTuple):
  """The chosen tokens and their log-probabilities.

  Attributes:
    tokens: i32[B], the chosen token ids.
    sample_logp: f32[B], log-probability of `tokens` under the distribution actually sampled from
      (after temperature, top-k and top-p; 0 for greedy decoding, a point mass).
    model_logp: f32[B], log-probability of `tokens` under the raw model (temperature 1, no filter).
  """

  tokens: jax.Array
  sample_logp: jax.Array
  model_logp: jax.Array


def _first_max_index(x: jax.Array) -> jax.Array:
  """argmax over the last axis (first index on ties) with two plain reductions.

  XLA:CPU lowers `jnp.argmax` to a variadic (value, index) reduction that is ~3x slower than a
  max followed by a min over indices.
  """
  m = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == m, iota, x.shape[-1]), axis=-1)


def _block_sums(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`weights: f32[B, V]` split into blocks `[B, nb, C]` (zero-padded) and their sums `[B, nb]`."""
  b, v = weights.shape
  nb = -(-v // _BLOCK)
  w_bnc = jnp.pad(weights, ((0, 0), (0, nb * _BLOCK - v))).reshape(b, nb, _BLOCK)
  return w_bnc, jnp.sum(w_bnc, axis=-1)


def _last_positive(w: jax.Array) -> jax.Array:
  iota = jax.lax.broadcasted_iota(jnp.int32, w.shape, w.ndim - 1)
  return jnp.max(jnp.where(w > 0, iota, 0), axis=-1)


def _inverse_cdf(w_bnc: jax.Array, sums: jax.Array, uniform: jax.Array) -> jax.Array:
  """Index j with cdf[j-1] <= u * total < cdf[j] for unnormalised weights >= 0 in blocks.

  Two levels: pick a block by the cumulative block sums, then the entry inside the block. The
  chosen entry always has positive weight: `cdf[j] > cdf[j-1]` forces it, and the two clamps catch
  float rounding of `u * total` up to (or past) the last step of the cdf.
  """
  block_cdf = jnp.cumsum(sums, axis=-1)  # [B, nb]
  r = uniform * block_cdf[:, -1]
  blk = jnp.minimum(jnp.sum(block_cdf <= r[:, None], axis=-1), _last_positive(sums))
  # The exclusive cumsum is exactly cdf[blk - 1] <= r, so the remainder is >= 0.
  prev = jnp.take_along_axis(block_cdf, jnp.maximum(blk - 1, 0)[:, None], axis=-1)[:, 0]
  before = jnp.where(blk > 0, prev, 0.0)
  w_bc = jnp.take_along_axis(w_bnc, blk[:, None, None], axis=1)[:, 0]  # [B, C]
  cdf = jnp.cumsum(w_bc, axis=-1)
  j = jnp.minimum(jnp.sum(cdf <= (r - before)[:, None], axis=-1), _last_positive(w_bc))
  return blk * _BLOCK + j


def _nucleus_threshold(probs: jax.Array, top_p: jax.Array) -> jax.Array:
  """Smallest `t` such that the mass of tokens with prob > t is < `top_p`; keep = probs >= t.

  This is the nucleus of the sorted definition (keep token i iff the mass ranked strictly above it
  is < top_p), found without a sort: a bisection over the bit patterns of the non-negative float32
  probabilities (their int32 views are ordered like the floats), 31 masked sums over `[B, V]`.
  Tied probabilities are all kept or all dropped together (a sort would break ties by index).
  """
  bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
  lo = jnp.zeros(probs.shape[:-1], jnp.int32)
  hi = jnp.max(bits, axis=-1)  # t = max prob always satisfies mass(> t) = 0 < top_p

  def body(_, carry):
    lo, hi = carry
    mid = lo + (hi - lo) // 2
    above = jnp.sum(jnp.where(bits > mid[:, None], probs, 0.0), axis=-1)
    ok = above < top_p
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
  return lo  # int32 bit pattern of the threshold


def select_tokens(
  logits: jax.Array,
  uniform: jax.Array,
  *,
  temperature: float | jax.Array,
  greedy: bool,
  top_k: int | None = None,
  top_p: float | jax.Array | None = None,
) -> Selection:
  """Chooses one token per row.

  Args:
    logits: f32[B, V] next-token logits of the model (raw, temperature 1).
    uniform: f32[B] uniform numbers in [0, 1), one per row (ignored when `greedy`).
    temperature: scalar > 0 (may be traced); ignored when `greedy`. A Python `1.0` skips the
      division and reuses the raw softmax weights (one pass over V fewer).
    greedy: static; argmax decoding (the temperature -> 0 limit; first index on ties).
    top_k: static; keep the `top_k` largest logits (None: all; ties broken by `lax.top_k`).
    top_p: keep the nucleus of mass `top_p` in (0, 1) (may be traced; None: all; whether it is
      None is static). Tokens tied in probability at the nucleus boundary are kept together.

  Returns:
    `Selection(tokens i32[B], sample_logp f32[B], model_logp f32[B])`: with `q` the distribution
    sampled from, `q(x) ∝ exp(logits[x] / temperature)` on the kept set and 0 outside it,
    `sample_logp = log q(token)` and `model_logp = log_softmax(logits)[token]`.
  """
  logits = logits.astype(jnp.float32)
  b, v = logits.shape
  m = jnp.max(logits, axis=-1, keepdims=True)
  # The raw weights exp(logits - m) in blocks: their sums give the model's log-normaliser, and at
  # temperature 1 without filters they are the sampling weights too (no second pass over V).
  w_bnc, sums = _block_sums(jnp.exp(logits - m))
  model_lse = m[:, 0] + jnp.log(jnp.sum(sums, axis=-1))

  def model_logp(tok):
    return jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - model_lse

  if greedy:
    tok = _first_max_index(logits)
    return Selection(tok, jnp.zeros((b,), jnp.float32), model_logp(tok))

  # A Python 1.0 is known at trace time: then the raw weights are q's weights already.
  unit_temperature = isinstance(temperature, (int, float)) and temperature == 1.0
  scaled = logits if unit_temperature else logits / jnp.asarray(temperature, jnp.float32)
  cand_idx = None
  if top_k is not None and top_k < v:
    # `lax.top_k` returns the k candidates sorted (XLA:CPU has a partial-sort kernel for it).
    cand, cand_idx = jax.lax.top_k(scaled, top_k)  # [B, K], descending
    # Not `cand[:, :1]`: a second slice of the sort output stops XLA:CPU from rewriting the
    # sort back into its TopK kernel (a full-vocabulary sort per step, ~100x slower).
    cm = jnp.max(cand, axis=-1, keepdims=True)
  elif unit_temperature:
    cand, cm = logits, m
  else:
    cand = scaled
    cm = jnp.max(cand, axis=-1, keepdims=True)
  if cand_idx is not None or not unit_temperature or top_p is not None:
    cw = jnp.exp(cand - cm)  # q's unnormalised weights on the candidates
    if top_p is not None:
      probs = cw / jnp.sum(cw, axis=-1, keepdims=True)
      t = _nucleus_threshold(probs, jnp.asarray(top_p, jnp.float32))
      keep = jax.lax.bitcast_convert_type(probs, jnp.int32) >= t[:, None]
      cw = jnp.where(keep, cw, 0.0)
      cand = jnp.where(keep, cand, _NEG_INF)
    w_bnc, sums = _block_sums(cw)
  j = _inverse_cdf(w_bnc, sums, uniform)
  tok = j if cand_idx is None else jnp.take_along_axis(cand_idx, j[:, None], axis=-1)[:, 0]
  log_total = jnp.log(jnp.sum(sums, axis=-1))
  sample_logp = jnp.take_along_axis(cand, j[:, None], axis=-1)[:, 0] - cm[:, 0] - log_total
  return Selection(tok.astype(jnp.int32), sample_logp, model_logp(tok))
