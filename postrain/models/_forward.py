"""`forward(model, tokens, valid=None)`: logits of a token batch in one call (no cache, no
hand-made positions), for users coming from other libraries' `model(input_ids).logits`."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from postrain._validation import check_rank, check_shape
from postrain.models._decoder import Decoder
from postrain.models._logprobs import positions_from_valid


def forward(model: Decoder, tokens: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Logits f32[B, T, V] of `tokens` i32[B, T] under `model` (one full causal pass).

  `valid` bool[B, T] marks real tokens (False: left padding, never attended to; default all
  True). RoPE positions are `max(cumsum(valid) - 1, 0)` (`positions_from_valid`), so a left-padded
  row gives the same logits at its valid positions as the row alone. Equals
  `model.logits(model(tokens, positions_from_valid(valid), valid=valid)[0])`; logits at padding
  positions are meaningless.
  """
  tokens = jnp.asarray(tokens)
  check_rank("tokens", tokens, 2)
  valid = jnp.ones(tokens.shape, bool) if valid is None else jnp.asarray(valid, bool)
  check_shape("valid", valid, tokens.shape, like="tokens")
  hidden, _ = model(tokens, positions_from_valid(valid), valid=valid)
  return model.logits(hidden)
