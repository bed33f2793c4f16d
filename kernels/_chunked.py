"""Chunked log-prob / entropy over the vocabulary, in plain jnp with a chunked custom VJP.

The logits `z = hidden @ weight` (f32[N, V]) are never held whole. The forward pass walks the
vocabulary in static chunks of `chunk_size` columns and keeps, per row, an online logsumexp
(running max `m`, `s = sum exp(z - m)`: the online normaliser of arXiv:1805.02867),
`s1 = sum exp(z - m) (z - m)` for the entropy, the target's logit (taken from the chunk that holds
it) and, optionally, a running top-k. With `lse = m + log s`:

  logp    = z_t - lse
  entropy = lse - E_p[z] = log s - s1 / s        (both terms relative to m: no cancellation)

The backward pass walks the chunks again, recomputes each chunk's logits and forms

  dL/dz = g_logp (onehot_t - p) + g_ent p (E_p[z] - z) + sum_j g_top_j (onehot_{i_j} - p)

(`dH/dz_v = -p_v (z_v - E_p[z])`), accumulates `dhidden += dz @ W_c^T` in float32 and writes
`dweight[:, c] = hidden^T dz` chunk by chunk into one `[D, V]` buffer. Peak temporary memory is
O(N * chunk_size) instead of O(N * V).

Chunking reading: a vocabulary that is not a multiple of `chunk_size` is handled by one static
tail chunk of `V mod chunk_size` columns after the full ones. This is equivalent to padding the
last chunk with -inf logits (padded columns have p = 0 and never hold a target or a top-k id), but
computes no padded columns and copies no padded weight.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from postrain.kernels._reference import acc_dtype, target_valid


class _Stats(NamedTuple):
  m: jax.Array  # f[N] running max of the logits
  s: jax.Array  # f[N] sum exp(z - m)
  s1: jax.Array  # f[N] sum exp(z - m) (z - m)
  zt: jax.Array  # f[N] the target's logit (0 until its chunk is seen)
  top_v: jax.Array  # f[N, K] running top-k logits
  top_i: jax.Array  # i32[N, K] their vocabulary ids


def _logits(h, w_c, dtype, temperature):
  z = jnp.dot(h, w_c, preferred_element_type=dtype).astype(dtype)
  return z if temperature == 1.0 else z / temperature


def _update(st: _Stats, z, start, targets, top_k: int) -> _Stats:
  """Folds one chunk of logits `z: f[N, C]` (columns `start + [0, C)`) into the statistics."""
  size = z.shape[1]
  m_new = jnp.maximum(st.m, jnp.max(z, axis=1))
  alpha = jnp.exp(st.m - m_new)  # 0 on the first chunk (m = -inf)
  # (m_old - m_new) * s_old would be -inf * 0 on the first chunk: guard it.
  shift = jnp.where(st.s > 0, st.m - m_new, 0.0)
  zr = z - m_new[:, None]
  e = jnp.exp(zr)
  s = alpha * st.s + jnp.sum(e, axis=1)
  s1 = alpha * (st.s1 + shift * st.s) + jnp.sum(e * zr, axis=1)
  local = targets - start
  hit = (local >= 0) & (local < size)
  z_at = jnp.take_along_axis(z, jnp.clip(local, 0, size - 1)[:, None], axis=1)[:, 0]
  zt = st.zt + jnp.where(hit, z_at, 0.0)
  top_v, top_i = st.top_v, st.top_i
  if top_k:
    v, i = lax.top_k(z, min(top_k, size))
    # Running entries come first, so ties keep the lower vocabulary id, as lax.top_k does.
    cand_v = jnp.concatenate([top_v, v], axis=1)
    cand_i = jnp.concatenate([top_i, (i + start).astype(jnp.int32)], axis=1)
    top_v, pos = lax.top_k(cand_v, top_k)
    top_i = jnp.take_along_axis(cand_i, pos, axis=1)
  return _Stats(m_new, s, s1, zt, top_v, top_i)


def _layout(vocab: int, chunk_size: int) -> tuple[int, int, int]:
  """(chunk, number of full chunks, tail columns)."""
  chunk = min(chunk_size, vocab)
  return chunk, vocab // chunk, vocab % chunk


def _forward(h, w, targets, top_k, chunk_size, temperature):
  n, vocab = h.shape[0], w.shape[1]
  dtype = acc_dtype(jnp.result_type(h, w))
  chunk, n_full, tail = _layout(vocab, chunk_size)
  st = _Stats(
    m=jnp.full((n,), -jnp.inf, dtype),
    s=jnp.zeros((n,), dtype),
    s1=jnp.zeros((n,), dtype),
    zt=jnp.zeros((n,), dtype),
    top_v=jnp.full((n, top_k), -jnp.inf, dtype),
    top_i=jnp.full((n, top_k), -1, jnp.int32),
  )

  def body(c, st):
    start = c * chunk
    z = _logits(h, lax.dynamic_slice_in_dim(w, start, chunk, axis=1), dtype, temperature)
    return _update(st, z, start, targets, top_k)

  st = lax.fori_loop(0, n_full, body, st)
  if tail:
    start = n_full * chunk
    st = _update(st, _logits(h, w[:, start:], dtype, temperature), start, targets, top_k)

  valid = target_valid(targets, vocab)
  log_s = jnp.log(st.s)
  ezr = st.s1 / st.s  # E_p[z] - m
  logp = jnp.where(valid, (st.zt - st.m) - log_s, 0.0)
  entropy = jnp.where(valid, log_s - ezr, 0.0)
  top_logp = jnp.where(valid[:, None], (st.top_v - st.m[:, None]) - log_s[:, None], 0.0)
  top_i = jnp.where(valid[:, None], st.top_i, -1)
  return (logp, entropy, top_logp, top_i), (st.m, log_s, ezr, top_i)


def _dlogits(z, start, targets, top_i, stats, cts, temperature):
  """dL/dz for one chunk `z: f[N, C]` whose columns are `start + [0, C)`."""
  m, log_s, ezr = stats
  g_logp, g_ent, g_top = cts
  size = z.shape[1]
  zr = z - m[:, None]
  p = jnp.exp(zr - log_s[:, None])
  g_p = g_logp + jnp.sum(g_top, axis=1)  # every log p_v term contributes -p to dz
  dz = p * (g_ent[:, None] * (ezr[:, None] - zr) - g_p[:, None])
  cols = start + lax.broadcasted_iota(jnp.int32, (1, size), 1)
  dz = dz + jnp.where(cols == targets[:, None], g_logp[:, None], 0.0)
  if top_i.shape[1]:
    local = top_i - start
    local = jnp.where((local >= 0) & (local < size), local, size)  # out of chunk -> dropped
    rows = lax.broadcasted_iota(jnp.int32, local.shape, 0)
    dz = dz.at[rows, local].add(g_top, mode="drop")
  return dz if temperature == 1.0 else dz / temperature


def _backward(h, w, targets, res, cts, chunk_size, temperature):
  stats, top_i = res[:3], res[3]
  n, vocab = h.shape[0], w.shape[1]
  dtype = acc_dtype(jnp.result_type(h, w))
  mm_dtype = jnp.result_type(h, w)  # matmul inputs stay bf16 for bf16 models
  chunk, n_full, tail = _layout(vocab, chunk_size)
  valid = target_valid(targets, vocab)
  g_logp, g_ent, g_top = (jnp.where(valid.reshape((n,) + (1,) * (g.ndim - 1)), g, 0.0) for g in cts)
  cts = (g_logp.astype(dtype), g_ent.astype(dtype), g_top.astype(dtype))

  def chunk_grads(w_c, start):
    z = _logits(h, w_c, dtype, temperature)
    dz = _dlogits(z, start, targets, top_i, stats, cts, temperature).astype(mm_dtype)
    dh = lax.dot_general(dz, w_c, (((1,), (1,)), ((), ())), preferred_element_type=dtype)
    dw = lax.dot_general(h, dz, (((0,), (0,)), ((), ())), preferred_element_type=dtype)
    return dh, dw.astype(w.dtype)

  def body(c, carry):
    dh, dw = carry
    start = c * chunk
    dh_c, dw_c = chunk_grads(lax.dynamic_slice_in_dim(w, start, chunk, axis=1), start)
    return dh + dh_c, lax.dynamic_update_slice_in_dim(dw, dw_c, start, axis=1)

  carry = (jnp.zeros(h.shape, dtype), jnp.zeros(w.shape, w.dtype))
  dh, dw = lax.fori_loop(0, n_full, body, carry)
  if tail:
    start = n_full * chunk
    dh_c, dw_c = chunk_grads(w[:, start:], start)
    dh, dw = dh + dh_c, dw.at[:, start:].set(dw_c)
  return dh.astype(h.dtype), dw


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused(h, w, targets, top_k, chunk_size, temperature):
  return _forward(h, w, targets, top_k, chunk_size, temperature)[0]


def _fused_fwd(h, w, targets, top_k, chunk_size, temperature):
  out, res = _forward(h, w, targets, top_k, chunk_size, temperature)
  return out, (h, w, targets, res)


def _fused_bwd(top_k, chunk_size, temperature, saved, cts):
  h, w, targets, res = saved
  g_logp, g_ent, g_top, _ = cts  # the top-k ids are integers: no cotangent
  dh, dw = _backward(h, w, targets, res, (g_logp, g_ent, g_top), chunk_size, temperature)
  return dh, dw, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def chunked_logprobs(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  *,
  top_k: int = 0,
  temperature: float = 1.0,
  chunk_size: int = 8192,
):
  """Same contract as `naive_logprobs`, without materialising the `[N, V]` logits.

  Args:
    hidden: [N, D] final hidden states.
    weight: [D, V] output embedding.
    targets: i32[N] token ids; ids outside `[0, V)` mark masked rows (outputs 0, no gradient).
    top_k: if > 0, also return the top-k log-probs (differentiable) and ids.
    temperature: logits are divided by it.
    chunk_size: vocabulary columns per chunk (static).

  Returns:
    `(logp f32[N], entropy f32[N])`, plus `(topk_logp f32[N, K], topk_ids i32[N, K])` when
    `top_k > 0`. Gradients flow to `hidden` and `weight`.
  """
  logp, entropy, top_logp, top_i = _fused(
    hidden, weight, targets.astype(jnp.int32), int(top_k), int(chunk_size), float(temperature)
  )
  if not top_k:
    return logp, entropy
  return logp, entropy, (top_logp, top_i)
