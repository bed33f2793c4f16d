"""models.blocked_head / blocked_logits (the decode-loop LM head layout) vs numpy matmuls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postrain import models


@pytest.mark.parametrize("vocab, block", [(50, 8), (64, 64), (37, 64), (96, 16)])
def test_blocked_logits_match_numpy_matmul(vocab, block):
  rng = np.random.default_rng(vocab)
  w = rng.standard_normal((12, vocab)).astype(np.float32)
  h = rng.standard_normal((3, 5, 12)).astype(np.float32)
  head = models.blocked_head(jnp.asarray(w), block=block)
  n = -(-vocab // block)
  assert head.shape == (n, 12, block)
  # Tile layout by its definition: head[n, d, j] = w[d, n * c + j], zero padding past V.
  want_head = np.zeros((12, n * block), np.float32)
  want_head[:, :vocab] = w
  np.testing.assert_array_equal(
    np.asarray(head), want_head.reshape(12, n, block).transpose(1, 0, 2)
  )
  got = models.blocked_logits(jnp.asarray(h), head, vocab)
  assert got.shape == (3, 5, vocab) and got.dtype == jnp.float32
  want = h.astype(np.float64) @ w.astype(np.float64)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_blocked_logits_bf16_accumulate_in_float32():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((256, 40)), jnp.bfloat16)
  h = jnp.asarray(rng.standard_normal((4, 256)), jnp.bfloat16)
  got = models.blocked_logits(h, models.blocked_head(w, block=16), 40)
  assert got.dtype == jnp.float32
  # bf16 products are exact in float32: only the summation order differs from a float64 sum.
  want = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen3"])  # tied / untied head
def test_decoder_logits_with_decode_head_equal_plain_logits(which, request):
  cfg, model = request.getfixturevalue(which)
  hidden = jax.random.normal(jax.random.key(1), (2, 3, cfg.embed_dim))
  plain = model.logits(hidden)
  blocked = model.logits(hidden, head=model.decode_head(block=32))
  np.testing.assert_allclose(np.asarray(blocked), np.asarray(plain), rtol=1e-5, atol=1e-5)


def test_blocked_head_and_logits_errors():
  w = jnp.ones((8, 20))
  head = models.blocked_head(w, block=8)  # 3 tiles: vocab 17..24
  with pytest.raises(ValueError, match="`w_DV` must have rank 2"):
    models.blocked_head(jnp.ones((2, 8, 20)))
  with pytest.raises(TypeError, match="`w_DV` must be a floating-point"):
    models.blocked_head(jnp.ones((8, 20), jnp.int32))
  with pytest.raises(ValueError, match="`block`"):
    models.blocked_head(w, block=0)
  with pytest.raises(ValueError, match="`hidden` must have last dimension 8"):
    models.blocked_logits(jnp.ones((2, 7)), head, 20)
  with pytest.raises(ValueError, match="`vocab_size`=30 does not match"):
    models.blocked_logits(jnp.ones((2, 8)), head, 30)
  with pytest.raises(TypeError, match="`hidden` must be a floating-point"):
    models.blocked_logits(jnp.ones((2, 8), jnp.int32), head, 20)
