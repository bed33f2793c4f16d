"""ConSPO (arXiv 2605.12969) against the note's Eq. 13, its lemmas, and the margin schedule."""

import math

import jax
import jax.numpy as jnp
import losses_np_ref as ref
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import losses

G = 4


def _group_batch(seed=0, dtype=np.float64, P=3, T=6):
  """P groups of G with mixed rewards (group 2 all-positive: no contrast) and ragged masks."""
  rng = np.random.default_rng(seed)
  logp = (-np.abs(rng.normal(size=(P * G, T))) - 0.1).astype(dtype)
  lengths = rng.integers(1, T + 1, size=P * G)
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(dtype)
  rewards = np.array([1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1][: P * G], dtype)
  return logp, mask, rewards


conspo = jax.jit(losses.conspo, static_argnames=("group_size", "tau"))


@pytest.mark.parametrize("tau", [10.0, 1.0, 0.3])
def test_matches_eq13_float64(x64, tau):
  logp, mask, rewards = _group_batch()
  for margin in (0.0, 0.01, 0.2):
    loss, aux = conspo(
      jnp.asarray(logp),
      jnp.asarray(mask),
      jnp.asarray(rewards),
      group_size=G,
      tau=tau,
      margin=margin,
    )
    want, frac, scores = ref.conspo(logp, mask, rewards, group_size=G, tau=tau, margin=margin)
    np.testing.assert_allclose(loss, want, rtol=1e-10)
    np.testing.assert_allclose(aux["contrast_frac"], frac)
  scores = np.asarray(scores)
  np.testing.assert_allclose(aux["pos_score"], scores[rewards > 0.5].mean(), rtol=1e-12)
  np.testing.assert_allclose(aux["neg_score"], scores[rewards <= 0.5].mean(), rtol=1e-12)
  np.testing.assert_allclose(losses.sequence_scores(logp, mask), scores, rtol=1e-12)


def test_matches_eq13_float32():
  logp, mask, rewards = _group_batch(1, np.float32)
  loss, _ = conspo(logp, mask, rewards, group_size=G, tau=10.0, margin=0.01)
  assert loss.dtype == jnp.float32
  want, _, _ = ref.conspo(logp, mask, rewards, group_size=G, tau=10.0, margin=0.01)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_one_positive_one_negative_is_softplus(x64):
  """m = 0, τ = 1: loss = softplus(s_neg − s_pos); any τ: τ·softplus((s_neg − s_pos)/τ)."""
  logp = jnp.asarray([[-0.5, -1.0, -1.5], [-0.2, -2.0, -0.1]])
  mask = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  s_pos, s_neg = -0.75, -2.3 / 3
  for tau in (1.0, 10.0):
    loss, _ = conspo(logp, mask, jnp.asarray([1.0, 0.0]), group_size=2, tau=tau, margin=0.0)
    np.testing.assert_allclose(loss, tau * np.logaddexp(0.0, (s_neg - s_pos) / tau), rtol=1e-13)


def test_shift_invariance_within_a_group(x64):
  """Adding c to every token log-prob of one group adds c to its scores: loss unchanged."""
  logp, mask, rewards = _group_batch(2)
  shifted = logp.copy()
  shifted[G : 2 * G] += 0.7
  shifted[:G] -= 1.3
  a = conspo(jnp.asarray(logp), mask, rewards, group_size=G, tau=10.0, margin=0.01)[0]
  b = conspo(jnp.asarray(shifted), mask, rewards, group_size=G, tau=10.0, margin=0.01)[0]
  np.testing.assert_allclose(a, b, rtol=1e-12)


def test_gradients_finite_differences(x64):
  logp, mask, rewards = _group_batch(3)
  f = jax.jit(lambda lp: losses.conspo(lp, mask, rewards, group_size=G, tau=0.5, margin=0.05)[0])
  check_grads(f, (jnp.asarray(logp),), order=1, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_lemma2_score_gradients(x64):
  """∂J/∂s_i⁺ = (1/N⁺)(1 − P_i⁺), ∂J/∂s_j⁻ = −(1/N⁺) Σ_i P_ij⁻; they sum to 0 per group."""
  rng = np.random.default_rng(4)
  scores = rng.normal(size=6)
  rewards = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
  tau = 0.7
  # Length-1 rows: the score is the log-prob itself, so ∂loss/∂logp = −∂J/∂s (one group).
  grad = jax.jit(
    jax.grad(
      lambda s: losses.conspo(
        s[:, None], jnp.ones((6, 1)), rewards, group_size=6, tau=tau, margin=0.0
      )[0]
    )
  )(jnp.asarray(scores))
  pos, neg = np.where(rewards > 0.5)[0], np.where(rewards <= 0.5)[0]
  want = np.zeros(6)
  for i in pos:
    logits = np.concatenate([[scores[i]], scores[neg]]) / tau
    p = np.exp(logits - logits.max())
    p /= p.sum()
    want[i] += (1 - p[0]) / len(pos)
    want[neg] -= p[1:] / len(pos)
  np.testing.assert_allclose(-np.asarray(grad), want, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(np.sum(grad), 0.0, atol=1e-14)
  # Ratio of two negatives' gradients: exp((s_j − s_k)/τ).
  j, k = neg[:2]
  np.testing.assert_allclose(grad[j] / grad[k], np.exp((scores[j] - scores[k]) / tau), rtol=1e-10)


def test_no_contrast_gives_exact_zero_loss_and_grads():
  logp, mask, _ = _group_batch(5, np.float32)
  vg = jax.jit(
    jax.value_and_grad(
      lambda lp, r: losses.conspo(lp, mask, r, group_size=G, tau=10.0, margin=0.01), has_aux=True
    )
  )
  for rewards in (np.ones(12, np.float32), np.zeros(12, np.float32)):
    (loss, aux), grad = vg(jnp.asarray(logp), rewards)
    assert loss == 0.0 and aux["contrast_frac"] == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_groups_without_contrast_contribute_nothing(x64):
  """Dropping the all-positive group (slicing it away) leaves the loss and gradients unchanged."""
  logp, mask, rewards = _group_batch(6)
  f = lambda lp, m, r: losses.conspo(lp, m, r, group_size=G, tau=10.0, margin=0.01)[0]  # noqa: E731
  vg = jax.jit(jax.value_and_grad(f))
  v, g = vg(jnp.asarray(logp), mask, rewards)
  v_sl, g_sl = vg(jnp.asarray(logp[: 2 * G]), mask[: 2 * G], rewards[: 2 * G])
  np.testing.assert_allclose(v, v_sl, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g)[: 2 * G], g_sl, rtol=1e-12)
  np.testing.assert_array_equal(np.asarray(g)[2 * G :], 0.0)


def test_masking_equals_slicing_and_padding(x64):
  logp, mask, rewards = _group_batch(7)
  f = jax.jit(lambda lp, m: losses.conspo(lp, m, rewards, group_size=G, tau=10.0, margin=0.01)[0])
  mask[:, 4:] = 0.0
  mask[:, 0] = 1.0
  v, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(logp), mask)
  v_sl, g_sl = jax.jit(jax.value_and_grad(f))(jnp.asarray(logp[:, :4]), mask[:, :4])
  np.testing.assert_allclose(v, v_sl, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(g)[:, :4], g_sl, rtol=1e-12)
  garbage = logp.copy()
  garbage[:, 4:] = 1e4
  np.testing.assert_allclose(f(jnp.asarray(garbage), mask), v, rtol=1e-12)


def test_margin_monotone_traced_and_threshold(x64):
  logp, mask, rewards = _group_batch(8)
  values = [
    float(conspo(logp, mask, rewards, group_size=G, tau=10.0, margin=m)[0])
    for m in (0.0, 0.01, 0.1)
  ]
  assert values[0] < values[1] < values[2]
  step_fn = jax.jit(
    lambda lp, step: losses.conspo(
      lp, mask, rewards, group_size=G, margin=losses.margin_schedule(step, 100, max_margin=0.1)
    )[0]
  )
  np.testing.assert_allclose(step_fn(logp, 30), values[2], rtol=1e-7)  # f32 margin
  np.testing.assert_allclose(step_fn(logp, 0), values[0], rtol=1e-12)
  # pos_threshold: rewards 0.7 are positives at 0.5, negatives at 0.8.
  r = np.where(rewards > 0.5, 0.7, 0.0)
  a = conspo(logp, mask, r, group_size=G, pos_threshold=0.5)[0]
  b = conspo(logp, mask, r, group_size=G, pos_threshold=0.8)[0]
  np.testing.assert_allclose(a, values[1], rtol=1e-12)
  assert b == 0.0


def test_empty_rows_are_neither_positive_nor_negative(x64):
  logp, mask, rewards = _group_batch(9)
  mask[1] = 0.0  # a negative of group 0 becomes padding
  want, _, _ = ref.conspo(logp, mask, rewards, group_size=G, tau=10.0, margin=0.01)
  np.testing.assert_allclose(conspo(logp, mask, rewards, group_size=G)[0], want, rtol=1e-12)


def test_jit_vmap_and_bf16():
  logp, mask, rewards = _group_batch(10, np.float32)
  f = jax.jit(lambda lp, m, r: losses.conspo(lp, m, r, group_size=G, tau=10.0, margin=0.01))
  stacked = [np.stack([x, x[::-1]]) for x in (logp, mask, rewards)]
  v_vmap, _ = jax.jit(jax.vmap(f))(*stacked)
  np.testing.assert_allclose(v_vmap[0], f(logp, mask, rewards)[0], rtol=1e-6)
  np.testing.assert_allclose(v_vmap[1], f(logp[::-1], mask[::-1], rewards[::-1])[0], rtol=1e-6)
  lp16 = jnp.asarray(logp, jnp.bfloat16)
  loss, grad = jax.jit(jax.value_and_grad(lambda lp: f(lp, mask, rewards)[0]))(lp16)
  assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(loss, f(np.asarray(lp16, np.float32), mask, rewards)[0], rtol=1e-6)


def test_margin_schedule():
  schedule = jax.jit(
    losses.margin_schedule, static_argnames=("total_steps", "max_margin", "warmup_frac", "kind")
  )
  m = lambda s, **k: float(schedule(s, 1000, **k))  # noqa: E731
  assert m(0) == 0.0
  np.testing.assert_allclose(m(300), 0.01, rtol=1e-6)
  np.testing.assert_allclose(m(1000), 0.01, rtol=1e-6)
  np.testing.assert_allclose(m(150), 0.005, rtol=1e-6)  # half-way up the half-cosine
  np.testing.assert_allclose(m(100), 0.005 * (1 - math.cos(math.pi / 3)), rtol=1e-5)
  np.testing.assert_allclose(m(100, kind="linear"), 0.01 / 3, rtol=1e-5)
  np.testing.assert_allclose(m(50, max_margin=0.2, warmup_frac=0.1), 0.1, rtol=1e-5)
  steps = jnp.arange(0, 1001, 25)
  traced = jax.jit(jax.vmap(lambda s: losses.margin_schedule(s, 1000)))(steps)
  assert np.all(np.diff(np.asarray(traced)) >= 0)
  np.testing.assert_allclose(traced, [m(int(s)) for s in steps], rtol=1e-6, atol=1e-9)
