"""fused_logprobs: naive / chunked / Pallas TPU and GPU formulations (interpret) vs float64 numpy.

The numpy reference is written from the formulas (log-softmax, entropy, top-k, and the gradient
dz = a (onehot_t - p) - b p (log p + H) + sum_j c_j (onehot_{i_j} - p), dh = dz W^T / T,
dW = h^T dz / T), not from the implementations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax import test_util as jtu

from postrain.kernels import fused_logprobs

N, D, K = 37, 16, 3  # N is not a multiple of the Pallas row block (16)
CHUNK = {"naive": None, "chunked": 64, "pallas": 128, "pallas_gpu": 128}
IMPLS = ("naive", "chunked", "pallas", "pallas_gpu")
FUSED = ("chunked", "pallas", "pallas_gpu")
# "pallas" = the TPU (Mosaic) formulation, "pallas_gpu" = the GPU (Triton) one; both interpreted.
KWARGS = {
  "pallas": {"impl": "pallas", "target": "tpu"},
  "pallas_gpu": {"impl": "pallas", "target": "gpu"},
}


@functools.cache
def value_and_grad(impl, top_k, temperature=1.0):
  """jit(value_and_grad) of sum(a logp + b entropy + c top-k logp), outputs as aux."""

  def loss(h, w, t, mask, a, b, c):
    kw = KWARGS.get(impl, {"impl": impl})
    out = fused_logprobs(
        h, w, t, mask=mask, chunk_size=CHUNK[impl], block_n=16, top_k=top_k,
        temperature=temperature, **kw,
    )  # fmt: skip
    total = jnp.sum(a * out[0] + b * out[1])
    if top_k:
      total += jnp.sum(c * out[2][0])
    return total, out

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def run(impl, h, w, t, *, mask=None, top_k=K, temperature=1.0, coef=None):
  n = h.shape[0]
  mask = np.ones(n, bool) if mask is None else mask
  a, b, c = coef if coef is not None else coefficients(n)
  (_, out), (dh, dw) = value_and_grad(impl, top_k, temperature)(h, w, t, mask, a, b, c)
  return jax.tree.map(np.asarray, (out, dh, dw))


def coefficients(n, seed=1):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=n).astype(np.float32),
    rng.normal(size=n).astype(np.float32),
    rng.normal(size=(n, K)).astype(np.float32),
  )


def reference(h, w, t, *, mask=None, top_k=K, temperature=1.0, coef=None):
  """float64 numpy: values and gradients, row by row."""
  h, w = np.asarray(h, np.float64), np.asarray(w, np.float64)
  n, vocab = h.shape[0], w.shape[1]
  a, b, c = (np.asarray(x, np.float64) for x in (coef or coefficients(n)))
  mask = np.ones(n, bool) if mask is None else mask
  logp, ent = np.zeros(n), np.zeros(n)
  top_v, top_i = np.zeros((n, top_k)), -np.ones((n, top_k), np.int64)
  dz = np.zeros((n, vocab))
  for r in range(n):
    if not (mask[r] and 0 <= t[r] < vocab):
      continue
    z = h[r] @ w / temperature
    m = z.max()
    lp = z - (m + np.log(np.sum(np.exp(z - m))))
    p = np.exp(lp)
    logp[r], ent[r] = lp[t[r]], -np.sum(p * lp)
    order = np.argsort(-lp, kind="stable")[:top_k]  # ties: lower id first
    top_v[r], top_i[r] = lp[order], order
    dz[r] = -a[r] * p - b[r] * p * (lp + ent[r])
    dz[r, t[r]] += a[r]
    for j, i in enumerate(order):
      dz[r] -= c[r, j] * p
      dz[r, i] += c[r, j]
  dz /= temperature
  return (logp, ent, (top_v, top_i)), dz @ w.T, h.T @ dz


def data(vocab, *, scale=1.0, seed=0, n=N, dtype=np.float32):
  rng = np.random.default_rng(seed)
  h = (rng.normal(size=(n, D)) * scale / np.sqrt(D)).astype(dtype)
  w = rng.normal(size=(D, vocab)).astype(dtype)
  t = rng.integers(0, vocab, size=n).astype(np.int32)
  t[3::17] = -1  # rows 3, 20: masked by the target
  return h, w, t


def assert_close(x, ref, tol, what=""):
  """|x - ref| <= tol * (|ref| + max|ref|-scaled floor), elementwise."""
  ref = np.asarray(ref, np.float64)
  atol = tol * max(np.max(np.abs(ref)), 1.0)
  np.testing.assert_allclose(np.asarray(x, np.float64), ref, rtol=tol, atol=atol, err_msg=what)


def assert_matches(got, want, tol):
  (lp, ent, (tv, ti)), dh, dw = got
  (rlp, rent, (rtv, rti)), rdh, rdw = want
  assert_close(lp, rlp, tol, "logp")
  assert_close(ent, rent, tol, "entropy")
  assert_close(tv, rtv, tol, "top-k logp")
  np.testing.assert_array_equal(ti, rti, err_msg="top-k ids")
  assert_close(dh, rdh, tol, "d hidden")
  assert_close(dw, rdw, tol, "d weight")


# V=256 is a multiple of both chunk sizes (64, 128); V=1000 is not (tail of 40 / 104 columns).
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("vocab", "temperature"), [(256, 1.0), (1000, 0.7)])
def test_values_and_grads_match_float64_reference(impl, vocab, temperature):
  h, w, t = data(vocab)
  got = run(impl, h, w, t, temperature=temperature)
  assert_matches(got, reference(h, w, t, temperature=temperature), 1e-5)


@pytest.mark.parametrize("impl", FUSED)
def test_fused_equals_naive_without_top_k(impl):
  h, w, t = data(1000, seed=3)
  (lp, ent), dh, dw = run(impl, h, w, t, top_k=0)
  (nlp, nent), ndh, ndw = run("naive", h, w, t, top_k=0)
  for x, y, what in [(lp, nlp, "logp"), (ent, nent, "entropy"), (dh, ndh, "dh"), (dw, ndw, "dw")]:
    assert_close(x, y, 1e-5, what)


@pytest.mark.parametrize("impl", IMPLS)
def test_top_k_equals_lax_top_k_of_full_log_softmax(impl):
  h, w, t = data(1000, seed=4)
  (_, _, (tv, ti)), _, _ = run(impl, h, w, t)
  full = jax.nn.log_softmax(jnp.asarray(h) @ jnp.asarray(w) / 1.0, axis=-1)
  want_v, want_i = lax.top_k(full, K)
  keep = t >= 0
  np.testing.assert_array_equal(ti[keep], np.asarray(want_i)[keep])
  np.testing.assert_allclose(tv[keep], np.asarray(want_v)[keep], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ti[~keep], -1)


@pytest.mark.parametrize("impl", IMPLS)
def test_masked_tokens_are_zero_and_equal_slicing(impl):
  h, w, t = data(1000, seed=5)
  mask = np.ones(N, bool)
  mask[[0, 7, 8, 36]] = False
  (lp, ent, (tv, ti)), dh, dw = run(impl, h, w, t, mask=mask)
  dropped = ~mask | (t < 0)
  for x in (lp, ent, tv, dh):
    assert np.all(x[dropped] == 0)
  assert np.all(ti[dropped] == -1)
  # The unmasked rows alone give the same values and the same weight gradient.
  keep = ~dropped
  a, b, c = coefficients(N)
  coef = (a[keep], b[keep], c[keep])
  (slp, sent, (stv, _)), sdh, sdw = run(impl, h[keep], w, t[keep], coef=coef)
  assert_close(lp[keep], slp, 1e-5)
  assert_close(ent[keep], sent, 1e-5)
  assert_close(tv[keep], stv, 1e-5)
  assert_close(dh[keep], sdh, 1e-5)
  assert_close(dw, sdw, 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_extreme_logits(impl):
  # Logits of order 1e3: softmax is (nearly) one-hot; nothing may overflow or cancel badly.
  h, w, t = data(1000, scale=1e3, seed=6)
  got = run(impl, h, w, t)
  for x in jax.tree.leaves(got):
    assert np.all(np.isfinite(x))
  # float32 logits carry ~1e-7 relative error of their magnitude (~3e3): compare at 1e-5.
  assert_matches(got, reference(h, w, t), 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_equal_logits(impl):
  # hidden = 0: every logit is 0, p = 1/V. Hand-derived: logp = -log V, H = log V,
  # dH/dz = 0, dz = a (onehot_t - 1/V) + sum_j c_j (onehot_j - 1/V), top-k ids 0..K-1 (ties).
  vocab = 1000
  _, w, t = data(vocab, seed=7)
  h = np.zeros((N, D), np.float32)
  (lp, ent, (tv, ti)), dh, dw = run(impl, h, w, t)
  keep = t >= 0
  np.testing.assert_allclose(lp[keep], -np.log(vocab), rtol=1e-6)
  np.testing.assert_allclose(ent[keep], np.log(vocab), rtol=1e-6)
  np.testing.assert_allclose(tv[keep], -np.log(vocab), rtol=1e-6)
  np.testing.assert_array_equal(ti[keep], np.broadcast_to(np.arange(K), (keep.sum(), K)))
  a, _, c = coefficients(N)
  w64 = w.astype(np.float64)
  want = a[:, None] * (w64[:, t].T - w64.mean(1)) + c @ (w64[:, :K].T - w64.mean(1))
  want[~keep] = 0
  assert_close(dh, want, 1e-5)
  np.testing.assert_array_equal(dw, 0)  # dW = h^T dz = 0


@pytest.mark.parametrize("impl", FUSED)
def test_bfloat16_within_bf16_tolerance(impl):
  h, w, t = data(1000, seed=8)
  h, w = jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
  (lp, ent, (tv, _)), dh, dw = run(impl, h, w, t)
  assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  assert lp.dtype == np.float32 and ent.dtype == np.float32
  # Softmax math is float32 in every path, so the values match the float64 reference on the
  # bf16-rounded inputs closely; gradients go through bf16 matmuls and are rounded to bf16.
  (rlp, rent, (rtv, _)), rdh, rdw = reference(h.astype(np.float32), w.astype(np.float32), t)
  assert_close(lp, rlp, 1e-4, "logp")
  assert_close(ent, rent, 1e-4, "entropy")
  assert_close(tv, rtv, 1e-4, "top-k")
  assert_close(dh.astype(np.float32), rdh, 2e-2, "dh")
  assert_close(dw.astype(np.float32), rdw, 2e-2, "dw")


def test_chunked_gradient_finite_differences_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(9)
    h = jnp.asarray(rng.normal(size=(5, 4)))
    w = jnp.asarray(rng.normal(size=(4, 50)))
    t = jnp.asarray([3, -1, 49, 17, 0], jnp.int32)
    a, b, c = (jnp.asarray(rng.normal(size=s)) for s in [(5,), (5,), (5, 2)])

    def loss(h, w):
      lp, ent, (tv, _) = fused_logprobs(h, w, t, chunk_size=16, top_k=2)
      return jnp.sum(a * lp + b * ent) + jnp.sum(c * tv)

    jtu.check_grads(jax.jit(loss), (h, w), order=1, modes=["rev"], atol=1e-7, rtol=1e-7)


def test_leading_dims_equal_flat():
  h, w, t = data(300, seed=10, n=12)
  f = jax.jit(functools.partial(fused_logprobs, chunk_size=64, top_k=2))
  out, flat = f(h.reshape(3, 4, D), w, t.reshape(3, 4)), f(h, w, t)
  assert out[0].shape == (3, 4) and out[2][0].shape == (3, 4, 2)
  for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(flat)):
    np.testing.assert_array_equal(np.asarray(x).reshape(np.shape(y)), y)


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"hidden": np.zeros(4)}, ValueError, "hidden"),
    ({"weight": np.zeros((D, 7, 1))}, ValueError, "weight"),
    ({"weight": np.zeros((D + 1, 7))}, ValueError, "weight"),
    ({"hidden": np.zeros((3, D), np.int32)}, TypeError, "hidden"),
    ({"targets": np.zeros(3, np.float32)}, TypeError, "targets"),
    ({"targets": np.zeros(4, np.int32)}, ValueError, "targets"),
    ({"mask": np.ones(4, bool)}, ValueError, "mask"),
    ({"impl": "triton"}, ValueError, "impl"),
    ({"impl": "pallas", "target": "cuda"}, ValueError, "target"),
    ({"top_k": 8}, ValueError, "top_k"),
    ({"top_k": -1}, ValueError, "top_k"),
    ({"top_k": 1.5}, TypeError, "top_k"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"temperature": 0.0}, ValueError, "temperature"),
  ],
)
def test_validation(kwargs, error, match):
  args = {"hidden": np.zeros((3, D), np.float32), "weight": np.zeros((D, 7), np.float32)}
  args["targets"] = np.zeros(3, np.int32)
  args |= {k: kwargs.pop(k) for k in list(kwargs) if k in args}
  with pytest.raises(error, match=match):
    fused_logprobs(args["hidden"], args["weight"], args["targets"], **kwargs)
