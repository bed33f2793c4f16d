"""HES (arXiv 2605.22389) against numpy loops written from the note's equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain.selection._by_score import (
  hes_group_downsample,
  kept_group_advantages,
  select_top_fraction,
  select_top_k,
  select_top_k_per_group,
)
from postrain.selection._hes import entropy_variants, hes_score, hes_token_counts, token_entropy

hes_jit = jax.jit(hes_score, static_argnames=("ratio", "min_tokens", "rounding"))


def ref_hes(h, mask, num, den, rounding="ceil", min_tokens=1):
  """Order-statistics HES with ratio = num/den, integer arithmetic for n."""
  out = np.zeros(h.shape[0])
  for b in range(h.shape[0]):
    vals = sorted((float(x) for x, m in zip(h[b], mask[b]) if m), reverse=True)
    length = len(vals)
    if length == 0:
      continue
    if rounding == "ceil":
      n = -(-num * length // den)
    else:
      n = num * length // den
    n = min(length, max(min_tokens, n))
    out[b] = sum(vals[:n])
  return out


def make_batch(rng, b, t, p_mask=0.7):
  h = rng.uniform(0.0, 5.0, size=(b, t)).astype(np.float32)
  mask = rng.uniform(size=(b, t)) < p_mask
  mask[0] = False  # an empty row
  mask[1] = False
  mask[1, :3] = True  # a short row: 0.5 % of 3 tokens rounds up to one token
  return h, mask


@pytest.mark.parametrize(("ratio", "num", "den"), [(0.005, 1, 200), (0.1, 1, 10), (0.25, 1, 4)])
def test_hes_matches_numpy(ratio, num, den):
  rng = np.random.default_rng(0)
  h, mask = make_batch(rng, 6, 700)
  got = np.asarray(hes_jit(jnp.asarray(h), jnp.asarray(mask), ratio=ratio))
  np.testing.assert_allclose(got, ref_hes(h, mask, num, den), rtol=1e-5, atol=1e-5)


def test_floor_rounding_with_min_tokens():
  rng = np.random.default_rng(1)
  h, mask = make_batch(rng, 5, 300)
  got = np.asarray(hes_jit(jnp.asarray(h), jnp.asarray(mask), ratio=0.01, rounding="floor"))
  np.testing.assert_allclose(got, ref_hes(h, mask, 1, 100, "floor"), rtol=1e-5)
  # min_tokens=0 with floor: rows under 100 tokens sum nothing.
  got0 = np.asarray(
    hes_jit(jnp.asarray(h), jnp.asarray(mask), ratio=0.01, rounding="floor", min_tokens=0)
  )
  np.testing.assert_allclose(got0, ref_hes(h, mask, 1, 100, "floor", min_tokens=0), rtol=1e-5)


def test_at_least_one_token_is_the_max_entropy():
  h = np.array([[0.1, 2.0, 0.3, 9.0, 0.5]], np.float32)
  mask = np.array([[1, 1, 1, 0, 1]], bool)  # the 9.0 is masked out
  np.testing.assert_allclose(hes_jit(h, mask), [2.0])


def test_token_counts_exact_at_integer_boundaries():
  # 0.005 * 200 is exactly 1 in decimal arithmetic, though not in binary floating point.
  lengths = jnp.array([0, 1, 199, 200, 201, 400, 401])
  got = np.asarray(hes_token_counts(lengths, 401))
  np.testing.assert_array_equal(got, [0, 1, 1, 1, 2, 2, 3])
  got = np.asarray(hes_token_counts(jnp.array([10, 11, 15]), 20, ratio=0.1, rounding="round"))
  np.testing.assert_array_equal(got, [1, 1, 2])


def test_limits_ratio_one_is_entropy_sum_and_constant_entropy():
  rng = np.random.default_rng(2)
  h, mask = make_batch(rng, 4, 64)
  np.testing.assert_allclose(hes_jit(h, mask, ratio=1.0), (h * mask).sum(-1), rtol=1e-5)
  const = np.full((3, 500), 0.7, np.float32)
  m = np.zeros((3, 500), bool)
  m[0, :10], m[1, :250], m[2, :] = True, True, True
  np.testing.assert_allclose(hes_jit(const, m), 0.7 * np.array([1, 2, 3]), rtol=1e-6)


def test_padding_and_masked_values_do_not_matter():
  rng = np.random.default_rng(3)
  h, mask = make_batch(rng, 4, 90)
  base = np.asarray(hes_jit(h, mask, ratio=0.05))
  h_pad = np.concatenate([rng.uniform(0, 100, (4, 30)).astype(np.float32), h], axis=1)
  m_pad = np.concatenate([np.zeros((4, 30), bool), mask], axis=1)
  np.testing.assert_allclose(hes_jit(h_pad, m_pad, ratio=0.05), base, rtol=1e-6)
  h_garbage = np.where(mask, h, 1e6).astype(np.float32)
  np.testing.assert_allclose(hes_jit(h_garbage, mask, ratio=0.05), base, rtol=1e-6)


def test_bf16_and_float_mask():
  h = jnp.array([[1.0, 3.0, 2.0]], jnp.bfloat16)
  out = hes_jit(h, jnp.array([[1.0, 1.0, 0.0]]))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [3.0])


def test_entropy_variants():
  rng = np.random.default_rng(4)
  h, mask = make_batch(rng, 5, 400)
  v = entropy_variants(h, mask, ratio=0.01, tau=4.0)
  es = (h * mask).sum(-1)
  length = mask.sum(-1)
  hes = ref_hes(h, mask, 1, 100)
  n = np.array([min(x, max(1, math.ceil(x / 100))) for x in length])
  np.testing.assert_allclose(v["es"], es, rtol=1e-5)
  np.testing.assert_allclose(v["avg_e"], es / np.maximum(length, 1), rtol=1e-5)
  np.testing.assert_allclose(v["hes"], hes, rtol=1e-5)
  np.testing.assert_allclose(v["avg_he"], hes / np.maximum(n, 1), rtol=1e-5)
  np.testing.assert_allclose(v["hes_abs"], (h * mask * (h >= 4.0)).sum(-1), rtol=1e-5)
  assert np.all(np.asarray(v["hes"]) <= es + 1e-4)


def test_token_entropy_limits():
  v = 50
  logits = np.zeros((2, 3, v), np.float32)
  logits[1, :, 7] = 100.0  # nearly one-hot
  h = np.asarray(token_entropy(jnp.asarray(logits)))
  np.testing.assert_allclose(h[0], np.log(v), rtol=1e-6)
  np.testing.assert_allclose(h[1], 0.0, atol=1e-6)
  h_masked = token_entropy(jnp.asarray(logits), jnp.array([[1, 0, 1], [1, 1, 1]]))
  assert float(h_masked[0, 1]) == 0.0


def test_validation_errors():
  with pytest.raises(ValueError, match="entropy"):
    hes_score(jnp.zeros((3,)), jnp.zeros((3,)))
  with pytest.raises(ValueError, match="mask"):
    hes_jit(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(TypeError, match="entropy"):
    hes_jit(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match="rounding"):
    hes_jit(jnp.zeros((2, 3)), jnp.zeros((2, 3)), rounding="up")
  with pytest.raises(ValueError, match="ratio"):
    hes_jit(jnp.zeros((2, 3)), jnp.zeros((2, 3)), ratio=0.0)
  with pytest.raises(ValueError, match="group_size"):
    hes_group_downsample(
      jnp.zeros(6), jnp.zeros(6, bool), jax.random.key(0), group_size=4, n_pos=1, n_neg=1
    )


# --- selection -----------------------------------------------------------------------------


def test_select_top_fraction_and_k():
  scores = np.array([0.5, 3.0, 1.0, 3.0, -2.0, 7.0, np.nan, 0.0, 2.0, 1.5])
  keep = select_top_fraction(scores, 0.2)  # ceil(0.2 * 9 valid) = 2
  np.testing.assert_array_equal(np.flatnonzero(keep), [1, 5])
  keep = select_top_fraction(scores, 0.3)  # ceil(2.7) = 3; tie 3.0 at 1 and 3 -> lower index
  np.testing.assert_array_equal(np.flatnonzero(keep), [1, 3, 5])
  keep = select_top_fraction(scores, 0.3, rounding="floor")  # floor(2.7) = 2
  np.testing.assert_array_equal(np.flatnonzero(keep), [1, 5])
  valid = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
  keep = select_top_k(scores, 3, valid=valid)
  np.testing.assert_array_equal(np.flatnonzero(keep), [3, 8, 9])
  assert select_top_k(scores, 100).sum() == 9  # NaN is never selected


def test_select_top_k_per_group():
  scores = np.array([1.0, 4.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0])
  correct = np.array([1, 0, 1, 1, 0, 0, 0, 1], bool)
  keep = select_top_k_per_group(scores, group_size=4, k=2, valid=correct)
  np.testing.assert_array_equal(np.flatnonzero(keep), [2, 3, 7])


def test_hes_group_downsample_pos_high_neg_rand():
  correct = np.array([[1, 1, 1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1, 0, 0], [1] * 8], bool)
  hes = np.array(
    [[0.5, 3.0, 2.0, 9.0, 9.5, 1.0, 0.0, 2.5], [5.0] * 8, np.arange(8.0)[::-1]], np.float32
  )
  for seed in range(5):
    keep = np.asarray(
      hes_group_downsample(
        jnp.asarray(hes.ravel()),
        jnp.asarray(correct.ravel()),
        jax.random.key(seed),
        group_size=8,
        n_pos=2,
        n_neg=3,
      )
    ).reshape(3, 8)
    # Positives: the two highest-HES correct rollouts, never an incorrect one.
    np.testing.assert_array_equal(np.flatnonzero(keep[0] & correct[0]), [1, 7])
    np.testing.assert_array_equal(np.flatnonzero(keep[1] & correct[1]), [5])
    np.testing.assert_array_equal(np.flatnonzero(keep[2] & correct[2]), [0, 1])
    # Negatives: min(n_neg, |N|) of them.
    np.testing.assert_array_equal((keep & ~correct).sum(-1), [3, 3, 0])


def test_hes_group_downsample_random_negatives_cover_all():
  correct = jnp.asarray(np.array([1, 0, 0, 0, 0, 0], bool))
  hes = jnp.zeros(6)
  seen = np.zeros(6)
  for seed in range(40):
    seen += np.asarray(
      hes_group_downsample(hes, correct, jax.random.key(seed), group_size=6, n_pos=1, n_neg=1)
    )
  assert seen[0] == 40 and np.all(seen[1:] > 0)  # every negative gets picked sometimes


def test_kept_group_advantages():
  r = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0], np.float32)
  keep = np.array([1, 1, 0, 1, 1, 0, 0, 0], bool)
  got = np.asarray(kept_group_advantages(jnp.asarray(r), jnp.asarray(keep), group_size=4, eps=0.0))
  exp = np.zeros(8)
  for g in range(2):
    idx = [i for i in range(4 * g, 4 * g + 4) if keep[i]]
    vals = r[idx]
    std = vals.std()
    for i in idx:
      exp[i] = (r[i] - vals.mean()) / std if std > 0 else 0.0
  np.testing.assert_allclose(got, exp, atol=1e-6)
  # All kept: plain GRPO.
  full = np.asarray(kept_group_advantages(jnp.asarray(r), jnp.ones(8, bool), group_size=4, eps=0.0))
  rr = r.reshape(2, 4)
  np.testing.assert_allclose(
    full, ((rr - rr.mean(1, keepdims=True)) / rr.std(1, keepdims=True)).ravel(), atol=1e-6
  )
