"""Multi-turn sampling over one KV cache (`sampling.Conversation`) against full uncached forward
passes of the real decoder and against the single-turn sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postrain import models, sampling
from postrain.sampling import _conversation

CFG = models.get_config("tiny")  # d=64, L=2, vocab 512
PROMPTS = [[5, 17, 300, 2], [9], [100, 101, 102, 103, 104, 105, 106], [42, 7]]
TP = 16  # the "pow2" bucket of the longest prompt (7 tokens)
CACHE = 160
MAX_NEW = 8
PAD = 0
# Observations per turn (after turn 0 and after turn 1): row 0 finishes after turn 0, row 1
# after turn 1, rows 2 and 3 take three turns; lengths differ, one is empty.
OBS = [
  [None, [11, 12, 13], [13], [14, 15, 16, 17, 18, 19]],
  [None, None, [], [21, 22]],
]


def make_model(scale=8.0, seed=0):
  model = models.Decoder(CFG, rngs=nnx.Rngs(seed))
  # Sharper next-token distributions than a random init gives (no near-ties for greedy).
  model.final_norm.scale[...] = jnp.full((CFG.embed_dim,), scale, jnp.float32)
  return model


@pytest.fixture(scope="module")
def model():
  return make_model()


@pytest.fixture(scope="module")
def sampler(model):
  return sampling.Sampler(model)


full_logits = nnx.jit(models.forward)  # one uncached pass, positions from `valid`


@nnx.jit
def rescore(model, tokens, mask, valid):
  return models.logprobs(model, tokens, mask, valid=valid)


def run(sampler, *, stop_tokens=(), temperature=1.0, top_p=None, obs=OBS, hook=None):
  """Three turns; returns (conversation, turns, the logits each turn was drawn from, the context
  lengths before each turn)."""
  conv = sampling.Conversation(sampler, cache_size=CACHE, pad_id=PAD)
  kw = dict(max_new_tokens=MAX_NEW, stop_tokens=stop_tokens, temperature=temperature, top_p=top_p)
  turns = [conv.start(PROMPTS, key=jax.random.key(0), **kw)]
  logits, ctx = [np.asarray(conv.logits)], [np.array([len(p) for p in PROMPTS])]
  for i, o in enumerate(obs):
    if hook:
      hook(conv)
    ctx.append(conv.lengths + np.array([len(x) if x is not None else 0 for x in o]))
    turns.append(conv.extend(o, key=jax.random.key(i + 1), **kw))
    logits.append(np.asarray(conv.logits))
  return conv, turns, logits, ctx


@pytest.fixture(scope="module")
def free_stop(sampler):
  """A stop token that row 0 draws third in turn 0 (so some rows stop early)."""
  _, turns, _, _ = run(sampler)
  return (turns[0].tokens[0][2],)


@pytest.fixture(scope="module")
def episode(sampler, free_stop):
  return run(sampler, stop_tokens=free_stop)


def expected_rows(turns, obs=OBS):
  """Per row: the conversation after the prompt as (token, is_model) pairs, from the turns."""
  rows = [[] for _ in PROMPTS]
  for k, turn in enumerate(turns):
    for b in range(len(PROMPTS)):
      if k > 0 and obs[k - 1][b] is not None:
        rows[b] += [(t, 0) for t in obs[k - 1][b]]
      rows[b] += [(t, 1) for t in turn.tokens[b]]
  return rows


def test_layout_three_turns_rows_finishing_at_different_turns(episode, free_stop):
  conv, turns, _, _ = episode
  out = conv.result()
  assert out.tokens.shape == (len(PROMPTS), CACHE) and out.prompt_len == TP
  # Which rows generated in which turn.
  np.testing.assert_array_equal(
    [t.active for t in turns], [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
  )
  assert any(len(t) < MAX_NEW for t in turns[0].tokens), "no row stopped early"
  for turn in turns:
    for b, toks in enumerate(turn.tokens):
      assert turn.stopped[b] == (len(toks) > 0 and toks[-1] in free_stop)
      assert free_stop[0] not in toks[:-1]
  tokens, mask = np.asarray(out.tokens), np.asarray(out.response_mask)
  valid, pos = np.asarray(out.valid), np.asarray(out.positions)
  for b, row in enumerate(expected_rows(turns)):
    lp, n = len(PROMPTS[b]), len(row)
    want_tokens = [PAD] * (TP - lp) + PROMPTS[b] + [t for t, _ in row]
    want_tokens += [PAD] * (CACHE - len(want_tokens))
    np.testing.assert_array_equal(tokens[b], want_tokens)
    want_mask = np.zeros(CACHE)
    want_mask[TP : TP + n] = [m for _, m in row]
    np.testing.assert_array_equal(mask[b], want_mask)
    want_valid = (np.arange(CACHE) >= TP - lp) & (np.arange(CACHE) < TP + n)
    np.testing.assert_array_equal(valid[b], want_valid)
    # Positions count real tokens: 0 at the first prompt token, +1 per token, gaps never shift.
    np.testing.assert_array_equal(pos[b, TP - lp : TP + n], np.arange(lp + n))
    assert conv.lengths[b] == lp + n
    assert int(out.lengths[b]) == sum(m for _, m in row)
  gen = [np.concatenate([t.model_logp[b] for t in turns]) for b in range(len(PROMPTS))]
  for b in range(len(PROMPTS)):
    np.testing.assert_array_equal(np.asarray(out.model_logp)[b][mask[b] == 1], gen[b])
    assert np.all(np.asarray(out.model_logp)[b][mask[b] == 0] == 0)
  np.testing.assert_array_equal(conv.finished, [True, True, False, False])


def test_continued_cache_logits_equal_a_fresh_prefill(model, episode):
  """The logits every turn draws its first token from (after appending the observation to the
  cache) equal an uncached forward pass over the whole conversation so far."""
  conv, turns, logits, ctx = episode
  out = conv.result()
  full = np.asarray(full_logits(model, out.tokens, out.valid))
  for k, turn in enumerate(turns):
    for b in np.flatnonzero(turn.active):
      col = TP - len(PROMPTS[b]) + ctx[k][b] - 1  # the last context token before turn k
      np.testing.assert_allclose(logits[k][b], full[b, col], rtol=1e-5, atol=2e-5)
  assert np.abs(full).max() > 1.0  # not a trivially flat model


@pytest.mark.parametrize("temperature,top_p", [(1.0, None), (0.7, 0.9)])
def test_logprobs_rescore_every_model_token(model, sampler, free_stop, temperature, top_p):
  conv, _, _, _ = run(sampler, stop_tokens=free_stop, temperature=temperature, top_p=top_p)
  out = conv.result()
  got = np.asarray(rescore(model, out.tokens, out.response_mask, out.valid))
  np.testing.assert_allclose(got, np.asarray(out.model_logp), atol=2e-5)
  mask = np.asarray(out.response_mask) == 1
  assert mask.sum() > 20 and np.all(np.asarray(out.model_logp)[mask] < 0)
  slp = np.asarray(out.sample_logp)
  if temperature == 1.0:
    np.testing.assert_allclose(slp, np.asarray(out.model_logp), atol=1e-6)
  else:  # the sampling distribution differs from the raw model's; both are kept
    assert np.abs(slp[mask] - np.asarray(out.model_logp)[mask]).max() > 1e-2


def _poison(cache, where):
  """k and v set to 1e4 in the slots `where: bool[B, S]` (an attended slot changes everything)."""
  m = where[None, :, :, None, None]
  return models.KVCache(
    k=jnp.where(m, 1e4, cache.k), v=jnp.where(m, 1e4, cache.v), valid=cache.valid, end=cache.end
  )


@pytest.mark.parametrize("poison_valid", [False, True])
def test_padding_slots_are_never_attended(model, free_stop, poison_valid, monkeypatch):
  """Every invalid cache slot (prompt padding, gaps of early-stopped rows, observation chunk
  padding, unwritten slots) poisoned before each decode: nothing changes. Poisoning one valid
  slot instead changes the samples (the check can fail)."""

  def poison(cache):
    where = ~cache.valid
    if poison_valid:  # the first real prompt token of the longest prompt
      where = jnp.zeros_like(where).at[2, TP - 7].set(True)
    return _poison(cache, where)

  clean = run(sampling.Sampler(model), stop_tokens=free_stop)
  poisoned_sampler = sampling.Sampler(model)
  orig_prefill = poisoned_sampler._run_prefill
  poisoned_sampler._run_prefill = lambda p, mode: (lambda lc: (lc[0], poison(lc[1])))(
    orig_prefill(p, mode)
  )
  orig_extend = _conversation._extend

  def extend(graphdef, state, cache, *args):
    logits, cache = orig_extend(graphdef, state, cache, *args)
    return logits, poison(cache)

  monkeypatch.setattr(_conversation, "_extend", extend)
  poisoned = run(poisoned_sampler, stop_tokens=free_stop)
  a, b = clean[0].result(), poisoned[0].result()
  if poison_valid:
    assert not np.allclose(np.asarray(a.model_logp)[2], np.asarray(b.model_logp)[2], atol=1e-3)
    return
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  np.testing.assert_array_equal(np.asarray(a.model_logp), np.asarray(b.model_logp))
  for la, lb in zip(clean[2], poisoned[2]):
    np.testing.assert_array_equal(la, lb)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_row_without_observations_equals_single_turn_sampling(sampler, free_stop, temperature):
  """Rows that never continue (row 0: None from turn 1) are today's single-turn rollout, column for
  column; turn 0 of every row is too (same key, same decode loop)."""
  conv, turns, _, _ = run(sampler, stop_tokens=free_stop, temperature=temperature)
  ref = sampler(PROMPTS, key=jax.random.key(0), max_new_tokens=MAX_NEW, stop_tokens=free_stop,
                temperature=temperature, pad_id=PAD)  # fmt: skip
  out = conv.result()
  w = TP + MAX_NEW
  for name in ("tokens", "response_mask", "valid"):
    np.testing.assert_array_equal(np.asarray(getattr(out, name))[0, :w], getattr(ref, name)[0])
  # Positions agree where they are used (the single-turn sampler counts on through its padding).
  live = np.asarray(ref.valid)[0]
  np.testing.assert_array_equal(
    np.asarray(out.positions)[0, :w][live], np.asarray(ref.positions)[0][live]
  )
  for name in ("model_logp", "sample_logp"):
    np.testing.assert_allclose(
      np.asarray(getattr(out, name))[0, :w], getattr(ref, name)[0], atol=1e-6
    )
  assert not np.asarray(out.valid)[0, w:].any() and int(out.lengths[0]) == int(ref.lengths[0])
  for b in range(len(PROMPTS)):
    n = int(ref.lengths[b])
    assert turns[0].tokens[b] == np.asarray(ref.tokens)[b, TP : TP + n].tolist()


def test_budget_and_input_errors(sampler):
  conv = sampling.Conversation(sampler, cache_size=40, pad_id=PAD)
  with pytest.raises(RuntimeError, match="start"):
    _ = conv.remaining
  with pytest.raises(ValueError, match="max_new_tokens"):
    conv.start(PROMPTS, key=jax.random.key(0), max_new_tokens=40)
  conv.start(PROMPTS, key=jax.random.key(0), max_new_tokens=MAX_NEW)
  left = conv.remaining
  assert left == 40 - int(conv._cache.end) and 40 - TP - MAX_NEW <= left < 40 - TP
  with pytest.raises(ValueError, match=r"cache_size.*max_new_tokens"):
    conv.extend([[1]] * 4, key=jax.random.key(1), max_new_tokens=left - 1)
  with pytest.raises(ValueError, match="observations"):
    conv.extend([[1]] * 3, key=jax.random.key(1), max_new_tokens=2)
  with pytest.raises(ValueError, match=r"observations.*outside"):
    conv.extend([[1], [CFG.vocab_size], [1], [1]], key=jax.random.key(1), max_new_tokens=2)
  turn = conv.extend([[1], None, [2, 3], []], key=jax.random.key(1), max_new_tokens=left - 3)
  assert turn.tokens[1] == [] and not turn.active[1] and conv.remaining >= 0
  with pytest.raises(ValueError, match="row 1 is finished"):
    conv.extend([None, [1], None, None], key=jax.random.key(2), max_new_tokens=1)
  ends = conv.lengths
  turn = conv.extend([None] * 4, key=jax.random.key(2), max_new_tokens=1)  # nothing runs
  assert not turn.active.any() and all(t == [] for t in turn.tokens)
  np.testing.assert_array_equal(conv.lengths, ends)
  with pytest.raises(ValueError, match="width"):
    conv.result(width=TP)
  with pytest.raises(TypeError, match="sampler"):
    sampling.Conversation(object(), cache_size=40)
  with pytest.raises(ValueError, match="cache_size"):
    sampling.Conversation(sampler, cache_size=1)


def test_observation_lengths_in_one_bucket_share_one_compilation(model, monkeypatch):
  """The append compiles once per chunk width bucket (obs_bucket=16: chunks of 2..16 tokens share
  it), and the decode loop once for all turns of one sampling mode."""
  traces = {"extend": 0, "decode": 0}

  def counted(name, fn):
    def wrapped(*args, **kwargs):
      traces[name] += 1
      return fn(*args, **kwargs)

    return wrapped

  monkeypatch.setattr(
    _conversation,
    "_extend",
    jax.jit(
      counted("extend", _conversation._extend_impl), static_argnums=(0,), donate_argnums=(2,)
    ),
  )
  monkeypatch.setattr(
    _conversation,
    "_decode",
    sampling._sampler.jit_decode(counted("decode", sampling._sampler._decode_impl)),
  )
  conv = sampling.Conversation(sampling.Sampler(model), cache_size=CACHE, pad_id=PAD)
  conv.start(PROMPTS, key=jax.random.key(0), max_new_tokens=4)
  for i, n in enumerate([1, 9, 15]):
    conv.extend([[7] * n, [8], None, [9] * (n // 2)], key=jax.random.key(i + 1), max_new_tokens=4)
  assert traces == {"extend": 1, "decode": 1}
  conv.extend([[7] * 16, [8], None, [9]], key=jax.random.key(9), max_new_tokens=4)  # width 32
  assert traces == {"extend": 2, "decode": 1}
