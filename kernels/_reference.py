"""Plain-jnp reference: token log-probs and entropy from the full logits `[N, V]`.

This is the path the fused kernels replace; it materialises the logits and is differentiated by
plain autodiff. It is kept as the reference the chunked and Pallas versions are tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def acc_dtype(dtype) -> jnp.dtype:
  """The dtype softmax math runs in: float32, or wider when the inputs are wider."""
  return jnp.promote_types(dtype, jnp.float32)


def target_valid(targets: jax.Array, vocab_size: int) -> jax.Array:
  """bool[N]: the rows whose target is a real token id, `0 <= t < V` (others are masked)."""
  return (targets >= 0) & (targets < vocab_size)


def naive_logprobs(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  *,
  top_k: int = 0,
  temperature: float = 1.0,
):
  """Log-prob of the targets, entropy and optional top-k, through the full logits.

  With `z = hidden @ weight / temperature` (f32[N, V], float32 accumulation even for bf16
  inputs) and `log p = log_softmax(z)`:

    logp[n]    = log p[n, targets[n]]
    entropy[n] = -sum_v p[n, v] log p[n, v]
    top-k      = lax.top_k(log p[n], top_k)   (values, ids; ties go to the lower id)

  Rows whose target is outside `[0, V)` (e.g. -1) are masked: every output is 0 there (top-k ids
  -1) and no gradient flows from them.

  Args:
    hidden: [N, D] final hidden states.
    weight: [D, V] output embedding.
    targets: i32[N] token ids to score.
    top_k: if > 0, also return the top-k log-probs and their ids.
    temperature: logits are divided by it (sampling temperature).

  Returns:
    `(logp f32[N], entropy f32[N])`, plus `(topk_logp f32[N, K], topk_ids i32[N, K])` as a third
    element when `top_k > 0`.
  """
  dtype = acc_dtype(jnp.result_type(hidden, weight))
  vocab = weight.shape[-1]
  valid = target_valid(targets, vocab)
  logits = jnp.dot(hidden, weight, preferred_element_type=dtype).astype(dtype) / temperature
  log_p = jax.nn.log_softmax(logits, axis=-1)
  safe_t = jnp.where(valid, targets, 0)
  logp = jnp.take_along_axis(log_p, safe_t[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  logp = jnp.where(valid, logp, 0.0)
  entropy = jnp.where(valid, entropy, 0.0)
  if not top_k:
    return logp, entropy
  top_v, top_i = jax.lax.top_k(log_p, top_k)
  top_v = jnp.where(valid[:, None], top_v, 0.0)
  top_i = jnp.where(valid[:, None], top_i, -1).astype(jnp.int32)
  return logp, entropy, (top_v, top_i)
