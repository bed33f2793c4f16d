"""SCRL (arXiv 2605.22074) advantages against numpy loops written from Eqs. 2-5 of the note."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import advantages as adv
from postrain import losses

P, G, K, T = 2, 6, 3, 9


def np_progress_binary(r, fmt=None):
  """Eqs. 2-3 literally: k_i = longest solved prefix, R_i^(j) = 1[j <= k_i]."""
  out = np.zeros(r.shape)
  for i in range(r.shape[0]):
    if fmt is not None and not fmt[i]:
      continue
    k = 0
    while k < r.shape[1] and r[i, k] == 1:
      k += 1
    out[i, :k] = 1.0
  return out


def np_column_normalize(x, group_size, eps):
  """Eq. 4: each column j of each group normalised by its own mean / population std."""
  out = np.zeros(x.shape)
  for start in range(0, x.shape[0], group_size):
    for j in range(x.shape[1]):
      col = [float(v) for v in x[start : start + group_size, j]]
      if all(v == col[0] for v in col):
        continue
      mu = sum(col) / group_size
      sd = math.sqrt(sum((v - mu) ** 2 for v in col) / group_size)
      for i, v in enumerate(col):
        out[start + i, j] = (v - mu) / (sd + eps)
  return out


def np_token_advantages(a, span, mask, fmt=None):
  out = np.zeros(span.shape)
  for i in range(span.shape[0]):
    if fmt is not None and not fmt[i]:
      continue
    for t in range(span.shape[1]):
      k = span[i, t]
      if mask[i, t] and 0 <= k < a.shape[1]:
        out[i, t] = a[i, k]
  return out


def np_mixed(sub_r, out_r, span, mask, fmt, group_size, n_cur, eps):
  """Eq. 5's advantages: curriculum rows per-position span credit, original rows outcome GRPO."""
  out = np.zeros(span.shape)
  for start in range(0, sub_r.shape[0], group_size):
    cur = slice(start, start + n_cur)
    org = slice(start + n_cur, start + group_size)
    if n_cur:
      r = np_progress_binary(sub_r[cur], fmt[cur])
      a = np_column_normalize(r, n_cur, eps)
      out[cur] = np_token_advantages(a, span[cur], mask[cur], fmt[cur])
    if group_size - n_cur:
      a = np_column_normalize(out_r[org][:, None], group_size - n_cur, eps)[:, 0]
      out[org] = a[:, None] * mask[org]
  return out


def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  sub_r = (rng.random((P * G, K)) < 0.6).astype(np.float64)
  sub_r[0] = [1, 1, 0]  # ensure non-degenerate columns
  sub_r[1] = [0, 1, 1]
  out_r = (rng.random(P * G) < 0.5).astype(np.float64)
  out_r[3], out_r[4] = 1.0, 0.0
  lengths = rng.integers(0, T + 1, P * G)
  lengths[2] = 0  # an empty response
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
  span = rng.integers(-1, K + 1, (P * G, T)).astype(np.int32)  # includes out-of-range K -> none
  fmt = rng.random(P * G) < 0.8
  fmt[0] = True
  return sub_r, out_r, span, mask, fmt


def test_progress_rewards_hand_values():
  r = jnp.array(
    [[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
  )
  fmt = jnp.array([True, True, True, False])
  out = adv.scrl_progress_rewards(r, fmt)
  np.testing.assert_array_equal(out, [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  raw = adv.scrl_progress_rewards(r, fmt, correction="none")
  np.testing.assert_array_equal(raw, np.asarray(r) * np.asarray(fmt)[:, None])


def test_progress_rewards_match_eq3(prec):
  dtype, _ = prec
  sub_r, _, _, _, fmt = make_batch(1)
  out = adv.scrl_progress_rewards(jnp.asarray(sub_r, dtype), jnp.asarray(fmt))
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, np_progress_binary(sub_r, fmt))
  # Non-increasing along j and binary.
  assert np.all(np.diff(np.asarray(out), axis=1) <= 0)


def test_progress_graded_rewards_are_a_cumulative_product():
  r = np.array([[0.5, 0.8, 1.0], [1.0, 0.0, 0.9], [0.9, 0.9, 0.9]])
  expected = np.array([[np.prod(row[: j + 1]) for j in range(3)] for row in r])
  np.testing.assert_allclose(
    adv.scrl_progress_rewards(jnp.asarray(r, jnp.float32)), expected, rtol=1e-6
  )


def test_subproblem_advantages_match_eq4(prec):
  dtype, tol = prec
  sub_r, _, _, _, fmt = make_batch(2)
  progress = np_progress_binary(sub_r, fmt)
  out = adv.scrl_subproblem_advantages(jnp.asarray(progress, dtype), group_size=G, eps=1e-6)
  np.testing.assert_allclose(out, np_column_normalize(progress, G, 1e-6), atol=tol, rtol=tol)
  graded = np.random.default_rng(3).random((P * G, K))
  out = adv.scrl_subproblem_advantages(jnp.asarray(graded, dtype), group_size=G, eps=1e-6)
  np.testing.assert_allclose(out, np_column_normalize(graded, G, 1e-6), atol=tol, rtol=tol)


def test_subproblem_advantage_properties():
  r = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], np.float32)  # column 0 constant
  out = np.asarray(adv.scrl_subproblem_advantages(jnp.asarray(r), group_size=4, eps=0.0))
  np.testing.assert_array_equal(out[:, 0], 0.0)
  np.testing.assert_array_equal(out[:, 2], 0.0)
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-6)
  # Exactly one success among Gc = 4: max |A| = sqrt(Gc - 1).
  np.testing.assert_allclose(np.abs(out).max(), math.sqrt(3), rtol=1e-6)


def test_permuting_rollouts_permutes_advantages():
  sub_r, out_r, span, mask, fmt = make_batch(4)
  perm = np.concatenate(
    [np.array([2, 0, 1, 5, 3, 4]), 6 + np.array([1, 2, 0, 4, 5, 3])]
  )  # within halves
  fn = functools.partial(adv.scrl_advantages, group_size=G, num_curriculum=3)
  base, _ = fn(*(jnp.asarray(x) for x in (sub_r, out_r, span, mask)), format_ok=jnp.asarray(fmt))
  permuted, _ = fn(
    *(jnp.asarray(x[perm]) for x in (sub_r, out_r, span, mask)), format_ok=jnp.asarray(fmt[perm])
  )
  np.testing.assert_allclose(permuted, np.asarray(base)[perm], atol=1e-6)


def test_token_advantages_match_loop(prec):
  dtype, tol = prec
  _, _, span, mask, fmt = make_batch(5)
  a = np.random.default_rng(6).normal(size=(P * G, K))
  out = adv.scrl_token_advantages(
    jnp.asarray(a, dtype), jnp.asarray(span), jnp.asarray(mask), format_ok=jnp.asarray(fmt)
  )
  np.testing.assert_allclose(out, np_token_advantages(a, span, mask, fmt), atol=tol, rtol=tol)
  # No format flags: every row is read.
  out = adv.scrl_token_advantages(jnp.asarray(a, dtype), jnp.asarray(span), jnp.asarray(mask > 0))
  np.testing.assert_allclose(out, np_token_advantages(a, span, mask), atol=tol, rtol=tol)


@pytest.mark.parametrize("n_cur", [0, 2, 3, 6])
def test_mixed_groups_match_eq5(prec, n_cur):
  dtype, tol = prec
  sub_r, out_r, span, mask, fmt = make_batch(7)
  out, metrics = adv.scrl_advantages(
    jnp.asarray(sub_r, dtype),
    jnp.asarray(out_r, dtype),
    jnp.asarray(span),
    jnp.asarray(mask, dtype),
    group_size=G,
    num_curriculum=n_cur,
    format_ok=jnp.asarray(fmt),
  )
  expected = np_mixed(sub_r, out_r, span, mask, fmt, G, n_cur, 1e-6)
  assert np.count_nonzero(expected) > 10  # the data exercise the non-degenerate path
  np.testing.assert_allclose(out, expected, atol=tol, rtol=tol)
  cur_rows = adv.scrl_curriculum_rows(P * G, group_size=G, num_curriculum=n_cur)
  if n_cur:
    k = np_progress_binary(sub_r, fmt)[cur_rows].sum(1)
    np.testing.assert_allclose(metrics["progress_mean"], k.mean() / K, rtol=1e-6)
    np.testing.assert_allclose(metrics["progress_zero_frac"], np.mean(k == 0), rtol=1e-6)
    np.testing.assert_allclose(metrics["progress_full_frac"], np.mean(k == K), rtol=1e-6)


def test_default_split_is_half():
  sub_r, out_r, span, mask, _ = make_batch(8)
  args = [jnp.asarray(x) for x in (sub_r, out_r, span, mask)]
  default, _ = adv.scrl_advantages(*args, group_size=G)
  half, _ = adv.scrl_advantages(*args, group_size=G, num_curriculum=G // 2)
  np.testing.assert_array_equal(default, half)


def test_k1_without_curriculum_equals_grpo():
  sub_r, out_r, span, mask, _ = make_batch(9)
  out, _ = adv.scrl_advantages(
    jnp.asarray(sub_r[:, :1]),
    jnp.asarray(out_r),
    jnp.asarray(span),
    jnp.asarray(mask),
    group_size=G,
    num_curriculum=0,
  )
  grpo = adv.group_normalized(jnp.asarray(out_r), group_size=G)
  np.testing.assert_allclose(out, np.asarray(grpo)[:, None] * mask, atol=1e-6)


def test_k1_full_span_curriculum_equals_grpo():
  # K = 1, every response token in the single span: SCRL is GRPO on the subproblem reward.
  sub_r, out_r, _, mask, _ = make_batch(10)
  span = np.where(mask > 0, 0, -1).astype(np.int32)
  out, _ = adv.scrl_advantages(
    jnp.asarray(sub_r[:, :1]),
    jnp.asarray(out_r),
    jnp.asarray(span),
    jnp.asarray(mask),
    group_size=G,
    num_curriculum=G,
  )
  grpo = adv.group_normalized(jnp.asarray(sub_r[:, 0]), group_size=G)
  np.testing.assert_allclose(out, np.asarray(grpo)[:, None] * mask, atol=1e-6)


def test_mixed_loss_uses_one_token_normaliser():
  """Eq. 5 through losses.ppo_clip: one global token mean over both halves, spans or not."""
  sub_r, out_r, span, mask, fmt = make_batch(11)
  rng = np.random.default_rng(12)
  logp = rng.normal(-1.0, 0.3, (P * G, T))
  old = logp + rng.normal(0.0, 0.2, (P * G, T))
  a_tok, _ = adv.scrl_advantages(
    jnp.asarray(sub_r),
    jnp.asarray(out_r),
    jnp.asarray(span),
    jnp.asarray(mask),
    group_size=G,
    format_ok=jnp.asarray(fmt),
  )

  def loss_fn(lp):
    return losses.ppo_clip(
      lp, jnp.asarray(old, jnp.float32), a_tok, jnp.asarray(mask), eps_low=0.2, eps_high=0.28
    )[0]

  a = np_mixed(sub_r, out_r, span, mask, fmt, G, G // 2, 1e-6)
  rho = np.exp(logp - old)
  obj = np.minimum(rho * a, np.clip(rho, 0.8, 1.28) * a)
  expected = -np.sum(obj * mask) / mask.sum()
  lp = jnp.asarray(logp, jnp.float32)
  np.testing.assert_allclose(loss_fn(lp), expected, rtol=1e-5, atol=1e-6)
  grad = np.asarray(jax.grad(loss_fn)(lp))
  cur = adv.scrl_curriculum_rows(P * G, group_size=G, num_curriculum=G // 2)
  outside = cur[:, None] & ((span < 0) | (span >= K) | ~fmt[:, None])
  assert np.all(grad[outside] == 0.0)
  assert np.all(grad[mask == 0] == 0.0)


def test_padding_equals_slicing():
  sub_r, out_r, span, mask, fmt = make_batch(13)
  args = dict(group_size=G, format_ok=jnp.asarray(fmt))
  base, _ = adv.scrl_advantages(*(jnp.asarray(x) for x in (sub_r, out_r, span, mask)), **args)
  pad = 4
  span_p = np.concatenate(
    [np.zeros((P * G, pad), np.int32), span], 1
  )  # garbage span ids on padding
  mask_p = np.concatenate([np.zeros((P * G, pad)), mask], 1)
  padded, _ = adv.scrl_advantages(*(jnp.asarray(x) for x in (sub_r, out_r, span_p, mask_p)), **args)
  np.testing.assert_array_equal(padded[:, :pad], 0.0)
  np.testing.assert_allclose(padded[:, pad:], base, atol=1e-7)


def test_jit_equals_eager():
  sub_r, out_r, span, mask, fmt = make_batch(14)
  args = [jnp.asarray(x, jnp.float32) for x in (sub_r, out_r)] + [
    jnp.asarray(span),
    jnp.asarray(mask),
  ]
  fn = functools.partial(adv.scrl_advantages, group_size=G, num_curriculum=3)
  eager, m_eager = fn(*args, format_ok=jnp.asarray(fmt))
  jitted, m_jit = jax.jit(fn)(*args, format_ok=jnp.asarray(fmt))
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  for key in m_eager:
    np.testing.assert_allclose(m_jit[key], m_eager[key], atol=1e-6)


def test_gradients_wrt_graded_rewards(x64):
  r = jnp.asarray(np.random.default_rng(15).uniform(0.1, 1.0, (8, 3)))

  @jax.jit
  def fn(x):
    return adv.scrl_subproblem_advantages(adv.scrl_progress_rewards(x), group_size=4, eps=1e-3)

  check_grads(fn, (r,), order=1, modes=["fwd", "rev"])


def test_progress_stats_hand_values():
  r = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  stats = adv.scrl_progress_stats(r)
  np.testing.assert_allclose(stats["progress_mean"], (3 + 1 + 0 + 2) / 12)
  np.testing.assert_allclose(stats["progress_zero_frac"], 0.25)
  np.testing.assert_allclose(stats["progress_full_frac"], 0.25)
