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
