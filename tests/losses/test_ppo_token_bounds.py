"""Token-level ppo_clip at unusual clip bounds (its clipping runs on the log-ratio, with per-row
bounds log(1 - eps_low), log(1 + eps_high), log(c) capped at the exp clamp): value against the
numpy loops of `losses_np_ref`, gradient against the analytic GRPO weights."""

import jax
import jax.numpy as jnp
import losses_np_ref as ref
import numpy as np
import pytest

from postrain import losses

# (eps_low, eps_high, dual_clip): a lower bound of 0 (log = -inf), bounds beyond exp(20) (capped
# by the log-ratio clamp), a zero-width clip range, and ordinary ones with and without dual clip.
BOUNDS = [
  (0.2, 0.28, None),
  (0.2, 0.28, 3.0),
  (1.0, 0.28, None),
  (0.2, 1e9, None),
  (0.2, 0.28, 1e10),
  (1.0, 1e9, 1e10),
  (0.0, 0.0, None),
]
AGGS = ("token_mean", "seq_mean_token_mean")


def _value_and_grad(logp, old, adv, mask, eps_low, eps_high, dual, agg):
  def f(lp):
    return losses.ppo_clip(
      lp, old, adv, mask, eps_low=eps_low, eps_high=eps_high, dual_clip=dual, agg=agg
    )[0]

  return jax.value_and_grad(f)(logp)


def _want_grad(logp, old, adv, mask, eps_low, eps_high, dual, agg):
  """coef·(−A)·ρ on tokens whose surrogate is not clipped, from ρ itself (not its log)."""
  rho = np.exp(logp - old)
  a = adv[:, None]
  up = (a > 0) & (rho < 1 + eps_high)
  down = (a < 0) & (rho > 1 - eps_low)
  if dual is not None:
    down &= rho < dual
  return ref.agg_coef(mask, agg) * -a * rho * (up | down)


@pytest.mark.parametrize("eps_low,eps_high,dual", BOUNDS)
def test_token_level_bounds_float64(x64, batch, eps_low, eps_high, dual):
  # spread 2: log-ratios up to ~±6, so ratios land on both sides of every finite bound.
  logp, old, adv, mask = batch(seed=7, dtype=np.float64, spread=2.0)
  for agg in AGGS:
    loss, grad = _value_and_grad(
      *map(jnp.asarray, (logp, old, adv, mask)), eps_low, eps_high, dual, agg
    )
    want, _ = ref.ppo_clip(
      logp,
      old,
      adv,
      mask,
      eps_low=eps_low,
      eps_high=eps_high,
      level="token",
      agg=agg,
      dual_clip=dual,
    )
    np.testing.assert_allclose(loss, want, rtol=1e-10, atol=1e-12, err_msg=agg)
    want_grad = _want_grad(logp, old, adv, mask, eps_low, eps_high, dual, agg)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14, err_msg=agg)


@pytest.mark.parametrize("eps_low,eps_high,dual", [(0.2, 0.28, 3.0), (1.0, 1e9, 1e10)])
def test_token_level_bounds_float32(batch, eps_low, eps_high, dual):
  logp, old, adv, mask = batch(seed=8, spread=2.0)
  loss, grad = _value_and_grad(logp, old, adv, mask, eps_low, eps_high, dual, "token_mean")
  assert loss.dtype == jnp.float32
  want, _ = ref.ppo_clip(
    logp,
    old,
    adv,
    mask,
    eps_low=eps_low,
    eps_high=eps_high,
    level="token",
    agg="token_mean",
    dual_clip=dual,
  )
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
  lp64, old64 = np.float64(logp), np.float64(old)
  want_grad = _want_grad(lp64, old64, np.float64(adv), mask, eps_low, eps_high, dual, "token_mean")
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
  "sign,eps_high,dual", [(-1.0, 0.28, None), (-1.0, 0.28, 1e10), (1.0, 1e9, None)]
)
def test_clamped_log_ratio_gets_no_gradient(x64, sign, eps_high, dual):
  """log ρ > 20 (the clamp before exp, applied before any clip bound, even one beyond e^20):
  value A·e^20, gradient 0, both finite."""
  logp, old = jnp.asarray([[0.0, 0.0]]), jnp.asarray([[-25.0, -1.0]])
  adv, mask = jnp.asarray([sign]), jnp.ones((1, 2))
  loss, grad = _value_and_grad(logp, old, adv, mask, 0.2, eps_high, dual, "token_mean")
  np.testing.assert_allclose(loss, -sign * (np.exp(20.0) + np.exp(1.0)) / 2, rtol=1e-12)
  np.testing.assert_allclose(grad, [[0.0, -sign * np.exp(1.0) / 2]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("per_token_adv", [False, True])
def test_aux_counts_exact_ties_half(x64, per_token_adv):
  """log ρ exactly on a clip bound counts ½ (eps 0: ρ = 1 is on both bounds), A = 0 never."""
  logp = jnp.zeros((3, 3))
  adv = jnp.asarray([1.0, -1.0, 0.0])
  if per_token_adv:
    adv = jnp.broadcast_to(adv[:, None], (3, 3))
  _, aux = losses.ppo_clip(logp, logp, adv, jnp.ones((3, 3)), eps_low=0.0, eps_high=0.0)
  np.testing.assert_allclose(aux["clip_frac_high"], 1.5 / 9, rtol=1e-12)
  np.testing.assert_allclose(aux["clip_frac_low"], 1.5 / 9, rtol=1e-12)
  # dual clip c = e: log ρ = 1 is the tie (½), log ρ = 1.5 is above it, A > 0 never counts.
  logp, old = jnp.asarray([[0.0, 0.5, 0.5]]), jnp.asarray([[-1.0, -1.0, -1.0]])
  adv, mask = jnp.asarray([-1.0]), jnp.ones((1, 3))
  kw = {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": np.e}
  _, aux = losses.ppo_clip(logp, old, adv, mask, **kw)
  np.testing.assert_allclose(aux["dual_clip_frac"], 2.5 / 3, rtol=1e-12)
  _, aux = losses.ppo_clip(logp, old, -adv, mask, **kw)
  assert aux["dual_clip_frac"] == 0.0 and aux["clip_frac_high"] == 1.0
