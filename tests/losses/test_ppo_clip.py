"""ppo_clip (GRPO / GSPO / GSPO-token) against numpy loops, gradients and the notes' identities."""

import functools

import jax
import jax.numpy as jnp
import losses_np_ref as ref
import numpy as np
import pytest
from jax.test_util import check_grads

from postrain import losses

LEVELS = losses.LEVELS
AGGS = losses.AGG_MODES
EPS = {"token": (0.2, 0.28), "sequence": (0.05, 0.08), "sequence_token": (0.05, 0.08)}
# Calls on the shared [6, 7] shape run eagerly: primitives compile once per shape, whereas a jit
# per static configuration would compile dozens of programs. One-off shapes use `jitted`, one
# compile instead of one per primitive.
ppo_clip = losses.ppo_clip
STATIC = ("eps_low", "eps_high", "level", "agg", "dual_clip", "max_len")


def jitted(fn, static=("level", "agg")):
  return jax.jit(fn, static_argnames=static)


def _call(logp, old, adv, mask, level, agg, **kw):
  eps_low, eps_high = EPS[level]
  return ppo_clip(
    logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high, level=level, agg=agg, max_len=9, **kw
  )


def _ref(logp, old, adv, mask, level, agg, **kw):
  eps_low, eps_high = EPS[level]
  return ref.ppo_clip(
    logp, old, adv, mask, eps_low=eps_low, eps_high=eps_high, level=level, agg=agg, max_len=9, **kw
  )


OPTIONS = {
  "plain": {},
  "dual": {"dual_clip": 1.3},
  "is_weights": {"is_weights": "w"},
  "adv_per_token": {"adv2d": True},
}


def _inputs(batch, option, dtype, seed=0):
  logp, old, adv, mask = batch(seed=seed, dtype=dtype)
  adv[0] = 0.0  # a zero-advantage row (all-equal rewards): never counted as clipped
  kw = dict(OPTIONS[option])
  rng = np.random.default_rng(seed + 100)
  if kw.pop("adv2d", False):
    adv = rng.normal(size=logp.shape).astype(dtype)
    adv[0, :3] = 0.0
  if kw.get("is_weights") == "w":
    kw["is_weights"] = rng.uniform(0.5, 1.5, size=logp.shape).astype(dtype)
  return (logp, old, adv, mask), kw


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("level", LEVELS)
def test_value_and_aux_float64(x64, batch, level, option):
  args, kw = _inputs(batch, option, np.float64)
  for agg in AGGS:
    loss, aux = _call(*map(jnp.asarray, args), level, agg, **kw)
    want, want_aux = _ref(*args, level, agg, **kw)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(loss, want, rtol=1e-10, atol=1e-12, err_msg=agg)
    for key, value in want_aux.items():
      np.testing.assert_allclose(aux[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{agg} {key}")


@pytest.mark.parametrize("level", LEVELS)
def test_value_float32(batch, level):
  for option, agg in zip(["plain", "dual", "adv_per_token", "is_weights"], AGGS):
    args, kw = _inputs(batch, option, np.float32, seed=3)
    loss, aux = _call(*args, level, agg, **kw)
    want, want_aux = _ref(*args, level, agg, **kw)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    for key, value in want_aux.items():
      np.testing.assert_allclose(aux[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_clipping_actually_happens_in_the_test_data(batch):
  """Guard: the reference comparisons above exercise both clip sides and the dual clip."""
  args, kw = _inputs(batch, "dual", np.float64)
  _, aux = ref.ppo_clip(*args, eps_low=0.2, eps_high=0.28, level="token", agg="token_mean", **kw)
  assert aux["clip_frac_low"] > 0 and aux["clip_frac_high"] > 0 and aux["dual_clip_frac"] > 0


@pytest.mark.parametrize("option", ["plain", "dual", "is_weights", "adv_per_token"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradient_finite_differences(x64, batch, level, option):
  (logp, old, adv, mask), kw = _inputs(batch, option, np.float64, seed=1)
  for agg in ("token_mean", "seq_mean_token_mean"):
    f = lambda lp, agg=agg: _call(lp, old, adv, mask, level, agg, **kw)[0]  # noqa: E731
    check_grads(f, (jnp.asarray(logp),), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("adv_shape", ["per_seq", "per_token"])
def test_gspo_token_gradient_is_eq17(x64, batch, adv_shape):
  """∇ of GSPO-token = coef·(−A_{i,t})·s_i on unclipped tokens (Eq. 17), also per-token A."""
  logp, old, adv, mask = batch(seed=2, dtype=np.float64)
  if adv_shape == "per_token":
    adv = np.random.default_rng(5).normal(size=logp.shape)
  for agg in AGGS:
    grad = jax.grad(lambda lp, agg=agg: _call(lp, old, adv, mask, "sequence_token", agg)[0])(
      jnp.asarray(logp)
    )
    want = ref.gspo_token_grad(
      logp, old, adv, mask, eps_low=0.05, eps_high=0.08, agg=agg, max_len=9
    )
    np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14, err_msg=agg)


def test_token_gradient_matches_analytic_grpo_weights(x64, batch):
  """GRPO gradient per token: coef·(−A)·ρ_t on unclipped tokens, 0 on clipped ones."""
  logp, old, adv, mask = batch(seed=4, dtype=np.float64)
  grad = jax.grad(lambda lp: _call(lp, old, adv, mask, "token", "seq_mean_token_mean")[0])(
    jnp.asarray(logp)
  )
  coef = ref.agg_coef(mask, "seq_mean_token_mean")
  rho = np.exp(logp - old)
  a = adv[:, None]
  active = ((a > 0) & (rho < 1.28)) | ((a < 0) & (rho > 0.8))
  np.testing.assert_allclose(grad, coef * -a * rho * active, rtol=1e-10, atol=1e-14)


def test_gspo_token_equals_gspo(x64, batch):
  """Same value for any advantages; same gradient for per-sequence advantages (GSPO §4.3)."""
  logp, old, adv, mask = batch(seed=6, dtype=np.float64)
  adv2d = np.random.default_rng(0).normal(size=logp.shape)
  for agg in AGGS:
    for a in (adv, adv2d):
      v_seq = _call(logp, old, a, mask, "sequence", agg)[0]
      v_tok = _call(logp, old, a, mask, "sequence_token", agg)[0]
      np.testing.assert_allclose(v_tok, v_seq, rtol=1e-12)
    g = {
      level: jax.grad(lambda lp, level=level, agg=agg: _call(lp, old, adv, mask, level, agg)[0])(
        jnp.asarray(logp)
      )
      for level in ("sequence", "sequence_token")
    }
    np.testing.assert_allclose(g["sequence_token"], g["sequence"], rtol=1e-10, atol=1e-14)
    assert np.abs(g["sequence"]).max() > 0


def test_length_one_sequence_equals_token(x64, batch):
  logp, old, adv, _ = batch(seed=7, dtype=np.float64)
  mask = np.zeros_like(logp)
  mask[np.arange(logp.shape[0]), np.arange(logp.shape[0]) % logp.shape[1]] = 1.0
  for agg in AGGS:
    eps = {"eps_low": 0.2, "eps_high": 0.28, "agg": agg, "max_len": 9}
    out = {
      level: jax.value_and_grad(
        lambda lp, level=level, eps=eps: ppo_clip(lp, old, adv, mask, level=level, **eps)[0]
      )(jnp.asarray(logp))
      for level in LEVELS
    }
    for level in ("sequence", "sequence_token"):
      np.testing.assert_allclose(out[level][0], out["token"][0], rtol=1e-12)
      np.testing.assert_allclose(out[level][1], out["token"][1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("level", LEVELS)
def test_on_policy_gradient_is_plain_policy_gradient(x64, batch, level):
  """logp == old_logp: nothing clipped, loss −mean(A), ∂/∂logp_{i,t} = −A_i/(R·|y_i|)."""
  logp, _, adv, mask = batch(seed=8, dtype=np.float64)
  f = lambda lp: _call(lp, jnp.asarray(logp), adv, mask, level, "seq_mean_token_mean")  # noqa: E731
  (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
  n = mask.sum(-1)
  rows = n > 0
  np.testing.assert_allclose(loss, -adv[rows].mean(), rtol=1e-12)
  want = np.where(mask > 0, -adv[:, None] / (rows.sum() * np.maximum(n, 1)[:, None]), 0.0)
  np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-15)
  assert aux["ratio_mean"] == 1.0 and aux["approx_kl"] == 0.0
  assert aux["clip_frac_low"] == 0.0 and aux["clip_frac_high"] == 0.0


def test_gspo_clipped_sequence_gets_no_gradient(x64):
  """A > 0 with s_i > 1 + eps_high (and A < 0 with s_i < 1 − eps_low): zero gradient row."""
  logp = jnp.asarray([[-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5], [-1.0, -2.0, -0.5]])
  old = logp - jnp.asarray([[0.01], [-0.01], [0.0]])  # log s = +0.01, −0.01, 0
  adv = jnp.asarray([1.0, -1.0, 1.0])
  mask = jnp.ones_like(logp)
  grad_fn = jitted(
    jax.grad(
      lambda lp, level: ppo_clip(
        lp, old, adv, mask, eps_low=3e-4, eps_high=4e-4, level=level, agg="seq_mean_token_mean"
      )[0]
    ),
    static=("level",),
  )
  for level in ("sequence", "sequence_token"):
    grad = grad_fn(logp, level=level)
    np.testing.assert_array_equal(grad[:2], 0.0)
    assert np.all(np.asarray(grad[2]) != 0)


@pytest.mark.parametrize("level", LEVELS)
def test_length_normalisation(x64, level):
  """Every token with log-ratio δ gives s_i = e^δ whatever |y_i| (GSPO §5 test)."""
  logp = jnp.zeros((3, 5))
  mask = jnp.asarray(np.arange(5)[None, :] < np.array([[1], [3], [5]]), jnp.float64)
  _, aux = jax.jit(ppo_clip, static_argnames=STATIC)(
    logp, logp - 0.1, jnp.ones(3), mask, eps_low=0.5, eps_high=0.5, level=level, agg="token_mean"
  )
  np.testing.assert_allclose(aux["ratio_mean"], np.exp(0.1), rtol=1e-12)


@pytest.mark.parametrize("level", LEVELS)
def test_old_logp_advantages_and_weights_get_no_gradient(batch, level):
  logp, old, adv, mask = batch(seed=9)
  w = np.full(logp.shape, 0.7, np.float32)

  def f(old, adv, w):
    return _call(logp, old, adv, mask, level, "token_mean", is_weights=w)[0]

  grads = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(old), jnp.asarray(adv), jnp.asarray(w))
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("level", LEVELS)
def test_masking_equals_slicing(batch, level):
  """Masking the tail tokens and whole rows equals slicing them away (value and gradient)."""
  logp, old, adv, mask = batch(seed=10, empty_row=False)
  mask[:, 5:] = 0.0
  mask[2] = 0.0
  keep = [0, 1, 3, 4, 5]
  sliced = (logp[keep, :5], old[keep, :5], adv[keep], mask[keep, :5])
  for agg in ("token_mean", "seq_mean_token_mean"):  # the row logic; all modes: aggregate tests
    v_full, g_full = jax.value_and_grad(
      lambda lp, agg=agg: _call(lp, old, adv, mask, level, agg)[0]
    )(logp)
    v_sl, g_sl = jax.value_and_grad(lambda lp, agg=agg: _call(lp, *sliced[1:], level, agg)[0])(
      sliced[0]
    )
    np.testing.assert_allclose(v_full, v_sl, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_full)[keep, :5], g_sl, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(g_full)[:, 5:], 0.0)
    np.testing.assert_array_equal(np.asarray(g_full)[2], 0.0)


@pytest.mark.parametrize("level", LEVELS)
def test_padding_values_do_not_matter(batch, level):
  """Appending padded columns filled with large finite garbage changes nothing."""
  logp, old, adv, mask = batch(seed=11)
  rng = np.random.default_rng(0)
  pad = lambda x, v: np.concatenate([x, v], axis=1)  # noqa: E731
  logp_p = pad(logp, rng.normal(size=(6, 3)).astype(np.float32) * 1e3)
  old_p = pad(old, rng.normal(size=(6, 3)).astype(np.float32) * 1e3)
  mask_p = pad(mask, np.zeros((6, 3), np.float32))
  vg = jitted(
    jax.value_and_grad(lambda lp, o, m, level, agg: _call(lp, o, adv, m, level, agg), has_aux=True)
  )
  for agg in AGGS:
    (v, aux), g = jax.value_and_grad(
      lambda lp, agg=agg: _call(lp, old, adv, mask, level, agg), has_aux=True
    )(logp)
    (vp, auxp), gp = vg(logp_p, old_p, mask_p, level=level, agg=agg)
    np.testing.assert_allclose(vp, v, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gp)[:, :7], g, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(gp)[:, 7:], 0.0)
    for key in aux:
      if key != "approx_kl":  # approx_kl of the padding is masked out too, but check it below
        np.testing.assert_allclose(auxp[key], aux[key], rtol=1e-5, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(auxp["approx_kl"], aux["approx_kl"], rtol=1e-5)


@pytest.mark.parametrize("level", LEVELS)
def test_jit_and_vmap_match_eager(batch, level):
  stacked = [batch(seed=s) for s in range(3)]
  args = [np.stack(x) for x in zip(*stacked)]
  fn = functools.partial(_call, level=level, agg="seq_mean_token_mean")
  vg = jax.value_and_grad(fn, has_aux=True)
  (v_vmap, aux_vmap), g_vmap = jax.jit(jax.vmap(vg))(*map(jnp.asarray, args))
  for k, one in enumerate(stacked):
    (v, aux), g = vg(*one)
    (v_jit, _), g_jit = jax.jit(vg)(*one)
    np.testing.assert_allclose(v_jit, v, rtol=1e-6)
    np.testing.assert_allclose(g_jit, g, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(v_vmap[k], v, rtol=1e-6)
    np.testing.assert_allclose(g_vmap[k], g, rtol=1e-5, atol=1e-9)
    for key in aux:
      np.testing.assert_allclose(aux_vmap[key][k], aux[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("level", LEVELS)
def test_bf16_inputs_compute_in_float32(batch, level):
  logp, old, adv, mask = batch(seed=12)
  lp16, old16 = logp.astype(jnp.bfloat16), old.astype(jnp.bfloat16)
  loss, grad = jax.jit(
    jax.value_and_grad(lambda lp: _call(lp, old16, adv, mask, level, "token_mean")[0])
  )(jnp.asarray(lp16))
  assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  want, _ = _ref(
    np.asarray(lp16, np.float64), np.asarray(old16, np.float64), adv, mask, level, "token_mean"
  )
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_dual_clip_bounds_negative_advantage_loss(x64):
  """A < 0 and a huge ratio: the loss is capped at −c·A and the gradient vanishes."""
  logp, old = jnp.asarray([[0.0]]), jnp.asarray([[-3.0]])  # ρ = e³ ≈ 20
  kw = {"eps_low": 0.2, "eps_high": 0.28, "agg": "token_mean"}
  loss, g = jax.jit(
    jax.value_and_grad(
      lambda lp: ppo_clip(lp, old, jnp.asarray([-2.0]), jnp.ones((1, 1)), dual_clip=3.0, **kw)[0]
    )
  )(logp)
  np.testing.assert_allclose(loss, 3.0 * 2.0)
  assert g[0, 0] == 0.0
  loss_nodual = jax.jit(ppo_clip, static_argnames=STATIC)(
    logp, old, jnp.asarray([-2.0]), jnp.ones((1, 1)), **kw
  )[0]
  np.testing.assert_allclose(loss_nodual, 2.0 * np.exp(3.0), rtol=1e-12)
