"""The model-running scorers of `python -m postrain.select`: one teacher-forced forward pass of a
`postrain.models.Decoder`, then the pure scores of `postrain.selection` (which takes arrays only).

  from postrain import select
  hes = select.model_hes(model, tokens, mask, valid=valid)                   # f32[B]
  g = select.model_grace_scores(model, tokens, seg, answer_mask, num_steps=K)  # GraceScores
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import models, selection


def model_entropy(model: Any, tokens: jax.Array, mask: jax.Array, **kwargs: Any) -> jax.Array:
  """Per-token entropies of `model` in one teacher-forced forward pass.

  Calls `postrain.models.logprobs(model, tokens, mask, return_entropy=True, **kwargs)`, so
  entropy[:, t] is the entropy of the distribution that predicts tokens[:, t] (0 where mask is 0).
  Pass `valid=` for padded batches.

  Returns:
    f32[B, T].
  """
  _, entropy = models.logprobs(model, tokens, mask, return_entropy=True, **kwargs)
  return entropy


def model_hes(
  model: Any,
  tokens: jax.Array,
  mask: jax.Array,
  *,
  ratio: float = 0.005,
  min_tokens: int = 1,
  rounding: str = "ceil",
  **kwargs: Any,
) -> jax.Array:
  """HES of each sample under `model` (the training model or a same-tokenizer proxy), f32[B]."""
  entropy = model_entropy(model, tokens, mask, **kwargs)
  return selection.hes_score(entropy, mask, ratio=ratio, min_tokens=min_tokens, rounding=rounding)


def model_grace_scores(
  model: Any,
  tokens: jax.Array,
  segment_ids: jax.Array,
  answer_mask: jax.Array,
  *,
  num_steps: int,
  valid: jax.Array | None = None,
  alpha: float = 0.7,
  normalize_history: bool = False,
) -> selection.GraceScores:
  """GRACE scores under a `postrain.models.Decoder` (the scoring model; the paper warms it up
  with SFT on a 5 % subset first). One forward pass; positions count valid tokens so left
  padding does not shift RoPE positions.
  """
  if valid is None:
    valid = jnp.ones(np.shape(tokens), bool)
  valid = jnp.asarray(valid, bool)
  hidden, _ = model(tokens, models.positions_from_valid(valid), valid=valid)
  return selection.grace_scores(
    hidden,
    tokens,
    model.output_embedding(),
    segment_ids,
    answer_mask,
    num_steps=num_steps,
    alpha=alpha,
    normalize_history=normalize_history,
    logits=model.logits(hidden),
  )
