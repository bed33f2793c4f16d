"""Host-side input checks (before anything is traced) and left padding into a bucketed width."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreparedPrompts:
  """Left-padded prompts: `distinct_*` for the P prompts, the rest repeated to B = P * n rows.

  Attributes:
    tokens: i32[B, Tp], `pad_id` in the padding columns.
    valid: bool[B, Tp], True on real prompt tokens.
    positions: i32[B, Tp], `max(cumsum(valid) - 1, 0)`: 0 at the first real token.
    lengths: i32[B], unpadded prompt lengths.
    distinct_tokens, distinct_valid, distinct_positions: the same for the P distinct prompts.
  """

  tokens: np.ndarray
  valid: np.ndarray
  positions: np.ndarray
  lengths: np.ndarray
  distinct_tokens: np.ndarray
  distinct_valid: np.ndarray
  distinct_positions: np.ndarray


def bucket_length(length: int, bucket: int | str) -> int:
  """The padded prompt width: next power of two (>= 16) for "pow2", else a multiple of `bucket`."""
  if bucket == "pow2":
    return max(16, 1 << (length - 1).bit_length())
  return -(-length // bucket) * bucket


def _as_lists(prompts: Any, prompt_lengths: Any) -> list[np.ndarray]:
  """The prompts as a list of 1-D int64 arrays (unvalidated values)."""
  if isinstance(prompts, (np.ndarray, jax.Array)):
    arr = np.asarray(prompts)
    if arr.ndim != 2:
      raise ValueError(f"`prompts` as an array must have rank 2 [P, L], got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
      raise TypeError(f"`prompts` must hold integer token ids, got dtype {arr.dtype}.")
    if prompt_lengths is None:
      lens = np.full((arr.shape[0],), arr.shape[1])
    else:
      lens = np.asarray(prompt_lengths)
      if lens.shape != (arr.shape[0],) or not np.issubdtype(lens.dtype, np.integer):
        raise ValueError(
          f"`prompt_lengths` must be {arr.shape[0]} ints (one per row of `prompts`), got "
          f"{lens.dtype} array of shape {lens.shape}."
        )
      if np.any(lens > arr.shape[1]):
        raise ValueError(f"`prompt_lengths` exceed the width {arr.shape[1]} of `prompts`.")
    return [arr[i, : int(n)].astype(np.int64) for i, n in enumerate(lens)]
  if prompt_lengths is not None:
    raise ValueError("`prompt_lengths` is only for a padded array of `prompts`.")
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
    raise TypeError(
      f"`prompts` must be a list of token-id lists or an int array, got {type(prompts).__name__}."
    )
  out = []
  for i, p in enumerate(prompts):
    a = np.asarray(p)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
      raise TypeError(
        f"`prompts` row {i} must be a flat list of int token ids, got {a.dtype} of shape {a.shape}."
      )
    out.append(a.astype(np.int64))
  return out


def prepare_prompts(
  prompts: Any,
  prompt_lengths: Any,
  *,
  vocab_size: int,
  pad_id: int,
  n: int,
  max_new_tokens: int,
  cache_size: int | None,
  bucket: int | str,
) -> PreparedPrompts:
  """Validates the prompts and left-pads them to the bucketed width (see `PreparedPrompts`)."""
  rows = _as_lists(prompts, prompt_lengths)
  if not rows:
    raise ValueError("`prompts` is empty: pass at least one prompt.")
  lens = np.array([r.size for r in rows], np.int32)
  if np.any(lens == 0):
    raise ValueError(
      f"`prompts` must not contain empty prompts (rows {np.flatnonzero(lens == 0).tolist()})."
    )
  for i, r in enumerate(rows):
    if r.min() < 0 or r.max() >= vocab_size:
      raise ValueError(
        f"`prompts` row {i} holds token ids outside the vocabulary [0, {vocab_size})."
      )
  longest = int(lens.max())
  if cache_size is not None:
    if longest > cache_size:
      raise ValueError(
        f"`prompts`: the longest prompt ({longest} tokens) is longer than `cache_size`={cache_size}."
      )
    if longest + max_new_tokens > cache_size:
      raise ValueError(
        f"`cache_size`={cache_size} cannot hold the longest prompt ({longest} tokens) plus "
        f"`max_new_tokens`={max_new_tokens}."
      )
  width = bucket_length(longest, bucket)
  if cache_size is not None:
    width = min(width, cache_size - max_new_tokens)  # >= longest, checked above
  p = len(rows)
  tokens = np.full((p, width), pad_id, np.int32)
  valid = np.zeros((p, width), bool)
  for i, r in enumerate(rows):
    tokens[i, width - r.size :] = r
    valid[i, width - r.size :] = True
  positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  rep = lambda x: np.repeat(x, n, axis=0)  # noqa: E731
  return PreparedPrompts(
    tokens=rep(tokens),
    valid=rep(valid),
    positions=rep(positions),
    lengths=rep(lens),
    distinct_tokens=tokens,
    distinct_valid=valid,
    distinct_positions=positions,
  )


def stop_array(stop_tokens: Sequence[int]) -> np.ndarray:
  """The stop set as i32[S], padded with -1 (matches no token) to a power of two >= 8, so stop
  sets of similar size share one compilation."""
  stop = sorted({int(s) for s in stop_tokens})
  size = max(8, 1 << max(len(stop) - 1, 0).bit_length())
  return np.array(stop + [-1] * (size - len(stop)), np.int32)


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be a Python int, got {type(value).__name__}.")
  if (low is not None and value < low) or (high is not None and value > high):
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"`{name}` must be {bounds}, got {value}.")


def check_key(key: Any) -> None:
  """A typed key (`jax.random.key`) or a raw uint32[2] key (`jax.random.PRNGKey`)."""
  if not isinstance(key, (jax.Array, np.ndarray)):
    raise TypeError(f"`key` must be a JAX PRNG key, got {type(key).__name__}.")
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"`key` must be a single key (shape ()), got shape {key.shape}.")
  elif key.dtype != jnp.uint32 or key.shape != (2,):
    raise TypeError(f"`key` must be a PRNG key, got dtype {key.dtype} and shape {key.shape}.")
