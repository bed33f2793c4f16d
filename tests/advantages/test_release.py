"""Tests for the teachability-aware release rule (arXiv 2605.13643) against numpy loops."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain.advantages import _release as R


def _jit(fn):
  """Jitted entry point (static hyperparameters): one compile per configuration keeps tests fast."""
  return jax.jit(fn, static_argnames=[n for n in _STATIC if n in inspect.signature(fn).parameters])


_STATIC = ("k", "num_segments", "k0", "k1", "eps", "min_gain")
teacher_margin = _jit(R.teacher_margin)
segment_scores = _jit(R.segment_scores)
bic_change_point = _jit(R.bic_change_point)
teachability_release = _jit(R.teachability_release)
release_weights = _jit(R.release_weights)


# ------------------------------------------------------------------ numpy references (float64)


def np_margin(cand):
  out = np.zeros(cand.shape[:2])
  for b, t in np.ndindex(*cand.shape[:2]):
    vals = sorted(cand[b, t].tolist(), reverse=True)
    out[b, t] = vals[0] - vals[1]
  return out


def np_teacher_margin(s_logits, t_logits, k):
  cand = np.zeros((*s_logits.shape[:2], k))
  for b, t in np.ndindex(*s_logits.shape[:2]):
    ids = sorted(range(s_logits.shape[-1]), key=lambda v: -s_logits[b, t, v])[:k]
    z = t_logits[b, t]
    lse = max(z) + math.log(sum(math.exp(x - max(z)) for x in z))
    cand[b, t] = [z[v] - lse for v in ids]  # teacher log-probs of the student's candidates
  return np_margin(cand)


def np_segment_scores(margin, seg, mask, n):
  scores, valid = np.zeros((len(seg), n)), np.zeros((len(seg), n), bool)
  for b in range(len(seg)):
    for i in range(n):
      vals = [margin[b, t] for t in range(seg.shape[1]) if seg[b, t] == i and mask[b, t]]
      if vals:
        scores[b, i], valid[b, i] = math.log(1 + sum(vals) / len(vals)), True
  return scores, valid


def np_bic(series, k0=1.0, k1=3.0, eps=1e-8, min_gain=0.0):
  """One row: returns (tau, release, gain) from the BIC equations of the paper note."""
  n = len(series)
  if n < 2:
    return 0, False, 0.0
  mean = sum(series) / n
  bic0 = n * math.log((sum((s - mean) ** 2 for s in series) + eps) / n) + k0 * math.log(n)
  best = None
  for tau in range(1, n):
    pre, post = series[:tau], series[tau:]
    mp, mq = sum(pre) / len(pre), sum(post) / len(post)
    if not mq < mp:
      continue
    rss = sum((s - mp) ** 2 for s in pre) + sum((s - mq) ** 2 for s in post)
    bic1 = n * math.log((rss + eps) / n) + k1 * math.log(n)
    if best is None or bic1 < best[1]:
      best = (tau, bic1)
  if best is None:
    return 0, False, 0.0
  gain = bic0 - best[1]
  return best[0], gain > min_gain, gain


def np_release(margin, seg, mask, n, **kw):
  scores, valid = np_segment_scores(margin, seg, mask, n)
  keep = np.array(mask, np.float64)
  taus, rels, gains = [], [], []
  for b in range(len(seg)):
    order = [i for i in range(n) if valid[b, i]]
    tau, rel, gain = np_bic([scores[b, i] for i in order], **kw)
    taus.append(tau), rels.append(rel), gains.append(gain)
    if rel:
      kept = set(order[:tau])
      cut = next(
        t
        for t in range(seg.shape[1])
        if mask[b, t] and 0 <= seg[b, t] < n and seg[b, t] not in kept
      )
      keep[b, cut:] = 0
  return keep, np.array(taus), np.array(rels), np.array(gains)


def _step_rollouts(levels, tokens_per_seg=3, pad=2):
  """Rows whose segment i has constant margin exp(levels[i]) − 1, so S_i = levels[i] exactly."""
  rows = []
  for lv in levels:
    seg = np.repeat(np.arange(len(lv)), tokens_per_seg)
    rows.append(
      (
        np.concatenate([np.expm1(np.repeat(lv, tokens_per_seg)), np.zeros(pad)]),
        np.concatenate([seg, -np.ones(pad, int)]),
      )
    )
  t_max = max(len(r[0]) for r in rows)
  margin, seg = np.zeros((len(rows), t_max)), -np.ones((len(rows), t_max), int)
  for b, (m, s) in enumerate(rows):
    margin[b, : len(m)], seg[b, : len(s)] = m, s
  return margin, seg, (seg >= 0).astype(np.float64)


# ----------------------------------------------------------------------------------- margin


def test_teacher_margin_matches_numpy(x64):
  rng = np.random.default_rng(0)
  s, t = rng.standard_normal((2, 5, 9)), rng.standard_normal((2, 5, 9))
  m = teacher_margin(jnp.asarray(s), jnp.asarray(t), k=4)
  np.testing.assert_allclose(m, np_teacher_margin(s, t, 4), rtol=1e-10, atol=1e-12)
  assert np.all(np.asarray(m) >= 0)
  with jax.enable_x64(False):
    m32 = functools.partial(teacher_margin, k=4)(
      jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
    )
    np.testing.assert_allclose(m32, np_teacher_margin(s, t, 4), rtol=1e-5, atol=1e-5)
  # Uniform teacher over the candidates: no margin. K = 2: swapping the teacher's ranking keeps M.
  np.testing.assert_array_equal(R.candidate_margin(jnp.ones((2, 3, 4))), 0.0)
  c = jnp.asarray(rng.standard_normal((2, 3, 2)))
  np.testing.assert_allclose(R.candidate_margin(c), R.candidate_margin(c[..., ::-1]), rtol=1e-12)
  np.testing.assert_allclose(
    R.candidate_margin(c), np.abs(np.asarray(c[..., 0] - c[..., 1])), rtol=1e-12
  )


def test_segment_scores_match_numpy(x64):
  rng = np.random.default_rng(1)
  margin = rng.uniform(0, 3, (3, 12))
  seg = np.array(
    [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3, -1, -1], [0, 0, 0, 2, 2, 2, 2, 4, 4, -1, -1, -1], [-1] * 12]
  )
  mask = (seg >= 0).astype(np.float64)
  mask[0, 3] = 0  # a masked token inside a segment
  mask[1, 7:9] = 0  # a whole masked segment
  scores, valid = segment_scores(
    jnp.asarray(margin), jnp.asarray(seg), jnp.asarray(mask), num_segments=5
  )
  ref_s, ref_v = np_segment_scores(margin, seg, mask, 5)
  np.testing.assert_array_equal(valid, ref_v)
  np.testing.assert_allclose(scores, ref_s, rtol=1e-12)
  with jax.enable_x64(False):
    args = (
      jnp.asarray(margin, jnp.float32),
      jnp.asarray(seg, jnp.int32),
      jnp.asarray(mask, jnp.float32),
    )
    scores32, valid32 = segment_scores(*args, num_segments=5)
    np.testing.assert_array_equal(valid32, ref_v)
    np.testing.assert_allclose(scores32, ref_s, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- BIC


def test_bic_matches_numpy_random_series(x64):
  rng = np.random.default_rng(2)
  n_rows, n_seg = 24, 12
  scores = rng.normal(1.0, 0.3, (n_rows, n_seg))
  scores[: n_rows // 2, 6:] -= rng.uniform(0, 1.5, (n_rows // 2, 1))  # some rows with a drop
  valid = np.ones((n_rows, n_seg), bool)
  for b in range(n_rows):
    valid[b, rng.integers(1, n_seg + 1) :] = False
    valid[b, rng.integers(0, n_seg)] = False  # holes are skipped
  ref = [np_bic([scores[b, i] for i in range(n_seg) if valid[b, i]]) for b in range(n_rows)]
  tau, rel, gain = bic_change_point(jnp.asarray(scores), jnp.asarray(valid))
  np.testing.assert_array_equal(tau, [r[0] for r in ref])
  np.testing.assert_array_equal(rel, [r[1] for r in ref])
  np.testing.assert_allclose(gain, [r[2] for r in ref], rtol=1e-10, atol=1e-10)
  assert 0 < np.sum(rel) < n_rows  # both outcomes are exercised
  # min_gain raises the bar; a non-default penalty changes the decision like the reference.
  tau2, rel2, _ = bic_change_point(jnp.asarray(scores), jnp.asarray(valid), k1=6.0, min_gain=5.0)
  ref2 = [
    np_bic([scores[b, i] for i in range(n_seg) if valid[b, i]], k1=6.0, min_gain=5.0)
    for b in range(n_rows)
  ]
  np.testing.assert_array_equal(rel2, [r[1] for r in ref2])
  np.testing.assert_array_equal(tau2, [r[0] for r in ref2])
  assert np.sum(rel2) < np.sum(rel)
  with jax.enable_x64(False):
    tau32, rel32, gain32 = bic_change_point(jnp.asarray(scores, jnp.float32), jnp.asarray(valid))
    np.testing.assert_array_equal(tau32, [r[0] for r in ref])
    np.testing.assert_array_equal(rel32, [r[1] for r in ref])
    np.testing.assert_allclose(gain32, [r[2] for r in ref], rtol=1e-5, atol=1e-4)


def test_constant_series_is_never_released():
  cases = [(value, n) for value in (0.0, 0.37, 2.5, 1e4) for n in (1, 2, 3, 10, 40)]
  scores = jnp.asarray([[v] * 40 for v, _ in cases], jnp.float32)
  valid = jnp.asarray([[i < n for i in range(40)] for _, n in cases])
  _, rel, gain = bic_change_point(scores, valid)
  assert not np.any(rel) and np.all(np.isfinite(gain))
  margin, seg, mask = _step_rollouts([np.full(8, 0.9)])
  q, info = teachability_release(
    jnp.asarray(margin, jnp.float32), jnp.asarray(seg), jnp.asarray(mask), num_segments=8
  )
  np.testing.assert_array_equal(q, mask)
  assert not bool(info["release"][0])


def test_clean_step_down_is_cut_exactly_at_the_step():
  levels = [
    np.r_[np.full(5, 2.0), np.full(5, 0.5)],
    np.r_[np.full(3, 1.2), np.full(7, 0.2)],
    np.r_[np.full(5, 0.5), np.full(5, 2.0)],
  ]
  margin, seg, mask = _step_rollouts(levels, tokens_per_seg=3, pad=2)
  q, info = teachability_release(
    jnp.asarray(margin, jnp.float32), jnp.asarray(seg), jnp.asarray(mask), num_segments=10
  )
  np.testing.assert_array_equal(info["tau"][:2], [5, 3])
  np.testing.assert_array_equal(
    info["release"], [True, True, False]
  )  # the upward step has no candidate
  np.testing.assert_array_equal(
    q[0], np.r_[np.ones(15), np.zeros(17)]
  )  # tokens of segments 0..4 kept
  np.testing.assert_array_equal(q[1], np.r_[np.ones(9), np.zeros(23)])
  np.testing.assert_array_equal(q[2], mask[2])


def test_tiny_and_empty_series_are_finite(x64):
  cases = [[], [1.0], [1.0, 0.5], [0.5, 1.0], [1.0, 1.0]]
  scores, valid = np.zeros((len(cases), 4)), np.zeros((len(cases), 4), bool)
  for b, c in enumerate(cases):
    scores[b, : len(c)], valid[b, : len(c)] = c, True
  tau, rel, gain = bic_change_point(jnp.asarray(scores), jnp.asarray(valid))
  assert np.all(np.isfinite(gain))
  ref = [np_bic(c) for c in cases]
  np.testing.assert_array_equal(tau, [r[0] for r in ref])
  np.testing.assert_array_equal(rel, [r[1] for r in ref])
  np.testing.assert_allclose(gain, [r[2] for r in ref], rtol=1e-10)


# ------------------------------------------------------------------------------ full rule


def test_teachability_release_end_to_end_matches_numpy(x64):
  rng = np.random.default_rng(3)
  b, n_seg, per = 6, 8, 4
  seg = np.full((b, n_seg * per + 3), -1)
  for r in range(b):
    n = rng.integers(1, n_seg + 1)
    seg[r, : n * per] = np.repeat(np.arange(n), per)
    seg[r, 2] = -1  # an unsegmented token inside the prefix
  mask = (seg >= 0).astype(np.float64)
  mask[:, 2] = 1.0
  s_logits, t_logits = (
    rng.standard_normal((b, seg.shape[1], 11)),
    3 * rng.standard_normal((b, seg.shape[1], 11)),
  )
  t_logits[:3, n_seg * per // 2 :] *= 0.05  # the teacher flattens out late in half of the rows
  margin = teacher_margin(jnp.asarray(s_logits), jnp.asarray(t_logits), k=4)
  fn = functools.partial(teachability_release, num_segments=n_seg)
  q, info = fn(margin, jnp.asarray(seg), jnp.asarray(mask))
  keep, taus, rels, gains = np_release(np_teacher_margin(s_logits, t_logits, 4), seg, mask, n_seg)
  np.testing.assert_array_equal(info["release"], rels)
  np.testing.assert_array_equal(info["tau"], taus)
  np.testing.assert_allclose(info["gain"], gains, rtol=1e-9, atol=1e-9)
  np.testing.assert_array_equal(q, keep)
  assert rels.any()
  # q is a prefix of the mask: non-increasing where the mask is on, zero where it is off.
  q = np.asarray(q)
  assert np.all(q <= mask)
  for r in range(b):
    kept = q[r][mask[r] > 0]
    assert np.all(np.diff(kept) <= 0)


def test_release_weights_preserve_mass(x64):
  rng = np.random.default_rng(4)
  mask = (rng.uniform(size=(4, 10)) < 0.8).astype(np.float64)
  mask[3] = 0.0
  keep = mask * (np.arange(10)[None] < np.array([[3], [10], [6], [5]]))
  w = np.asarray(release_weights(jnp.asarray(keep), jnp.asarray(mask)))
  for r in range(3):
    np.testing.assert_allclose((w[r] * mask[r]).sum(), mask[r].sum(), rtol=1e-12)
    np.testing.assert_allclose(
      w[r], keep[r] * mask[r].sum() / (keep[r] * mask[r]).sum(), rtol=1e-12
    )
  np.testing.assert_array_equal(w[3], 0.0)
  adv = rng.standard_normal((4, 10))
  lhs = (adv * w * mask).sum(-1)[:3]
  np.testing.assert_allclose(
    lhs, (adv * keep * mask).sum(-1)[:3] * mask.sum(-1)[:3] / (keep * mask).sum(-1)[:3], rtol=1e-12
  )


def test_all_masked_rows_are_finite_zeros():
  margin, seg, _ = _step_rollouts([np.r_[np.full(4, 2.0), np.full(4, 0.1)]])
  mask = np.zeros_like(margin)
  q, info = teachability_release(
    jnp.asarray(margin, jnp.float32), jnp.asarray(seg), jnp.asarray(mask), num_segments=8
  )
  np.testing.assert_array_equal(q, 0.0)
  assert int(info["tau"][0]) == 0 and not bool(info["release"][0]) and np.isfinite(info["gain"][0])
  np.testing.assert_array_equal(info["scores"], 0.0)


def test_bad_inputs_raise_naming_the_argument():
  m, seg, mask = (jnp.asarray(x) for x in _step_rollouts([np.ones(3)]))
  m = m.astype(jnp.float32)
  cases = [
    (
      TypeError,
      "`segment_ids`",
      lambda: R.segment_scores(m, seg.astype(jnp.float32), mask, num_segments=3),
    ),
    (ValueError, "`segment_ids`", lambda: R.segment_scores(m, seg[:, :2], mask, num_segments=3)),
    (ValueError, "`mask`", lambda: R.segment_scores(m, seg, mask[:, :2], num_segments=3)),
    (TypeError, "`num_segments`", lambda: R.segment_scores(m, seg, mask, num_segments=3.0)),
    (ValueError, "`num_segments`", lambda: R.segment_scores(m, seg, mask, num_segments=0)),
    (TypeError, "`margin`", lambda: R.segment_scores(seg, seg, mask, num_segments=3)),
    (ValueError, "`valid`", lambda: R.bic_change_point(jnp.zeros((2, 4)), jnp.ones((2, 3), bool))),
    (
      ValueError,
      "`eps`",
      lambda: R.bic_change_point(jnp.zeros((2, 4)), jnp.ones((2, 4), bool), eps=-1.0),
    ),
    (ValueError, "`k`", lambda: R.teacher_margin(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 5)), k=1)),
    (ValueError, "`k`", lambda: R.teacher_margin(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 5)), k=6)),
    (
      ValueError,
      "`teacher_logits`",
      lambda: R.teacher_margin(jnp.zeros((1, 2, 5)), jnp.zeros((1, 2, 6))),
    ),
    (ValueError, "`teacher_candidate_logp`", lambda: R.candidate_margin(jnp.zeros((1, 2, 1)))),
    (
      ValueError,
      "`tau`",
      lambda: R.release_mask(
        seg, mask, jnp.ones((1, 3), bool), jnp.zeros((2,), jnp.int32), jnp.zeros((1,), bool)
      ),
    ),
    (ValueError, "`mask`", lambda: R.release_weights(mask, mask[:, :1])),
  ]
  for exc, name, call in cases:
    with pytest.raises(exc, match=name):
      call()
