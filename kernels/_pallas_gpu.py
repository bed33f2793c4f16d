"""GPU (Triton) Pallas kernels for the fused log-prob / entropy: loops inside the kernel.

Triton runs the programs of a grid in parallel, in no fixed order, so no output block may be
accumulated across programs (the TPU kernels in `_pallas.py` do exactly that along a sequential
grid axis). Here every output element is owned by one program, which runs the reduction as a
`lax.fori_loop` inside the kernel:

  forward  grid (N/bn,):  program i loops over vocabulary blocks j, online logsumexp of row block i
  dhidden  grid (N/bn,):  program i loops over j:  dh[i]    += dz[i, j] @ W[:, j]^T
  dweight  grid (V/bv,):  program j loops over i:  dW[:, j] += h[i]^T @ dz[i, j]

(logits recomputed in both backward kernels: arXiv:1805.02867 online normaliser, as in
`_chunked.py`). The hidden dimension is walked in chunks of `bd` columns inside every matmul, so
no tensor is larger than `[bn, bv]` / `[bn, bd]` / `[bd, bv]`, all powers of two (a Triton rule;
D itself need not be one, e.g. 576). The `+=` into the owned output block is a read-modify-write
of the same block shape by the same program, so loads and stores share one layout.

Padding reading (Triton loads whole power-of-two tiles): the wrapper pads N to a multiple of `bn`,
V to a multiple of `bv` and D to a multiple of `bd` with zeros, and the top-k width K to a power of
two. Padding is a no-op, and copies nothing, when the sizes are already multiples (e.g. V=151936,
49152 or 128256 with bv <= 128; D=576 or 1024 with bd=64). Padded vocabulary columns get -inf
logits and zero gradient; padded rows carry target -1 and zero cotangents. Softmax statistics and
every matmul accumulate in float32; matmul inputs keep the input dtype (bf16 stays bf16).

Checked here (no GPU): interpret mode against the reference (tests) and lowering to Triton IR
through `jax.export(platforms=["cuda"])`. Not checked: Triton's own compilation and run time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from postrain.kernels._reference import target_valid

_F32 = jnp.float32


def _pow2_ceil(x: int) -> int:
  return 1 << max(int(x) - 1, 0).bit_length()


def _pow2_divisor(x: int, cap: int) -> int:
  """The largest power of two that divides `x` and is <= `cap` (a power of two)."""
  return min(x & -x, cap)


def _pad(x, axis, size, value=0):
  extra = size - x.shape[axis]
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


class _Layout:
  """Static block sizes and padded sizes (all block sizes are powers of two)."""

  def __init__(self, n, d, vocab, top_k, block_n, block_v, block_d):
    self.n, self.d, self.vocab = n, d, vocab
    # Triton dots need every tile dimension >= 16; blocks never exceed the (rounded-up) array.
    self.bn = max(16, min(_pow2_ceil(block_n), _pow2_ceil(n)))
    self.bv = max(16, min(_pow2_ceil(block_v), _pow2_ceil(vocab)))
    # bd: a power of two dividing D when one >= 16 exists (no copy), else D is padded to bd.
    cap = max(16, _pow2_ceil(block_d))
    bd = _pow2_divisor(d, cap)
    self.bd = bd if bd >= 16 else max(16, min(cap, _pow2_ceil(d)))
    self.np, self.vp = pl.cdiv(n, self.bn) * self.bn, pl.cdiv(vocab, self.bv) * self.bv
    self.dp = pl.cdiv(d, self.bd) * self.bd
    self.kp = _pow2_ceil(top_k) if top_k else 0


def _params(num_warps, num_stages):
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _logits(h_ref, w_ref, rows, cols, lay, temperature, precision):
  """z: f32[bn, bv] = h[rows] @ W[:, cols] / T, accumulated over D in chunks of bd."""
  nk = lay.dp // lay.bd

  def body(k, acc):
    ks = pl.ds(pl.multiple_of(k * lay.bd, lay.bd), lay.bd)
    hk, wk = h_ref[rows, ks], w_ref[ks, cols]
    return acc + jnp.dot(hk, wk, precision=precision, preferred_element_type=_F32)

  z = lax.fori_loop(0, nk, body, jnp.zeros((lay.bn, lay.bv), _F32))
  return z if temperature == 1.0 else z / temperature


def _colids(j, lay):
  col = j * lay.bv + lax.broadcasted_iota(jnp.int32, (lay.bn, lay.bv), 1)
  return col, col < lay.vocab


def _merge_topk(run_v, run_i, z, col, kp):
  """Top-kp of the running entries (earlier, lower ids) and block `z`; ties to lower ids.

  A kp-step max selection (no sort): only reductions, iota, compares and selects.
  """
  bn, bv = z.shape
  pos_k = lax.broadcasted_iota(jnp.int32, (bn, kp), 1)
  pos_v = lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  out_v = jnp.full((bn, kp), -jnp.inf, _F32)
  out_i = jnp.full((bn, kp), -1, jnp.int32)
  for t in range(kp):
    mr = jnp.max(run_v, axis=1)[:, None]
    mz = jnp.max(z, axis=1)[:, None]
    pr = jnp.min(jnp.where(run_v == mr, pos_k, kp), axis=1)[:, None]
    pz = jnp.min(jnp.where(z == mz, pos_v, bv), axis=1)[:, None]
    take_run = mr >= mz
    id_r = jnp.max(jnp.where(pos_k == pr, run_i, -1), axis=1)[:, None]
    id_z = jnp.max(jnp.where(pos_v == pz, col, -1), axis=1)[:, None]
    out_v = jnp.where(pos_k == t, jnp.where(take_run, mr, mz), out_v)
    out_i = jnp.where(pos_k == t, jnp.where(take_run, id_r, id_z), out_i)
    run_v = jnp.where(take_run & (pos_k == pr), -jnp.inf, run_v)
    z = jnp.where(~take_run & (pos_v == pz), -jnp.inf, z)
  return out_v, out_i


def _fwd_kernel(h_ref, w_ref, t_ref, *outs, lay, temperature, precision):
  m_ref, s_ref, s1_ref, zt_ref = outs[:4]
  rows = pl.ds(0, lay.bn)
  tgt = t_ref[...][:, None]

  def body(j, carry):
    m_old, s_old, s1_old, zt, top_v, top_i = carry
    col, col_ok = _colids(j, lay)
    cols = pl.ds(pl.multiple_of(j * lay.bv, lay.bv), lay.bv)
    z = jnp.where(col_ok, _logits(h_ref, w_ref, rows, cols, lay, temperature, precision), -jnp.inf)
    m_new = jnp.maximum(m_old, jnp.max(z, axis=1))
    alpha = jnp.exp(m_old - m_new)  # 0 on the first block (m_old = -inf)
    shift = jnp.where(s_old > 0, m_old - m_new, 0.0)  # avoids -inf * 0 on the first block
    zr = jnp.where(col_ok, z - m_new[:, None], 0.0)
    e = jnp.where(col_ok, jnp.exp(zr), 0.0)
    s = alpha * s_old + jnp.sum(e, axis=1)
    s1 = alpha * (s1_old + shift * s_old) + jnp.sum(e * zr, axis=1)
    zt = zt + jnp.sum(jnp.where(col == tgt, z, 0.0), axis=1)
    if lay.kp:
      top_v, top_i = _merge_topk(top_v, top_i, z, col, lay.kp)
    return m_new, s, s1, zt, top_v, top_i

  zeros = jnp.zeros((lay.bn,), _F32)
  kp = max(lay.kp, 1)  # carries need a shape; unused when kp == 0
  init = (
    jnp.full((lay.bn,), -jnp.inf, _F32),
    zeros,
    zeros,
    zeros,
    jnp.full((lay.bn, kp), -jnp.inf, _F32),
    jnp.full((lay.bn, kp), -1, jnp.int32),
  )
  m, s, s1, zt, top_v, top_i = lax.fori_loop(0, lay.vp // lay.bv, body, init)
  m_ref[...], s_ref[...], s1_ref[...], zt_ref[...] = m, s, s1, zt
  if lay.kp:
    outs[4][...], outs[5][...] = top_v, top_i


def _dz(z, col, col_ok, tgt, stats, top, temperature, dtype):
  """dL/dz: f[bn, bv] for one tile (zero on padded columns), cast to the matmul dtype.

  dz = g_logp (onehot_t - p) + g_ent p (E_p[z] - z) + sum_j g_j (onehot_{i_j} - p), divided by T.
  """
  m, log_s, ezr, g_logp, g_ent = (x[:, None] for x in stats)
  zr = z - m
  p = jnp.exp(zr - log_s)
  g_p = g_logp
  onehot = jnp.where(col == tgt, g_logp, 0.0)
  for ids, g in top:  # one (i32[bn], f32[bn]) pair per top-k slot
    g_p = g_p + g[:, None]
    onehot = onehot + jnp.where(col == ids[:, None], g[:, None], 0.0)
  dz = (p * (g_ent * (ezr - zr) - g_p) + onehot) / temperature
  return jnp.where(col_ok, dz, 0.0).astype(dtype)


def _load_rows(t_ref, stat_refs, tid_ref, gtop_ref, rows, kp):
  tgt = t_ref[rows][:, None]
  stats = tuple(r[rows] for r in stat_refs)
  top = [(tid_ref[k, rows], gtop_ref[k, rows]) for k in range(kp)]
  return tgt, stats, top


def _dh_kernel(h_ref, w_ref, t_ref, *refs, lay, temperature, precision):
  stat_refs, (tid_ref, gtop_ref), dh_ref = refs[:5], refs[5:7], refs[7]
  rows, nk = pl.ds(0, lay.bn), lay.dp // lay.bd
  tgt, stats, top = _load_rows(t_ref, stat_refs, tid_ref, gtop_ref, rows, lay.kp)
  for k in range(nk):
    dh_ref[:, pl.ds(k * lay.bd, lay.bd)] = jnp.zeros((lay.bn, lay.bd), dh_ref.dtype)

  def vocab_block(j, _):
    col, col_ok = _colids(j, lay)
    cols = pl.ds(pl.multiple_of(j * lay.bv, lay.bv), lay.bv)
    z = _logits(h_ref, w_ref, rows, cols, lay, temperature, precision)
    dz = _dz(z, col, col_ok, tgt, stats, top, temperature, w_ref.dtype)

    def d_chunk(k, _):
      ks = pl.ds(pl.multiple_of(k * lay.bd, lay.bd), lay.bd)
      upd = lax.dot_general(
        dz,
        w_ref[ks, cols],
        (((1,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=_F32,
      )
      dh_ref[:, ks] += upd
      return 0

    return lax.fori_loop(0, nk, d_chunk, 0)

  lax.fori_loop(0, lay.vp // lay.bv, vocab_block, 0)


def _dw_kernel(h_ref, w_ref, t_ref, *refs, lay, temperature, precision):
  stat_refs, (tid_ref, gtop_ref), dw_ref = refs[:5], refs[5:7], refs[7]
  j, nk = pl.program_id(0), lay.dp // lay.bd
  cols = pl.ds(0, lay.bv)
  col, col_ok = _colids(j, lay)
  for k in range(nk):
    dw_ref[pl.ds(k * lay.bd, lay.bd), :] = jnp.zeros((lay.bd, lay.bv), dw_ref.dtype)

  def row_block(i, _):
    rows = pl.ds(pl.multiple_of(i * lay.bn, lay.bn), lay.bn)
    tgt, stats, top = _load_rows(t_ref, stat_refs, tid_ref, gtop_ref, rows, lay.kp)
    z = _logits(h_ref, w_ref, rows, cols, lay, temperature, precision)
    dz = _dz(z, col, col_ok, tgt, stats, top, temperature, h_ref.dtype)

    def d_chunk(k, _):
      ks = pl.ds(pl.multiple_of(k * lay.bd, lay.bd), lay.bd)
      upd = lax.dot_general(
        h_ref[rows, ks],
        dz,
        (((0,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=_F32,
      )
      dw_ref[ks, :] += upd
      return 0

    return lax.fori_loop(0, nk, d_chunk, 0)

  lax.fori_loop(0, lay.np // lay.bn, row_block, 0)


def _padded_inputs(h, w, targets, lay):
  h = _pad(_pad(h, 0, lay.np), 1, lay.dp)
  w = _pad(_pad(w, 0, lay.dp), 1, lay.vp)
  return h, w, _pad(targets, 0, lay.np, -1)


def forward(h, w, targets, cfg):
  """Forward kernel; returns the outputs and the residuals of `_pallas._forward`."""
  top_k, block_n, block_v, block_d, temperature, interpret, num_warps, num_stages, precision = cfg
  (n, d), vocab = h.shape, w.shape[1]
  lay = _Layout(n, d, vocab, top_k, block_n, block_v, block_d)
  hp, wp, tp = _padded_inputs(h, w, targets, lay)
  vec = pl.BlockSpec((lay.bn,), lambda i: (i,))
  out_shape = [jax.ShapeDtypeStruct((lay.np,), _F32)] * 4
  out_specs = [vec] * 4
  if lay.kp:
    out_shape += [
      jax.ShapeDtypeStruct((lay.np, lay.kp), _F32),
      jax.ShapeDtypeStruct((lay.np, lay.kp), jnp.int32),
    ]
    out_specs += [pl.BlockSpec((lay.bn, lay.kp), lambda i: (i, 0))] * 2
  outs = pl.pallas_call(
    functools.partial(_fwd_kernel, lay=lay, temperature=temperature, precision=precision),
    out_shape=out_shape,
    grid=(lay.np // lay.bn,),
    in_specs=[
      pl.BlockSpec((lay.bn, lay.dp), lambda i: (i, 0)),
      pl.BlockSpec((lay.dp, lay.vp), lambda i: (0, 0)),  # whole W: the kernel walks it
      vec,
    ],
    out_specs=out_specs,
    interpret=interpret,
    compiler_params=_params(num_warps, num_stages),
    name="fused_logprobs_fwd_gpu",
  )(hp, wp, tp)
  m, s, s1, zt = (o[:n] for o in outs[:4])
  valid = target_valid(targets, vocab)
  log_s = jnp.log(s)
  ezr = s1 / s
  logp = jnp.where(valid, (zt - m) - log_s, 0.0)
  entropy = jnp.where(valid, log_s - ezr, 0.0)
  if top_k:
    top_v, top_i = outs[4][:n, :top_k], outs[5][:n, :top_k]
    top_logp = jnp.where(valid[:, None], (top_v - m[:, None]) - log_s[:, None], 0.0)
    top_i = jnp.where(valid[:, None], top_i, -1)
  else:
    top_logp, top_i = jnp.zeros((n, 0), _F32), jnp.zeros((n, 0), jnp.int32)
  return (logp, entropy, top_logp, top_i), (m, log_s, ezr, top_i)


def backward(h, w, targets, res, cts, cfg):
  """d hidden and d weight kernels; `cts` = (g_logp, g_ent, g_top), already zero on masked rows."""
  top_k, block_n, block_v, block_d, temperature, interpret, num_warps, num_stages, precision = cfg
  (n, d), vocab = h.shape, w.shape[1]
  lay = _Layout(n, d, vocab, top_k, block_n, block_v, block_d)
  hp, wp, tp = _padded_inputs(h, w, targets, lay)
  m, log_s, ezr, top_i = res
  g_logp, g_ent, g_top = cts
  stats = [_pad(x.astype(_F32), 0, lay.np) for x in (m, log_s, ezr, g_logp, g_ent)]
  kp = max(lay.kp, 1)  # a dummy slot when top_k == 0 (never read)
  # Top-k ids / cotangents transposed to [K, N]: each slot is a contiguous row of the kernel.
  tid = _pad(_pad(top_i.T, 0, kp, -1), 1, lay.np, -1)
  gtop = _pad(_pad(g_top.astype(_F32).T, 0, kp), 1, lay.np)
  args = [hp, wp, tp, *stats, tid, gtop]
  params = _params(num_warps, num_stages)

  vec = pl.BlockSpec((lay.bn,), lambda i: (i,))
  kvec = pl.BlockSpec((kp, lay.bn), lambda i: (0, i))
  dh = pl.pallas_call(
    functools.partial(_dh_kernel, lay=lay, temperature=temperature, precision=precision),
    out_shape=jax.ShapeDtypeStruct((lay.np, lay.dp), _F32),
    grid=(lay.np // lay.bn,),
    in_specs=[
      pl.BlockSpec((lay.bn, lay.dp), lambda i: (i, 0)),
      pl.BlockSpec((lay.dp, lay.vp), lambda i: (0, 0)),
      vec,
      *[vec] * 5,
      kvec,
      kvec,
    ],
    out_specs=pl.BlockSpec((lay.bn, lay.dp), lambda i: (i, 0)),
    interpret=interpret,
    compiler_params=params,
    name="fused_logprobs_dh_gpu",
  )(*args)

  full = [pl.BlockSpec(a.shape, lambda j, nd=a.ndim: (0,) * nd) for a in args]
  full[1] = pl.BlockSpec((lay.dp, lay.bv), lambda j: (0, j))
  dw = pl.pallas_call(
    functools.partial(_dw_kernel, lay=lay, temperature=temperature, precision=precision),
    out_shape=jax.ShapeDtypeStruct((lay.dp, lay.vp), _F32),
    grid=(lay.vp // lay.bv,),
    in_specs=full,
    out_specs=pl.BlockSpec((lay.dp, lay.bv), lambda j: (0, j)),
    interpret=interpret,
    compiler_params=params,
    name="fused_logprobs_dw_gpu",
  )(*args)
  return dh[:n, :d].astype(h.dtype), dw[:d, :vocab].astype(w.dtype)
