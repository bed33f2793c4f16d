"""`sampling.Conversation` over a ShardedSampler (data=2, tensor=4 mesh) gives the unsharded
conversation's greedy turns."""

import jax
import numpy as np
import sharding_case as case

from postrain import sampling, sharding

PROMPTS = [[5, 17, 301, 44, 9], [88, 2], [400, 401, 402, 403, 404, 405, 406, 407, 408], [7, 7, 7]]
OBS = [[[1, 2, 3], None, [4], [5, 6, 7, 8, 9]], [[10], None, None, [11, 12]]]


def episode(sampler):
  conv = sampling.Conversation(sampler, cache_size=96)
  kw = dict(max_new_tokens=6, temperature=0.0, stop_tokens=(3,))
  turns = [conv.start(PROMPTS, key=jax.random.key(0), **kw)]
  for i, o in enumerate(OBS):
    turns.append(conv.extend(o, key=jax.random.key(i + 1), **kw))
  return conv, turns


def test_sharded_conversation_matches_unsharded():
  model = case.factory()
  ref, ref_turns = episode(sampling.Sampler(model))
  mesh = sharding.make_mesh({"data": 2, "tensor": 4})
  conv, turns = episode(sharding.ShardedSampler(model, mesh, sharding.default_rules()))
  for a, b in zip(turns, ref_turns):
    assert a.tokens == b.tokens
  out, want = conv.result(), ref.result()
  for name in ("tokens", "response_mask", "valid", "positions"):
    np.testing.assert_array_equal(
      np.asarray(getattr(out, name)), np.asarray(getattr(want, name)), err_msg=name
    )
  np.testing.assert_allclose(np.asarray(out.model_logp), np.asarray(want.model_logp), atol=1e-5)
  # The cache stayed sharded over the rows through the appends and decode loops.
  assert not conv._cache.k.sharding.is_fully_replicated
