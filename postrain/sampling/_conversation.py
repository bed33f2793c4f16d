"""Multi-turn sampling over one KV cache: model turns and observations appended in place.

A `Conversation` holds B rows (one conversation each) and one KV cache of `cache_size` slots per
row with a single shared write index (`KVCache.end`). `start` prefills the left-padded prompts and
decodes the first model turn; each `extend` appends every continuing row's observation tokens (a
tool result plus the chat template's next assistant header) to the cache in one forward pass over
the new tokens only, then decodes the next model turn. Nothing is prefilled twice.

Rows finish turns at different times and observations differ in length, so a row's cache slots
hold gaps (the invalid slots a stopped row writes while the others decode, the left padding of an
observation chunk). The cache's validity mask `KVCache.valid` hides them from attention and the
RoPE positions are per row and count real tokens only, so a row's keys and queries are exactly
those of its conversation written contiguously. `result()` returns that contiguous layout:

  tokens[b] = [pad ... pad | prompt_b | r1 ... | o1 ... | r2 ... | o2 ... | r3 ... | pad ... pad]
               <- Tp - l_b ->            model    obs      model   obs      model

with `response_mask` 1 on model tokens (r) only, `positions = max(cumsum(valid) - 1, 0)`, so
`models.logprobs(model, out.tokens, out.response_mask, valid=out.valid)` re-scores
`out.model_logp`.

Cache bookkeeping: the decode loop writes a token into the cache one step after drawing it, so
after a turn each row's last drawn token (its stop token, or the last of `max_new_tokens`) is not
yet in the cache. `extend` writes it first, then the observation: the chunk of row b is
`[last_b, *observation_b]`, left-padded to a common width W, at positions
`n_b - 1 .. n_b + len(observation_b) - 1` (n_b: the row's conversation length so far).

Several processes (`jax.distributed`, a sharded sampler): every process passes the same prompts
and observations of all B rows and runs the same global computation; each turn's tokens and
log-probs (small) are all-gathered, so every process holds the whole host state and `result()`.
A caller that owns only some rows gathers their observations first (the trainer's env stage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain._device_put import put
from postrain.sampling._prompts import check_int, stop_array
from postrain.sampling._sampler import (
  SampleOutput,
  Sampler,
  _decode,
  _decode_impl,
  check_positions,
)


@dataclasses.dataclass(frozen=True)
class Turn:
  """One model turn of every row (host data, for the environment to parse).

  Attributes:
    tokens: B lists of generated token ids, the stop token included; [] for a row that did not
      generate in this turn (finished earlier).
    sample_logp: B float32 arrays [len(tokens[b])], log q(token) of the sampling distribution.
    model_logp: B float32 arrays [len(tokens[b])], log p(token | prefix) under the raw model.
    stopped: bool[B], the row's turn ended on a stop token (False: `max_new_tokens` reached, or
      the row did not generate).
    active: bool[B], the row generated in this turn.
  """

  tokens: list[list[int]]
  sample_logp: list[np.ndarray]
  model_logp: list[np.ndarray]
  stopped: np.ndarray
  active: np.ndarray


def _extend_impl(graphdef, state, cache, tokens_BW, valid_BW, positions_BW):
  """Writes W new tokens per row into the cache at [end, end + W); returns the logits f32[B, V]
  of each row's last chunk column (its next-token distribution) and the cache."""
  model = nnx.merge(graphdef, state)
  hidden, cache = model(tokens_BW, positions_BW, valid=valid_BW, cache=cache)
  return model.logits(hidden[:, -1]), cache


_extend = jax.jit(_extend_impl, static_argnums=(0,), donate_argnums=(2,))


class Conversation:
  """B conversations sampled turn by turn over one KV cache (see the module docstring).

  Usage::

    conv = Conversation(sampler, cache_size=1024, pad_id=0)
    turn = conv.start(prompts, key=k0, max_new_tokens=128, stop_tokens=(eos,))
    while ...:
      obs = [env_b.step(turn.tokens[b]) or None for b in range(B)]   # None: row finished
      turn = conv.extend(obs, key=k1, max_new_tokens=min(128, conv.remaining - longest_obs - 1))
    out = conv.result()          # SampleOutput [B, cache_size]

  Uses the sampler's model state (`sampler.graphdef`, `sampler.state`: call `sampler.update` after
  an optimiser step and start a new conversation), its prompt bucketing and cache dtype, its
  compiled prefill and decode loop (shared with single-turn sampling of the same shapes) and one
  more compiled function, the observation append (per chunk width W; W is rounded up to a
  multiple of `obs_bucket` to bound the compilations).
  """

  def __init__(self, sampler: Sampler, *, cache_size: int, pad_id: int = 0, obs_bucket: int = 16):
    """Args:
    sampler: a `sampling.Sampler`, or one with `shardings` (or a `sharding.ShardedSampler`, whose
      `.sampler` is used): rows and cache sharded as its prefill places them; with several
      processes every process passes the same prompts and observations (module docstring).
    cache_size: KV slots per row for the whole conversation: the bucketed prompt width, every
      turn's `max_new_tokens`, every observation chunk (1 + the longest observation, rounded up
      to `obs_bucket` when it fits), and the gaps left by rows that stop early.
    pad_id: the token id of padding (in `result().tokens` and the prompt padding).
    obs_bucket: observation chunks are padded to a multiple of this width (when it fits).
    """
    if not isinstance(sampler, Sampler) and isinstance(getattr(sampler, "sampler", None), Sampler):
      sampler = sampler.sampler  # a `sharding.ShardedSampler`: its (sharded) `Sampler`
    if not isinstance(sampler, Sampler):
      raise TypeError(
        "`sampler` must be a postrain.sampling.Sampler or a sharding.ShardedSampler, got "
        f"{type(sampler).__name__}."
      )
    self._decode, self._extend = _decode, _extend
    if sampler.shardings is not None:
      # A sharded sampler: its sharded prefill, and the append / decode loop jitted on it (traced
      # in its activation context; the state's and the cache's shardings propagate).
      self._decode = sampler.jit(
        "conversation_decode",
        _decode_impl,
        static_argnums=(0,),
        static_argnames=("mode",),
        donate_argnums=(2,),
      )
      self._extend = sampler.jit(
        "conversation_extend", _extend_impl, static_argnums=(0,), donate_argnums=(2,)
      )
    check_int("cache_size", cache_size, low=2)
    check_int("pad_id", pad_id, low=0, high=sampler.cfg.vocab_size - 1)
    check_int("obs_bucket", obs_bucket, low=1)
    self.sampler, self.cache_size, self.pad_id, self.obs_bucket = (
      sampler,
      cache_size,
      pad_id,
      obs_bucket,
    )
    self._cache = None
    self.logits: jax.Array | None = None

  # -- public state ----------------------------------------------------------------------------

  @property
  def batch_size(self) -> int:
    self._check_started("batch_size")
    return len(self._rows)

  @property
  def remaining(self) -> int:
    """Free cache slots: the next `extend` needs `1 + max(len(observation)) + max_new_tokens`
    of them (the chunk is rounded up to `obs_bucket` only when the rounding fits)."""
    self._check_started("remaining")
    return self.cache_size - self._end

  @property
  def lengths(self) -> np.ndarray:
    """i32[B]: each row's conversation length so far (prompt, model and observation tokens)."""
    self._check_started("lengths")
    return self._n_ctx.copy()

  @property
  def finished(self) -> np.ndarray:
    """bool[B]: rows that received None in an `extend` (they generate nothing more)."""
    self._check_started("finished")
    return self._finished.copy()

  # -- turns -----------------------------------------------------------------------------------

  def start(
    self,
    prompts: Sequence[Sequence[int]],
    *,
    key: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
  ) -> Turn:
    """Prefills B prompts (one per row: repeat each prompt n times yourself) and samples the first
    model turn. Restarts the conversation if one was started. The same arguments give the same
    tokens as `sampler(prompts, key=key, ...)` with n=1 (the decode loop is the same function).

    Args:
      prompts: B token-id lists (lengths >= 1).
      key: PRNG key of this turn (step s of the turn draws with `fold_in(key, s)`).
      max_new_tokens, temperature, top_k, top_p, stop_tokens: as `sampling.sample`.

    Returns:
      the `Turn` (every row active).
    """
    s = self.sampler
    p, mode = s._prepare(
      prompts,
      None,
      key=key,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      n=1,
      stop_tokens=stop_tokens,
      pad_id=self.pad_id,
      cache_size=self.cache_size,
    )
    b = p.tokens.shape[0]
    self._prompt = p
    self._rows: list[list[tuple[int, bool, float, float]]] = [[] for _ in range(b)]
    self._n_ctx = p.lengths.astype(np.int64).copy()
    self._finished = np.zeros(b, bool)
    self._last = np.full(b, -1, np.int64)
    logits, cache = s._run_prefill(p, mode)
    self._end = int(p.tokens.shape[1])
    return self._generate(
      logits, cache, np.ones(b, bool), mode, key, temperature, top_p, stop_tokens
    )

  def extend(
    self,
    observations: Sequence[Sequence[int] | None],
    *,
    key: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
  ) -> Turn:
    """Appends each continuing row's observation to the cache and samples the next model turn.

    Args:
      observations: B entries: a token-id list (may be empty) appended as context (mask 0), or
        None for a row that is finished: it generates nothing in this turn or any later one.
      key, max_new_tokens, temperature, top_k, top_p, stop_tokens: this turn's, as in `start`.

    Returns:
      the `Turn`; rows given None are inactive (no tokens). When every row is None nothing runs.

    Raises:
      ValueError naming the argument: wrong number of observations, a finished row given an
      observation, token ids outside the vocabulary, or a turn that does not fit the cache
      (`max_new_tokens` plus the chunk exceed `remaining`) or the model's positions.
    """
    self._check_started("extend")
    s, b = self.sampler, len(self._rows)
    s._check_args(
      key=key,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      n=1,
      stop_tokens=stop_tokens,
      pad_id=self.pad_id,
    )
    obs = self._check_observations(observations)
    active = np.array([o is not None for o in obs])
    self._finished |= ~active
    if not active.any():
      empty = [np.zeros((0,), np.float32) for _ in range(b)]
      return Turn([[] for _ in range(b)], empty, list(empty), np.zeros(b, bool), active)
    need = max(1 + len(o) for o in obs if o is not None)
    if self._end + need + max_new_tokens > self.cache_size:
      raise ValueError(
        f"the turn does not fit `cache_size`={self.cache_size}: {self.remaining} slots remain, "
        f"the observation chunk needs {need} (1 + the longest observation) and "
        f"`max_new_tokens`={max_new_tokens}; lower `max_new_tokens`, shorten `observations` or "
        "end the conversation."
      )
    new_ctx = self._n_ctx + np.array([len(o) if o is not None else 0 for o in obs])
    check_positions(new_ctx[active], max_new_tokens, s.cfg.max_position_embeddings)
    width = min(
      -(-need // self.obs_bucket) * self.obs_bucket, self.cache_size - self._end - max_new_tokens
    )
    tokens = np.full((b, width), self.pad_id, np.int32)
    valid = np.zeros((b, width), bool)
    positions = np.zeros((b, width), np.int32)
    for i, o in enumerate(obs):
      if o is None:
        continue
      chunk = [int(self._last[i]), *o]
      tokens[i, width - len(chunk) :] = chunk
      valid[i, width - len(chunk) :] = True
      positions[i, width - len(chunk) :] = self._n_ctx[i] - 1 + np.arange(len(chunk))
      self._rows[i].extend((int(t), False, 0.0, 0.0) for t in o)
    self._n_ctx = new_ctx
    cache, self._cache = self._cache, None
    chunk = self._put_rows((tokens, valid, positions))
    logits, cache = self._extend(s.graphdef, s.state, cache, *chunk)
    self._end += width
    mode = s._mode(
      n=1,
      max_new_tokens=max_new_tokens,
      cache_size=self.cache_size,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      pad_id=self.pad_id,
    )
    return self._generate(logits, cache, active, mode, key, temperature, top_p, stop_tokens)

  def result(self, width: int | None = None) -> SampleOutput:
    """The conversations so far, contiguous (see the module docstring), as a `SampleOutput`.

    Args:
      width: T, the number of columns; None: `cache_size` (a fixed shape across episodes: one
        compilation of whatever consumes it). Must hold the prompt width plus the longest
        conversation.

    Returns:
      `SampleOutput` with arrays [B, T]: tokens (`pad_id` in padding), response_mask (1 on every
      model token of every turn, stop tokens included; 0 on prompt, observations, padding),
      sample_logp / model_logp (on model tokens, 0 elsewhere), positions, valid, lengths (model
      tokens per row, all turns), prompt_lengths, prompt_len (Tp: the conversation starts at this
      column).
    """
    self._check_started("result")
    p, b, tp = self._prompt, len(self._rows), int(self._prompt.tokens.shape[1])
    longest = tp + max(len(r) for r in self._rows)
    width = self.cache_size if width is None else width
    check_int("width", width, low=1)
    if width < longest:
      raise ValueError(
        f"`width`={width} cannot hold the prompt width plus the longest row ({longest})."
      )
    tokens = np.full((b, width), self.pad_id, np.int32)
    tokens[:, :tp] = p.tokens
    valid = np.zeros((b, width), bool)
    valid[:, :tp] = p.valid
    mask = np.zeros((b, width), np.float32)
    slp = np.zeros((b, width), np.float32)
    mlp = np.zeros((b, width), np.float32)
    for i, row in enumerate(self._rows):
      if not row:
        continue
      cols = slice(tp, tp + len(row))
      tok, gen, s, m = zip(*row)
      tokens[i, cols], mask[i, cols], slp[i, cols], mlp[i, cols] = tok, gen, s, m
      valid[i, cols] = True
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return SampleOutput(
      tokens=jnp.asarray(tokens),
      response_mask=jnp.asarray(mask),
      lengths=jnp.asarray(mask.sum(1).astype(np.int32)),
      sample_logp=jnp.asarray(slp),
      model_logp=jnp.asarray(mlp),
      positions=jnp.asarray(positions),
      valid=jnp.asarray(valid),
      prompt_lengths=jnp.asarray(p.lengths),
      prompt_len=tp,
    )

  # -- internals -------------------------------------------------------------------------------

  def _generate(self, logits, cache, active, mode, key, temperature, top_p, stop_tokens) -> Turn:
    """Runs the shared decode loop from `logits` for the `active` rows and records the turn."""
    s = self.sampler
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)
    self.logits = logits
    n_ctx, active_rows = self._put_rows((np.asarray(self._n_ctx, np.int32), np.asarray(active)))
    scalars = (
      stop_array(stop_tokens),
      key,
      jnp.float32(temperature),
      jnp.float32(1.0 if top_p is None else top_p),
    )
    if self.sampler.shardings is not None:
      scalars = put(scalars, (self.sampler.shardings.replicated,) * 4)
    stop, key, temp, tp = scalars
    out = self._decode(
      s.graphdef, s.state, cache, logits, n_ctx, stop, key, temp, tp, mode=mode,
      active=active_rows,
    )  # fmt: skip
    tokens, slp, mlp, lengths, self._cache = out
    self._end = int(_whole(self._cache.end))
    tokens, slp, mlp, lengths = (_whole(x) for x in (tokens, slp, mlp, lengths))
    stop = set(int(t) for t in stop_tokens)
    b = len(self._rows)
    turn_tokens, turn_slp, turn_mlp, stopped = [], [], [], np.zeros(b, bool)
    for i in range(b):
      n = int(lengths[i])
      toks = tokens[i, :n].tolist()
      turn_tokens.append(toks)
      turn_slp.append(slp[i, :n].copy())
      turn_mlp.append(mlp[i, :n].copy())
      if n:
        self._rows[i].extend(zip(toks, [True] * n, slp[i, :n].tolist(), mlp[i, :n].tolist()))
        self._last[i] = toks[-1]
        self._n_ctx[i] += n
        stopped[i] = toks[-1] in stop
    return Turn(turn_tokens, turn_slp, turn_mlp, stopped, np.asarray(active).copy())

  def _put_rows(self, arrays: tuple[np.ndarray, ...]) -> tuple[Any, ...]:
    """Host row arrays [B, ...] -> the jitted functions' inputs: as they are without shardings
    (jit places them), else global arrays split like the sampler's rows (several processes: jit
    takes only global arrays)."""
    sh = self.sampler.shardings
    if sh is None:
      return tuple(jnp.asarray(a) for a in arrays)
    return put(arrays, tuple(sh.rows(a.shape[0]) for a in arrays))

  def _check_observations(self, observations: Any) -> list[list[int] | None]:
    b, vocab = len(self._rows), self.sampler.cfg.vocab_size
    if isinstance(observations, (str, bytes)) or not isinstance(observations, Sequence):
      raise TypeError(
        f"`observations` must be a list of B={b} token-id lists or None, got "
        f"{type(observations).__name__}."
      )
    if len(observations) != b:
      raise ValueError(
        f"`observations` must have one entry per row (B={b}), got {len(observations)}."
      )
    out: list[list[int] | None] = []
    for i, o in enumerate(observations):
      if o is None:
        out.append(None)
        continue
      if self._finished[i]:
        raise ValueError(
          f"`observations` row {i} is finished (it was given None earlier) and cannot continue."
        )
      a = np.asarray(o)
      if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise TypeError(
          f"`observations` row {i} must be a flat list of int token ids, got {a.dtype} of shape "
          f"{a.shape}."
        )
      if a.size and (a.min() < 0 or a.max() >= vocab):
        raise ValueError(f"`observations` row {i} holds token ids outside [0, {vocab}).")
      out.append([int(t) for t in a.tolist()])
    return out

  def _check_started(self, what: str) -> None:
    if not hasattr(self, "_rows"):
      raise RuntimeError(f"Conversation.{what}: call `start(prompts, ...)` first.")


def _whole(x: Any) -> np.ndarray:
  """A (possibly global) array -> the whole array on this host (an all-gather when other
  processes hold some of it)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
