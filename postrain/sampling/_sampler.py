"""KV-cache sampler: bucketed left-padded prefill, then one jitted `lax.while_loop` decode.

Layout of a batch (the RL group layout of DESIGN.md): `P` prompts, `n` samples each, `B = P * n`
rows, prompt p's samples in rows `p * n .. p * n + n - 1`. Prompts are LEFT-padded to a bucketed
width `Tp` (all rows then share the cache write index), the response occupies columns
`Tp .. Tp + max_new_tokens - 1`:

  tokens[b]  = [pad ... pad | prompt_b | r_0 r_1 ... r_{len_b - 1} | pad ... pad]
                <- Tp - l_b ->  <- l_b ->  <- lengths[b] (incl. stop) ->

Two jitted functions over `(graphdef, state)` (`nnx.split`, flax `examples/gemma` style), cached
per model structure and shapes (prefill) and sampling mode (decode):
  prefill: runs the P distinct prompts once, copies their cache and last logits n times;
  decode:  draws the first token from those logits, then the remaining steps in one
           `lax.while_loop` over the donated cache, each row stopping at its first stop token,
           the loop exiting as soon as every row has stopped.
Token choice (`_select.py`) needs one uniform number per row and step, drawn with
`jax.random.fold_in(key, step)`: the same key gives the same output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postrain import models
from postrain._device_put import put
from postrain.sampling._prompts import (
  PreparedPrompts,
  check_int,
  check_key,
  prepare_prompts,
  stop_array,
)
from postrain.sampling._sampler_shardings import SamplerShardings
from postrain.sampling._select import select_tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Prompts and sampled responses, aligned column by column (`T = prompt_len + max_new_tokens`).

  Attributes:
    tokens: i32[B, T], left-padded prompt then response; `pad_id` after a row's stop token.
    response_mask: f32[B, T], 1 on generated tokens up to and including the stop token.
    lengths: i32[B], number of generated tokens (incl. the stop token) = response_mask.sum(-1).
    sample_logp: f32[B, T], log q(token) under the distribution sampled from (after temperature,
      top-k, top-p; 0 for greedy decoding); 0 outside the response.
    model_logp: f32[B, T], log p(token | prefix) under the raw model (temperature 1, no filter),
      what `models.logprobs(model, tokens, response_mask, valid=valid)` recomputes; 0 outside
      the response.
    positions: i32[B, T], the RoPE positions used (0 at a row's first prompt token).
    valid: bool[B, T], real prompt tokens and response tokens (the attention validity to re-score).
    prompt_lengths: i32[B], unpadded prompt lengths.
    prompt_len: int, the padded prompt width Tp; the response starts at column `prompt_len`.
  """

  tokens: jax.Array
  response_mask: jax.Array
  lengths: jax.Array
  sample_logp: jax.Array
  model_logp: jax.Array
  positions: jax.Array
  valid: jax.Array
  prompt_lengths: jax.Array
  prompt_len: int = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class _Mode:
  """The static (graph-changing) part of the sampling parameters: one compilation each."""

  n: int
  max_new_tokens: int
  cache_size: int
  greedy: bool
  unit_temperature: bool
  top_k: int | None
  use_top_p: bool
  pad_id: int
  cache_dtype: str


def _select(logits, key, step, temperature, top_p, mode: _Mode):
  b = logits.shape[0]
  uniform = jax.random.uniform(jax.random.fold_in(key, step), (b,))
  return select_tokens(
    logits,
    uniform,
    temperature=1.0 if mode.unit_temperature else temperature,
    greedy=mode.greedy,
    top_k=mode.top_k,
    top_p=top_p if mode.use_top_p else None,
  )


def _is_stop(tokens, stop_tokens):
  # stop_tokens: i32[S] (traced: a new stop set of the same size does not recompile).
  return jnp.any(tokens[:, None] == stop_tokens[None, :], axis=-1)


def _prefill_impl(
  graphdef, state, tokens_PT, valid_PT, positions_PT, *, n, cache_size, cache_dtype
):
  """Prompt forward for the P distinct prompts; cache and next-token logits repeated to P * n rows.

  Independent of the sampling mode, so all modes with the same shapes share its compilation.
  """
  model = nnx.merge(graphdef, state)
  cache = models.init_cache(
    model.cfg, batch_size=tokens_PT.shape[0], cache_size=cache_size, dtype=jnp.dtype(cache_dtype)
  )
  hidden, cache = model(tokens_PT, positions_PT, valid=valid_PT, cache=cache)
  logits_PV = model.logits(hidden[:, -1])  # left padding: every row's last prompt token is at Tp-1
  if n > 1:
    cache = models.KVCache(
      k=jnp.repeat(cache.k, n, axis=1),
      v=jnp.repeat(cache.v, n, axis=1),
      valid=jnp.repeat(cache.valid, n, axis=0),
      end=cache.end,
    )
    logits_PV = jnp.repeat(logits_PV, n, axis=0)
  return logits_PV, cache


def _decode_impl(
  graphdef,
  state,
  cache,
  logits,
  prompt_lengths,
  stop_tokens,
  key,
  temperature,
  top_p,
  mode,
  active=None,
):
  """Draws step 0 from the prefill `logits: f32[B, V]`, then steps 1 .. max_new - 1 in one
  while_loop; returns the response buffers [B, max_new], the lengths and the cache.

  `prompt_lengths: i32[B]` is the number of context tokens of each row (the position of its first
  new token). `active: bool[B] | None`: rows that generate (None: all); an inactive row draws
  nothing (length 0, pad tokens, zero log-probs) and writes only invalid cache slots.
  """
  model = nnx.merge(graphdef, state)
  b, m = logits.shape[0], mode.max_new_tokens
  first = _select(logits, key, 0, temperature, top_p, mode)

  def put(buf, col, x):
    return jax.lax.dynamic_update_slice(buf, x[:, None].astype(buf.dtype), (0, col))

  if active is None:
    first_tok, first_slp, first_mlp = first.tokens, first.sample_logp, first.model_logp
    done = _is_stop(first_tok, stop_tokens)
    lengths = jnp.ones((b,), jnp.int32)
  else:
    first_tok = jnp.where(active, first.tokens, mode.pad_id)
    first_slp = jnp.where(active, first.sample_logp, 0.0)
    first_mlp = jnp.where(active, first.model_logp, 0.0)
    done = ~active | _is_stop(first_tok, stop_tokens)
    lengths = active.astype(jnp.int32)
  tokens = put(jnp.full((b, m), mode.pad_id, jnp.int32), 0, first_tok)
  slp = put(jnp.zeros((b, m), jnp.float32), 0, first_slp)
  mlp = put(jnp.zeros((b, m), jnp.float32), 0, first_mlp)

  def cond(carry):
    step, *_, done, _ = carry
    return (step < m) & ~jnp.all(done)

  def body(carry):
    step, tokens, slp, mlp, lengths, last, done, cache = carry
    # `last` was generated at step - 1: its position follows the prompt.
    pos = (prompt_lengths + step - 1)[:, None]
    hidden, cache = model(last[:, None], pos, valid=~done[:, None], cache=cache)
    sel = _select(model.logits(hidden[:, 0]), key, step, temperature, top_p, mode)
    active = ~done
    tok = jnp.where(active, sel.tokens, mode.pad_id)
    tokens = put(tokens, step, tok)
    slp = put(slp, step, jnp.where(active, sel.sample_logp, 0.0))
    mlp = put(mlp, step, jnp.where(active, sel.model_logp, 0.0))
    lengths = lengths + active
    done = done | _is_stop(tok, stop_tokens)
    return step + 1, tokens, slp, mlp, lengths, tok, done, cache

  carry = (jnp.int32(1), tokens, slp, mlp, lengths, first_tok, done, cache)
  _, tokens, slp, mlp, lengths, _, _, cache = jax.lax.while_loop(cond, body, carry)
  return tokens, slp, mlp, lengths, cache


def jit_prefill(fn=_prefill_impl):
  """The jitted prefill (a function of `fn` so tests can wrap it in `chex.assert_max_traces`)."""
  return jax.jit(fn, static_argnums=(0,), static_argnames=("n", "cache_size", "cache_dtype"))


def jit_decode(fn=_decode_impl):
  """The jitted decode loop; the KV cache (argument 2) is donated and updated in place."""
  return jax.jit(fn, static_argnums=(0,), static_argnames=("mode",), donate_argnums=(2,))


_prefill = jit_prefill()
_decode = jit_decode()


def _assemble_impl(prompts: PreparedPrompts, tokens, slp, mlp, lengths, *, max_new_tokens):
  b, tp = prompts.tokens.shape[0], prompts.tokens.shape[1]
  col = jnp.arange(max_new_tokens)[None, :]
  resp_valid = col < lengths[:, None]
  zeros = jnp.zeros((b, tp), jnp.float32)
  return dict(
    tokens=jnp.concatenate([prompts.tokens, tokens], axis=1),
    response_mask=jnp.concatenate([zeros, resp_valid.astype(jnp.float32)], axis=1),
    sample_logp=jnp.concatenate([zeros, slp], axis=1),
    model_logp=jnp.concatenate([zeros, mlp], axis=1),
    positions=jnp.concatenate([prompts.positions, prompts.lengths[:, None] + col], axis=1),
    valid=jnp.concatenate([prompts.valid, resp_valid], axis=1),
  )


_assemble = jax.jit(_assemble_impl, static_argnames=("max_new_tokens",))


class Sampler:
  """Samples from an `nnx` decoder with a KV cache; holds the split model state.

  Usage::

    sampler = Sampler(model)
    out = sampler(prompts, key=jax.random.key(0), max_new_tokens=128, temperature=1.0, n=8,
                  stop_tokens=(eos_id,))
    sampler.update(model)   # after an optimizer step: new parameters, same compiled functions

  Compiles once per (model structure, prompt bucket, number of prompts, static mode); temperature
  and top_p values are traced, so changing them does not recompile (except to and from the special
  values temperature 0 (greedy) and 1, and top_p 1 (off)).

  With `shardings` (a `SamplerShardings`; `sharding.ShardedSampler` computes them from a mesh and
  partition rules) the model state is placed by `shardings.state`, and the prefill, decode loop
  and output assembly are jitted (per sampler) with explicit in/out shardings: prompts, logits,
  responses split by `shardings.rows`, the KV cache by `shardings.cache`. The output arrays are
  then global arrays (under several processes, each process holds the rows of its devices; every
  process must pass the same prompts).
  """

  def __init__(
    self,
    model: nnx.Module,
    *,
    cache_size: int | None = None,
    prompt_bucket: int | str = "pow2",
    cache_dtype: Any = None,
    shardings: SamplerShardings | None = None,
  ):
    """Splits `model` once; the compiled functions are shared by samplers of equal structure
    (without `shardings`; with them, each sampler compiles its own).

    Args:
      model: a `models.Decoder` (anything with the contract's `__call__`, `logits`, `cfg`).
      cache_size: KV slots per row; None: `Tp + max_new_tokens` of each call.
      prompt_bucket: "pow2" pads the prompt width to the next power of two (at least 16); an int
        pads it to a multiple of that int. Prompts of a new length in the same bucket reuse the
        compiled functions.
      cache_dtype: dtype of the cached keys/values; None: the model's activation dtype.
      shardings: None (arrays where JAX puts them: one device), or where the state, rows and
        KV cache live (see the class docstring).
    """
    if not (prompt_bucket == "pow2" or (isinstance(prompt_bucket, int) and prompt_bucket >= 1)):
      raise ValueError(f"`prompt_bucket` must be 'pow2' or a positive int, got {prompt_bucket!r}.")
    if cache_size is not None and (
      isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 2
    ):
      raise ValueError(f"`cache_size` must be None or an int >= 2, got {cache_size!r}.")
    self.cfg = model.cfg
    self.cache_size = cache_size
    self.prompt_bucket = prompt_bucket
    self.cache_dtype = jnp.dtype(cache_dtype or self.cfg.dtype).name
    if shardings is not None and not isinstance(shardings, SamplerShardings):
      raise TypeError(
        f"`shardings` must be None or a sampling.SamplerShardings, got {type(shardings).__name__}."
      )
    self.shardings = shardings
    self._jits: dict[Any, Any] = {}
    self.graphdef, self.state = nnx.split(model)
    if shardings is not None:
      self.state = put(self.state, shardings.state)

  def update(self, model_or_state: nnx.Module | nnx.State) -> None:
    """Replaces the parameters (same structure: no recompilation)."""
    if isinstance(model_or_state, nnx.Module):
      graphdef, state = nnx.split(model_or_state)
      if graphdef != self.graphdef:
        raise ValueError("`model_or_state` has a different structure than the sampler's model.")
    else:
      state = model_or_state
    if jax.tree.structure(state) != jax.tree.structure(self.state):
      raise ValueError("`model_or_state` has a different state structure than the sampler's model.")
    self.state = state if self.shardings is None else put(state, self.shardings.state)

  def jit(self, name: str, fn: Any, **jit_kwargs: Any) -> Any:
    """`jax.jit(fn, **jit_kwargs)` compiled for this sampler: cached on it under `name`, traced
    and called inside `shardings.context` (when given), with no explicit in/out shardings (those
    of the inputs propagate: the state's, a KV cache's as the prefill placed it). For functions
    that run beside the sampler's own on its state, e.g. `Conversation`'s observation append."""
    if name not in self._jits:

      @functools.wraps(fn)
      def traced(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)  # its own trace: never one taken outside the context

      self._jits[name] = jax.jit(traced, **jit_kwargs)
    jitted = self._jits[name]

    def call(*args: Any, **kwargs: Any) -> Any:
      with self._context():
        return jitted(*args, **kwargs)

    return call

  def _context(self):
    return (
      contextlib.nullcontext() if self.shardings is None else self.shardings.activation_context()
    )

  def __call__(
    self,
    prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array,
    *,
    key: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    n: int = 1,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    prompt_lengths: Sequence[int] | np.ndarray | None = None,
  ) -> SampleOutput:
    """Samples `n` responses per prompt. See `sample` for the arguments."""
    p, mode = self._prepare(
      prompts,
      prompt_lengths,
      key=key,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      n=n,
      stop_tokens=stop_tokens,
      pad_id=pad_id,
    )
    logits, cache = self._run_prefill(p, mode)
    tokens, slp, mlp, lengths, _ = self._run_decode(
      logits, cache, p, mode, key=key, temperature=temperature, top_p=top_p, stop_tokens=stop_tokens
    )
    arrays = self._run_assemble(p, tokens, slp, mlp, lengths, mode)
    return SampleOutput(
      **arrays, lengths=lengths, prompt_lengths=p.lengths, prompt_len=int(p.tokens.shape[1])
    )

  def _run_prefill(self, p: PreparedPrompts, mode: _Mode):
    """The jitted prefill: (logits f32[B, V], cache) (benchmarks time the two phases apart)."""
    if self.shardings is not None:
      return self._sharded_prefill(p, mode)
    return _prefill(
      self.graphdef,
      self.state,
      p.distinct_tokens,
      p.distinct_valid,
      p.distinct_positions,
      n=mode.n,
      cache_size=mode.cache_size,
      cache_dtype=mode.cache_dtype,
    )

  def _run_decode(self, logits, cache, p, mode, *, key, temperature, top_p, stop_tokens):
    """The jitted decode loop (donates `cache`): (tokens, sample_logp, model_logp, lengths, cache)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
      key = jax.random.wrap_key_data(key)  # raw uint32[2] -> typed: one compilation for both
    temp = jnp.float32(temperature)
    tp = jnp.float32(1.0 if top_p is None else top_p)
    stop = stop_array(stop_tokens)
    if self.shardings is not None:
      return self._sharded_decode(logits, cache, p.lengths, stop, key, temp, tp, mode)
    return _decode(
      self.graphdef, self.state, cache, logits, p.lengths, stop, key, temp, tp, mode=mode
    )

  def _run_assemble(self, p: PreparedPrompts, tokens, slp, mlp, lengths, mode: _Mode) -> dict:
    """The prompt and response columns side by side (the `SampleOutput` arrays but lengths)."""
    if self.shardings is None:
      return _assemble(p, tokens, slp, mlp, lengths, max_new_tokens=mode.max_new_tokens)
    sh = self.shardings
    rows, rows_p = sh.rows(p.tokens.shape[0]), sh.rows(p.distinct_tokens.shape[0])
    p_sh = PreparedPrompts(
      *[rows] * 4, distinct_tokens=rows_p, distinct_valid=rows_p, distinct_positions=rows_p
    )
    key = ("assemble", p.tokens.shape[0], p.distinct_tokens.shape[0], mode.max_new_tokens)
    if key not in self._jits:
      self._jits[key] = jax.jit(
        functools.partial(_assemble_impl, max_new_tokens=mode.max_new_tokens),
        in_shardings=(p_sh, rows, rows, rows, rows),
        out_shardings=rows,
      )
    args = put((p, tokens, slp, mlp, lengths), (p_sh, rows, rows, rows, rows))
    with self._context():
      return self._jits[key](*args)

  # -- with shardings: the same functions, jitted per sampler with explicit in/out shardings --

  def _sharded_prefill(self, p: PreparedPrompts, mode: _Mode):
    sh, rows = self.shardings, p.distinct_tokens.shape[0]
    rows_p, rows_b = sh.rows(rows), sh.rows(rows * mode.n)
    key = ("prefill", rows, mode)
    if key not in self._jits:
      # jit takes no kwargs with in_shardings: the static arguments are bound.
      fn = functools.partial(
        _prefill_impl, n=mode.n, cache_size=mode.cache_size, cache_dtype=mode.cache_dtype
      )
      self._jits[key] = jax.jit(
        fn,
        static_argnums=(0,),
        in_shardings=(sh.state, rows_p, rows_p, rows_p),
        out_shardings=(rows_b, sh.cache(rows * mode.n)),
      )
    args = put((p.distinct_tokens, p.distinct_valid, p.distinct_positions), (rows_p,) * 3)
    with self._context():
      return self._jits[key](self.graphdef, self.state, *args)

  def _sharded_decode(self, logits, cache, lengths, stop, key, temp, tp, mode: _Mode):
    sh, rows = self.shardings, logits.shape[0]
    rep, rows_b, cache_sh = sh.replicated, sh.rows(rows), sh.cache(rows)
    jit_key = ("decode", rows, mode)
    if jit_key not in self._jits:
      self._jits[jit_key] = jax.jit(
        functools.partial(_decode_impl, mode=mode),
        static_argnums=(0,),
        donate_argnums=(2,),
        in_shardings=(sh.state, cache_sh, rows_b, rows_b, rep, rep, rep, rep),
        out_shardings=(rows_b, rows_b, rows_b, rows_b, cache_sh),
      )
    lengths, stop, key, temp, tp = put((lengths, stop, key, temp, tp), (rows_b, *[rep] * 4))
    with self._context():
      return self._jits[jit_key](
        self.graphdef, self.state, cache, logits, lengths, stop, key, temp, tp
      )

  def _prepare(
    self,
    prompts,
    prompt_lengths,
    *,
    key,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    n,
    stop_tokens,
    pad_id,
    cache_size: int | None = None,
  ) -> tuple[PreparedPrompts, _Mode]:
    """Validates everything on the host (before any compilation) and pads the prompts.

    `cache_size`: overrides the sampler's own (a `Conversation` holds a larger cache).
    """
    cache_size = self.cache_size if cache_size is None else cache_size
    self._check_args(
      key=key,
      max_new_tokens=max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      n=n,
      stop_tokens=stop_tokens,
      pad_id=pad_id,
    )
    prepared = prepare_prompts(
      prompts,
      prompt_lengths,
      vocab_size=self.cfg.vocab_size,
      pad_id=pad_id,
      n=n,
      max_new_tokens=max_new_tokens,
      cache_size=cache_size,
      bucket=self.prompt_bucket,
    )
    check_positions(prepared.lengths, max_new_tokens, self.cfg.max_position_embeddings)
    mode = self._mode(
      n=n,
      max_new_tokens=max_new_tokens,
      cache_size=cache_size or prepared.tokens.shape[1] + max_new_tokens,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      pad_id=pad_id,
    )
    return prepared, mode

  def _check_args(
    self, *, key, max_new_tokens, temperature, top_k, top_p, n, stop_tokens, pad_id
  ) -> None:
    """The sampling arguments' checks (everything but the prompts), errors naming the argument."""
    vocab = self.cfg.vocab_size
    check_key(key)
    check_int("max_new_tokens", max_new_tokens, low=1)
    check_int("n", n, low=1)
    check_int("pad_id", pad_id, low=0, high=vocab - 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
      raise TypeError(f"`temperature` must be a Python float, got {type(temperature).__name__}.")
    if not np.isfinite(temperature) or temperature < 0:
      raise ValueError(f"`temperature` must be a finite number >= 0, got {temperature}.")
    if top_k is not None:
      check_int("top_k", top_k, low=1)
    if top_p is not None:
      if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.floating)):
        raise TypeError(f"`top_p` must be None or a Python float, got {type(top_p).__name__}.")
      if not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p}.")
    if isinstance(stop_tokens, (str, bytes)) or not isinstance(stop_tokens, (Sequence, np.ndarray)):
      raise TypeError(
        f"`stop_tokens` must be a sequence of ints, got {type(stop_tokens).__name__}."
      )
    stop = list(np.asarray(stop_tokens).reshape(-1).tolist())
    if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < vocab for s in stop):
      raise ValueError(f"`stop_tokens` must be token ids in [0, {vocab}), got {stop}.")

  def _mode(self, *, n, max_new_tokens, cache_size, temperature, top_k, top_p, pad_id) -> _Mode:
    """The static sampling mode of checked arguments."""
    greedy = temperature == 0
    return _Mode(
      n=n,
      max_new_tokens=max_new_tokens,
      cache_size=cache_size,
      greedy=greedy,
      unit_temperature=not greedy and temperature == 1,
      # top_k >= V and top_p == 1 filter nothing: the cheaper graph samples the same distribution.
      top_k=None if greedy or top_k is None or top_k >= self.cfg.vocab_size else top_k,
      use_top_p=not greedy and top_p is not None and top_p < 1.0,
      pad_id=pad_id,
      cache_dtype=self.cache_dtype,
    )


def sample(
  model: nnx.Module,
  prompts: Sequence[Sequence[int]] | np.ndarray | jax.Array,
  *,
  key: jax.Array,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  n: int = 1,
  stop_tokens: Sequence[int] = (),
  cache_size: int | None = None,
  pad_id: int = 0,
  prompt_lengths: Sequence[int] | np.ndarray | None = None,
  prompt_bucket: int | str = "pow2",
) -> SampleOutput:
  """Samples `n` continuations of each prompt with a KV cache.

  Each row draws from `q(x) ∝ exp(logits[x] / temperature)` restricted to the `top_k` largest
  logits and then to the nucleus of mass `top_p` (arXiv:1904.09751), renormalised; temperature 0
  is greedy (argmax) decoding. A row stops after its first token in `stop_tokens` or after
  `max_new_tokens`; the decode loop exits when every row has stopped. The same `key` gives the
  same output; step s of every row uses `fold_in(key, s)`.

  Args:
    model: a `models.Decoder`.
    prompts: P token-id lists of lengths >= 1 (any lengths), or an int array [P, L] whose row p
      holds its prompt in the first `prompt_lengths[p]` entries (all L when `prompt_lengths` is
      None).
    key: a PRNG key (`jax.random.key` or `jax.random.PRNGKey`).
    max_new_tokens: the number of decode steps at most.
    temperature: >= 0; 0 means greedy.
    top_k: None or >= 1.
    top_p: None or in (0, 1].
    n: samples per prompt; the output has B = P * n rows, prompt p's samples contiguous.
    stop_tokens: token ids that end a row (included in its response).
    cache_size: KV slots per row; must hold the bucketed prompt and `max_new_tokens`. None:
      exactly that.
    pad_id: the token id written in padding columns.
    prompt_lengths: see `prompts`.
    prompt_bucket: see `Sampler`.

  Returns:
    A `SampleOutput` with arrays [B, Tp + max_new_tokens].

  Raises:
    ValueError / TypeError naming the argument, before anything is compiled: empty or
    out-of-vocabulary prompts, prompts (plus `max_new_tokens`) longer than `cache_size`,
    `temperature` < 0, `top_k` < 1, `top_p` outside (0, 1], bad `key`, `n`, `stop_tokens`.
  """
  sampler = Sampler(model, cache_size=cache_size, prompt_bucket=prompt_bucket)
  return sampler(
    prompts,
    key=key,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    n=n,
    stop_tokens=stop_tokens,
    pad_id=pad_id,
    prompt_lengths=prompt_lengths,
  )


def check_positions(prompt_lengths: Any, max_new_tokens: int, max_positions: int) -> None:
  """Refuses prompts (plus their new tokens) past the model's `max_position_embeddings`: RoPE
  would still run there, on positions the model never saw, without an error."""
  longest = int(np.max(np.asarray(prompt_lengths))) if np.size(prompt_lengths) else 0
  if longest > max_positions:
    raise ValueError(
      f"a prompt of {longest} tokens is longer than the model's max_position_embeddings="
      f"{max_positions}; shorten or drop it."
    )
  if longest + max_new_tokens > max_positions:
    raise ValueError(
      f"the longest prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
      f"model's max_position_embeddings={max_positions}; lower max_new_tokens or shorten it."
    )
