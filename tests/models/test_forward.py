"""`models.forward`: one call from tokens (and left-padding `valid`) to logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testutil import left_padded_batch, params_np, reference_logits

from postrain import models


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen3"])
def test_forward_equals_the_numpy_reference_and_the_two_call_path(which, request):
  cfg, model = request.getfixturevalue(which)
  tokens, valid, positions = left_padded_batch(0, 3, 9, cfg.vocab_size, pads=[0, 2, 5])
  got = np.asarray(jax.jit(models.forward)(model, tokens, valid))
  assert got.shape == (3, 9, cfg.vocab_size) and got.dtype == np.float32
  want = reference_logits(cfg, params_np(model), tokens, valid, positions)
  np.testing.assert_allclose(got[valid], want[valid], atol=2e-5, rtol=1e-5)
  hidden, _ = model(jnp.asarray(tokens), jnp.asarray(positions), valid=jnp.asarray(valid))
  two_calls = np.asarray(model.logits(hidden))
  # jitted vs eager: float32 reduction-order noise of logits of magnitude ~5.
  np.testing.assert_allclose(got[valid], two_calls[valid], atol=1e-5, rtol=1e-5)


def test_forward_without_valid_is_the_unpadded_pass(tiny_llama):
  cfg, model = tiny_llama
  tokens, valid, _ = left_padded_batch(1, 2, 7, cfg.vocab_size, pads=[0, 3])
  padded = np.asarray(models.forward(model, tokens, valid))
  alone = np.asarray(models.forward(model, tokens[1:, 3:]))
  np.testing.assert_allclose(padded[1, 3:], alone[0], atol=1e-5)


def test_forward_rejects_bad_shapes(tiny_llama):
  _, model = tiny_llama
  with pytest.raises(ValueError, match="tokens"):
    models.forward(model, np.zeros((4,), np.int32))
  with pytest.raises(ValueError, match="valid"):
    models.forward(model, np.zeros((2, 4), np.int32), np.ones((2, 3), bool))
