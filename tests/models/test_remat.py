"""Activation rematerialisation (`ModelConfig.remat`): the same loss and gradients as without it,
and it does reduce what the compiled backward pass keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_testutil import left_padded_batch

from postrain import models

_CFG = models.get_config("tiny", vocab_size=128, embed_dim=32, mlp_dim=64, head_dim=8)


def _loss_and_grads(remat: str):
  model = models.Decoder(_CFG.replace(remat=remat), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tokens, valid, _ = left_padded_batch(0, 3, 9, _CFG.vocab_size, (0, 2, 4))
  mask = jnp.asarray(valid, jnp.float32)

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    return -jnp.sum(models.logprobs(m, tokens, mask, valid=valid)) / jnp.sum(mask)

  fn = jax.jit(jax.value_and_grad(loss))
  value, grads = fn(params)
  return value, grads, fn.lower(params).compile()


@pytest.fixture(scope="module")
def unremat():
  return _loss_and_grads("none")


@pytest.mark.parametrize("policy", ["block", "save_dots", "save_dots_no_batch"])
def test_remat_gradients_equal_plain(policy, unremat):
  want_v, want_g, _ = unremat
  got_v, got_g, _ = _loss_and_grads(policy)
  np.testing.assert_allclose(got_v, want_v, rtol=1e-6)
  for path, g in jax.tree_util.tree_leaves_with_path(got_g):
    w = dict(jax.tree_util.tree_leaves_with_path(want_g))[path]
    # Recomputation reorders no sum: float32 noise only.
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_unknown_policy_is_rejected():
  with pytest.raises(ValueError, match="remat"):
    _CFG.replace(remat="everything")


@pytest.mark.slow
def test_block_remat_lowers_peak_memory():
  """The compiler's temp buffers of the backward pass shrink with full-block recompute (on
  XLA:CPU this needs the scan over blocks: unrolled checkpoints did not lower the peak)."""
  cfg = models.get_config("tiny", vocab_size=128, num_layers=6)
  tokens = jnp.zeros((16, 96), jnp.int32)
  mask = jnp.ones((16, 96), jnp.float32)

  def temp_bytes(remat):
    model = models.Decoder(cfg.replace(remat=remat), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
      return -jnp.sum(models.logprobs(nnx.merge(graphdef, p, rest), tokens, mask))

    stats = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
    return stats.temp_size_in_bytes

  assert temp_bytes("block") < 0.5 * temp_bytes("none")


def test_trainer_resolves_config_model_remat():
  from postrain import train

  c = train.base_config()
  assert train.build_model(c, 64, seed=0).cfg.remat == "none"  # "auto" from scratch
  c.model.remat = "save_dots"
  assert train.build_model(c, 64, seed=0).cfg.remat == "save_dots"
  c.model.remat = "everything"
  with pytest.raises(ValueError, match=r"config\.model\.remat"):
    train.validate(c)
