"""Pallas kernels for the fused log-prob / entropy (forward and a two-kernel backward).

Same maths as `_chunked.py` (online logsumexp, entropy as `log s - s1 / s` relative to the running
max, running top-k, `dz = g_logp (onehot_t - p) + g_ent p (E_p[z] - z) + sum_j g_j (onehot_j - p)`),
tiled by a BlockSpec grid over (row blocks of `block_n`, vocabulary blocks of `block_v`):

  forward  grid (N/bn, V/bv): stats of row block i accumulate over vocabulary blocks j
  dhidden  grid (N/bn, V/bv): dh[i]    += dz[i, j] @ W[:, j]^T   (logits recomputed)
  dweight  grid (V/bv, N/bn): dW[:, j] += h[i]^T @ dz[i, j]      (logits recomputed)

Each kernel reduces over its last grid axis into an output block that stays resident across it
(the TPU / Mosaic pattern: the last axis is sequential and marked "arbitrary"). Edge blocks are
masked by row/column index, so N and V need not be multiples of the block sizes. The top-k merge
inside the kernel is a K-step max selection (no sort), using only reductions, iota and selects.

This module holds the TPU formulation (`target="tpu"`) and the public `pallas_logprobs`, which
also dispatches to the GPU formulation in `_pallas_gpu.py` (`target="gpu"`, Triton: reductions as
loops inside the kernel, since Triton runs grid programs in parallel and the pattern above would
race). On CPU either runs with `interpret=True` (chosen automatically). Checked: interpret mode
against the reference (tests), and lowering through `jax.export(platforms=["tpu"])` (Mosaic) and
`platforms=["cuda"]` (Triton). Not checked: Mosaic's / Triton's own compilation and execution on
the hardware (TPU VMEM use grows with `block_n * D + D * block_v`; tune the blocks for large D).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from postrain.kernels import _pallas_gpu
from postrain.kernels._reference import target_valid

_F32 = jnp.float32


def _dot(a, b, contract, precision=None):
  dims = (contract, ((), ()))
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=_F32)


def _cols(j, bn, bv, vocab):
  col = j * bv + lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  return col, col < vocab


def _merge_topk(run_v, run_i, z, col, top_k):
  """Top-k of the union of `run_v` (earlier, lower ids) and the block `z`, ties to lower ids."""
  bn, bv = z.shape
  pos_k = lax.broadcasted_iota(jnp.int32, (bn, top_k), 1)
  pos_v = lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  out_v = jnp.full((bn, top_k), -jnp.inf, _F32)
  out_i = jnp.full((bn, top_k), -1, jnp.int32)
  for t in range(top_k):
    mr = jnp.max(run_v, axis=1, keepdims=True)
    mz = jnp.max(z, axis=1, keepdims=True)
    pr = jnp.min(jnp.where(run_v == mr, pos_k, top_k), axis=1, keepdims=True)
    pz = jnp.min(jnp.where(z == mz, pos_v, bv), axis=1, keepdims=True)
    take_run = mr >= mz
    id_r = jnp.max(jnp.where(pos_k == pr, run_i, -1), axis=1, keepdims=True)
    id_z = jnp.max(jnp.where(pos_v == pz, col, -1), axis=1, keepdims=True)
    out_v = jnp.where(pos_k == t, jnp.where(take_run, mr, mz), out_v)
    out_i = jnp.where(pos_k == t, jnp.where(take_run, id_r, id_z), out_i)
    run_v = jnp.where(take_run & (pos_k == pr), -jnp.inf, run_v)
    z = jnp.where(~take_run & (pos_v == pz), -jnp.inf, z)
  return out_v, out_i


def _fwd_kernel(h_ref, w_ref, t_ref, *outs, vocab, top_k, temperature, precision):
  m_ref, s_ref, s1_ref, zt_ref = outs[:4]
  j = pl.program_id(1)
  bn, bv = h_ref.shape[0], w_ref.shape[1]
  col, col_ok = _cols(j, bn, bv, vocab)
  z = _dot(h_ref[...], w_ref[...], ((1,), (0,)), precision) / temperature
  z = jnp.where(col_ok, z, -jnp.inf)  # padded columns (garbage weights) drop out

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, _F32)
    s_ref[...] = jnp.zeros(s_ref.shape, _F32)
    s1_ref[...] = jnp.zeros(s1_ref.shape, _F32)
    zt_ref[...] = jnp.zeros(zt_ref.shape, _F32)
    if top_k:
      outs[4][...] = jnp.full(outs[4].shape, -jnp.inf, _F32)
      outs[5][...] = jnp.full(outs[5].shape, -1, jnp.int32)

  m_old, s_old = m_ref[...], s_ref[...]
  m_new = jnp.maximum(m_old, jnp.max(z, axis=1, keepdims=True))
  alpha = jnp.exp(m_old - m_new)
  shift = jnp.where(s_old > 0, m_old - m_new, 0.0)
  zr = jnp.where(col_ok, z - m_new, 0.0)
  e = jnp.where(col_ok, jnp.exp(zr), 0.0)
  s_ref[...] = alpha * s_old + jnp.sum(e, axis=1, keepdims=True)
  s1_ref[...] = alpha * (s1_ref[...] + shift * s_old) + jnp.sum(e * zr, axis=1, keepdims=True)
  m_ref[...] = m_new
  zt_ref[...] += jnp.sum(jnp.where(col == t_ref[...], z, 0.0), axis=1, keepdims=True)
  if top_k:
    outs[4][...], outs[5][...] = _merge_topk(outs[4][...], outs[5][...], z, col, top_k)


def _block_dz(h, w, col, col_ok, t_ref, row_ref, top_refs, temperature, precision):
  """dL/dz for one (row block, vocabulary block) tile, zero on padded columns."""
  rows = row_ref[...]
  m, log_s, ezr, g_logp, g_ent = (rows[:, c : c + 1] for c in range(5))
  zr = _dot(h, w, ((1,), (0,)), precision) / temperature - m
  p = jnp.exp(zr - log_s)
  g_p = g_logp
  onehot = jnp.where(col == t_ref[...], g_logp, 0.0)
  if top_refs:
    ids, g_top = top_refs[0][...], top_refs[1][...]
    g_p = g_p + jnp.sum(g_top, axis=1, keepdims=True)
    for k in range(ids.shape[1]):
      onehot += jnp.where(col == ids[:, k : k + 1], g_top[:, k : k + 1], 0.0)
  dz = (p * (g_ent * (ezr - zr) - g_p) + onehot) / temperature
  return jnp.where(col_ok, dz, 0.0).astype(h.dtype)


def _dh_kernel(h_ref, w_ref, t_ref, row_ref, *refs, vocab, temperature, precision):
  top_refs, dh_ref = refs[:-1], refs[-1]
  j = pl.program_id(1)
  bn, bv = h_ref.shape[0], w_ref.shape[1]
  col, col_ok = _cols(j, bn, bv, vocab)
  w = jnp.where(col_ok[:1], w_ref[...], 0)  # padded columns may hold NaN
  dz = _block_dz(h_ref[...], w, col, col_ok, t_ref, row_ref, top_refs, temperature, precision)

  @pl.when(j == 0)
  def _init():
    dh_ref[...] = jnp.zeros(dh_ref.shape, _F32)

  dh_ref[...] += _dot(dz, w, ((1,), (1,)), precision)


def _dw_kernel(h_ref, w_ref, t_ref, row_ref, *refs, n, vocab, temperature, precision):
  top_refs, dw_ref = refs[:-1], refs[-1]
  j, i = pl.program_id(0), pl.program_id(1)
  bn, bv = h_ref.shape[0], w_ref.shape[1]
  col, col_ok = _cols(j, bn, bv, vocab)
  row_ok = i * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0) < n
  h = jnp.where(row_ok, h_ref[...], 0)  # padded rows may hold NaN
  dz = _block_dz(
    h, w_ref[...], col, col_ok & row_ok, t_ref, row_ref, top_refs, temperature, precision
  )

  @pl.when(i == 0)
  def _init():
    dw_ref[...] = jnp.zeros(dw_ref.shape, _F32)

  dw_ref[...] += _dot(h, dz, ((0,), (0,)), precision)


def _compiler_params(interpret):
  # TPU: rows parallel (megacore), the reduction axis sequential. The interpreter needs none.
  if interpret:
    return None
  from jax.experimental.pallas import tpu as pltpu

  return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def _blocks(n, vocab, block_n, block_v):
  bn, bv = min(block_n, n), min(block_v, vocab)
  return bn, bv, pl.cdiv(n, bn), pl.cdiv(vocab, bv)


def _forward_tpu(h, w, targets, cfg):
  top_k, block_n, block_v = cfg.top_k, cfg.block_n, cfg.block_v
  temperature, interpret = cfg.temperature, cfg.interpret
  (n, d), vocab = h.shape, w.shape[1]
  bn, bv, gn, gv = _blocks(n, vocab, block_n, block_v)
  row = pl.BlockSpec((bn, 1), lambda i, j: (i, 0))
  out_shape = [jax.ShapeDtypeStruct((n, 1), _F32)] * 4
  out_specs = [row] * 4
  if top_k:
    out_shape += [
      jax.ShapeDtypeStruct((n, top_k), _F32),
      jax.ShapeDtypeStruct((n, top_k), jnp.int32),
    ]
    out_specs += [pl.BlockSpec((bn, top_k), lambda i, j: (i, 0))] * 2
  outs = pl.pallas_call(
    functools.partial(
      _fwd_kernel, vocab=vocab, top_k=top_k, temperature=temperature, precision=cfg.precision
    ),
    out_shape=out_shape,
    grid=(gn, gv),
    in_specs=[
      pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
      pl.BlockSpec((d, bv), lambda i, j: (0, j)),
      row,
    ],
    out_specs=out_specs,
    interpret=interpret,
    compiler_params=_compiler_params(interpret),
    name="fused_logprobs_fwd",
  )(h, w, targets[:, None])
  m, s, s1, zt = (o[:, 0] for o in outs[:4])
  valid = target_valid(targets, vocab)
  log_s = jnp.log(s)
  ezr = s1 / s
  logp = jnp.where(valid, (zt - m) - log_s, 0.0)
  entropy = jnp.where(valid, log_s - ezr, 0.0)
  if top_k:
    top_logp = jnp.where(valid[:, None], (outs[4] - m[:, None]) - log_s[:, None], 0.0)
    top_i = jnp.where(valid[:, None], outs[5], -1)
  else:
    top_logp, top_i = jnp.zeros((n, 0), _F32), jnp.zeros((n, 0), jnp.int32)
  return (logp, entropy, top_logp, top_i), (m, log_s, ezr, top_i)


def _backward_tpu(h, w, targets, res, cts, cfg):
  top_k, block_n, block_v = cfg.top_k, cfg.block_n, cfg.block_v
  temperature, interpret = cfg.temperature, cfg.interpret
  (n, d), vocab = h.shape, w.shape[1]
  bn, bv, gn, gv = _blocks(n, vocab, block_n, block_v)
  m, log_s, ezr, top_i = res
  g_logp, g_ent, g_top = cts
  rowf = jnp.stack([m, log_s, ezr, g_logp, g_ent], axis=1).astype(_F32)
  args = [h, w, targets[:, None], rowf]
  if top_k:
    args += [top_i, g_top.astype(_F32)]

  def specs(rows, cols):  # block specs of the inputs, given grid-index -> block-index maps
    out = [
      pl.BlockSpec((bn, d), lambda *g: (rows(*g), 0)),
      pl.BlockSpec((d, bv), lambda *g: (0, cols(*g))),
      pl.BlockSpec((bn, 1), lambda *g: (rows(*g), 0)),
      pl.BlockSpec((bn, 5), lambda *g: (rows(*g), 0)),
    ]
    return out + [pl.BlockSpec((bn, top_k), lambda *g: (rows(*g), 0))] * (2 if top_k else 0)

  dh = pl.pallas_call(
    functools.partial(_dh_kernel, vocab=vocab, temperature=temperature, precision=cfg.precision),
    out_shape=jax.ShapeDtypeStruct((n, d), _F32),
    grid=(gn, gv),
    in_specs=specs(lambda i, j: i, lambda i, j: j),
    out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
    interpret=interpret,
    compiler_params=_compiler_params(interpret),
    name="fused_logprobs_dh",
  )(*args)
  dw = pl.pallas_call(
    functools.partial(
      _dw_kernel, n=n, vocab=vocab, temperature=temperature, precision=cfg.precision
    ),
    out_shape=jax.ShapeDtypeStruct((d, vocab), _F32),
    grid=(gv, gn),
    in_specs=specs(lambda j, i: i, lambda j, i: j),
    out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
    interpret=interpret,
    compiler_params=_compiler_params(interpret),
    name="fused_logprobs_dw",
  )(*args)
  return dh.astype(h.dtype), dw.astype(w.dtype)


class _Config(NamedTuple):
  """Static configuration (hashable: the custom_vjp's non-differentiable argument)."""

  target: str
  top_k: int
  block_n: int
  block_v: int
  block_d: int
  temperature: float
  interpret: bool
  num_warps: int | None
  num_stages: int | None
  precision: lax.Precision | None

  def gpu(self):
    return (self.top_k, self.block_n, self.block_v, self.block_d, self.temperature,
            self.interpret, self.num_warps, self.num_stages, self.precision)  # fmt: skip


def _forward(h, w, targets, cfg: _Config):
  if cfg.target == "gpu":
    return _pallas_gpu.forward(h, w, targets, cfg.gpu())
  return _forward_tpu(h, w, targets, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(h, w, targets, cfg):
  return _forward(h, w, targets, cfg)[0]


def _fused_fwd(h, w, targets, cfg):
  out, res = _forward(h, w, targets, cfg)
  return out, (h, w, targets, res)


def _fused_bwd(cfg, saved, cts):
  h, w, targets, res = saved
  g_logp, g_ent, g_top, _ = cts  # the top-k ids are integers: no cotangent
  n = h.shape[0]
  valid = target_valid(targets, w.shape[1])
  cts = tuple(
    jnp.where(valid.reshape((n,) + (1,) * (g.ndim - 1)), g, 0.0) for g in (g_logp, g_ent, g_top)
  )
  if cfg.target == "gpu":
    dh, dw = _pallas_gpu.backward(h, w, targets, res, cts, cfg.gpu())
  else:
    dh, dw = _backward_tpu(h, w, targets, res, cts, cfg)
  return dh, dw, None


_fused.defvjp(_fused_fwd, _fused_bwd)

TARGETS = ("tpu", "gpu")
# (block_n, block_v): TPU blocks live in VMEM; GPU tiles in registers (Triton), so smaller.
DEFAULT_BLOCKS = {"tpu": (256, 1024), "gpu": (64, 128)}


def default_target() -> str:
  """The kernel formulation for the default backend: "gpu" on CUDA/ROCm, else "tpu"."""
  return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "tpu"


def _precision(name: str | None) -> lax.Precision | None:
  if name is None:
    return None
  names = ("default", "high", "highest")
  if not isinstance(name, str) or name.lower() not in names:
    raise ValueError(f"`precision` must be None or one of {names}, got {name!r}.")
  return lax.Precision[name.upper()]


def pallas_logprobs(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  *,
  top_k: int = 0,
  temperature: float = 1.0,
  block_n: int | None = None,
  block_v: int | None = None,
  target: str | None = None,
  block_d: int = 64,
  num_warps: int | None = None,
  num_stages: int | None = None,
  precision: str | None = "highest",
  interpret: bool | None = None,
):
  """Same contract as `naive_logprobs`, computed by Pallas kernels.

  Two formulations of the same maths (both have a forward and a two-kernel backward):
  `target="tpu"` (Mosaic; reductions along a sequential grid axis, this module) and
  `target="gpu"` (Triton; reductions as loops inside the kernel, every output block owned by one
  program: `_pallas_gpu.py`). Both also run in the Pallas interpreter.

  Args:
    hidden: [N, D] final hidden states (float32 or bfloat16; the kernels accumulate in f32).
    weight: [D, V] output embedding.
    targets: i32[N]; ids outside `[0, V)` mark masked rows (outputs 0, no gradient).
    top_k: if > 0, also return the top-k log-probs (differentiable) and ids.
    temperature: logits are divided by it.
    block_n: rows per block (default 256 for "tpu", 64 for "gpu"; "gpu" rounds up to a power
      of two).
    block_v: vocabulary columns per block (default 1024 for "tpu", 128 for "gpu").
    target: "tpu" or "gpu": which formulation to lower; None = "gpu" on a CUDA/ROCm backend,
      else "tpu". Pick it explicitly to export for another platform or test in interpret mode.
    block_d: "gpu" only: hidden-dimension chunk of the in-kernel matmuls (a power of two;
      the largest power of two <= block_d dividing D is used, D is zero-padded if that is < 16).
    num_warps: "gpu" only: Triton warps per program (None = Triton's default).
    num_stages: "gpu" only: Triton software-pipelining stages (None = default).
    precision: precision of the in-kernel matmuls, a `lax.Precision` name. "highest" (default)
      keeps float32 inputs float32 (IEEE on GPU, like the reference at 1e-5); None / "default"
      lets the compiler pick (TF32 on a GPU for float32 inputs: faster, ~1e-3 relative). bf16
      inputs are multiplied as bf16 either way, with float32 accumulation.
    interpret: run the kernels in the Pallas interpreter; None = only when the backend is CPU.

  Returns:
    `(logp f32[N], entropy f32[N])`, plus `(topk_logp f32[N, K], topk_ids i32[N, K])` when
    `top_k > 0`.
  """
  target = default_target() if target is None else target
  if target not in TARGETS:
    raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  dn, dv = DEFAULT_BLOCKS[target]
  cfg = _Config(
    target=target,
    top_k=int(top_k),
    block_n=int(block_n or dn),
    block_v=int(block_v or dv),
    block_d=int(block_d),
    temperature=float(temperature),
    interpret=bool(interpret),
    num_warps=num_warps,
    num_stages=num_stages,
    precision=_precision(precision),
  )
  logp, entropy, top_logp, top_i = _fused(hidden, weight, targets.astype(jnp.int32), cfg)
  if not top_k:
    return logp, entropy
  return logp, entropy, (top_logp, top_i)
