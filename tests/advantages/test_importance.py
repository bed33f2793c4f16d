"""rollout_correction, sequence_kl and F-TIS (arXiv 2605.22537) against numpy loops."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain import advantages as adv
from postrain import losses

B, T = 6, 8


def make_logps(seed=0, scale=0.5):
  rng = np.random.default_rng(seed)
  lengths = np.array([8, 5, 0, 1, 8, 3])
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
  train = rng.normal(-1.5, 0.5, (B, T))
  rollout = train + rng.normal(0.0, scale, (B, T))
  return train, rollout, mask


def np_rollout_correction(lt, lr, mask, level, mode, lo, hi, max_log_ratio=20.0):
  out = np.zeros(lt.shape)
  for i in range(lt.shape[0]):
    valid = [t for t in range(lt.shape[1]) if mask[i, t] != 0]
    total = sum(lt[i, t] - lr[i, t] for t in valid)
    for t in valid:
      if level == "token":
        log_rho = lt[i, t] - lr[i, t]
      elif level == "sequence":
        log_rho = total
      else:
        log_rho = total / max(len(valid), 1)
      rho = math.exp(min(max(log_rho, -max_log_ratio), max_log_ratio))
      inside = lo <= rho <= hi
      if mode == "truncate":
        out[i, t] = min(max(rho, lo), hi)
      elif mode == "mask":
        out[i, t] = rho if inside else 0.0
      else:
        out[i, t] = 1.0 if inside else 0.0
  return out


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("mode", ["truncate", "mask", "reject"])
def test_rollout_correction_matches_loop(prec, level, mode):
  dtype, tol = prec
  lt, lr, mask = make_logps(0)
  lo, hi = (0.0, 1.5) if mode == "truncate" else (0.6, 1.5)
  out = adv.rollout_correction(
    jnp.asarray(lt, dtype),
    jnp.asarray(lr, dtype),
    jnp.asarray(mask),
    level=level,
    mode=mode,
    lo=lo,
    hi=hi,
  )
  assert out.dtype == dtype
  expected = np_rollout_correction(lt, lr, mask, level, mode, lo, hi)
  np.testing.assert_allclose(out, expected, atol=tol, rtol=tol)
  # The data hit both sides of the bounds at token level.
  if level == "token" and mode == "reject":
    assert 0 < expected[mask > 0].sum() < (mask > 0).sum()


def test_rollout_correction_default_bounds():
  lt, lr, mask = make_logps(1)
  args = (jnp.asarray(lt, jnp.float32), jnp.asarray(lr, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(
    adv.rollout_correction(*args),
    np_rollout_correction(lt, lr, mask, "token", "truncate", 0.0, 2.0),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    adv.rollout_correction(*args, mode="mask", hi=1.8),
    np_rollout_correction(lt, lr, mask, "token", "mask", 1 / 1.8, 1.8),
    atol=1e-5,
  )


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
def test_same_policy_gives_the_mask(level):
  lt, _, mask = make_logps(2)
  for mode in ["truncate", "mask", "reject"]:
    out = adv.rollout_correction(
      jnp.asarray(lt, jnp.float32),
      jnp.asarray(lt, jnp.float32),
      jnp.asarray(mask),
      level=level,
      mode=mode,
    )
    np.testing.assert_array_equal(out, mask.astype(np.float32))


def test_weights_have_no_gradient():
  lt, lr, mask = make_logps(3)
  for level in ["token", "sequence"]:

    def fn(a, b, lv=level):
      return jnp.sum(adv.rollout_correction(a, b, jnp.asarray(mask), level=lv) * jnp.arange(T))

    ga, gb = jax.grad(fn, argnums=(0, 1))(
      jnp.asarray(lt, jnp.float32), jnp.asarray(lr, jnp.float32)
    )
    np.testing.assert_array_equal(ga, 0.0)
    np.testing.assert_array_equal(gb, 0.0)


def test_padding_equals_slicing():
  lt, lr, mask = make_logps(4)
  pad = np.full((B, 3), 1e30)  # garbage on padding must never leak into a sum
  lt_p, lr_p = np.concatenate([lt, pad], 1), np.concatenate([lr, -pad], 1)
  mask_p = np.concatenate([mask, np.zeros((B, 3))], 1)
  for level in ["token", "sequence", "geometric"]:
    base = adv.rollout_correction(
      jnp.asarray(lt, jnp.float32), jnp.asarray(lr, jnp.float32), jnp.asarray(mask), level=level
    )
    padded = adv.rollout_correction(
      jnp.asarray(lt_p, jnp.float32),
      jnp.asarray(lr_p, jnp.float32),
      jnp.asarray(mask_p),
      level=level,
    )
    np.testing.assert_allclose(padded[:, :T], base, rtol=1e-6)
    np.testing.assert_array_equal(padded[:, T:], 0.0)
    kl = adv.sequence_kl(
      jnp.asarray(lt, jnp.float32), jnp.asarray(lr, jnp.float32), jnp.asarray(mask)
    )
    kl_p = adv.sequence_kl(
      jnp.asarray(lt_p, jnp.float32), jnp.asarray(lr_p, jnp.float32), jnp.asarray(mask_p)
    )
    np.testing.assert_allclose(kl_p, kl, rtol=1e-6)


def np_sequence_kl(lt, lg, mask, estimator, reduce):
  out = np.zeros(lt.shape[0])
  for i in range(lt.shape[0]):
    vals = []
    for t in range(lt.shape[1]):
      if mask[i, t]:
        d = lg[i, t] - lt[i, t]
        vals.append(
          {"k1": -d, "k2": d * d / 2, "k3": math.exp(d) - d - 1, "k3_gen": math.exp(-d) + d - 1}[
            estimator
          ]
        )
    out[i] = sum(vals) / (max(len(vals), 1) if reduce == "mean" else 1)
  return out


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "k3_gen"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_sequence_kl_matches_loop(prec, estimator, reduce):
  dtype, tol = prec
  lt, lg, mask = make_logps(5)
  out = adv.sequence_kl(
    jnp.asarray(lt, dtype),
    jnp.asarray(lg, dtype),
    jnp.asarray(mask),
    estimator=estimator,
    reduce=reduce,
  )
  np.testing.assert_allclose(
    out, np_sequence_kl(lt, lg, mask, estimator, reduce), atol=tol, rtol=tol
  )


def np_ftis(lt, lg, a, mask, cap, threshold, level="token"):
  weights = np_rollout_correction(lt, lg, mask, level, "truncate", 0.0, cap)
  kl = np_sequence_kl(lt, lg, mask, "k3", "sum")
  filtered = (a < 0) & (kl >= threshold)
  return weights, np.where(filtered, 0.0, a), filtered, kl


def test_ftis_matches_loop(prec):
  dtype, tol = prec
  lt, lg, mask = make_logps(6, scale=1.0)
  a = np.array([-1.0, 0.5, -0.3, -2.0, 1.5, -0.7])
  threshold = 3.0
  res = adv.ftis_correction(
    jnp.asarray(lt, dtype),
    jnp.asarray(lg, dtype),
    jnp.asarray(a, dtype),
    jnp.asarray(mask),
    cap=2.0,
    kl_threshold=threshold,
  )
  w, a_f, filt, kl = np_ftis(lt, lg, a, mask, 2.0, threshold)
  assert 0 < filt.sum() < (a < 0).sum()  # the data exercise both branches of the filter
  np.testing.assert_allclose(res.is_weights, w, atol=tol, rtol=tol)
  np.testing.assert_allclose(res.advantages, a_f, atol=tol, rtol=tol)
  np.testing.assert_array_equal(res.filtered, filt)
  np.testing.assert_allclose(res.kl, kl, atol=tol, rtol=tol)
  np.testing.assert_allclose(res.metrics["filtered_count"], filt.sum())
  np.testing.assert_allclose(res.metrics["filtered_frac"], filt.mean(), rtol=1e-6)
  valid = mask > 0
  np.testing.assert_allclose(res.metrics["is_weight_mean"], w[valid].mean(), rtol=1e-5)
  np.testing.assert_allclose(
    res.metrics["capped_frac"], np.mean(np.exp(lt - lg)[valid] > 2.0), rtol=1e-6
  )
  assert np.all(np.asarray(res.is_weights) <= 2.0)
  # Sequence-level cap and the ablations.
  res_seq = adv.ftis_correction(
    jnp.asarray(lt, dtype),
    jnp.asarray(lg, dtype),
    jnp.asarray(a, dtype),
    jnp.asarray(mask),
    level="sequence",
  )
  np.testing.assert_allclose(
    res_seq.is_weights, np_ftis(lt, lg, a, mask, 2.0, 50.0, "sequence")[0], atol=tol, rtol=tol
  )
  noisf = adv.ftis_correction(
    jnp.asarray(lt, dtype),
    jnp.asarray(lg, dtype),
    jnp.asarray(a, dtype),
    jnp.asarray(mask),
    use_is=False,
    use_filter=False,
    kl_threshold=threshold,
  )
  np.testing.assert_array_equal(noisf.is_weights, mask)
  np.testing.assert_array_equal(noisf.advantages, a.astype(dtype))
  assert not np.any(noisf.filtered)


def test_ftis_token_advantages_filter_only_negative_entries():
  lt, lg, mask = make_logps(7, scale=2.0)
  a_tok = np.random.default_rng(8).normal(size=(B, T)) * mask
  res = adv.ftis_correction(
    jnp.asarray(lt, jnp.float32),
    jnp.asarray(lg, jnp.float32),
    jnp.asarray(a_tok, jnp.float32),
    jnp.asarray(mask),
    kl_threshold=2.0,
  )
  kl = np_sequence_kl(lt, lg, mask, "k3", "sum")
  far = kl >= 2.0
  assert far.any() and (~far & (mask.sum(1) > 0)).any()
  expected = np.where(far[:, None] & (a_tok < 0), 0.0, a_tok)
  np.testing.assert_allclose(res.advantages, expected, atol=1e-6)
  np.testing.assert_array_equal(res.filtered, far & ((a_tok < 0) & (mask > 0)).any(1))


def _policy_loss(logp, old_logp, a, mask, is_weights=None):
  return losses.ppo_clip(
    logp,
    old_logp,
    a,
    mask,
    eps_low=0.2,
    eps_high=0.2,
    agg="seq_mean_token_mean",
    is_weights=is_weights,
  )[0]


def test_ftis_with_generator_equal_to_learner_is_plain_grpo():
  lt, _, mask = make_logps(9)
  rewards = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
  a = adv.group_normalized(jnp.asarray(rewards, jnp.float32), group_size=3)
  logp = jnp.asarray(lt, jnp.float32)
  m = jnp.asarray(mask)
  res = adv.ftis_correction(logp, logp, a, m)
  np.testing.assert_array_equal(res.is_weights, mask)
  np.testing.assert_array_equal(res.advantages, a)
  assert not np.any(res.filtered) and float(res.metrics["kl_mean"]) == 0.0

  def ftis_loss(lp):  # R = π_θ / sg[π_θ] (one update per batch)
    r = adv.ftis_correction(lp, lp, a, m)
    return _policy_loss(lp, jax.lax.stop_gradient(lp), r.advantages, m, r.is_weights)

  def grpo_loss(lp):
    return _policy_loss(lp, jax.lax.stop_gradient(lp), a, m)

  np.testing.assert_allclose(ftis_loss(logp), grpo_loss(logp), rtol=1e-6, atol=1e-7)
  g_ftis, g_grpo = jax.grad(ftis_loss)(logp), jax.grad(grpo_loss)(logp)
  np.testing.assert_allclose(g_ftis, g_grpo, rtol=1e-6, atol=1e-7)
  # Both equal the numpy GRPO gradient: -A_i / (L_i · #non-empty rows) on valid tokens.
  lengths = mask.sum(1)
  rows = np.count_nonzero(lengths)
  expected = -np.asarray(a)[:, None] * mask / np.maximum(lengths, 1)[:, None] / rows
  np.testing.assert_allclose(g_grpo, expected, rtol=1e-5, atol=1e-7)


def test_ftis_gradient_matches_the_paper_estimator():
  """Per-token gradient ρ̄_{i,t} Â_i ∇log π_θ / (|a_i| · N): the capped weight is a constant."""
  lt, lg, mask = make_logps(10, scale=1.0)
  a = jnp.asarray([-1.0, 0.5, -0.3, -2.0, 1.5, -0.7], jnp.float32)
  m = jnp.asarray(mask)
  gen = jnp.asarray(lg, jnp.float32)

  def loss(lp):
    r = adv.ftis_correction(lp, gen, a, m, kl_threshold=3.0)
    return _policy_loss(lp, jax.lax.stop_gradient(lp), r.advantages, m, r.is_weights)

  grad = np.asarray(jax.grad(loss)(jnp.asarray(lt, jnp.float32)))
  w, a_f, filt, _ = np_ftis(lt, lg, np.asarray(a), mask, 2.0, 3.0)
  lengths = mask.sum(1)
  expected = -w * a_f[:, None] / np.maximum(lengths, 1)[:, None] / np.count_nonzero(lengths)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  assert np.all(grad[filt] == 0.0)
  # No gradient reaches the generator's log-probs.
  g_gen = jax.grad(
    lambda g: jnp.sum(adv.ftis_correction(jnp.asarray(lt, jnp.float32), g, a, m).is_weights)
  )(gen)
  np.testing.assert_array_equal(g_gen, 0.0)


def test_positive_advantages_are_never_filtered():
  lt, lg, mask = make_logps(11, scale=5.0)  # far from the learner
  a = jnp.asarray([1.0, 0.5, 2.0, 0.1, 1.5, 0.7], jnp.float32)
  res = adv.ftis_correction(
    jnp.asarray(lt, jnp.float32),
    jnp.asarray(lg, jnp.float32),
    a,
    jnp.asarray(mask),
    kl_threshold=0.0,
  )
  np.testing.assert_array_equal(res.advantages, a)
  assert not np.any(res.filtered)


def test_jit_equals_eager():
  lt, lg, mask = make_logps(12, scale=1.0)
  args = (jnp.asarray(lt, jnp.float32), jnp.asarray(lg, jnp.float32))
  a = jnp.asarray([-1.0, 0.5, -0.3, -2.0, 1.5, -0.7], jnp.float32)
  fn = functools.partial(adv.ftis_correction, kl_threshold=3.0)
  eager, jitted = fn(*args, a, jnp.asarray(mask)), jax.jit(fn)(*args, a, jnp.asarray(mask))
  for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(x, y, rtol=1e-6)
  rc = functools.partial(adv.rollout_correction, level="sequence", mode="mask")
  np.testing.assert_allclose(
    jax.jit(rc)(*args, jnp.asarray(mask)), rc(*args, jnp.asarray(mask)), rtol=1e-6
  )
