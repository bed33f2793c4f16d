"""aggregate, kl_penalty and entropy_bonus against numpy loops and their defining identities."""

import jax
import jax.numpy as jnp
import losses_np_ref as ref
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import losses


def _per_token(seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(6, 7)).astype(dtype)
  mask = (rng.random((6, 7)) < 0.7).astype(dtype)
  mask[-1] = 0.0  # an all-masked row
  return x, mask


def test_aggregate_modes_float64(x64):
  x, mask = _per_token()
  for agg in losses.AGG_MODES:
    got = losses.aggregate(jnp.asarray(x), jnp.asarray(mask), agg=agg, max_len=9)
    np.testing.assert_allclose(got, ref.aggregate(x, mask, agg, 9), rtol=1e-12, err_msg=agg)


def test_aggregate_modes_float32_and_fractional_weights():
  x, mask = _per_token(1, np.float32)
  weights = mask * np.random.default_rng(2).uniform(0.1, 1.0, size=mask.shape).astype(np.float32)
  for m in (mask, weights, mask.astype(bool)):
    for agg in losses.AGG_MODES:
      got = losses.aggregate(x, m, agg=agg, max_len=9)
      np.testing.assert_allclose(got, ref.aggregate(x, m, agg, 9), rtol=1e-5, err_msg=agg)


def test_aggregate_hand_checked():
  x = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
  mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
  assert losses.aggregate(x, mask, agg="token_mean") == pytest.approx(10 / 4)
  assert losses.aggregate(x, mask, agg="seq_mean_token_mean") == pytest.approx((2 + 4) / 2)
  assert losses.aggregate(x, mask, agg="seq_mean_token_sum") == pytest.approx((6 + 4) / 2)
  assert losses.aggregate(x, mask, agg="seq_mean_token_sum_norm", max_len=5) == pytest.approx(1.0)


def test_aggregate_all_masked_and_nonfinite_padding():
  x = np.full((2, 3), np.nan, np.float32)
  x[0, 0] = 2.0
  mask = np.zeros((2, 3), np.float32)
  for agg in losses.AGG_MODES:
    assert losses.aggregate(x, mask, agg=agg, max_len=3) == 0.0
  mask[0, 0] = 1.0
  x[1] = np.inf
  for agg in losses.AGG_MODES:
    value, grad = jax.value_and_grad(
      lambda v, agg=agg: losses.aggregate(v, mask, agg=agg, max_len=4)
    )(jnp.asarray(x))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(np.asarray(grad)[mask == 0], 0.0)


def test_aggregate_masking_equals_slicing():
  x, mask = _per_token(3, np.float32)
  for agg in losses.AGG_MODES:
    full = losses.aggregate(x, mask, agg=agg, max_len=9)
    sliced = losses.aggregate(x[:-1], mask[:-1], agg=agg, max_len=9)
    np.testing.assert_allclose(full, sliced, rtol=1e-6)


@pytest.mark.parametrize("kind", losses.KL_KINDS)
def test_kl_penalty_values(x64, kind):
  logp, ref_logp = _per_token(4)[0] - 1.0, _per_token(5)[0] - 1.0
  mask = _per_token(6)[1]
  got = losses.kl_penalty(jnp.asarray(logp), jnp.asarray(ref_logp), jnp.asarray(mask), kind=kind)
  np.testing.assert_allclose(
    got, ref.kl_penalty(logp, ref_logp, mask, kind), rtol=1e-12, atol=1e-15
  )
  got32 = losses.kl_penalty(logp.astype(np.float32), ref_logp.astype(np.float32), mask, kind=kind)
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(
    got32, ref.kl_penalty(logp, ref_logp, mask, kind), rtol=2e-5, atol=1e-6
  )


def test_kl_estimators_properties(x64):
  logp, ref_logp = _per_token(7)[0], _per_token(8)[0]
  mask = np.ones_like(logp)
  k3 = losses.kl_penalty(logp, ref_logp, mask, kind="k3")
  assert np.all(np.asarray(k3) >= 0)
  # Expectations under π_θ of a categorical: E[k1] = E[k3] = KL(π_θ ‖ π_ref), exactly.
  p = np.array([0.5, 0.3, 0.2])
  q = np.array([0.2, 0.5, 0.3])
  lp, lq, m = np.log(p)[None], np.log(q)[None], np.ones((1, 3))
  kl = np.sum(p * np.log(p / q))
  for kind in ("k1", "k3", "k3+"):
    est = np.sum(p * np.asarray(losses.kl_penalty(lp, lq, m, kind=kind))[0])
    np.testing.assert_allclose(est, kl, rtol=1e-12, err_msg=kind)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_gradients_finite_differences(x64, kind):
  logp, ref_logp = _per_token(9)[0] - 1.0, _per_token(10)[0] - 1.0
  mask = _per_token(11)[1]
  f = jax.jit(lambda lp: jnp.sum(losses.kl_penalty(lp, ref_logp, mask, kind=kind)))
  check_grads(f, (jnp.asarray(logp),), order=1, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_k3_plus_has_k3_value_and_k2_gradient(x64):
  logp, ref_logp = _per_token(12)[0] - 1.0, _per_token(13)[0] - 1.0
  mask = _per_token(14)[1]

  def total(kind):
    return lambda lp: jnp.sum(losses.kl_penalty(lp, ref_logp, mask, kind=kind))

  np.testing.assert_allclose(total("k3+")(logp), total("k3")(logp), rtol=1e-14)
  np.testing.assert_allclose(jax.grad(total("k3+"))(logp), jax.grad(total("k2"))(logp), rtol=1e-14)
  assert not np.allclose(jax.grad(total("k3"))(logp), jax.grad(total("k2"))(logp))
  np.testing.assert_allclose(jax.grad(total("k3+"))(logp), mask * (logp - ref_logp), rtol=1e-12)


def test_kl_masked_positions_zero_and_clamped_large_ratios():
  logp = np.array([[0.0, -1e4, -3.0]], np.float32)
  ref_logp = np.array([[-1e4, 0.0, np.inf]], np.float32)  # the masked entry holds garbage
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  for kind in losses.KL_KINDS:
    value, grad = jax.value_and_grad(
      lambda lp, kind=kind: jnp.sum(losses.kl_penalty(lp, ref_logp, mask, kind=kind))
    )(jnp.asarray(logp))
    assert np.isfinite(value) and np.all(np.isfinite(grad)), kind
    assert np.asarray(losses.kl_penalty(logp, ref_logp, mask, kind=kind))[0, 2] == 0.0


def test_entropy_bonus():
  entropy, mask = _per_token(15, np.float32)
  entropy = np.abs(entropy)
  for agg in losses.AGG_MODES:
    loss, aux = losses.entropy_bonus(entropy, mask, agg=agg, max_len=9)
    want = ref.aggregate(entropy, mask, agg, 9)
    np.testing.assert_allclose(loss, -want, rtol=1e-6)
    np.testing.assert_allclose(aux["entropy"], want, rtol=1e-6)
  grad = jax.grad(lambda e: losses.entropy_bonus(e, mask)[0])(jnp.asarray(entropy))
  np.testing.assert_allclose(grad, -mask / mask.sum(), rtol=1e-6)
