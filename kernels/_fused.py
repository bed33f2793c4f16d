"""Public entry point: `fused_logprobs`, validated and dispatched to one implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from postrain import _validation as v
from postrain.kernels._chunked import chunked_logprobs
from postrain.kernels._pallas import TARGETS, pallas_logprobs
from postrain.kernels._reference import naive_logprobs

IMPLS = ("chunked", "naive", "pallas")
DEFAULT_CHUNK_SIZE = {"chunked": 8192}  # "pallas": per-target default (TPU 1024, GPU 128)


def _static_int(name: str, value, *, allow_zero: bool = False) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be a static Python int, got {type(value).__name__}.")
  v.check_positive(name, value, allow_zero=allow_zero)
  return int(value)


def fused_logprobs(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  *,
  mask: jax.Array | None = None,
  impl: str = "chunked",
  chunk_size: int | None = None,
  block_n: int | None = None,
  top_k: int = 0,
  temperature: float = 1.0,
  target: str | None = None,
  interpret: bool | None = None,
):
  """Log-prob of `targets`, entropy and optional top-k under `softmax(hidden @ weight / T)`.

  With `z = hidden @ weight / temperature` and `log p = log_softmax(z)` over the vocabulary:

    logp[...]    = log p[..., targets]
    entropy[...] = -sum_v p_v log p_v  = logsumexp(z) - E_p[z]
    top-k        = the `top_k` largest log p and their ids (ties to the lower id, as lax.top_k)

  `impl="chunked"` (default) and `impl="pallas"` never materialise the `[N, V]` logits: they walk
  the vocabulary in chunks with an online logsumexp, and their custom VJPs recompute each chunk's
  logits in the backward pass (online softmax normaliser, arXiv:1805.02867). `impl="pallas"`
  lowers to Mosaic on TPU and to Triton on GPU (two formulations, chosen by the backend; on CPU it
  runs in the Pallas interpreter). `impl="naive"` is the plain-jnp reference. Softmax math is
  float32 (or wider) for every input dtype; the matmuls take the inputs' dtype with float32
  accumulation.

  Masking: a token is masked when `mask` is False/0 there, or its target is outside `[0, V)`
  (e.g. -1). Masked tokens give logp = entropy = 0, top-k log-probs 0 with ids -1, and no gradient.

  Gradients flow to `hidden` and `weight` through logp, entropy and the top-k log-probs.

  Args:
    hidden: [..., D] final hidden states (float).
    weight: [D, V] output embedding (float), e.g. `model.output_embedding()`.
    targets: int[...] token ids to score (the leading shape of `hidden`).
    mask: optional bool/float[...] (same shape as `targets`); 0 masks a token.
    impl: "chunked", "naive" or "pallas".
    chunk_size: vocabulary columns per chunk (static). Default 8192 for "chunked"; for "pallas"
      its vocabulary block, default 1024 on TPU and 128 on GPU; ignored by "naive".
    block_n: rows per block for "pallas" (default 256 on TPU, 64 on GPU).
    top_k: if > 0, also return the top-k log-probs and ids.
    temperature: logits are divided by it (> 0).
    target: "pallas" only: "tpu" (Mosaic formulation) or "gpu" (Triton formulation); None = by
      the default backend ("gpu" on CUDA/ROCm, else "tpu").
    interpret: "pallas" only: run in the Pallas interpreter; None = only on the CPU backend.

  Returns:
    `(logp f32[...], entropy f32[...])`, plus `(topk_logp f32[..., K], topk_ids i32[..., K])` as a
    third element when `top_k > 0`.
  """
  v.check_choice("impl", impl, IMPLS)
  v.check_floating("hidden", hidden)
  v.check_floating("weight", weight)
  v.check_rank("weight", weight, 2)
  if np.ndim(hidden) < 2:
    raise ValueError(f"`hidden` must have rank >= 2 ([..., D]), got shape {np.shape(hidden)}.")
  lead, d = tuple(np.shape(hidden)[:-1]), np.shape(hidden)[-1]
  if np.shape(weight)[0] != d:
    raise ValueError(
      f"`weight` must have shape (D, V) with D={d} (the last dim of `hidden`), "
      f"got {tuple(np.shape(weight))}."
    )
  vocab = np.shape(weight)[1]
  v.check_positive("vocabulary size (weight.shape[1])", vocab)
  if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
    raise TypeError(f"`targets` must be an integer array, got dtype {jnp.result_type(targets)}.")
  v.check_shape("targets", targets, lead, like="hidden[..., 0]")
  if mask is not None:
    v.check_shape("mask", mask, lead, like="targets")
  top_k = _static_int("top_k", top_k, allow_zero=True)
  if top_k > vocab:
    raise ValueError(f"`top_k`={top_k} exceeds the vocabulary size {vocab}.")
  chunk_size = DEFAULT_CHUNK_SIZE.get(impl) if chunk_size is None else chunk_size
  chunk_size = None if chunk_size is None else _static_int("chunk_size", chunk_size)
  block_n = None if block_n is None else _static_int("block_n", block_n)
  if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
    raise TypeError(
      f"`temperature` must be a static Python float, got {type(temperature).__name__}."
    )
  v.check_positive("temperature", temperature)
  if target is not None:
    v.check_choice("target", target, TARGETS)

  dtype = jnp.result_type(hidden, weight)
  h = jnp.reshape(hidden, (-1, d)).astype(dtype)
  w = jnp.asarray(weight).astype(dtype)
  t = jnp.reshape(targets, (-1,)).astype(jnp.int32)
  if mask is not None:
    t = jnp.where(jnp.reshape(mask, (-1,)).astype(bool), t, -1)
  kw = {"top_k": top_k, "temperature": float(temperature)}
  if impl == "naive":
    out = naive_logprobs(h, w, t, **kw)
  elif impl == "chunked":
    out = chunked_logprobs(h, w, t, chunk_size=chunk_size, **kw)
  else:
    out = pallas_logprobs(
      h, w, t, block_n=block_n, block_v=chunk_size, target=target, interpret=interpret, **kw
    )
  logp, entropy = (x.reshape(lead) for x in out[:2])
  if not top_k:
    return logp, entropy
  top_logp, top_i = (x.reshape((*lead, top_k)) for x in out[2])
  return logp, entropy, (top_logp, top_i)
