"""group_normalized / rloo / zero-variance helpers against numpy loops written from the equations."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import advantages as adv


def np_group_normalized(rewards, group_size, scale, eps):
  """GRPO / Dr.GRPO / batch-std, one group at a time, population std, constant group -> 0."""
  r = [float(x) for x in rewards]
  n = len(r)
  batch_mean = sum(r) / n
  batch_std = math.sqrt(sum((x - batch_mean) ** 2 for x in r) / n)
  out = [0.0] * n
  for start in range(0, n, group_size):
    g = r[start : start + group_size]
    if all(x == g[0] for x in g):
      continue
    mu = sum(g) / group_size
    sd = math.sqrt(sum((x - mu) ** 2 for x in g) / group_size)
    for i, x in enumerate(g):
      if scale == "group":
        out[start + i] = (x - mu) / (sd + eps)
      elif scale == "batch":
        out[start + i] = (x - mu) / (batch_std + eps)
      else:
        out[start + i] = x - mu
  return np.array(out)


def np_rloo(rewards, group_size):
  r = [float(x) for x in rewards]
  out = [0.0] * len(r)
  for start in range(0, len(r), group_size):
    g = r[start : start + group_size]
    if all(x == g[0] for x in g):
      continue
    for i in range(group_size):
      others = [g[j] for j in range(group_size) if j != i]
      out[start + i] = g[i] - sum(others) / (group_size - 1)
  return np.array(out)


REWARDS = np.array(
  [1.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3, 0.5, -1.25, 2.0, 0.75, 1.0, 1.0, 0.0, 1.0]
)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_normalized_matches_loop(prec, scale):
  dtype, tol = prec
  r = REWARDS.astype(dtype)
  out = adv.group_normalized(jnp.asarray(r), group_size=4, scale=scale, eps=1e-6)
  assert out.dtype == dtype
  np.testing.assert_allclose(out, np_group_normalized(r, 4, scale, 1e-6), atol=tol, rtol=tol)


def test_group_normalized_hand_values():
  # One success out of G = 4 with eps = 0: A = +sqrt(G - 1) and -1/sqrt(G - 1) (SCRL App. B.3).
  out = adv.group_normalized(jnp.array([1.0, 0.0, 0.0, 0.0]), group_size=4, eps=0.0)
  np.testing.assert_allclose(
    out, [math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)], rtol=1e-6
  )
  # k successes: |A_success| = sqrt((G - k) / k), |A_fail| = sqrt(k / (G - k)).
  out = adv.group_normalized(jnp.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]), group_size=6, eps=0.0)
  np.testing.assert_allclose(out[:2], math.sqrt(2.0), rtol=1e-6)
  np.testing.assert_allclose(out[2:], -math.sqrt(0.5), rtol=1e-6)
  # Dr.GRPO: centring only.
  out = adv.group_normalized(jnp.array([2.0, 4.0]), group_size=2, scale="none")
  np.testing.assert_allclose(out, [-1.0, 1.0])


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-8, 7.3e6, -2.5, 0.0])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_groups_are_exactly_zero(value, scale):
  # 0.1 * 4 / 4 != 0.1 in floating point: the result must still be exactly 0, not a residue.
  r = jnp.array([value] * 4 + [0.0, 1.0, 0.5, 0.25], jnp.float32)
  out = adv.group_normalized(r, group_size=4, scale=scale, eps=0.0)
  assert np.all(np.asarray(out[:4]) == 0.0)
  assert np.all(np.isfinite(out))
  loo = adv.rloo(r, group_size=4)
  assert np.all(np.asarray(loo[:4]) == 0.0)


def test_all_constant_batch_gives_zeros_even_with_eps_zero():
  for scale in ["group", "batch", "none"]:
    out = adv.group_normalized(jnp.full((6,), 0.7), group_size=3, scale=scale, eps=0.0)
    assert np.all(np.asarray(out) == 0.0)

    def loss(r, s=scale):
      return jnp.sum(adv.group_normalized(r, group_size=3, scale=s, eps=0.0) ** 2)

    grad = jax.jit(jax.grad(loss))(jnp.full((6,), 0.7))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("scale", ["group", "none"])
def test_groups_are_independent(scale):
  # "Masking equals slicing" for groups: a group's advantages do not depend on the other groups.
  r = jnp.asarray(REWARDS, jnp.float32)
  full = adv.group_normalized(r, group_size=4, scale=scale)
  for p in range(4):
    alone = adv.group_normalized(r[4 * p : 4 * p + 4], group_size=4, scale=scale)
    np.testing.assert_allclose(full[4 * p : 4 * p + 4], alone, atol=1e-6)


def test_group_mean_zero_and_unit_std():
  r = jnp.asarray(REWARDS, jnp.float32)
  out = np.asarray(adv.group_normalized(r, group_size=4, eps=0.0)).reshape(4, 4)
  np.testing.assert_allclose(out.mean(1), 0.0, atol=1e-6)
  np.testing.assert_allclose(out.std(1)[[0, 2, 3]], 1.0, atol=1e-5)


def test_rloo_matches_loop(prec):
  dtype, tol = prec
  r = REWARDS.astype(dtype)
  out = adv.rloo(jnp.asarray(r), group_size=4)
  np.testing.assert_allclose(out, np_rloo(r, 4), atol=tol, rtol=tol)
  # RLOO = G / (G - 1) * Dr.GRPO.
  drgrpo = adv.group_normalized(jnp.asarray(r), group_size=4, scale="none")
  np.testing.assert_allclose(out, 4 / 3 * np.asarray(drgrpo), atol=tol, rtol=tol)


def test_rloo_group_size_one_raises():
  with pytest.raises(ValueError, match="group_size"):
    adv.rloo(jnp.zeros(4), group_size=1)


def test_zero_variance_masks():
  r = jnp.asarray(REWARDS, jnp.float32)
  np.testing.assert_array_equal(
    adv.zero_variance_groups(r, group_size=4), [False] * 4 + [True] * 4 + [False] * 8
  )
  np.testing.assert_allclose(adv.zero_variance_fraction(r, group_size=4), 0.25)
  ints = jnp.array([1, 1, 0, 1, 2, 2], jnp.int32)
  np.testing.assert_array_equal(
    adv.zero_variance_groups(ints, group_size=2), [True, True, False, False, True, True]
  )
  bools = jnp.array([True, True, True, False])
  np.testing.assert_allclose(adv.zero_variance_fraction(bools, group_size=2), 0.5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_gradients(x64, scale):
  # Only non-degenerate groups: the gradient of a constant group is 0 by construction.
  r = jnp.asarray([0.2, 1.1, -0.4, 0.9, 0.3, 0.35, 2.0, -1.0], jnp.float64)
  fn = jax.jit(functools.partial(adv.group_normalized, group_size=4, scale=scale, eps=1e-3))
  check_grads(fn, (r,), order=1, modes=["fwd", "rev"])
  check_grads(jax.jit(functools.partial(adv.rloo, group_size=4)), (r,), order=1, modes=["rev"])


def test_gradient_of_constant_group_is_zero():
  r = jnp.array([0.5, 0.5, 0.5, 1.0, 0.0, 2.0])
  g = jax.grad(lambda x: jnp.sum(adv.group_normalized(x, group_size=3) * jnp.arange(6.0)))(r)
  np.testing.assert_array_equal(g[:3], 0.0)
  assert np.all(np.isfinite(g))


def test_jit_equals_eager_and_vmap():
  r = jnp.asarray(REWARDS, jnp.float32)
  jitted = jax.jit(adv.group_normalized, static_argnames=("group_size", "scale", "eps"))
  np.testing.assert_allclose(
    jitted(r, group_size=4, scale="group"), adv.group_normalized(r, group_size=4), atol=1e-6
  )
  # vmap over several reward functions scored on the same batch.
  stacked = jnp.stack([r, r[::-1], 2 * r])
  batched = jax.vmap(lambda x: adv.group_normalized(x, group_size=4))(stacked)
  for k in range(3):
    np.testing.assert_allclose(
      batched[k], adv.group_normalized(stacked[k], group_size=4), atol=1e-6
    )
  np.testing.assert_allclose(
    jax.jit(functools.partial(adv.rloo, group_size=4))(r), adv.rloo(r, group_size=4), atol=1e-6
  )


def test_bfloat16_rewards_compute_in_float32():
  r = jnp.asarray(REWARDS, jnp.bfloat16)
  out = adv.group_normalized(r, group_size=4)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(
    out, np_group_normalized(np.asarray(r, np.float32), 4, "group", 1e-6), atol=1e-5
  )
