"""GRACE (arXiv 2605.13130) against a float64 numpy reference written from Eqs. 9–13."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain.selection._by_score import select_top_fraction
from postrain.selection._grace import grace_scores, grace_scores_from_upstream, upstream_gradients
from postrain.selection._trace_steps import pack_steps, split_steps

D, VOCAB, K = 8, 13, 4


@functools.partial(jax.jit, static_argnames=("num_steps", "alpha", "normalize_history"))
def grace_jit(hidden, tokens, w_out, seg, ans, *, num_steps, alpha=0.7, normalize_history=False):
  return grace_scores(
    hidden,
    tokens,
    w_out,
    seg,
    ans,
    num_steps=num_steps,
    alpha=alpha,
    normalize_history=normalize_history,
  )


def ref_grace(hidden, tokens, w, seg, ans, num_steps, alpha=0.7, normalize_history=False):
  """Per-sample loops in float64."""
  hidden, w = hidden.astype(np.float64), w.astype(np.float64)
  b_size, t_size, _ = hidden.shape
  scores = np.zeros((b_size, num_steps))
  values = np.zeros(b_size)

  def cos(a, b):
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0

  for b in range(b_size):
    u = np.zeros((t_size, w.shape[0]))
    for t in range(1, t_size):
      logits = hidden[b, t - 1] @ w
      p = np.exp(logits - logits.max())
      p /= p.sum()
      p[tokens[b, t]] -= 1.0
      u[t] = w @ p
    g_ans = u[ans[b]].mean(0) if ans[b].any() else np.zeros(w.shape[0])
    prev = []
    step_scores = []
    for k in range(num_steps):
      idx = seg[b] == k
      if not idx.any():
        continue
      g = u[idx].mean(0)
      a_ans = cos(g, g_ans)
      if prev:
        hist = sum((p / np.linalg.norm(p) if normalize_history else p) for p in prev) / len(prev)
        s = alpha * a_ans + (1 - alpha) * cos(g, hist)
      else:
        s = a_ans
      scores[b, k] = s
      step_scores.append(s)
      prev.append(g)
    values[b] = np.mean(step_scores) if step_scores else 0.0
  return scores, values


def make_rows(rng, layouts, pad_left, pad_right):
  """layouts: per row (prompt_len, [step lens], answer_len)."""
  rows = []
  for n_prompt, steps, n_ans in layouts:
    rows.append(
      pack_steps(
        list(rng.integers(1, VOCAB, n_prompt)),
        [list(rng.integers(1, VOCAB, n)) for n in steps],
        list(rng.integers(1, VOCAB, n_ans)),
        length=max(n_prompt + sum(steps) + n_ans for n_prompt, steps, n_ans in layouts),
        left_pad=True,
      )
    )
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  t = arrays["tokens"].shape[1]
  hidden = rng.normal(size=(len(rows), t, D)).astype(np.float32)
  fills = {"tokens": 0, "segment_ids": -1, "answer_mask": False, "valid": False}
  for key, fill in fills.items():
    arrays[key] = np.pad(arrays[key], ((0, 0), (pad_left, pad_right)), constant_values=fill)
  garbage = lambda n: rng.normal(scale=30.0, size=(len(rows), n, D)).astype(np.float32)  # noqa: E731
  hidden = np.concatenate([garbage(pad_left), hidden, garbage(pad_right)], axis=1)
  arrays["tokens"] = np.where(
    arrays["valid"], arrays["tokens"], rng.integers(0, VOCAB, arrays["tokens"].shape)
  )
  return hidden, arrays


LAYOUTS = [(3, [2, 4, 1], 2), (2, [5], 3), (4, [1, 1, 2, 3], 1), (3, [], 2), (2, [3, 2], 0)]


@pytest.mark.parametrize("normalize_history", [False, True])
def test_matches_numpy_reference(normalize_history):
  rng = np.random.default_rng(0)
  hidden, a = make_rows(rng, LAYOUTS, 0, 0)
  w = rng.normal(size=(D, VOCAB)).astype(np.float32)
  out = grace_jit(
    hidden,
    a["tokens"],
    w,
    a["segment_ids"],
    a["answer_mask"],
    num_steps=K,
    normalize_history=normalize_history,
  )
  s_ref, v_ref = ref_grace(
    hidden,
    a["tokens"],
    w,
    a["segment_ids"],
    a["answer_mask"],
    K,
    normalize_history=normalize_history,
  )
  np.testing.assert_allclose(out.step_scores, s_ref, atol=2e-5)
  np.testing.assert_allclose(out.value, v_ref, atol=2e-5)
  np.testing.assert_array_equal(out.has_steps, [True, True, True, False, True])
  np.testing.assert_array_equal(out.step_valid[0], [True, True, True, False])
  assert float(out.value[3]) == 0.0  # no steps: finite 0, excluded via has_steps
  # Row 4 has no answer span: the answer cosine is 0, the history term remains.
  assert np.all(np.isfinite(np.asarray(out.step_scores)))


def test_invariant_to_padding():
  w = np.random.default_rng(11).normal(size=(D, VOCAB)).astype(np.float32)
  base = None
  for pad_left, pad_right in [(0, 0), (5, 0), (0, 7), (3, 4)]:
    hidden, a = make_rows(np.random.default_rng(1), LAYOUTS, 0, 0)
    if pad_left or pad_right:
      # Same content, padded with garbage hidden states and random tokens.
      hidden_p, a_p = make_rows(np.random.default_rng(1), LAYOUTS, pad_left, pad_right)
      np.testing.assert_array_equal(hidden_p[:, pad_left : pad_left + hidden.shape[1]], hidden)
      hidden, a = hidden_p, a_p
    out = grace_jit(hidden, a["tokens"], w, a["segment_ids"], a["answer_mask"], num_steps=K)
    if base is None:
      base = out
    else:
      np.testing.assert_allclose(out.step_scores, base.step_scores, atol=1e-6)
      np.testing.assert_allclose(out.value, base.value, atol=1e-6)


def test_upstream_gradient_is_the_hidden_state_gradient():
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.normal(size=(2, 6, D)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, VOCAB, (2, 6)))
  w = jnp.asarray(rng.normal(size=(D, VOCAB)), jnp.float32)

  def loss(h):
    lp = jax.nn.log_softmax(h[:, :-1] @ w, axis=-1)
    return -jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1).sum()

  grad = jax.grad(loss)(hidden)
  u = upstream_gradients(hidden, tokens, w)
  np.testing.assert_allclose(u[:, 1:], grad[:, :-1], atol=1e-5)
  np.testing.assert_array_equal(u[:, 0], 0.0)


def test_limits_alpha_one_scale_invariance_and_causality():
  rng = np.random.default_rng(3)
  u = rng.normal(size=(1, 12, D)).astype(np.float32)
  seg = np.array([[-1, 0, 0, 1, 1, 1, 2, 3, 3, -1, -1, -1]])
  ans = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]], bool)
  f = jax.jit(grace_scores_from_upstream, static_argnames=("num_steps", "alpha"))
  base = f(u, seg, ans, num_steps=K)
  # alpha = 1: the value is the mean answer cosine.
  a1 = f(u, seg, ans, num_steps=K, alpha=1.0)
  g_ans = u[0, 9:11].mean(0)
  cos = [
    g @ g_ans / np.linalg.norm(g) / np.linalg.norm(g_ans)
    for g in (u[0, 1:3].mean(0), u[0, 3:6].mean(0), u[0, 6], u[0, 7:9].mean(0))
  ]
  np.testing.assert_allclose(a1.value, [np.mean(cos)], rtol=1e-5)
  # Scaling the last step's u by a positive constant leaves every score unchanged.
  u2 = u.copy()
  u2[0, 7:9] *= 3.0
  np.testing.assert_allclose(f(u2, seg, ans, num_steps=K).step_scores, base.step_scores, rtol=1e-5)
  # Changing the last step never changes earlier step scores.
  u3 = u.copy()
  u3[0, 7:9] = rng.normal(size=(2, D))
  out3 = f(u3, seg, ans, num_steps=K)
  np.testing.assert_allclose(out3.step_scores[0, :3], base.step_scores[0, :3], rtol=1e-6)
  assert not np.allclose(out3.step_scores[0, 3], base.step_scores[0, 3])
  # Token-mean: duplicating a step's token vectors leaves the scores unchanged.
  u4 = np.concatenate([u, u[:, 6:7]], axis=1)
  seg4 = np.concatenate([seg, [[2]]], axis=1)
  ans4 = np.concatenate([ans, [[False]]], axis=1)
  np.testing.assert_allclose(
    f(u4, seg4, ans4, num_steps=K).step_scores, base.step_scores, rtol=1e-5
  )


def test_selection_and_validation():
  values = np.array([0.3, -0.1, 0.0, 0.9, 0.5])
  has_steps = np.array([True, True, False, True, True])
  keep = select_top_fraction(values, 0.5, valid=has_steps)  # ceil(0.5 * 4) = 2
  np.testing.assert_array_equal(np.flatnonzero(keep), [3, 4])
  u = jnp.zeros((2, 5, D))
  with pytest.raises(ValueError, match="segment_ids"):
    grace_scores_from_upstream(u, jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 5)), num_steps=2)
  with pytest.raises(ValueError, match="num_steps"):
    grace_scores_from_upstream(u, jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5)), num_steps=0)
  with pytest.raises(ValueError, match="w_out"):
    upstream_gradients(u, jnp.zeros((2, 5), jnp.int32), jnp.zeros((D + 1, VOCAB)))
  with pytest.raises(TypeError, match="tokens"):
    upstream_gradients(u, jnp.zeros((2, 5)), jnp.zeros((D, VOCAB)))


def test_split_and_pack_steps():
  trace = "We add.\n\nStep 1: 2 + 3 = 5\n  \nStep 2: double it\nso 10"
  assert split_steps(trace) == ["We add.", "Step 1: 2 + 3 = 5", "Step 2: double it\nso 10"]
  assert split_steps(trace, rule="line")[-1] == "so 10"
  assert split_steps(trace, rule="marker") == [
    "We add.",
    "Step 1: 2 + 3 = 5",
    "Step 2: double it\nso 10",
  ]
  row = pack_steps([7, 8], [[1, 2], [3]], [9], length=8, pad_id=0, left_pad=True)
  np.testing.assert_array_equal(row["tokens"], [0, 0, 7, 8, 1, 2, 3, 9])
  np.testing.assert_array_equal(row["segment_ids"], [-1, -1, -1, -1, 0, 0, 1, -1])
  np.testing.assert_array_equal(row["answer_mask"], [0, 0, 0, 0, 0, 0, 0, 1])
  np.testing.assert_array_equal(row["valid"], [0, 0, 1, 1, 1, 1, 1, 1])
  with pytest.raises(ValueError, match="length"):
    pack_steps([1] * 5, [[1] * 5], [1], length=8)
