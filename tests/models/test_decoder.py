"""Decoder forward pass vs a float64 numpy reference, cached decoding vs the full pass, dtypes, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_testutil import left_padded_batch, make_model, params_np, reference_logits

from postrain import models

PADS = (0, 3, 6)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen3"])
def test_forward_matches_numpy_reference(which, request, jit_forward):
  cfg, model = request.getfixturevalue(which)
  tokens, valid, positions = left_padded_batch(0, 3, 11, cfg.vocab_size, PADS)
  got = np.asarray(jit_forward(model, tokens, positions, valid))
  want = reference_logits(cfg, params_np(model), tokens, valid, positions)
  assert got.dtype == np.float32 and got.shape == (3, 11, cfg.vocab_size)
  np.testing.assert_allclose(got[valid], want[valid], atol=2e-5, rtol=1e-5)


def test_left_padding_does_not_change_valid_positions(tiny_llama, jit_forward):
  cfg, model = tiny_llama
  tokens, valid, positions = left_padded_batch(1, 3, 11, cfg.vocab_size, PADS)
  padded = np.asarray(jit_forward(model, tokens, positions, valid))
  for r, pad in enumerate(PADS):
    alone = np.asarray(
      jit_forward(
        model, tokens[r : r + 1, pad:], positions[r : r + 1, pad:], valid[r : r + 1, pad:]
      )
    )
    np.testing.assert_allclose(padded[r, pad:], alone[0], atol=1e-5)


_STEPS = {}


def _cached_step(graphdef):
  """One jitted cached forward per model structure, shared by the tests."""
  if graphdef not in _STEPS:

    @jax.jit
    def step(state, tok, pos, val, cache):
      m = nnx.merge(graphdef, state)
      hidden, cache = m(tok, pos, valid=val, cache=cache)
      return m.logits(hidden), cache

    _STEPS[graphdef] = step
  return _STEPS[graphdef]


def _decode_in_pieces(model, cfg, tokens, valid, positions, pieces, cache_size, dtype=jnp.float32):
  graphdef, state = nnx.split(model)
  step = _cached_step(graphdef)
  cache = models.init_cache(cfg, batch_size=tokens.shape[0], cache_size=cache_size, dtype=dtype)
  outs, start = [], 0
  for stop in pieces:
    sl = slice(start, stop)
    logits, cache = step(state, tokens[:, sl], positions[:, sl], valid[:, sl], cache)
    outs.append(np.asarray(logits))
    start = stop
  return np.concatenate(outs, axis=1), cache


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen3"])
def test_cached_decoding_equals_full_forward(which, request, jit_forward):
  # Prefill 5 tokens, then single-token steps; block 4 and 22 slots: several blocks, a clamped last one.
  cfg, model = request.getfixturevalue(which)
  tokens, valid, positions = left_padded_batch(2, 3, 14, cfg.vocab_size, PADS)
  full = np.asarray(jit_forward(model, tokens, positions, valid))
  pieces = [5, *range(6, 15)]
  cached, cache = _decode_in_pieces(model, cfg, tokens, valid, positions, pieces, cache_size=22)
  np.testing.assert_allclose(cached[valid], full[valid], atol=1e-5)
  assert int(cache.end) == 14
  np.testing.assert_array_equal(np.asarray(cache.valid[:, :14]), valid)
  assert not np.asarray(cache.valid[:, 14:]).any()


def test_chunked_prefill_equals_full_forward(tiny_llama, jit_forward):
  cfg, model = tiny_llama
  tokens, valid, positions = left_padded_batch(3, 3, 14, cfg.vocab_size, PADS)
  full = np.asarray(jit_forward(model, tokens, positions, valid))
  cached, _ = _decode_in_pieces(model, cfg, tokens, valid, positions, [7, 14], cache_size=16)
  np.testing.assert_allclose(cached[valid], full[valid], atol=1e-5)


def test_decode_reads_only_live_blocks(tiny_llama):
  # NaN in every slot beyond the live blocks: a read of any of them would poison the output.
  cfg, model = tiny_llama  # attention_block = 4
  tokens, valid, positions = left_padded_batch(4, 2, 6, cfg.vocab_size, (0, 2))
  clean = models.init_cache(cfg, batch_size=2, cache_size=40)
  want, want_cache = model(
    jnp.asarray(tokens), jnp.asarray(positions), valid=jnp.asarray(valid), cache=clean
  )
  live = 8  # ceil(6 / 4) blocks of 4
  poisoned = models.KVCache(
    k=clean.k.at[:, :, live:].set(jnp.nan),
    v=clean.v.at[:, :, live:].set(jnp.nan),
    valid=clean.valid,
    end=clean.end,
  )
  got, got_cache = model(
    jnp.asarray(tokens), jnp.asarray(positions), valid=jnp.asarray(valid), cache=poisoned
  )
  assert np.isfinite(np.asarray(got)).all()
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  # One decode token: slots 0..6 are live, so 2 blocks (8 slots) are read, none of the NaN ones.
  tok, pos = jnp.asarray(tokens[:, -1:]), jnp.asarray(positions[:, -1:] + 1)
  want_step, _ = model(tok, pos, cache=want_cache)
  got_step, _ = model(tok, pos, cache=got_cache)
  assert np.isfinite(np.asarray(got_step)).all()
  np.testing.assert_allclose(np.asarray(got_step), np.asarray(want_step), atol=1e-6)


def test_decode_step_compiles_once_for_all_cache_lengths(tiny_llama):
  cfg, model = tiny_llama
  graphdef, state = nnx.split(model)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, tok, pos, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m(tok, pos, cache=cache)
    return hidden, cache

  cache = models.init_cache(cfg, batch_size=2, cache_size=12)
  tok = jnp.zeros((2, 1), jnp.int32)
  for t in range(10):  # end goes 0..9: the loop trip count changes, the program does not
    _, cache = step(state, tok, jnp.full((2, 1), t, jnp.int32), cache)
  assert int(cache.end) == 10


@pytest.fixture(scope="module")
def tiny_llama_bf16(tiny_llama):
  """The tiny_llama weights rounded to bfloat16, with bfloat16 activations."""
  cfg, model = tiny_llama
  cfg16 = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
  model16 = models.Decoder(cfg16, rngs=nnx.Rngs(0))
  for (_, p16), (_, p32) in zip(
    nnx.to_flat_state(nnx.state(model16, nnx.Param)), nnx.to_flat_state(nnx.state(model, nnx.Param))
  ):
    p16.set_value(p32.get_value().astype(jnp.bfloat16))
  return cfg16, model16


def _assert_close_logprobs(lp16, lp32, valid):
  diff = np.abs(np.asarray(lp16 - lp32))[valid]
  assert np.isfinite(diff).all()
  assert diff.mean() < 0.05 and diff.max() < 0.5, (diff.mean(), diff.max())
  agree = np.argmax(np.asarray(lp16), -1) == np.argmax(np.asarray(lp32), -1)
  assert agree[valid].mean() > 0.9


def test_bfloat16_close_to_float32(tiny_llama, tiny_llama_bf16, jit_forward):
  cfg, model = tiny_llama
  _, model16 = tiny_llama_bf16
  assert model16.layers[0].attn.q.dtype == jnp.bfloat16
  tokens, valid, positions = left_padded_batch(5, 3, 11, cfg.vocab_size, PADS)
  hidden, _ = model16(jnp.asarray(tokens), jnp.asarray(positions), valid=jnp.asarray(valid))
  assert hidden.dtype == jnp.bfloat16
  lp16 = jax.nn.log_softmax(model16.logits(hidden))
  assert lp16.dtype == jnp.float32
  lp32 = jax.nn.log_softmax(jit_forward(model, tokens, positions, valid))
  _assert_close_logprobs(lp16, lp32, valid)


def test_bfloat16_cached_decoding_close_to_float32(tiny_llama, tiny_llama_bf16, jit_forward):
  cfg, model = tiny_llama
  cfg16, model16 = tiny_llama_bf16
  tokens, valid, positions = left_padded_batch(6, 3, 10, cfg.vocab_size, PADS)
  cached, cache = _decode_in_pieces(model16, cfg16, tokens, valid, positions, [4, *range(5, 11)],
                                    cache_size=12, dtype=jnp.bfloat16)  # fmt: skip
  assert cache.k.dtype == jnp.bfloat16
  lp32 = jax.nn.log_softmax(jit_forward(model, tokens, positions, valid))
  _assert_close_logprobs(jax.nn.log_softmax(jnp.asarray(cached)), lp32, valid)


def test_untied_head_and_output_embedding(tiny_qwen3):
  cfg, model = tiny_qwen3
  w = model.output_embedding()
  assert w.shape == (cfg.embed_dim, cfg.vocab_size)
  np.testing.assert_array_equal(np.asarray(w), np.asarray(model.lm_head[...]))
  tied = make_model(models.get_config("tiny"), 3)
  np.testing.assert_array_equal(
    np.asarray(tied.output_embedding()), np.asarray(tied.embedding[...]).T
  )


def test_bad_inputs_raise_clear_errors(tiny_llama):
  cfg, model = tiny_llama
  tok = jnp.zeros((2, 3), jnp.int32)
  pos = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="`tokens` must have rank 2"):
    model(tok[0], pos[0])
  with pytest.raises(TypeError, match="`tokens` must be an integer"):
    model(tok.astype(jnp.float32), pos)
  with pytest.raises(ValueError, match="`positions` must have shape"):
    model(tok, pos[:, :2])
  with pytest.raises(ValueError, match="`valid` must have shape"):
    model(tok, pos, valid=jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match=r"`cache\.k` must have shape"):
    model(tok, pos, cache=models.init_cache(cfg, batch_size=3, cache_size=8))
  with pytest.raises(ValueError, match="3 new tokens do not fit a cache of 2 slots"):
    model(tok, pos, cache=models.init_cache(cfg, batch_size=2, cache_size=2))
  _, cache = model(tok[:, :1], pos[:, :1], cache=models.init_cache(cfg, batch_size=2, cache_size=3))
  with pytest.raises(ValueError, match=r"cache\.end=1 \+ 3 new tokens exceeds 3 slots"):
    model(tok, pos, cache=cache)


def test_config_validation():
  with pytest.raises(ValueError, match="Unknown model config 'nope'"):
    models.get_config("nope")
  with pytest.raises(ValueError, match="unknown ModelConfig fields"):
    models.get_config("tiny", d_model=3)
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    models.get_config("tiny", num_kv_heads=3)
  with pytest.raises(ValueError, match="family"):
    models.get_config("tiny", family="gpt2")
  with pytest.raises(ValueError, match="dtype"):
    models.get_config("tiny", dtype="float16")
  with pytest.raises(ValueError, match="head_dim"):
    models.get_config("tiny", head_dim=15)
  cfg = models.get_config("tiny", dtype=jnp.bfloat16)
  assert cfg.dtype == "bfloat16" and hash(cfg) == hash(models.get_config("tiny", dtype="bfloat16"))
  smol = models.get_config("smollm2-135m")
  assert (smol.num_layers, smol.embed_dim, smol.num_heads, smol.num_kv_heads, smol.head_dim) == (
    30,
    576,
    9,
    3,
    64,
  )
  assert (smol.mlp_dim, smol.vocab_size, smol.tie_embeddings, smol.rope_theta) == (
    1536,
    49152,
    True,
    1e5,
  )
  q = models.get_config("tiny-qwen3")
  assert (q.num_layers, q.embed_dim, q.num_heads, q.head_dim, q.num_kv_heads, q.mlp_dim, q.vocab_size, q.qk_norm) == (
      4, 256, 4, 64, 4, 1024, 32000, True)  # fmt: skip
  assert set(models.config_names()) >= {"tiny", "tiny-qwen3", "smollm2-135m"}


def test_init_cache_layout():
  cfg = models.get_config("tiny")
  cache = models.init_cache(cfg, batch_size=2, cache_size=9, dtype=jnp.bfloat16)
  assert cache.k.shape == (2, 2, 9, 2, 16) and cache.k.dtype == jnp.bfloat16
  assert cache.valid.shape == (2, 9) and cache.valid.dtype == jnp.bool_
  assert cache.end.shape == () and cache.end.dtype == jnp.int32
  leaves = jax.tree_util.tree_leaves(cache)
  assert len(leaves) == 4  # a registered pytree: passes through jit / while_loop
  with pytest.raises(ValueError, match="cache_size"):
    models.init_cache(cfg, batch_size=2, cache_size=0)
