"""Fused kernels (installed as `postrain.kernels`).

`fused_logprobs` computes token log-probs, entropy and top-k over a large vocabulary without
materialising the `[N, V]` logits (chunked jnp or Pallas), with `naive_logprobs` as the reference.
"""

from postrain.kernels._chunked import chunked_logprobs
from postrain.kernels._fused import fused_logprobs
from postrain.kernels._pallas import pallas_logprobs
from postrain.kernels._reference import naive_logprobs

__all__ = ["chunked_logprobs", "fused_logprobs", "naive_logprobs", "pallas_logprobs"]
