"""The sampler under a (data=2, tensor=4) mesh gives the unsharded sampler's greedy outputs."""

import jax
import numpy as np
import sharding_case as case

from postrain import sampling, sharding

PROMPTS = [[5, 17, 301, 44, 9], [88, 2], [400, 401, 402, 403, 404, 405, 406, 407, 408], [7, 7, 7]]


def test_greedy_sampling_matches_unsharded():
  model = case.factory()
  kw = dict(key=jax.random.key(0), max_new_tokens=12, temperature=0.0, n=2, stop_tokens=(3,))
  ref = sampling.sample(model, PROMPTS, **kw)
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  sampler = sharding.ShardedSampler(model, mesh, sharding.default_rules())
  out = sampler(PROMPTS, **kw)
  for name in ("tokens", "response_mask", "lengths", "valid", "positions"):
    np.testing.assert_array_equal(
      np.asarray(getattr(out, name)), np.asarray(getattr(ref, name)), err_msg=name
    )
  np.testing.assert_allclose(np.asarray(out.model_logp), np.asarray(ref.model_logp), atol=1e-5)
  assert out.prompt_len == ref.prompt_len
  # Rows split over the batch axes; the model state by the parameter rules.
  assert out.tokens.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 2)
  emb = sampler.state["embedding"].get_value()
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  # An odd prompt count (3 rows: not divisible by data x fsdp = 2) falls back to replicated rows.
  odd = sampler(PROMPTS[:3], **dict(kw, n=1))
  ref_odd = sampling.sample(model, PROMPTS[:3], **dict(kw, n=1))
  np.testing.assert_array_equal(np.asarray(odd.tokens), np.asarray(ref_odd.tokens))


def test_hand_made_shardings_match_unsharded():
  """A `SamplerShardings` built by hand (no partition rules): rows split over 8 devices, KV cache
  over its batch dimension, state replicated. Greedy outputs equal the unsharded sampler's, the
  output and the state live where the shardings say, and `update` moves new parameters there."""
  from flax import nnx
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from postrain import models

  model = case.factory()
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
  rep = NamedSharding(mesh, P())

  def rows(b):
    return NamedSharding(mesh, P("data") if b % 8 == 0 else P())

  def cache(b):
    kv = NamedSharding(mesh, P(None, "data") if b % 8 == 0 else P())
    return models.KVCache(k=kv, v=kv, valid=rows(b), end=rep)

  shardings = sampling.SamplerShardings(
    state=jax.tree.map(lambda _: rep, nnx.split(model)[1]), rows=rows, cache=cache, replicated=rep
  )
  sampler = sampling.Sampler(model, shardings=shardings)
  kw = dict(key=jax.random.key(1), max_new_tokens=10, temperature=0.0, n=2, stop_tokens=(3,))
  out = sampler(PROMPTS, **kw)
  ref = sampling.Sampler(model)(PROMPTS, **kw)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
  np.testing.assert_allclose(np.asarray(out.model_logp), np.asarray(ref.model_logp), atol=1e-5)
  assert out.tokens.sharding.is_equivalent_to(rows(8), 2)
  assert len(out.tokens.sharding.device_set) == 8
  sampler.update(nnx.split(case.factory())[1])  # fresh single-device arrays
  emb = sampler.state["embedding"].get_value()
  assert emb.sharding.is_equivalent_to(rep, emb.ndim) and len(emb.sharding.device_set) == 8
  # 4 prompts, n=1: 4 rows, not divisible by 8, replicated throughout; still the same tokens.
  kw1 = dict(kw, n=1)
  np.testing.assert_array_equal(
    np.asarray(sampler(PROMPTS, **kw1).tokens),
    np.asarray(sampling.sample(model, PROMPTS, **kw1).tokens),
  )


def test_bad_shardings_argument():
  import pytest

  with pytest.raises(TypeError, match="`shardings`"):
    sampling.Sampler(case.factory(), shardings={"state": None})
