"""models.logprobs / token_logprobs_from_hidden vs numpy log-softmax of the model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_testutil import left_padded_batch

from postrain import models


def _np_logsoftmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_token_logprobs_from_hidden_matches_numpy():
  rng = np.random.default_rng(0)
  hidden = rng.standard_normal((7, 16)).astype(np.float32)
  weight = rng.standard_normal((16, 50)).astype(np.float32)
  targets = rng.integers(0, 50, 7).astype(np.int32)
  logp, ent = models.token_logprobs_from_hidden(
    jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(targets)
  )
  ls = _np_logsoftmax(hidden.astype(np.float64) @ weight.astype(np.float64))
  np.testing.assert_allclose(np.asarray(logp), ls[np.arange(7), targets], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ent), -(np.exp(ls) * ls).sum(-1), rtol=1e-5, atol=1e-5)
  # limiting case: all-equal logits -> entropy log V, logp -log V
  logp, ent = models.token_logprobs_from_hidden(
    jnp.zeros((2, 16)), jnp.asarray(weight), jnp.array([0, 3])
  )
  np.testing.assert_allclose(np.asarray(ent), np.log(50.0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(logp), -np.log(50.0), rtol=1e-6)


def test_token_logprobs_from_hidden_bf16_is_float32():
  h = jnp.ones((3, 8), jnp.bfloat16)
  w = jnp.ones((8, 10), jnp.bfloat16)
  logp, ent = models.token_logprobs_from_hidden(h, w, jnp.array([0, 1, 2]))
  assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ent), np.log(10.0), rtol=1e-5)


def test_logprobs_matches_logits_of_full_forward(tiny_qwen3, jit_forward, jit_logprobs):
  cfg, model = tiny_qwen3
  tokens, valid, positions = left_padded_batch(0, 3, 10, cfg.vocab_size, (0, 2, 4))
  mask = valid.copy()
  mask[0, 7:] = False  # some valid tokens not scored
  logp, ent = jit_logprobs(model, tokens, mask, valid=valid, return_entropy=True)
  ls = _np_logsoftmax(np.asarray(jit_forward(model, tokens, positions, valid), np.float64))
  want = np.zeros((3, 10))
  want_ent = np.zeros((3, 10))
  for b in range(3):
    for t in range(1, 10):
      if mask[b, t] and valid[b, t - 1]:
        want[b, t] = ls[b, t - 1, tokens[b, t]]
        want_ent[b, t] = -(np.exp(ls[b, t - 1]) * ls[b, t - 1]).sum()
  assert logp.shape == (3, 10) and logp.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logp), want, atol=2e-5)
  np.testing.assert_allclose(np.asarray(ent), want_ent, atol=2e-5)
  assert (np.asarray(logp)[:, 0] == 0).all() and (np.asarray(logp)[~mask] == 0).all()


def test_logprobs_padding_equals_slicing(tiny_llama, jit_logprobs):
  cfg, model = tiny_llama
  tokens, valid, _ = left_padded_batch(1, 2, 9, cfg.vocab_size, (0, 4))
  logp = jit_logprobs(model, tokens, valid, valid=valid)
  alone = jit_logprobs(model, tokens[1:, 4:], np.ones((1, 5)))
  # the first token after the padding has no context, like column 0 of the unpadded row
  assert float(logp[1, 4]) == 0.0 and float(alone[0, 0]) == 0.0
  np.testing.assert_allclose(np.asarray(logp[1, 4:]), np.asarray(alone[0]), atol=1e-5)
  assert (np.asarray(logp[1, :4]) == 0).all()
  # an unpadded row scores the same with the default (all-True) `valid` and a float mask
  default = jit_logprobs(model, tokens, np.ones((2, 9), np.float32))
  np.testing.assert_allclose(np.asarray(default[0]), np.asarray(logp[0]), atol=1e-6)


def test_logprobs_gradient_matches_finite_difference(tiny_llama):
  cfg, model = tiny_llama
  tokens, valid, _ = left_padded_batch(2, 2, 6, cfg.vocab_size, (0, 3))
  graphdef, state = nnx.split(model)

  @jax.jit
  def f(state):
    m = nnx.merge(graphdef, state)
    return models.logprobs(
      m, jnp.asarray(tokens), jnp.asarray(valid), valid=jnp.asarray(valid)
    ).sum()

  grads = jax.grad(f)(state)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  # directional derivative along a random direction vs a central difference
  keys = jax.random.split(jax.random.key(0), len(leaves))
  direction = jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(state),
    [jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree_util.tree_leaves(state))],
  )
  along = sum(float(jnp.vdot(g, d)) for g, d in zip(leaves, jax.tree_util.tree_leaves(direction)))
  eps = 1e-3
  shifted = lambda s: jax.tree_util.tree_map(lambda x, d: x + s * d, state, direction)  # noqa: E731
  fd = (float(f(shifted(eps))) - float(f(shifted(-eps)))) / (2 * eps)
  np.testing.assert_allclose(along, fd, rtol=2e-2)


def test_logprobs_argument_errors(tiny_llama):
  _, model = tiny_llama
  tok = jnp.zeros((2, 4), jnp.int32)
  with pytest.raises(ValueError, match="`mask` must have shape"):
    models.logprobs(model, tok, jnp.ones((2, 3)))
  with pytest.raises(TypeError, match="`tokens` must be an integer"):
    models.logprobs(model, tok.astype(jnp.float32), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="`valid` must have shape"):
    models.logprobs(model, tok, jnp.ones((2, 4)), valid=jnp.ones((2, 5), bool))
  with pytest.raises(ValueError, match="`impl` must be one of"):
    models.logprobs(model, tok, jnp.ones((2, 4)), impl="fused")


@pytest.mark.parametrize("impl", ["chunked", "pallas"])
def test_fused_impls_equal_naive_values_and_gradients(impl):
  """`logprobs(impl=...)` through postrain.kernels matches the materialised-logits path."""
  cfg = models.get_config("tiny")
  model = models.Decoder(cfg, rngs=nnx.Rngs(3))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 9)), jnp.int32)
  valid = jnp.asarray(np.arange(9)[None, :] >= np.array([[0], [2], [4]]))
  mask = valid & (jnp.arange(9)[None, :] >= 3)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, impl):
    m = nnx.merge(graphdef, p, rest)
    lp, ent = models.logprobs(m, tokens, mask, valid=valid, return_entropy=True, impl=impl)
    return jnp.sum(lp) + 0.3 * jnp.sum(ent), (lp, ent)

  (v_ref, (lp_ref, ent_ref)), g_ref = jax.value_and_grad(loss, has_aux=True)(params, "naive")
  (v, (lp, ent)), g = jax.value_and_grad(loss, has_aux=True)(params, impl)
  np.testing.assert_allclose(lp, lp_ref, atol=1e-5)
  np.testing.assert_allclose(ent, ent_ref, atol=1e-5)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("impl", ["naive", "chunked"])
def test_score_from_equals_full_scoring_values_and_gradients(impl):
  """`score_from=s` (head only on columns >= s) = scoring every column, when `mask` is 0 before s:
  the same log-probs, entropies and parameter gradients; columns before s are 0 even if `mask`
  says otherwise (the documented contract)."""
  cfg = models.get_config("tiny")
  model = models.Decoder(cfg, rngs=nnx.Rngs(4))
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 10)), jnp.int32)
  valid = jnp.asarray(np.arange(10)[None, :] >= np.array([[0], [2], [3]]))
  mask = valid & (jnp.arange(10)[None, :] >= 4)  # the responses start at column 4
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, s):
    m = nnx.merge(graphdef, p, rest)
    lp, ent = models.logprobs(
      m, tokens, mask, valid=valid, return_entropy=True, impl=impl, score_from=s
    )
    return jnp.sum(lp * jnp.arange(10)) + 0.3 * jnp.sum(ent), (lp, ent)

  (v_ref, (lp_ref, ent_ref)), g_ref = jax.value_and_grad(loss, has_aux=True)(params, 0)
  (v, (lp, ent)), g = jax.value_and_grad(loss, has_aux=True)(params, 4)
  assert (np.asarray(lp_ref)[:, 4:] != 0).any()
  np.testing.assert_allclose(lp, lp_ref, atol=1e-6)
  np.testing.assert_allclose(ent, ent_ref, atol=1e-6)
  np.testing.assert_allclose(v, v_ref, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  # a mask that reaches before `score_from`: those columns are not scored
  m = nnx.merge(graphdef, params, rest)
  cut = models.logprobs(m, tokens, valid, valid=valid, impl=impl, score_from=6)
  full = models.logprobs(m, tokens, valid, valid=valid, impl=impl)
  assert (np.asarray(cut)[:, :6] == 0).all() and (np.asarray(full)[:, 4:6] != 0).all()
  np.testing.assert_allclose(np.asarray(cut)[:, 6:], np.asarray(full)[:, 6:], atol=1e-6)
  with pytest.raises(ValueError, match="`score_from` must be a Python int in \\[0, 10\\)"):
    models.logprobs(m, tokens, mask, score_from=10)


@pytest.mark.parametrize("config", ["tiny", "tiny-qwen3"])
@pytest.mark.parametrize("remat", ["none", "block"])
def test_prefix_group_equals_every_row_whole_values_and_gradients(config, remat):
  """`prefix_group=g` (the shared prompt columns run once per group, `Decoder.shared_prefix`) =
  every row run whole: log-probs, entropies and parameter gradients, with left padding of
  different widths per group, padding inside a response (a stopped row) and g = 3."""
  cfg = models.get_config(config).replace(remat=remat)
  model = models.Decoder(cfg, rngs=nnx.Rngs(5))
  rng = np.random.default_rng(2)
  g, p, s, r = 3, 2, 6, 5  # groups of 3 rows, 2 prompts, 6 prompt columns, 5 response columns
  prompts = rng.integers(0, cfg.vocab_size, (p, s))
  pad = np.array([1, 3])  # left padding of each prompt
  responses = rng.integers(0, cfg.vocab_size, (p * g, r))
  tokens = jnp.asarray(np.concatenate([np.repeat(prompts, g, 0), responses], 1), jnp.int32)
  valid = np.arange(s + r)[None, :] >= np.repeat(pad, g)[:, None]
  valid[1, s + 3 :] = False  # row 1 stopped after 3 response tokens
  mask = jnp.asarray(valid & (np.arange(s + r)[None, :] >= s))
  valid = jnp.asarray(valid)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, group):
    m = nnx.merge(graphdef, params, rest)
    lp, ent = models.logprobs(
      m, tokens, mask, valid=valid, return_entropy=True, score_from=s, prefix_group=group
    )
    return jnp.sum(lp * jnp.arange(s + r)) + 0.3 * jnp.sum(ent), (lp, ent)

  grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (v_ref, (lp_ref, ent_ref)), g_ref = grad(params, 1)
  (v, (lp, ent)), gr = grad(params, g)
  assert (np.asarray(lp_ref)[:, s:] != 0).any()
  np.testing.assert_allclose(lp, lp_ref, atol=2e-5)
  np.testing.assert_allclose(ent, ent_ref, atol=2e-5)
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(gr), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_prefix_group_rejects_rows_that_do_not_share_the_prefix():
  cfg = models.get_config("tiny")
  m = models.Decoder(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 8)), jnp.int32)
  mask = jnp.broadcast_to(jnp.arange(8)[None, :] >= 5, (4, 8))
  with pytest.raises(ValueError, match="prefix_group=2: `tokens` differs inside row group 0"):
    models.logprobs(m, tokens, mask, score_from=5, prefix_group=2)
  with pytest.raises(ValueError, match="`prefix_group` must be a Python int >= 1 dividing the 4"):
    models.logprobs(m, tokens, mask, score_from=5, prefix_group=3)
  tokens = tokens.at[1, :5].set(tokens[0, :5]).at[3, :5].set(tokens[2, :5])
  valid = jnp.ones((4, 8), bool).at[3, 0].set(False)
  with pytest.raises(ValueError, match=r"`valid` differs inside row group 1 \(rows 2\.\.3\)"):
    models.logprobs(m, tokens, mask, valid=valid, score_from=5, prefix_group=2)
  shared = models.logprobs(m, tokens, mask, score_from=5, prefix_group=2)
  np.testing.assert_allclose(shared, models.logprobs(m, tokens, mask, score_from=5), atol=2e-5)
