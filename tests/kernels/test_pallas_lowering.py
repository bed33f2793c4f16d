"""Pallas log-prob kernels: cross-platform lowering (no TPU/GPU here) and the GPU formulation.

`jax.export(..., platforms=[...])` lowers on this CPU-only host for TPU (Mosaic `tpu_custom_call`)
and CUDA (Triton IR in `__gpu$xla.gpu.triton`), without running: it proves the kernels are
expressible there (power-of-two Triton tiles, Mosaic ops), not that the hardware compiler accepts
its register / VMEM budget. The interpret-mode values and gradients of both formulations are
tested in `test_fused_logprobs.py`; here: GPU-specific shapes (D not a power of two, D padded) and
the property that makes the GPU formulation race-free (every output block owned by one program).
"""

import functools
import re

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from postrain.kernels import fused_logprobs, naive_logprobs, pallas_logprobs

TRITON = "__gpu$xla.gpu.triton"
NAMES = ("fused_logprobs_fwd", "fused_logprobs_dh", "fused_logprobs_dw")


def _fn(target, top_k, grad, **kw):
  def fwd(h, w, t):
    out = pallas_logprobs(h, w, t, top_k=top_k, target=target, interpret=False, **kw)
    return jnp.sum(out[0] + 0.5 * out[1]) + (jnp.sum(out[2][0]) if top_k else 0.0)

  return jax.jit(jax.value_and_grad(fwd, argnums=(0, 1)) if grad else fwd)


def _export(fn, platform, n, d, v, dtype):
  specs = [jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((d, v), dtype)]
  specs.append(jax.ShapeDtypeStruct((n,), jnp.int32))
  # Triton custom calls carry no serialization-compatibility guarantee; lowering is what we check.
  checks = [export.DisabledSafetyCheck.custom_call(TRITON)] if platform == "cuda" else []
  return export.export(fn, platforms=[platform], disabled_checks=checks)(*specs).mlir_module()


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "value_and_grad"])
@pytest.mark.parametrize(("dtype", "top_k"), [(jnp.float32, 0), (jnp.bfloat16, 3)])
def test_lowers_for_tpu(grad, dtype, top_k):
  module = _export(_fn("tpu", top_k, grad, block_n=16, block_v=128), "tpu", 37, 16, 1000, dtype)
  assert module.count("tpu_custom_call") == (3 if grad else 1)
  for name in NAMES[: 3 if grad else 1]:
    assert name in module
  assert TRITON not in module


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "value_and_grad"])
@pytest.mark.parametrize(("dtype", "top_k"), [(jnp.float32, 0), (jnp.bfloat16, 3)])
def test_lowers_for_cuda(grad, dtype, top_k):
  # N, D, V not multiples of the blocks (64 / 16 / 128), D not a power of two.
  module = _export(_fn("gpu", top_k, grad), "cuda", 37, 48, 1000, dtype)
  assert module.count(f"stablehlo.custom_call @{TRITON}") == (3 if grad else 1)
  names = re.findall(r'name = "(fused_logprobs_\w+)"', module)
  assert names == [f"{n}_gpu" for n in NAMES[: 3 if grad else 1]]
  assert "tpu_custom_call" not in module


@pytest.mark.parametrize(("platform", "target"), [("tpu", "tpu"), ("cuda", "gpu")])
def test_lowers_at_qwen3_size_through_fused_logprobs(platform, target):
  # The public entry point at full size (N=8192, D=1024, V=151936, bf16): lowering only.
  def loss(h, w, t):
    logp, ent = fused_logprobs(h, w, t, impl="pallas", target=target, interpret=False)
    return jnp.sum(logp + ent)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  module = _export(fn, platform, 8192, 1024, 151936, jnp.bfloat16)
  call = "tpu_custom_call" if platform == "tpu" else f"stablehlo.custom_call @{TRITON}"
  assert module.count(call) == 3


def test_default_target_on_cpu_is_tpu_formulation():
  from postrain.kernels._pallas import default_target

  assert jax.default_backend() == "cpu" and default_target() == "tpu"


def _pallas_calls(jaxpr):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      yield eqn
    for p in eqn.params.values():
      for sub in p if isinstance(p, (list, tuple)) else [p]:
        if isinstance(sub, jex.core.ClosedJaxpr):
          yield from _pallas_calls(sub.jaxpr)
        elif isinstance(sub, jex.core.Jaxpr):
          yield from _pallas_calls(sub)


def _shared_output_blocks(eqn):
  """Output blocks written by more than one program of the grid (a race under Triton)."""
  gm = eqn.params["grid_mapping"]
  shared = []
  for bm in gm.block_mappings_output:
    owners = {}
    for idx in np.ndindex(*gm.grid):
      ij = [jnp.int32(i) for i in idx]
      block = tuple(
        int(x)
        for x in jax.core.eval_jaxpr(bm.index_map_jaxpr.jaxpr, bm.index_map_jaxpr.consts, *ij)
      )
      owners.setdefault(block, []).append(idx)
    shared += [(block, progs) for block, progs in owners.items() if len(progs) > 1]
  return shared


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_gpu_formulation_has_no_cross_program_accumulation(target):
  # Triton runs the programs of a grid in parallel, so no output block may be written by two of
  # them. The TPU formulation does exactly that (accumulation along a sequential grid axis): it is
  # the control that shows this check can fail.
  h, w = jnp.zeros((37, 16)), jnp.zeros((16, 300))
  fn = _fn(target, 2, True, block_n=16, block_v=128)
  eqns = list(_pallas_calls(jax.make_jaxpr(fn)(h, w, jnp.zeros(37, jnp.int32)).jaxpr))
  assert len(eqns) == 3
  shared = [s for e in eqns for s in _shared_output_blocks(e)]
  if target == "gpu":
    assert shared == []
  else:
    assert shared


@functools.cache
def _interpret_vg(target, top_k, block_d):
  def loss(h, w, t, a, b):
    out = pallas_logprobs(
      h, w, t, top_k=top_k, target=target, block_n=16, block_v=64, block_d=block_d
    )
    return jnp.sum(a * out[0] + b * out[1]) + (jnp.sum(out[2][0]) if top_k else 0.0), out

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize(
  ("n", "d", "v"),
  # D=48: chunks of bd=16, no padding; V=200: 3 vocabulary blocks of 64 and a tail of 8.
  # D=20: no power of two >= 16 divides it, padded to 32; N=5, V=7: smaller than one block.
  [(21, 48, 200), (5, 20, 7)],
)
def test_gpu_formulation_hidden_dim_chunks_and_padding(n, d, v):
  # GPU tiles are powers of two >= 16: D is walked in chunks of bd, zero-padded when no power of
  # two >= 16 divides it; N and V are padded to whole blocks. Compared with the naive path
  # (float32, 1e-5).
  rng = np.random.default_rng(d)
  h = jnp.asarray(rng.normal(size=(n, d)) / np.sqrt(d), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  t = jnp.asarray(rng.integers(0, v, size=n), jnp.int32).at[1].set(-1)
  a, b = (jnp.asarray(rng.normal(size=n), jnp.float32) for _ in range(2))

  def naive_loss(h, w, t, a, b):
    out = naive_logprobs(h, w, t, top_k=2)
    return jnp.sum(a * out[0] + b * out[1]) + jnp.sum(out[2][0]), out

  (_, got), (dh, dw) = _interpret_vg("gpu", 2, 64)(h, w, t, a, b)
  (_, want), (ndh, ndw) = jax.value_and_grad(naive_loss, argnums=(0, 1), has_aux=True)(
    h, w, t, a, b
  )
  for x, y in zip(jax.tree.leaves((got, dh, dw)), jax.tree.leaves((want, ndh, ndw))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def _kernel_dot_precisions(fn, *args):
  out = set()
  for eqn in _pallas_calls(jax.make_jaxpr(fn)(*args).jaxpr):
    stack = [eqn.params["jaxpr"]]
    while stack:
      jaxpr = stack.pop()
      for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
          out.add(e.params["precision"])
        for p in e.params.values():
          for sub in p if isinstance(p, (list, tuple)) else [p]:
            if isinstance(sub, jex.core.ClosedJaxpr):
              stack.append(sub.jaxpr)
            elif isinstance(sub, jex.core.Jaxpr):
              stack.append(sub)
  return out


@pytest.mark.parametrize("target", ["gpu", "tpu"])
@pytest.mark.parametrize("precision", ["highest", None])
def test_kernel_matmul_precision(target, precision):
  # Triton lowers a float32 dot with DEFAULT precision to TF32 (~1e-3): the kernels default to
  # HIGHEST (IEEE float32), and precision=None hands the choice back to the compiler.
  h, w = jnp.zeros((37, 16)), jnp.zeros((16, 300))
  fn = _fn(target, 0, True, block_n=16, block_v=128, precision=precision)
  got = _kernel_dot_precisions(fn, h, w, jnp.zeros(37, jnp.int32))
  highest = jax.lax.Precision.HIGHEST
  want = (highest, highest) if precision else None
  assert got == {want}
