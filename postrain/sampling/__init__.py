"""In-JAX KV-cache sampler: bucketed prefill, one jitted while_loop decode, RL group layout.

from postrain import models, sampling
out = sampling.sample(model, prompts, key=jax.random.key(0), max_new_tokens=64, n=8,
                      temperature=1.0, top_p=0.95, stop_tokens=(eos_id,))
logp = models.logprobs(model, out.tokens, out.response_mask, valid=out.valid)  # == out.model_logp
"""

from postrain.sampling._prompts import bucket_length
from postrain.sampling._sampler import SampleOutput, Sampler, sample
from postrain.sampling._select import Selection, select_tokens

__all__ = ["SampleOutput", "Sampler", "Selection", "bucket_length", "sample", "select_tokens"]
