"""Masked positions may hold NaN or ±inf (padding of real pipelines): every policy loss, the KL
penalty and the aggregation give the same value, aux and gradient as with clean (zero) padding,
and the gradient there is exactly 0 (issue 15 item 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain import losses


def _poison(x, mask, value, rng):
  """x with its masked entries replaced by `value` (or a NaN/±inf mix for "mix")."""
  x = np.array(x)
  if value == "mix":
    pool = np.array([np.nan, np.inf, -np.inf], x.dtype)
    fill = pool[rng.integers(0, 3, size=x.shape)]
  else:
    fill = np.full(x.shape, value, x.dtype)
  return np.where(mask != 0, x, fill)


def _ppo(level, agg):
  def f(lp, old, adv, mask, w=None):
    return losses.ppo_clip(
      lp,
      old,
      adv,
      mask,
      eps_low=0.2,
      eps_high=0.28,
      level=level,
      agg=agg,
      max_len=9,
      is_weights=w,
      dual_clip=3.0,
    )

  return f


_CASES = {
  **{
    f"ppo_{level}_{agg}": _ppo(level, agg)
    for level in ("token", "sequence", "sequence_token")
    for agg in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
  },
  "cispo": lambda lp, old, adv, mask, w=None: losses.cispo(
    lp, old, adv, mask, eps_high=0.28, eps_low=0.2, is_weights=w
  ),
  "sapo": lambda lp, old, adv, mask, w=None: losses.sapo(lp, old, adv, mask, is_weights=w),
  "gmpo": lambda lp, old, adv, mask, w=None: losses.gmpo(lp, old, adv, mask),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, "mix"], ids=str)
@pytest.mark.parametrize("name", sorted(_CASES))
@pytest.mark.parametrize("per_token_adv", [False, True], ids=["adv_seq", "adv_tok"])
def test_policy_losses_ignore_nonfinite_masked_positions(batch, name, value, per_token_adv):
  fn = _CASES[name]
  logp, old, adv, mask = batch(seed=3)
  rng = np.random.default_rng(0)
  if per_token_adv:
    adv = np.broadcast_to(adv[:, None], logp.shape) + 0.1 * rng.normal(size=logp.shape)
    adv = adv.astype(np.float32)
  w = (0.5 + rng.random(logp.shape)).astype(np.float32)
  clean = [np.where(mask != 0, x, 0).astype(np.float32) for x in (logp, old)]
  clean_adv = np.where(mask != 0, adv, 0).astype(np.float32) if per_token_adv else adv
  dirty = [_poison(x, mask, value, rng) for x in (logp, old)]
  dirty_adv = _poison(adv, mask, value, rng) if per_token_adv else adv.copy()
  if not per_token_adv:
    dirty_adv[-1] = np.nan  # the all-masked row's per-sequence advantage
  dirty_w = _poison(w, mask, value, rng)

  def value_and_grad(lp, o, a, wt):
    return jax.value_and_grad(lambda x: fn(x, o, a, mask, wt), has_aux=True)(lp)

  (ref_loss, ref_aux), ref_grad = value_and_grad(clean[0], clean[1], clean_adv, w)
  (loss, aux), grad = value_and_grad(dirty[0], dirty[1], dirty_adv, dirty_w)
  assert np.isfinite(ref_loss)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
  for key in ref_aux:
    np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-6, atol=1e-7, err_msg=key)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(grad)[mask == 0] == 0)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "k3+"])
def test_kl_and_aggregate_ignore_nonfinite_masked_positions(batch, kind, value):
  logp, ref, _, mask = batch(seed=4)
  dirty_lp, dirty_ref = (np.where(mask != 0, x, value).astype(np.float32) for x in (logp, ref))

  def f(lp, r):
    return losses.aggregate(losses.kl_penalty(lp, r, mask, kind=kind), mask, agg="token_mean")

  ref_val, ref_grad = jax.value_and_grad(f)(logp, ref)
  val, grad = jax.value_and_grad(f)(dirty_lp, dirty_ref)
  np.testing.assert_allclose(val, ref_val, rtol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-8)
  assert np.all(np.asarray(grad)[mask == 0] == 0)


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_conspo_ignores_nonfinite_masked_positions(batch, value):
  logp, _, _, mask = batch(seed=5, B=8)
  rewards = jnp.asarray(np.array([1, 0, 1, 0, 0, 1, 1, 0], np.float32))
  dirty = np.where(mask != 0, logp, value).astype(np.float32)

  def f(lp):
    return losses.conspo(lp, mask, rewards, group_size=4, tau=10.0, margin=0.01)[0]

  ref_val, ref_grad = jax.value_and_grad(f)(logp)
  val, grad = jax.value_and_grad(f)(dirty)
  np.testing.assert_allclose(val, ref_val, rtol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-8)
