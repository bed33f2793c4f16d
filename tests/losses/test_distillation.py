"""Tests for the OPD losses in postrain.losses._distillation against numpy loops from the equations."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain.losses import _distillation as D

B, T, V = 2, 3, 7


def _jit(fn):
  """Jitted entry point (static hyperparameters): one compile per configuration keeps tests fast."""
  return jax.jit(fn, static_argnames=[n for n in _STATIC if n in inspect.signature(fn).parameters])


_STATIC = ("alpha", "agg", "max_len", "temperature", "k", "ids_from", "tail", "tail_eps")
jsd_loss = _jit(D.jsd_loss)
reverse_kl_loss = _jit(D.reverse_kl_loss)
topk_jsd_loss = _jit(D.topk_jsd_loss)
opd_pg_loss = _jit(D.opd_pg_loss)
generalized_jsd = _jit(D.generalized_jsd)
MASK = np.array([[1, 1, 0], [1, 0, 1]], np.float64)


def _data(seed=0, v_t=V):
  rng = np.random.default_rng(seed)
  return 2.0 * rng.standard_normal((B, T, V)), 2.0 * rng.standard_normal((B, T, v_t))


# ------------------------------------------------------------------ numpy references (float64)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  out = np.empty_like(z)
  for idx in np.ndindex(z.shape[:-1]):
    row = z[idx]
    out[idx] = row - (row.max() + math.log(sum(math.exp(x - row.max()) for x in row)))
  return out


def np_kl(lp, lq):
  return sum(math.exp(a) * (a - b) for a, b in zip(lp, lq) if math.exp(a) > 0)


def np_jsd(lp, lq, alpha):
  """P = student, Q = teacher, M = (1-α)P + αQ (GKD / MOPD convention)."""
  if alpha == 0:
    return np_kl(lq, lp)
  if alpha == 1:
    return np_kl(lp, lq)
  p, q = np.exp(lp), np.exp(lq)
  m = (1 - alpha) * p + alpha * q
  kl_pm = sum(p[v] * math.log(p[v] / m[v]) for v in range(len(p)) if p[v] > 0)
  kl_qm = sum(q[v] * math.log(q[v] / m[v]) for v in range(len(q)) if q[v] > 0)
  return (1 - alpha) * kl_pm + alpha * kl_qm


def np_token_mean(per_token, mask):
  num = sum(per_token[b][t] * mask[b][t] for b in range(len(mask)) for t in range(len(mask[0])))
  return num / max(float(np.sum(mask)), 1.0)


def np_per_token_jsd(s_logits, t_logits, alpha):
  ls, lt = np_log_softmax(s_logits), np_log_softmax(t_logits)
  return [[np_jsd(ls[b, t], lt[b, t], alpha) for t in range(T)] for b in range(B)]


def np_topk_tail(s_logits, t_logits, k, alpha, ids_from="student", tail=True, eps=1e-7):
  ls, lt = np_log_softmax(s_logits), np_log_softmax(t_logits)
  out = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      src = s_logits[b, t] if ids_from == "student" else t_logits[b, t]
      ids = sorted(range(V), key=lambda v: -src[v])[:k]
      ps, pt = [ls[b, t, v] for v in ids], [lt[b, t, v] for v in ids]
      if tail:  # remaining mass 1 - Σ p_k, floored at the clamp of the docstring
        ps.append(math.log(1 - math.exp(min(math.log(sum(math.exp(x) for x in ps)), -eps))))
        pt.append(math.log(1 - math.exp(min(math.log(sum(math.exp(x) for x in pt)), -eps))))
      else:
        zs, zt = math.log(sum(math.exp(x) for x in ps)), math.log(sum(math.exp(x) for x in pt))
        ps, pt = [x - zs for x in ps], [x - zt for x in pt]
      out[b, t] = np_jsd(np.array(ps), np.array(pt), alpha)
  return out


# ------------------------------------------------------------------------ full vocabulary


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_loss_matches_numpy_float64(x64, alpha):
  s, t = _data(1)
  loss, aux = jsd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(MASK), alpha=alpha)
  expected = np_token_mean(np_per_token_jsd(s, t, alpha), MASK)
  assert loss.dtype == jnp.float64
  np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(aux["divergence"], expected, rtol=1e-10)
  assert aux["num_tokens"] == 4


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_jsd_loss_matches_numpy_float32(alpha):
  s, t = _data(2)
  fn = jax.jit(functools.partial(jsd_loss, alpha=alpha))
  loss, _ = fn(
    jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(MASK, jnp.float32)
  )
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(
    loss, np_token_mean(np_per_token_jsd(s, t, alpha), MASK), rtol=1e-5, atol=1e-6
  )


def test_reverse_kl_loss_is_kl_student_teacher(x64):
  s, t = _data(3)
  loss, _ = reverse_kl_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(MASK))
  ls, lt = np_log_softmax(s), np_log_softmax(t)
  per = [[np_kl(ls[b, t_], lt[b, t_]) for t_ in range(T)] for b in range(B)]
  np.testing.assert_allclose(loss, np_token_mean(per, MASK), rtol=1e-10)


def test_aggregation_modes_and_token_weights(x64):
  s, t = _data(4)
  w = np.random.default_rng(9).uniform(0.5, 2.0, (B, T))
  per = np.asarray(np_per_token_jsd(s, t, 1.0))
  loss, _ = reverse_kl_loss(
    jnp.asarray(s),
    jnp.asarray(t),
    jnp.asarray(MASK),
    agg="seq_mean_token_mean",
    token_weights=jnp.asarray(w),
  )
  rows = [sum(per[b, i] * w[b, i] * MASK[b, i] for i in range(T)) / MASK[b].sum() for b in range(B)]
  np.testing.assert_allclose(loss, np.mean(rows), rtol=1e-10)
  loss, _ = reverse_kl_loss(
    jnp.asarray(s), jnp.asarray(t), jnp.asarray(MASK), agg="seq_mean_token_sum_norm", max_len=10
  )
  np.testing.assert_allclose(
    loss, np.mean([(per[b] * MASK[b]).sum() / 10 for b in range(B)]), rtol=1e-10
  )


def test_jsd_limits(x64):
  """JSD_α = α KL(Q‖P) + O(α²) at α → 0 and (1-α) KL(P‖Q) + O((1-α)²) at α → 1 (P student, Q teacher)."""
  s, t = _data(5)
  ls, lt = jnp.asarray(np_log_softmax(s)), jnp.asarray(np_log_softmax(t))
  kl_qp = np.array(
    [[np_kl(np.asarray(lt[b, i]), np.asarray(ls[b, i])) for i in range(T)] for b in range(B)]
  )
  kl_pq = np.array(
    [[np_kl(np.asarray(ls[b, i]), np.asarray(lt[b, i])) for i in range(T)] for b in range(B)]
  )
  a = 1e-7
  np.testing.assert_allclose(generalized_jsd(ls, lt, alpha=a) / a, kl_qp, rtol=1e-5)
  np.testing.assert_allclose(generalized_jsd(ls, lt, alpha=1 - a) / a, kl_pq, rtol=1e-5)
  # The endpoints are these limits exactly: forward KL at α = 0, reverse KL at α = 1.
  np.testing.assert_allclose(generalized_jsd(ls, lt, alpha=0.0), kl_qp, rtol=1e-12)
  np.testing.assert_allclose(generalized_jsd(ls, lt, alpha=1.0), kl_pq, rtol=1e-12)
  # Symmetric at 0.5, zero on equal inputs, within [0, log 2].
  j = generalized_jsd(ls, lt, alpha=0.5)
  np.testing.assert_allclose(j, generalized_jsd(lt, ls, alpha=0.5), rtol=1e-12)
  assert np.all(j > 0) and np.all(j <= math.log(2))
  np.testing.assert_allclose(generalized_jsd(ls, ls, alpha=0.3), 0.0, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_full_vocab_gradients(x64, alpha):
  s, t = _data(6)
  t = jnp.asarray(t)
  fn = lambda x: jsd_loss(x, t, jnp.asarray(MASK), alpha=alpha)[0]  # noqa: E731
  check_grads(jax.jit(fn), (jnp.asarray(s),), order=1, modes=["rev"])
  g_teacher = jax.grad(lambda y: jsd_loss(jnp.asarray(s), y, jnp.asarray(MASK), alpha=alpha)[0])(t)
  np.testing.assert_array_equal(g_teacher, 0.0)


def test_student_to_teacher_mapping(x64):
  s, t = _data(7, v_t=10)
  with pytest.raises(ValueError, match="student_to_teacher"):
    jsd_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(MASK))
  with pytest.raises(ValueError, match="student_to_teacher"):
    D.match_vocab(jnp.asarray(s), jnp.asarray(t))
  mapping = np.array([9, 0, 4, 2, 7, 1, 5])
  loss, _ = jsd_loss(
    jnp.asarray(s),
    jnp.asarray(t),
    jnp.asarray(MASK),
    alpha=0.5,
    student_to_teacher=jnp.asarray(mapping, jnp.int32),
  )
  t_on_student = np.array(
    [[[t[b, i, mapping[v]] for v in range(V)] for i in range(T)] for b in range(B)]
  )
  np.testing.assert_allclose(
    loss, np_token_mean(np_per_token_jsd(s, t_on_student, 0.5), MASK), rtol=1e-10
  )
  with pytest.raises(ValueError, match="student_to_teacher"):
    D.match_vocab(jnp.asarray(s), jnp.asarray(t), student_to_teacher=jnp.arange(6))
  with pytest.raises(ValueError, match=r"student_to_teacher.*\[0, 10\)"):
    D.match_vocab(jnp.asarray(s), jnp.asarray(t), student_to_teacher=jnp.arange(7) + 4)
  with pytest.raises(TypeError, match="student_to_teacher"):
    D.match_vocab(jnp.asarray(s), jnp.asarray(t), student_to_teacher=jnp.arange(7.0))


# ---------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("ids_from", ["student", "teacher"])
def test_topk_with_k_equal_vocab_is_full_form(x64, alpha, ids_from):
  s, t = map(jnp.asarray, _data(8))
  full, _ = jsd_loss(s, t, jnp.asarray(MASK), alpha=alpha)
  topk, aux = topk_jsd_loss(s, t, jnp.asarray(MASK), k=V, alpha=alpha, ids_from=ids_from)
  np.testing.assert_allclose(topk, full, rtol=1e-10, atol=1e-13)
  np.testing.assert_allclose(aux["student_tail_mass"], 0.0, atol=1e-14)


def test_topk_with_k_equal_vocab_is_full_form_float32():
  s, t = (jnp.asarray(x, jnp.float32) for x in _data(9))
  for alpha in (0.0, 0.5, 1.0):
    full, _ = jsd_loss(s, t, jnp.asarray(MASK), alpha=alpha)
    topk, _ = topk_jsd_loss(s, t, jnp.asarray(MASK), k=V, alpha=alpha)
    np.testing.assert_allclose(topk, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  ("k", "alpha", "ids_from", "tail"),
  [
    (3, 0.5, "student", True),
    (2, 1.0, "teacher", True),
    (4, 0.0, "student", True),
    (3, 0.5, "student", False),
  ],
)
def test_topk_tail_matches_numpy(x64, k, alpha, ids_from, tail):
  s, t = _data(10)
  loss, aux = topk_jsd_loss(
    jnp.asarray(s),
    jnp.asarray(t),
    jnp.asarray(MASK),
    k=k,
    alpha=alpha,
    ids_from=ids_from,
    tail=tail,
  )
  np.testing.assert_allclose(
    loss, np_token_mean(np_topk_tail(s, t, k, alpha, ids_from, tail), MASK), rtol=1e-10
  )
  ls = np_log_softmax(s)
  tail_s = [[1 - np.sort(np.exp(ls[b, i]))[::-1][:k].sum() for i in range(T)] for b in range(B)]
  if ids_from == "student":
    np.testing.assert_allclose(aux["student_tail_mass"], np_token_mean(tail_s, MASK), rtol=1e-10)


def test_topk_float32_and_gradients(x64):
  s, t = _data(11)
  with jax.enable_x64(False):
    fn = jax.jit(functools.partial(topk_jsd_loss, k=3, alpha=0.5))
    loss, _ = fn(
      jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(MASK, jnp.float32)
    )
    np.testing.assert_allclose(loss, np_token_mean(np_topk_tail(s, t, 3, 0.5), MASK), rtol=1e-5)
  tt = jnp.asarray(t)
  for alpha in (0.5, 1.0):
    fn = jax.jit(lambda x, a=alpha: topk_jsd_loss(x, tt, jnp.asarray(MASK), k=3, alpha=a)[0])
    check_grads(fn, (jnp.asarray(s),), order=1, modes=["rev"])


def test_topk_logprobs_and_tail_bucket(x64):
  s, _ = _data(12)
  ids = jax.lax.top_k(jnp.asarray(s), 3)[1]
  lp = D.topk_logprobs(jnp.asarray(s), ids)
  ls = np_log_softmax(s)
  np.testing.assert_allclose(lp, np.take_along_axis(ls, np.asarray(ids), -1), rtol=1e-12)
  buckets = D.add_tail_bucket(lp)
  np.testing.assert_allclose(np.exp(buckets).sum(-1), 1.0, rtol=1e-12)
  # Temperature divides the logits before normalising.
  lp2 = D.topk_logprobs(jnp.asarray(s), ids, temperature=2.0)
  np.testing.assert_allclose(
    lp2, np.take_along_axis(np_log_softmax(s / 2), np.asarray(ids), -1), rtol=1e-12
  )


# --------------------------------------------------------------------------- sampled token


def test_opd_rewards_and_pg_loss_match_numpy(x64):
  rng = np.random.default_rng(13)
  ls, lt = -rng.uniform(0.1, 3, (B, T)), -rng.uniform(0.1, 3, (B, T))
  r = D.opd_token_rewards(jnp.asarray(ls), jnp.asarray(lt), jnp.asarray(MASK))
  np.testing.assert_allclose(r, (lt - ls) * MASK, rtol=1e-12)
  loss, aux = opd_pg_loss(jnp.asarray(ls), jnp.asarray(lt), jnp.asarray(MASK))
  np.testing.assert_allclose(loss, np_token_mean(-(lt - ls) * ls, MASK), rtol=1e-10)
  np.testing.assert_allclose(aux["reverse_kl_k1"], np_token_mean(ls - lt, MASK), rtol=1e-10)
  with jax.enable_x64(False):
    loss32, _ = opd_pg_loss(
      jnp.asarray(ls, jnp.float32), jnp.asarray(lt, jnp.float32), jnp.asarray(MASK, jnp.float32)
    )
    assert loss32.dtype == jnp.float32
    np.testing.assert_allclose(loss32, np_token_mean(-(lt - ls) * ls, MASK), rtol=1e-5)
  # ∂loss/∂logp_s = -r_t · m_t / Σm (reward is a constant).
  g = jax.grad(lambda x: opd_pg_loss(x, jnp.asarray(lt), jnp.asarray(MASK))[0])(jnp.asarray(ls))
  np.testing.assert_allclose(g, -(lt - ls) * MASK / MASK.sum(), rtol=1e-10)
  # (No finite-difference check here: the reward's stop-gradient makes the surrogate's gradient
  # differ from the derivative of its value on purpose.)
  np.testing.assert_array_equal(
    jax.grad(lambda x: D.opd_token_rewards(x, jnp.asarray(lt), jnp.asarray(MASK)).sum())(
      jnp.asarray(ls)
    ),
    0.0,
  )


def test_sampled_token_gradient_is_unbiased_for_reverse_kl(x64):
  """Σ_y π_s(y) ∇[sampled surrogate at y] = ∇ KL(π_s ‖ π_t) exactly (one state, all V tokens)."""
  rng = np.random.default_rng(14)
  z, zt = jnp.asarray(rng.standard_normal(V)), jnp.asarray(rng.standard_normal(V))
  lt = jax.nn.log_softmax(zt)

  def expected_surrogate(z):
    ls = jax.nn.log_softmax(z)
    probs = jax.lax.stop_gradient(jnp.exp(ls))
    per_y = [
      opd_pg_loss(ls[y][None, None], lt[y][None, None], jnp.ones((1, 1)))[0] for y in range(V)
    ]
    return jnp.sum(probs * jnp.stack(per_y))

  g_pg = jax.grad(expected_surrogate)(z)
  g_kl = jax.grad(lambda z: reverse_kl_loss(z[None, None], zt[None, None], jnp.ones((1, 1)))[0])(z)
  np.testing.assert_allclose(g_pg, g_kl, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------ degenerate input


def test_all_masked_and_padding_give_finite_zeros(x64):
  s, t = map(jnp.asarray, _data(15))
  zero = jnp.zeros((B, T))
  for fn in (
    lambda x: jsd_loss(x, t, zero, alpha=0.5),
    lambda x: topk_jsd_loss(x, t, zero, k=3),
    lambda x: reverse_kl_loss(x, t, zero, agg="seq_mean_token_mean"),
  ):
    loss, aux = fn(s)
    assert loss == 0.0 and all(np.isfinite(v) for v in aux.values())
    np.testing.assert_array_equal(jax.grad(lambda x, fn=fn: fn(x)[0])(s), 0.0)
  ls = jnp.where(zero == 0, -jnp.inf, 0.0)  # padding log-probs of -inf
  loss, aux = opd_pg_loss(ls, ls, zero)
  assert loss == 0.0 and np.isfinite(aux["reverse_kl_k1"])
  np.testing.assert_array_equal(jax.grad(lambda x: opd_pg_loss(x, ls, zero)[0])(ls), 0.0)


def test_masked_row_equals_slicing(x64):
  s, t = map(jnp.asarray, _data(16))
  mask = jnp.asarray([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
  for agg in ("token_mean", "seq_mean_token_mean"):
    full, _ = jsd_loss(s, t, mask, alpha=0.5, agg=agg)
    sliced, _ = jsd_loss(s[:1], t[:1], mask[:1], alpha=0.5, agg=agg)
    np.testing.assert_allclose(full, sliced, rtol=1e-12)


def test_minus_inf_logits_are_finite(x64):
  s, t = _data(17)
  s[..., 0] = -np.inf
  t[..., 0] = -np.inf  # a vocabulary entry masked in both models
  for alpha in (0.0, 0.5, 1.0):
    fn = lambda x, a=alpha: jsd_loss(x, jnp.asarray(t), jnp.asarray(MASK), alpha=a)[0]  # noqa: E731
    loss, g = jax.value_and_grad(fn)(jnp.asarray(s))
    np.testing.assert_allclose(
      loss, np_token_mean(np_per_token_jsd(s[..., 1:], t[..., 1:], alpha), MASK), rtol=1e-10
    )
    assert np.all(np.isfinite(g))


def test_bf16_inputs_compute_in_float32():
  s, t = _data(18)
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  loss, _ = jsd_loss(sb, tb, jnp.asarray(MASK), alpha=0.5)
  assert loss.dtype == jnp.float32
  ref = np_token_mean(
    np_per_token_jsd(np.asarray(sb, np.float64), np.asarray(tb, np.float64), 0.5), MASK
  )
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  g = jax.grad(lambda x: topk_jsd_loss(x, tb, jnp.asarray(MASK), k=3)[0])(sb)
  assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


def test_bad_inputs_raise_naming_the_argument():
  s, t = (jnp.asarray(x, jnp.float32) for x in _data(19))
  m = jnp.asarray(MASK)
  cases = [
    (ValueError, "`mask`", lambda: D.jsd_loss(s, t, m[:, :2])),
    (ValueError, "`agg`", lambda: D.jsd_loss(s, t, m, agg="mean")),
    (ValueError, "`alpha`", lambda: D.jsd_loss(s, t, m, alpha=1.5)),
    (TypeError, "`alpha`", lambda: D.jsd_loss(s, t, m, alpha=jnp.float32(0.5))),
    (ValueError, "`temperature`", lambda: D.jsd_loss(s, t, m, temperature=0.0)),
    (TypeError, "`student_logits`", lambda: D.jsd_loss(s.astype(jnp.int32), t, m)),
    (ValueError, "`student_logits`", lambda: D.jsd_loss(s[0], t, m)),
    (ValueError, "`teacher_logits`", lambda: D.jsd_loss(s, t[:1], m)),
    (ValueError, "`token_weights`", lambda: D.jsd_loss(s, t, m, token_weights=jnp.ones((B,)))),
    (ValueError, "`ids_from`", lambda: D.topk_jsd_loss(s, t, m, k=3, ids_from="both")),
    (ValueError, "`k`", lambda: D.topk_jsd_loss(s, t, m, k=V + 1)),
    (ValueError, "`k`", lambda: D.topk_jsd_loss(s, t, m, k=0)),
    (ValueError, "`teacher_topk_logp`", lambda: D.topk_tail_loss(s, t[..., :3], m)),
    (TypeError, "`ids`", lambda: D.topk_logprobs(s, jnp.zeros((B, T, 2)))),
    (ValueError, "`ids`", lambda: D.topk_logprobs(s, jnp.zeros((B, 1, 2), jnp.int32))),
    (ValueError, "`teacher_logp`", lambda: D.opd_pg_loss(s[..., 0], t[:1, :, 0], m)),
    (
      TypeError,
      "`student_logp`",
      lambda: D.opd_pg_loss(jnp.zeros((B, T), jnp.int32), t[..., 0], m),
    ),
    (
      ValueError,
      "`max_len`",
      lambda: D.opd_pg_loss(s[..., 0], t[..., 0], m, agg="seq_mean_token_sum_norm"),
    ),
  ]
  for exc, name, call in cases:
    with pytest.raises(exc, match=name):
      call()


# ------------------------------------------------------------------------------- EMA teacher


def test_ema_update():
  rng = np.random.default_rng(20)
  teacher = {
    "w": rng.standard_normal((3, 2)).astype(np.float32),
    "b": jnp.asarray(rng.standard_normal(2), jnp.bfloat16),
    "step": jnp.asarray(3),
  }
  student = {
    "w": rng.standard_normal((3, 2)).astype(np.float32),
    "b": jnp.asarray(rng.standard_normal(2), jnp.bfloat16),
    "step": jnp.asarray(7),
  }
  new = D.ema_update(teacher, student, 0.95)
  np.testing.assert_allclose(new["w"], 0.95 * teacher["w"] + 0.05 * student["w"], rtol=1e-6)
  assert new["b"].dtype == jnp.bfloat16 and int(new["step"]) == 3
  np.testing.assert_allclose(
    np.asarray(new["b"], np.float32),
    0.95 * np.asarray(teacher["b"], np.float32) + 0.05 * np.asarray(student["b"], np.float32),
    rtol=1e-2,
  )
  np.testing.assert_array_equal(D.ema_update(teacher, student, 1.0)["w"], teacher["w"])
  np.testing.assert_array_equal(D.ema_update(teacher, student, 0.0)["w"], student["w"])
  jitted = jax.jit(D.ema_update)(teacher, student, jnp.float32(0.5))
  np.testing.assert_allclose(jitted["w"], 0.5 * (teacher["w"] + student["w"]), rtol=1e-6)
  with pytest.raises(ValueError, match="student_params"):
    D.ema_update(teacher, {"w": student["w"]}, 0.9)
  with pytest.raises(ValueError, match="student_params"):
    D.ema_update(teacher, {**student, "w": student["w"][:2]}, 0.9)
  with pytest.raises(ValueError, match="decay"):
    D.ema_update(teacher, student, 1.2)
