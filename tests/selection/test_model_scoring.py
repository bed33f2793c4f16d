"""HES and GRACE computed with a real (tiny, random) postrain decoder in one forward pass."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import models
from postrain.select import model_grace_scores, model_hes
from postrain.selection._grace import grace_scores
from postrain.selection._hes import hes_score, token_entropy


def tiny_model():
  return models.Decoder(models.get_config("tiny"), rngs=nnx.Rngs(0))


@jax.jit
def hes_both_ways(model, tokens, mask):
  got = model_hes(model, tokens, mask, ratio=0.2)
  # Independent path: full forward, logits, entropy of the distribution predicting token t.
  b, t = tokens.shape
  hidden, _ = model(tokens, jnp.broadcast_to(jnp.arange(t), (b, t)))
  h = token_entropy(model.logits(hidden))
  h = jnp.concatenate([jnp.zeros((b, 1)), h[:, :-1]], axis=1)
  return got, hes_score(h, mask, ratio=0.2)


def test_model_hes_matches_entropy_of_the_model_logits():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 512, (3, 16)), jnp.int32)
  mask = np.zeros((3, 16), bool)
  mask[0, 5:], mask[1, 8:12], mask[2, 1:] = True, True, True
  got, ref = hes_both_ways(tiny_model(), tokens, jnp.asarray(mask))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert np.all(np.asarray(got) > 0)


@functools.partial(jax.jit, static_argnames="num_steps")
def grace_both_ways(model, tokens, seg, ans, valid, *, num_steps):
  got = model_grace_scores(model, tokens, seg, ans, num_steps=num_steps, valid=valid)
  # Wiring check: grace_scores on the model's own hidden states (meaningful without padding).
  b, t = tokens.shape
  hidden, _ = model(tokens, jnp.broadcast_to(jnp.arange(t), (b, t)))
  return got, grace_scores(hidden, tokens, model.output_embedding(), seg, ans, num_steps=num_steps)


def test_model_grace_is_invariant_to_left_padding():
  model = tiny_model()
  rng = np.random.default_rng(1)
  t, pad = 12, 4
  tokens = rng.integers(1, 512, (2, t)).astype(np.int32)
  seg = np.array([[-1, -1, 0, 0, 0, 1, 1, 2, 2, 2, -1, -1], [-1, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, -1]])
  ans = np.zeros((2, t), bool)
  ans[0, 10:], ans[1, 11:] = True, True
  # Left-pad by `pad` with valid=False; the unpadded rows are the last t columns of a batch of
  # length t + pad whose first rows are unpadded, so one compile serves both.
  padded = lambda x, fill: np.concatenate([np.full((2, pad), fill, x.dtype), x], axis=1)  # noqa: E731
  tail = lambda x: np.concatenate([x, rng.integers(1, 512, (2, pad)).astype(x.dtype)], axis=1)  # noqa: E731
  batch = {
    "tokens": np.concatenate([tail(tokens), padded(tokens, 0)]),
    "seg": np.concatenate([np.pad(seg, ((0, 0), (0, pad)), constant_values=-1), padded(seg, -1)]),
    "ans": np.concatenate([np.pad(ans, ((0, 0), (0, pad))), padded(ans, False)]),
    "valid": np.concatenate([np.ones((2, t + pad), bool), padded(np.ones((2, t), bool), False)]),
  }
  out, ref = grace_both_ways(model, *map(jnp.asarray, batch.values()), num_steps=4)
  np.testing.assert_allclose(out.step_scores[:2], ref.step_scores[:2], atol=1e-5)
  np.testing.assert_allclose(out.step_scores[2:], out.step_scores[:2], atol=1e-4)
  np.testing.assert_allclose(out.value[2:], out.value[:2], atol=1e-4)
  np.testing.assert_array_equal(out.step_valid[2:], [[1, 1, 1, 0], [1, 1, 1, 1]])
