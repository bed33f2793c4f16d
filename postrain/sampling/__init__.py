"""In-JAX KV-cache sampler: bucketed prefill, one jitted while_loop decode, RL group layout.

from postrain import models, sampling
out = sampling.sample(model, prompts, key=jax.random.key(0), max_new_tokens=64, n=8,
                      temperature=1.0, top_p=0.95, stop_tokens=(eos_id,))
logp = models.logprobs(model, out.tokens, out.response_mask, valid=out.valid)  # == out.model_logp

Multi-turn (tool results appended to the same KV cache; see `Conversation`):
conv = sampling.Conversation(sampling.Sampler(model), cache_size=1024)
turn = conv.start(prompts, key=k0, max_new_tokens=64, stop_tokens=(eos_id,))
turn = conv.extend(observations, key=k1, max_new_tokens=64, stop_tokens=(eos_id,))
out = conv.result()   # response_mask 1 only on model tokens

Sharded (state, rows and KV cache placed by given shardings; `sharding.ShardedSampler` builds
them from a mesh and partition rules): `sampling.Sampler(model, shardings=SamplerShardings(...))`.
"""

from postrain.sampling._conversation import Conversation, Turn
from postrain.sampling._prompts import bucket_length
from postrain.sampling._sampler import SampleOutput, Sampler, sample
from postrain.sampling._sampler_shardings import SamplerShardings
from postrain.sampling._select import Selection, select_tokens

__all__ = [
  "Conversation",
  "SampleOutput",
  "Sampler",
  "SamplerShardings",
  "Selection",
  "Turn",
  "bucket_length",
  "sample",
  "select_tokens",
]
