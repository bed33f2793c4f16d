"""The output projection for decode loops: a vocabulary-blocked layout of the LM head.

A decode step multiplies a handful of rows (`B` = batch, one token each) by the `[D, V]` output
projection, usually the largest parameter. XLA:CPU runs that `M = B` matmul far below memory
bandwidth (its kernels pack the whole weight on every call). Laid out as `[V / c, D, c]`, the
same product is a broadcast-multiply-reduce over `D` that streams each `[D, c]` tile once and
keeps it in L1 for the `B` rows: measured ~1.4x faster per call for B = 8, D = 256, V = 32000 on
a loaded host, but slower than the matmul inside a decode loop on an idle one
(`docs/benchmarks.md`), so it is opt-in. A decode loop builds the layout once (`blocked_head`,
one copy of the weight) and calls `blocked_logits` every step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from postrain._validation import check_floating, check_positive, check_rank

# Vocabulary entries per tile: 32..128 measured equal, 16 and 256 much slower (XLA:CPU, f32).
DEFAULT_HEAD_BLOCK = 64


def blocked_head(w_DV: jax.Array, *, block: int = DEFAULT_HEAD_BLOCK) -> jax.Array:
  """The output projection `w_DV: [D, V]` as tiles `[ceil(V / c), D, c]`, c = `block`.

  head[n, d, j] = w_DV[d, n * c + j], zero for the padding columns n * c + j >= V.
  """
  check_rank("w_DV", w_DV, 2)
  check_floating("w_DV", w_DV)
  check_positive("block", block)
  d, v = w_DV.shape
  n = -(-v // block)
  if n * block != v:
    w_DV = jnp.pad(w_DV, ((0, 0), (0, n * block - v)))
  return jnp.transpose(w_DV.reshape(d, n, block), (1, 0, 2))


def blocked_logits(hidden: jax.Array, head: jax.Array, vocab_size: int) -> jax.Array:
  """f32[..., V] = hidden @ w_DV from the tiles `head = blocked_head(w_DV)`.

  Args:
    hidden: [..., D], any float dtype (products and sums in float32, as `Decoder.logits`).
    head: [ceil(V / c), D, c] from `blocked_head`.
    vocab_size: V (the padding columns are dropped).

  Returns:
    logits: f32[..., V], logits[..., n * c + j] = sum_d hidden[..., d] * head[n, d, j].
  """
  check_rank("head", head, 3)
  check_floating("head", head)
  check_floating("hidden", hidden)
  n, d, c = head.shape
  if hidden.ndim < 1 or hidden.shape[-1] != d:
    raise ValueError(f"`hidden` must have last dimension {d} (from `head`), got {hidden.shape}.")
  if not (n - 1) * c < vocab_size <= n * c:
    raise ValueError(f"`vocab_size`={vocab_size} does not match `head` of shape {head.shape}.")
  lead = hidden.shape[:-1]
  h_MD = hidden.reshape(-1, d).astype(jnp.float32)
  # [n, M, c]: each [D, c] tile is read once for all M rows; the reduction runs over D.
  out_NMC = jnp.sum(h_MD[None, :, :, None] * head.astype(jnp.float32)[:, None], axis=2)
  out_MV = jnp.transpose(out_NMC, (1, 0, 2)).reshape(-1, n * c)
  if n * c != vocab_size:
    out_MV = out_MV[:, :vocab_size]
  return out_MV.reshape(*lead, vocab_size)
