"""The KV-cache sampler against full (uncached) forward passes of the real decoder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from postrain import models, sampling
from postrain.sampling import _sampler

CFG = models.get_config("tiny")  # d=64, L=2, vocab 512
PROMPTS = [[5, 17, 300, 2], [9], [100, 101, 102, 103, 104, 105, 106], [42, 7]]
N = 2
MAX_NEW = 10
TP = 16  # the "pow2" bucket of the longest prompt (7 tokens)
PAD = 0


def make_model(cfg, scale, seed=0):
  model = models.Decoder(cfg, rngs=nnx.Rngs(seed))
  # A random init gives near-uniform next-token distributions; scaling the final norm sharpens
  # them, so greedy has no near-ties and top-k / top-p cut real mass.
  model.final_norm.scale[...] = jnp.full((cfg.embed_dim,), scale, jnp.float32)
  return model


@pytest.fixture(scope="module")
def model():
  return make_model(CFG, 8.0)


@nnx.jit
def full_logits(model, tokens, valid):
  hidden, _ = model(tokens, models.positions_from_valid(valid), valid=valid)
  return model.logits(hidden)


@nnx.jit
def rescore(model, tokens, mask, valid):
  return models.logprobs(model, tokens, mask, valid=valid)


def full_log_softmax(model, out):
  """float64 log-softmax of the uncached forward pass over the returned sequences: [B, T, V]."""
  z = np.asarray(full_logits(model, out.tokens, out.valid), np.float64)
  return (
    z
    - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - z.max(-1, keepdims=True)
  )


def response_cols(out, b):
  return range(out.prompt_len, out.prompt_len + int(out.lengths[b]))


@pytest.fixture(scope="module")
def unstopped(model):
  """Temperature-1 samples without stop tokens."""
  return sampling.sample(
    model, PROMPTS, key=jax.random.key(0), max_new_tokens=MAX_NEW, n=N, pad_id=PAD
  )


@pytest.fixture(scope="module")
def stop_tokens(unstopped):
  """Tokens that even rows of `unstopped` produce mid-response and odd rows never produce."""
  resp = np.asarray(unstopped.tokens[:, TP:])
  stop = set(resp[0::2, 3].tolist()) - set(resp[1::2].ravel().tolist())
  assert stop
  return tuple(sorted(stop))


@pytest.fixture(scope="module")
def sampled(model, stop_tokens):
  """The same draws with stop tokens (stop sets of <= 8 tokens share one compilation)."""
  return sampling.sample(
    model,
    PROMPTS,
    key=jax.random.key(0),
    max_new_tokens=MAX_NEW,
    n=N,
    stop_tokens=stop_tokens,
    pad_id=PAD,
  )


@pytest.fixture(scope="module")
def greedy(model):
  return sampling.sample(
    model, PROMPTS, key=jax.random.key(0), max_new_tokens=MAX_NEW, n=N, temperature=0.0, pad_id=PAD
  )


def test_output_layout(sampled):
  out = sampled
  b, t = len(PROMPTS) * N, TP + MAX_NEW
  assert out.prompt_len == TP
  for name in ("tokens", "response_mask", "sample_logp", "model_logp", "positions", "valid"):
    assert getattr(out, name).shape == (b, t), name
  assert out.tokens.dtype == jnp.int32 and out.lengths.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out.response_mask).sum(-1), out.lengths)
  for p, prompt in enumerate(PROMPTS):
    for row in range(p * N, p * N + N):  # groups are contiguous
      tokens = np.asarray(out.tokens[row])
      np.testing.assert_array_equal(tokens[TP - len(prompt) : TP], prompt)
      np.testing.assert_array_equal(tokens[: TP - len(prompt)], PAD)
      assert int(out.prompt_lengths[row]) == len(prompt)
      n_valid = len(prompt) + int(out.lengths[row])
      valid = np.asarray(out.valid[row])
      assert valid.sum() == n_valid and valid[TP - len(prompt) : TP].all()
      pos = np.asarray(out.positions[row])
      np.testing.assert_array_equal(pos[valid], np.arange(n_valid))
  # The samples of a group differ (different draws), the prompt part does not.
  assert any(
    not np.array_equal(out.tokens[p * N], out.tokens[p * N + 1]) for p in range(len(PROMPTS))
  )


def test_model_logp_equals_rescoring_with_a_full_forward(model, sampled):
  out = sampled
  rescored = rescore(model, out.tokens, out.response_mask, out.valid)
  np.testing.assert_allclose(out.model_logp, rescored, atol=1e-4)
  # Temperature 1 without filters samples from the model itself.
  np.testing.assert_allclose(out.sample_logp, out.model_logp, atol=1e-5)
  assert np.all(np.asarray(out.model_logp)[np.asarray(out.response_mask) == 1] < 0)


def test_stop_tokens_end_rows(sampled, unstopped, stop_tokens):
  out = sampled
  tokens, mask = np.asarray(out.tokens), np.asarray(out.response_mask)
  lengths = np.asarray(out.lengths)
  for b in range(tokens.shape[0]):
    free = np.asarray(unstopped.tokens[b, TP:])
    is_stop = np.isin(free, stop_tokens)
    expected = int(np.argmax(is_stop)) + 1 if is_stop.any() else MAX_NEW
    assert lengths[b] == expected
    # Stopping changes nothing before the stop token (same key, same draws), pads after it.
    np.testing.assert_array_equal(tokens[b, TP : TP + expected], free[:expected])
    np.testing.assert_array_equal(tokens[b, TP + expected :], PAD)
    np.testing.assert_array_equal(mask[b, TP:], np.arange(MAX_NEW) < expected)
    for name in ("sample_logp", "model_logp"):
      np.testing.assert_array_equal(np.asarray(getattr(out, name))[b, TP + expected :], 0.0)
  # Even rows stop at step 3 at the latest, odd rows run to MAX_NEW.
  assert np.all(lengths[0::2] <= 4) and np.all(lengths[1::2] == MAX_NEW), lengths


def test_same_key_same_output_different_key_different_output(model, sampled, stop_tokens):
  kw = dict(max_new_tokens=MAX_NEW, n=N, stop_tokens=stop_tokens, pad_id=PAD)
  chex.assert_trees_all_equal(sampling.sample(model, PROMPTS, key=jax.random.key(0), **kw), sampled)
  other = sampling.sample(model, PROMPTS, key=jax.random.key(1), **kw)
  assert not np.array_equal(other.tokens, sampled.tokens)
  # A raw uint32[2] key is the same key as the typed one with the same data.
  raw = sampling.sample(model, PROMPTS, key=jax.random.PRNGKey(0), **kw)
  chex.assert_trees_all_equal(raw, sampled)


def test_greedy_is_argmax_of_the_full_forward_at_every_step(model, greedy):
  out = greedy
  logp = full_log_softmax(model, out)
  tokens = np.asarray(out.tokens)
  assert np.all(np.asarray(out.lengths) == MAX_NEW)
  for b in range(tokens.shape[0]):
    for c in response_cols(out, b):
      # Token c is the argmax of the prediction at c - 1 (up to float ties: 1e-5 in logit gap).
      assert logp[b, c - 1, tokens[b, c]] >= logp[b, c - 1].max() - 1e-5, (b, c)
      np.testing.assert_allclose(out.model_logp[b, c], logp[b, c - 1, tokens[b, c]], atol=1e-4)
  np.testing.assert_array_equal(out.sample_logp, 0.0)
  # Greedy rows of one prompt are identical.
  for p in range(len(PROMPTS)):
    np.testing.assert_array_equal(tokens[p * N], tokens[p * N + 1])


def test_batched_prompts_of_different_lengths_equal_each_prompt_alone(model, greedy):
  for p, prompt in enumerate(PROMPTS):
    alone = sampling.sample(
      model, [prompt], key=jax.random.key(5), max_new_tokens=MAX_NEW, temperature=0.0, pad_id=PAD
    )
    assert alone.prompt_len == TP
    np.testing.assert_array_equal(alone.tokens[0, TP:], greedy.tokens[p * N, TP:])
    np.testing.assert_allclose(alone.model_logp[0], greedy.model_logp[p * N], atol=1e-5)


def test_every_row_stopping_at_once_exits_early(model, greedy):
  # Stop on every greedy first token: all rows end after one token (stop set of size <= 8 shares
  # the compilation of `greedy`).
  first = sorted(set(np.asarray(greedy.tokens[:, TP]).tolist()))
  out = sampling.sample(
    model,
    PROMPTS,
    key=jax.random.key(0),
    max_new_tokens=MAX_NEW,
    n=N,
    temperature=0.0,
    stop_tokens=first,
    pad_id=PAD,
  )
  np.testing.assert_array_equal(out.lengths, 1)
  np.testing.assert_array_equal(out.tokens[:, TP + 1 :], PAD)
  np.testing.assert_array_equal(out.tokens[:, TP], greedy.tokens[:, TP])


def nucleus(logp_row, temperature, top_k, top_p):
  """Reference q (float64) from a full-forward log-softmax row: temperature, top-k, top-p."""
  z = logp_row / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros(z.shape, bool)
  keep[order[: top_k or z.size]] = True
  q = np.where(keep, np.exp(z - z.max()), 0.0)
  q /= q.sum()
  if top_p is not None:
    above = np.cumsum(q[order]) - q[order]
    keep[order[above >= top_p]] = False
    q = np.where(keep, q, 0.0)
    q /= q.sum()
  return q


@pytest.mark.parametrize(
  "temperature,top_k,top_p", [(1.0, 5, None), (1.3, None, 0.6)], ids=["top_k", "top_p"]
)
def test_top_k_top_p_stay_inside_the_allowed_set(model, temperature, top_k, top_p):
  out = sampling.sample(
    model,
    PROMPTS,
    key=jax.random.key(3),
    max_new_tokens=MAX_NEW,
    n=N,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    pad_id=PAD,
  )
  logp = full_log_softmax(model, out)
  tokens = np.asarray(out.tokens)
  cut = 0
  for b in range(tokens.shape[0]):
    for c in response_cols(out, b):
      q = nucleus(logp[b, c - 1], temperature, top_k, top_p)
      tok = tokens[b, c]
      assert q[tok] > 0, f"row {b} col {c}: token {tok} is outside the allowed set"
      np.testing.assert_allclose(out.sample_logp[b, c], np.log(q[tok]), atol=1e-4)
      np.testing.assert_allclose(out.model_logp[b, c], logp[b, c - 1, tok], atol=1e-4)
      cut += np.count_nonzero(q == 0)
  assert cut > 0  # the filters did remove tokens


@pytest.mark.slow  # ~35 s with a cold compilation cache on a loaded 2-core machine
def test_temperature_sampling_matches_softmax_chi_square():
  # Vocabulary of 16: one prompt, 4000 samples of 2 tokens. The first token tests the prefill
  # draw, the second (given the most common first token) the decode-loop draw.
  cfg = CFG.replace(vocab_size=16)
  model = make_model(cfg, 3.0)
  temperature, n = 0.7, 4000
  out = sampling.sample(
    model, [[1, 2, 3]], key=jax.random.key(11), max_new_tokens=2, n=n, temperature=temperature
  )
  tokens = np.asarray(out.tokens)
  logp = full_log_softmax(model, out)
  tp = out.prompt_len

  def check(counts, logp_row):
    z = logp_row / temperature
    q = np.exp(z - z.max())
    q /= q.sum()
    _, pvalue = stats.chisquare(counts, counts.sum() * q)
    assert pvalue > 1e-3, (counts, counts.sum() * q)
    return q

  q0 = check(np.bincount(tokens[:, tp], minlength=16), logp[0, tp - 1])
  np.testing.assert_allclose(out.sample_logp[:, tp], np.log(q0[tokens[:, tp]]), atol=1e-4)
  first = np.bincount(tokens[:, tp]).argmax()
  rows = np.flatnonzero(tokens[:, tp] == first)
  assert rows.size >= 500
  check(np.bincount(tokens[rows, tp + 1], minlength=16), logp[rows[0], tp])


def test_compiles_once_per_prompt_bucket(model, monkeypatch):
  chex.clear_trace_counter()
  monkeypatch.setattr(
    _sampler, "_prefill", _sampler.jit_prefill(chex.assert_max_traces(_sampler._prefill_impl, n=1))
  )
  monkeypatch.setattr(
    _sampler, "_decode", _sampler.jit_decode(chex.assert_max_traces(_sampler._decode_impl, n=1))
  )
  sampler = sampling.Sampler(model)
  rng = np.random.default_rng(0)
  # New prompt lengths (all in the 16 bucket), keys, temperatures, top_p values and stop sets.
  for i, lengths in enumerate([(3, 5, 2, 9), (12, 1, 16, 4), (7, 7, 7, 7)]):
    prompts = [rng.integers(1, 512, size=k).tolist() for k in lengths]
    out = sampler(
      prompts,
      key=jax.random.key(i),
      max_new_tokens=4,
      temperature=0.5 + 0.2 * i,
      top_p=0.8 + 0.05 * i,
      stop_tokens=[3 + i, 4],
      pad_id=PAD,
    )
    assert out.prompt_len == 16
  # A prompt of 17 tokens needs the 32 bucket: a second trace, which the wrapper rejects.
  with pytest.raises(AssertionError):
    sampler(
      [list(range(1, 18))] * 4,
      key=jax.random.key(0),
      max_new_tokens=4,
      temperature=0.5,
      top_p=0.8,
      pad_id=PAD,
    )


def test_cache_size_and_multiple_of_bucket(model):
  # An explicit cache and a multiple-of-8 bucket; the bucket is clamped to fit the cache.
  sampler = sampling.Sampler(model, cache_size=12, prompt_bucket=8)
  out = sampler(
    [[1, 2, 3], [4, 5, 6, 7, 8, 9]], key=jax.random.key(0), max_new_tokens=5, temperature=0.0
  )
  assert out.prompt_len == 7 and out.tokens.shape == (2, 12)
  rescored = rescore(model, out.tokens, out.response_mask, out.valid)
  np.testing.assert_allclose(out.model_logp, rescored, atol=1e-4)
  assert sampling.bucket_length(17, "pow2") == 32 and sampling.bucket_length(17, 32) == 32
  assert sampling.bucket_length(3, "pow2") == 16 and sampling.bucket_length(33, 32) == 64


BAD_INPUTS = [
  (dict(prompts=[list(range(1, 30))], cache_size=16), ValueError, "prompts"),
  (dict(prompts=[[1, 2, 3]], cache_size=8, max_new_tokens=6), ValueError, "cache_size"),
  (dict(prompts=[]), ValueError, "prompts"),
  (dict(prompts=[[1, 2], []]), ValueError, "prompts"),
  (dict(prompts=[[1, 512]]), ValueError, "prompts"),
  (dict(prompts=[[-1, 2]]), ValueError, "prompts"),
  (dict(prompts=np.ones((2, 3), np.float32)), TypeError, "prompts"),
  (dict(top_p=0.0), ValueError, "top_p"),
  (dict(top_p=1.5), ValueError, "top_p"),
  (dict(top_k=0), ValueError, "top_k"),
  (dict(temperature=-0.5), ValueError, "temperature"),
  (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
  (dict(n=0), ValueError, "n"),
  (dict(stop_tokens=[600]), ValueError, "stop_tokens"),
  (dict(pad_id=512), ValueError, "pad_id"),
  (dict(key=0), TypeError, "key"),
  (dict(prompts=np.ones((2, 3), np.int32), prompt_lengths=[1, 4]), ValueError, "prompt_lengths"),
]


@pytest.mark.parametrize(
  "kwargs,error,name", BAD_INPUTS, ids=[str(i) for i in range(len(BAD_INPUTS))]
)
def test_bad_input_raises_before_compiling(model, monkeypatch, kwargs, error, name):
  def fail(*args, **kw):
    raise AssertionError("compiled before validating")

  monkeypatch.setattr(_sampler, "_prefill", fail)
  monkeypatch.setattr(_sampler, "_decode", fail)
  args = dict(prompts=[[1, 2, 3]], key=jax.random.key(0), max_new_tokens=4)
  args.update(kwargs)
  with pytest.raises(error, match=f"`{name}`"):
    sampling.sample(model, args.pop("prompts"), **args)


def test_padded_array_prompts_with_lengths(model, greedy):
  # The same prompts as a right-padded array + lengths give the same samples as the lists.
  arr = np.full((len(PROMPTS), 7), 99, np.int32)
  for p, prompt in enumerate(PROMPTS):
    arr[p, : len(prompt)] = prompt
  out = sampling.sample(
    model,
    arr,
    prompt_lengths=[len(p) for p in PROMPTS],
    key=jax.random.key(0),
    max_new_tokens=MAX_NEW,
    n=N,
    temperature=0.0,
    pad_id=PAD,
  )
  np.testing.assert_array_equal(out.tokens, greedy.tokens)


def test_update_swaps_parameters_without_recompiling(model, greedy):
  other = make_model(CFG, 8.0, seed=1)
  sampler = sampling.Sampler(model)
  sampler.update(other)
  kw = dict(key=jax.random.key(0), max_new_tokens=MAX_NEW, n=N, temperature=0.0, pad_id=PAD)
  out = sampler(PROMPTS, **kw)
  chex.assert_trees_all_equal(out, sampling.sample(other, PROMPTS, **kw))
  assert not np.array_equal(out.tokens, greedy.tokens)
  with pytest.raises(ValueError, match="model_or_state"):
    sampler.update(models.Decoder(CFG.replace(num_layers=1), rngs=nnx.Rngs(0)))


def test_prompt_past_max_position_embeddings_is_refused_naming_both_numbers():
  """Issue 15 item 12: RoPE runs past max_position_embeddings without an error, so the sampler
  checks on the host, before compiling."""
  cfg = models.get_config("tiny", max_position_embeddings=16)
  sampler = sampling.Sampler(models.Decoder(cfg, rngs=nnx.Rngs(0)))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"20 tokens.*max_position_embeddings=16"):
    sampler([list(range(1, 21))], key=key, max_new_tokens=2)
  with pytest.raises(ValueError, match=r"\(12 tokens\) plus max_new_tokens=8.*=16"):
    sampler([list(range(1, 13))], key=key, max_new_tokens=8)
