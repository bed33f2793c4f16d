"""Per-token log-probabilities (and entropies) of a token batch under a decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from postrain._constrain import constrain
from postrain._validation import check_choice, check_rank, check_shape
from postrain.models._decoder import Decoder
from postrain.models._layers import lora_dropout_active

IMPLS = ("naive", "chunked", "pallas")


def token_logprobs_from_hidden(
  hidden: jax.Array,
  weight: jax.Array,
  targets: jax.Array,
  *,
  impl: str = "naive",
  mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Log-probability of each target and the entropy of each predictive distribution.

  z = hidden @ weight (float32 accumulation), logp[n] = z[n, targets[n]] - logsumexp(z[n]),
  entropy[n] = logsumexp(z[n]) - sum_v softmax(z[n])_v z[n, v].

  This naive version materialises the [N, V] logits; a fused vocabulary-chunked kernel
  (`postrain.kernels`) computes the same two outputs without them.

  Args:
    hidden: [N, D] final hidden states (any float dtype).
    weight: [D, V] output embedding.
    targets: i32[N] token ids.
    impl: "naive" (below), or "chunked" / "pallas": `postrain.kernels.fused_logprobs`, which never
      holds the [N, V] logits (forward or backward).
    mask: optional [N] tokens to score (the fused kernels skip the others, with zero gradient).

  Returns:
    (logp: f32[N], entropy: f32[N]).
  """
  if impl != "naive":
    from postrain import kernels

    logp, entropy = kernels.fused_logprobs(
      hidden, weight.astype(hidden.dtype), targets, mask=mask, impl=impl
    )[:2]
    return logp, entropy
  logits_NV = jnp.einsum(
    "ND,DV->NV", hidden, weight.astype(hidden.dtype), preferred_element_type=jnp.float32
  )
  # N = B * (T - 1) rows in batch-major order: split like the batch (identity outside
  # `sharding.activation_sharding`).
  logits_NV = constrain(logits_NV, ("batch", "vocab_act"))
  lse_N = jax.nn.logsumexp(logits_NV, axis=-1)
  target_logit_N = jnp.take_along_axis(logits_NV, targets[:, None], axis=-1)[:, 0]
  p_NV = jnp.exp(logits_NV - lse_N[:, None])
  entropy_N = lse_N - jnp.sum(p_NV * logits_NV, axis=-1)
  return target_logit_N - lse_N, entropy_N


def _check_shared_prefix(tokens: jax.Array, valid: jax.Array, group: int, s: int) -> None:
  """ValueError when concrete `tokens` / `valid` differ inside a group of rows before column s."""
  if isinstance(tokens, jax.core.Tracer) or isinstance(valid, jax.core.Tracer):
    return
  for name, x in (("tokens", tokens), ("valid", valid)):
    x = np.asarray(x)[:, :s]
    x = x.reshape(-1, group, s)
    bad = np.nonzero(~np.all(x == x[:, :1], axis=(1, 2)))[0]
    if bad.size:
      raise ValueError(
        f"prefix_group={group}: `{name}` differs inside row group {int(bad[0])} (rows "
        f"{int(bad[0]) * group}..{int(bad[0]) * group + group - 1}) before column {s}; pass "
        "prefix_group=1 for rows that do not share their prefix."
      )


def positions_from_valid(valid: jax.Array) -> jax.Array:
  """RoPE positions i32[B, T] = max(cumsum(valid) - 1, 0): left padding does not shift them."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def logprobs(
  model: Decoder,
  tokens: jax.Array,
  mask: jax.Array,
  *,
  valid: jax.Array | None = None,
  return_entropy: bool = False,
  impl: str = "naive",
  score_from: int = 0,
  prefix_group: int = 1,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Per-token log-probabilities log p(tokens[:, t] | tokens[:, :t]) under `model`.

  One full (uncached, differentiable) forward pass with positions `max(cumsum(valid) - 1, 0)`,
  then the hidden state at t - 1 scores token t. With `score_from = s` the output projection and
  the vocabulary softmax run only on columns t >= s (hidden states s - 1 .. T - 2): the sampler's
  layout puts every response after the padded prompt width, so an RL batch scores its responses
  without the [B, s, V] logits of its prompts (`RLBatch.score_from`).

  Args:
    model: a `Decoder`.
    tokens: i32[B, T].
    mask: [B, T] bool/float, the tokens to score (nonzero = scored).
    valid: bool[B, T], attention validity (False = padding); default all True.
    return_entropy: also return the entropy of each predictive distribution.
    impl: "naive" (materialised [B*T, V] logits), "chunked" or "pallas" (the fused
      vocabulary-chunked kernels of `postrain.kernels`; same values, no [B*T, V] tensor).
    score_from: static int in [0, T); the first column that may be scored. Columns before it get
      logp (and entropy) 0 whatever `mask` says there: the caller promises `mask` is 0 on them.
    prefix_group: static int g >= 1 dividing B; g > 1 (with `score_from` > 0) promises that each
      g consecutive rows have equal `tokens` and `valid` in the columns before `score_from` (the
      RL group layout: a prompt's samples, `RLBatch.prompt_group`), and runs those columns once
      per group (`Decoder.shared_prefix`): the same values up to float32 summation order, in
      (s / g + T - s) / T of the forward and backward work. Checked when the arrays are
      concrete. Under LoRA adapter dropout (`lora_dropout`) every row runs whole (the rows'
      dropout masks differ), as with g = 1.

  Returns:
    logp: f32[B, T], 0 where mask is 0 and where the token has no context (column 0, and the
    first token after left padding, whose predecessor is not valid); with `return_entropy` also
    entropy: f32[B, T] (same alignment and zeros).
  """
  check_rank("tokens", tokens, 2)
  if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
    raise TypeError(f"`tokens` must be an integer array, got dtype {jnp.result_type(tokens)}.")
  check_shape("mask", mask, tokens.shape, like="tokens")
  check_choice("impl", impl, IMPLS)
  b, t = tokens.shape
  if not isinstance(score_from, int) or not 0 <= score_from < t:
    raise ValueError(f"`score_from` must be a Python int in [0, {t}) (T = tokens.shape[1]), "
                     f"got {score_from!r}.")  # fmt: skip
  valid = jnp.ones((b, t), bool) if valid is None else valid
  check_shape("valid", valid, tokens.shape, like="tokens")
  valid = valid.astype(bool)

  if not isinstance(prefix_group, int) or prefix_group < 1 or b % prefix_group:
    raise ValueError(f"`prefix_group` must be a Python int >= 1 dividing the {b} rows, "
                     f"got {prefix_group!r}.")  # fmt: skip
  positions = positions_from_valid(valid)
  s = max(score_from, 1)  # the scored columns s .. T - 1, from the hidden states s - 1 .. T - 2
  if prefix_group > 1 and score_from > 0 and not lora_dropout_active():
    g = prefix_group
    _check_shared_prefix(tokens, valid, g, s)
    hp, hs = model.shared_prefix(
      tokens[::g, :s], positions[::g, :s], valid[::g, :s],
      tokens[:, s:], positions[:, s:], valid[:, s:], group=g,
    )  # fmt: skip
    # hidden states s - 1 .. T - 2: the prefix's last column (each row of its group), then the rows'
    hidden_BSD = jnp.concatenate([jnp.repeat(hp[:, -1:], g, axis=0), hs[:, :-1]], axis=1)
  else:
    hidden_BSD = model(tokens, positions, valid=valid)[0][:, s - 1 : -1]
  d = hidden_BSD.shape[-1]
  # A token scores only with context: column 0 and the first token after left padding give 0.
  has_context = jnp.concatenate([jnp.zeros((b, 1), bool), valid[:, :-1]], axis=1)
  keep = mask.astype(bool) & has_context
  n = b * (t - s)
  logp, entropy = token_logprobs_from_hidden(
    hidden_BSD.reshape(n, d),
    model.output_embedding(),
    tokens[:, s:].reshape(n),
    impl=impl,
    mask=keep[:, s:].reshape(n),
  )
  zeros = jnp.zeros((b, s), jnp.float32)
  keep = keep.at[:, :s].set(False)
  logp = jnp.where(keep, jnp.concatenate([zeros, logp.reshape(b, t - s)], axis=1), 0.0)
  if not return_entropy:
    return logp
  entropy = jnp.where(keep, jnp.concatenate([zeros, entropy.reshape(b, t - s)], axis=1), 0.0)
  return logp, entropy
