"""CISPO, SAPO, GMPO against numpy loops, gradients and limiting cases."""

import jax
import jax.numpy as jnp
import losses_np_ref as ref
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import losses

AGGS = losses.AGG_MODES


def _adv2d(logp, seed=0):
  return np.random.default_rng(seed).normal(size=logp.shape).astype(logp.dtype)


CASES = {
  "cispo": (
    lambda *a, **k: losses.cispo(*a, eps_high=0.25, eps_low=0.3, **k),
    lambda *a, **k: ref.cispo(*a, eps_high=0.25, eps_low=0.3, **k),
  ),
  "cispo_no_low": (
    lambda *a, **k: losses.cispo(*a, eps_high=0.25, **k),
    lambda *a, **k: ref.cispo(*a, eps_high=0.25, **k),
  ),
  "sapo": (
    lambda *a, **k: losses.sapo(*a, tau_pos=1.0, tau_neg=1.05, **k),
    lambda *a, **k: ref.sapo(*a, tau_pos=1.0, tau_neg=1.05, **k),
  ),
  "gmpo": (
    lambda *a, **k: losses.gmpo(*a, eps_low=0.15, eps_high=0.2, **k),
    lambda *a, **k: ref.gmpo(*a, eps_low=0.15, eps_high=0.2, **k),
  ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_values_float64(x64, batch, name):
  fn, want_fn = CASES[name]
  logp, old, adv, mask = batch(seed=20, dtype=np.float64)
  for a in (adv, _adv2d(logp)):
    for agg in AGGS:
      got, aux = fn(
        jnp.asarray(logp), jnp.asarray(old), jnp.asarray(a), jnp.asarray(mask), agg=agg, max_len=9
      )
      want = want_fn(logp, old, a, mask, agg=agg, max_len=9)
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{agg} {a.ndim}")
      assert all(np.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("name", list(CASES))
def test_values_float32(batch, name):
  fn, want_fn = CASES[name]
  logp, old, adv, mask = batch(seed=21)
  for agg in AGGS:
    got, _ = fn(logp, old, adv, mask, agg=agg, max_len=9)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
      got, want_fn(logp, old, adv, mask, agg=agg, max_len=9), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", ["sapo", "gmpo"])  # CISPO's gradient is a surrogate: see below
def test_gradients_finite_differences(x64, batch, name):
  fn, _ = CASES[name]
  logp, old, adv, mask = batch(seed=22, dtype=np.float64)
  for a in (adv, _adv2d(logp, 1)):
    f = jax.jit(lambda lp, a=a: fn(lp, old, a, mask, agg="seq_mean_token_mean")[0])
    check_grads(f, (jnp.asarray(logp),), order=1, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_cispo_keeps_every_token_gradient(x64, batch):
  """CISPO: ∂/∂logp = coef·(−clip(r)·A), nonzero even where PPO would clip (MiniMax-M1 §3.1)."""
  logp, old, adv, mask = batch(seed=23, dtype=np.float64)
  grad = jax.grad(lambda lp: losses.cispo(lp, old, adv, mask, eps_high=0.25)[0])(jnp.asarray(logp))
  r = np.exp(logp - old)
  coef = ref.agg_coef(mask, "token_mean")
  want = coef * -np.minimum(r, 1.25) * adv[:, None]
  np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14)
  clipped_by_ppo = (mask > 0) & (
    ((adv[:, None] > 0) & (r > 1.28)) | ((adv[:, None] < 0) & (r < 0.8))
  )
  assert clipped_by_ppo.any() and np.all(np.asarray(grad)[clipped_by_ppo] != 0)


def test_sapo_on_policy_is_policy_gradient(x64, batch):
  """At r = 1 the soft gate has weight 4σ(0)(1−σ(0)) = 1: SAPO's gradient is GRPO's."""
  logp, _, adv, mask = batch(seed=24, dtype=np.float64)
  lp = jnp.asarray(logp)
  for agg in AGGS:
    g_sapo = jax.grad(lambda x, agg=agg: losses.sapo(x, lp, adv, mask, agg=agg, max_len=9)[0])(lp)
    g_grpo = jax.grad(
      lambda x, agg=agg: losses.ppo_clip(
        x, lp, adv, mask, eps_low=0.2, eps_high=0.2, agg=agg, max_len=9
      )[0]
    )(lp)
    np.testing.assert_allclose(g_sapo, g_grpo, rtol=1e-10, atol=1e-15)
  _, aux = losses.sapo(lp, lp, adv, mask)
  np.testing.assert_allclose(aux["gate_mean"], 1.0, rtol=1e-12)


def test_sapo_gate_decays_off_policy_faster_for_negative_advantages(x64):
  """Gradient weight 4σ(1−σ)·r per token: < 1 off-policy, smaller for τ_neg > τ_pos."""
  old = jnp.zeros((2, 1))
  logp = jnp.full((2, 1), 1.0)  # r = e
  adv = jnp.asarray([1.0, -1.0])
  grad = jax.jit(
    jax.grad(lambda x: losses.sapo(x, old, adv, jnp.ones((2, 1)), tau_pos=1.0, tau_neg=2.0)[0])
  )(logp)
  weight = np.abs(np.asarray(grad)[:, 0]) * 2  # seq_mean over 2 rows, |A| = 1
  sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  for w, tau in zip(weight, (1.0, 2.0)):
    np.testing.assert_allclose(
      w, 4 * sig(tau * (np.e - 1)) * (1 - sig(tau * (np.e - 1))) * np.e, rtol=1e-12
    )
  assert weight[1] < weight[0]


def test_gmpo_without_clipping_is_gspo(x64, batch):
  """Wide clip range: the geometric-mean ratio is GSPO's s_i, so loss and gradient coincide."""
  logp, old, adv, mask = batch(seed=25, dtype=np.float64)
  kw = {"agg": "seq_mean_token_mean"}
  g_gmpo = jax.value_and_grad(
    lambda x: losses.gmpo(x, old, adv, mask, eps_low=50.0, eps_high=50.0, **kw)[0]
  )
  g_gspo = jax.value_and_grad(
    lambda x: losses.ppo_clip(
      x, old, adv, mask, eps_low=0.99, eps_high=1e6, level="sequence", **kw
    )[0]
  )
  (v1, d1), (v2, d2) = g_gmpo(jnp.asarray(logp)), g_gspo(jnp.asarray(logp))
  np.testing.assert_allclose(v1, v2, rtol=1e-12)
  np.testing.assert_allclose(d1, d2, rtol=1e-10, atol=1e-15)


def test_gmpo_clamped_tokens_get_no_gradient(x64):
  logp = jnp.asarray([[0.5, 0.01, -0.5], [0.5, 0.01, -0.5]])
  old = jnp.zeros_like(logp)
  adv = jnp.asarray([1.0, -1.0])
  grad = jax.jit(
    jax.grad(lambda x: losses.gmpo(x, old, adv, jnp.ones_like(x), eps_low=0.4, eps_high=0.4)[0])
  )(logp)
  grad = np.asarray(grad)
  assert grad[0, 0] == 0 and grad[0, 1] != 0 and grad[0, 2] != 0  # A > 0: clamp from above only
  assert grad[1, 2] == 0 and grad[1, 1] != 0 and grad[1, 0] != 0  # A < 0: clamp from below only


@pytest.mark.parametrize("name", ["cispo", "sapo", "gmpo"])
def test_variants_masking_equals_slicing_and_jit_vmap(batch, name):
  fn, _ = CASES[name]
  logp, old, adv, mask = batch(seed=26, empty_row=False)
  mask[:, 5:] = 0.0
  mask[1] = 0.0
  keep = [0, 2, 3, 4, 5]
  vg = jax.jit(
    jax.value_and_grad(lambda lp, o, a, m: fn(lp, o, a, m, agg="seq_mean_token_mean")[0])
  )
  v, g = vg(logp, old, adv, mask)
  v_sl, g_sl = vg(logp[keep, :5], old[keep, :5], adv[keep], mask[keep, :5])
  np.testing.assert_allclose(v, v_sl, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g)[keep, :5], g_sl, rtol=1e-5, atol=1e-9)
  stacked = [np.stack([x, x[::-1]]) for x in (logp, old, adv, mask)]
  v_vmap, _ = jax.vmap(vg)(*stacked)
  np.testing.assert_allclose(v_vmap[0], v, rtol=1e-6)
  np.testing.assert_allclose(
    v_vmap[1], vg(logp[::-1], old[::-1], adv[::-1], mask[::-1])[0], rtol=1e-6
  )
