"""Token selection against float64 numpy references written from the definitions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from postrain.sampling import select_tokens


def reference_q(logits, *, temperature, top_k=None, top_p=None):
  """q over the vocabulary (float64): temperature, then top-k, then the sorted top-p nucleus."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros(z.shape, bool)
  keep[order[: (top_k or z.size)]] = True
  p = np.where(keep, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  if top_p is not None:
    mass_above = np.cumsum(p[order]) - p[order]  # mass ranked strictly above each sorted token
    keep[order[mass_above >= top_p]] = False
    p = np.where(keep, p, 0.0)
    p /= p.sum()
  return p


@functools.cache
def _jitted(greedy, top_k, use_top_p, unit):
  def f(logits, u, temperature, top_p):
    return select_tokens(
      logits,
      u,
      temperature=1.0 if unit else temperature,
      greedy=greedy,
      top_k=top_k,
      top_p=top_p if use_top_p else None,
    )

  return jax.jit(f)


def select(logits, u, *, temperature=1.0, greedy=False, top_k=None, top_p=None):
  f = _jitted(greedy, top_k, top_p is not None, temperature == 1.0)
  return f(
    jnp.asarray(logits, jnp.float32),
    jnp.asarray(u, jnp.float32),
    jnp.float32(temperature),
    jnp.float32(top_p or 1.0),
  )


LOGITS_10 = np.array([1.3, -0.2, 2.1, 0.4, -1.5, 0.9, 2.0, -0.7, 0.1, 1.1], np.float32)

CASES = [
  dict(temperature=1.0),
  dict(temperature=0.5),
  dict(temperature=2.0),
  dict(temperature=1.0, top_k=3),
  dict(temperature=1.0, top_p=0.6),
  dict(temperature=0.7, top_p=0.9),
  dict(temperature=2.0, top_k=4, top_p=0.5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_distribution_chi_square(case):
  n = 40_000
  # Uniforms from numpy (not jax.random): the test checks the mapping u -> token.
  u = np.random.default_rng(0).random(n).astype(np.float32)
  logits = np.broadcast_to(LOGITS_10, (n, 10))
  sel = select(logits, u, **case)
  q = reference_q(LOGITS_10, **case)
  tokens = np.asarray(sel.tokens)
  counts = np.bincount(tokens, minlength=10)
  assert np.all(counts[q == 0] == 0), "a token outside the top-k / top-p set was emitted"
  support = q > 0
  _, pvalue = stats.chisquare(counts[support], n * q[support])
  assert pvalue > 1e-3, (counts, n * q)
  # Log-probabilities: of the distribution sampled from, and of the raw model.
  np.testing.assert_allclose(sel.sample_logp, np.log(q[tokens]), atol=1e-5)
  raw = LOGITS_10.astype(np.float64) - np.log(np.exp(LOGITS_10.astype(np.float64)).sum())
  np.testing.assert_allclose(sel.model_logp, raw[tokens], atol=1e-5)


def test_reference_nucleus_limits():
  # The reference itself: top_p tiny keeps only the argmax; top_k=1 as well.
  for q in (
    reference_q(LOGITS_10, temperature=1.0, top_p=1e-6),
    reference_q(LOGITS_10, temperature=1.0, top_k=1),
  ):
    assert q[2] == 1.0 and q.sum() == 1.0


def test_greedy_is_first_argmax_and_point_mass():
  logits = np.array([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 5.0, 2.0], [-2.0, -3.0, -1.0, -9.0]])
  sel = select(logits, np.full((3,), 0.5), temperature=0.0, greedy=True)
  np.testing.assert_array_equal(sel.tokens, [1, 0, 2])
  np.testing.assert_array_equal(sel.sample_logp, np.zeros(3))
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(sel.model_logp, logits[np.arange(3), [1, 0, 2]] - lse, atol=1e-6)


@pytest.mark.parametrize("vocab", [1000, 4096])
def test_inverse_cdf_matches_searchsorted(vocab):
  # Deterministic check of the two-level inverse CDF (V not a multiple of the block in one case):
  # token = first j with cdf[j] > u, on a grid of u away from the cdf steps.
  rng = np.random.default_rng(1)
  logits = rng.normal(0.0, 2.0, vocab).astype(np.float32)
  p = np.exp(logits.astype(np.float64) - logits.max())
  cdf = np.cumsum(p / p.sum())
  u = rng.random(2000)
  near_step = np.min(np.abs(u[:, None] - cdf[None, :]), axis=1) < 1e-5
  u = u[~near_step].astype(np.float32)
  sel = select(np.broadcast_to(logits, (u.size, vocab)), u)
  np.testing.assert_array_equal(sel.tokens, np.searchsorted(cdf, u, side="right"))


def test_extreme_uniforms_stay_on_the_support():
  # u = 0 picks the first token of positive mass, u -> 1 the last one; with top_k the candidates
  # are sorted, so these are the largest and the k-th largest logit.
  logits = np.broadcast_to(LOGITS_10, (2, 10))
  u = np.array([0.0, np.nextafter(np.float32(1.0), np.float32(0.0))], np.float32)
  sel = select(logits, u, top_k=3)
  np.testing.assert_array_equal(sel.tokens, [2, 0])  # logits 2.1 (largest), 1.3 (3rd largest)
  masked = np.where(np.arange(10) < 4, -np.inf, LOGITS_10).astype(np.float32)  # exp -> weight 0
  sel = select(np.broadcast_to(masked, (2, 10)), u)
  np.testing.assert_array_equal(sel.tokens, [4, 9])


def test_top_p_large_vocab_support():
  # Full-vocabulary nucleus (bisection, no sort) against the sorted reference, V = 5000.
  rng = np.random.default_rng(2)
  logits = rng.normal(0.0, 1.5, 5000).astype(np.float32)
  q = reference_q(logits, temperature=1.0, top_p=0.5)
  # The test is only meaningful if no token sits on the nucleus boundary.
  p = np.exp(logits - logits.max()).astype(np.float64)
  p /= p.sum()
  order = np.argsort(-p)
  assert np.min(np.abs(np.cumsum(p[order]) - p[order] - 0.5)) > 1e-6
  u = np.linspace(0.0, 1.0, 3000, endpoint=False, dtype=np.float32)
  sel = select(np.broadcast_to(logits, (u.size, 5000)), u, top_p=0.5)
  tokens = np.asarray(sel.tokens)
  assert np.all(q[tokens] > 0)
  # A grid of uniforms visits (almost) every kept token.
  assert len(set(tokens.tolist())) >= 0.9 * np.count_nonzero(q)
  np.testing.assert_allclose(sel.sample_logp, np.log(q[tokens]), atol=1e-4)
