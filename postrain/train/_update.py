"""The jitted steps: SFT cross-entropy update and the RL policy-loss update for every algorithm.

Model parameters are handled functionally: `nnx.split(model, nnx.Param, ...)` gives a graphdef and
a pure parameter pytree that optax updates; the steps merge them back inside the jit.

Micro-batches (`make_update(..., microbatch_rows=)`): one optimiser step over a minibatch whose
gradient is accumulated over row blocks in a `jax.lax.scan` (one compile, the activations of one
block alive at a time). Every loss here is a sum of terms `value = S / max(N, 1)` whose normaliser
N is a count of the batch (tokens, rows with tokens, groups, positives, ...), never a function of
the parameters. `*_counts(batch)` gives those counts; the loss of a micro-batch called with the
minibatch's `totals` scales each term by `max(n, 1) / max(N, 1)` (n: the micro-batch's count), so
the terms sum over the micro-batches to S / max(N, 1) of the whole minibatch: the loss, its
gradient and every aux metric equal the unsplit ones (up to float32 summation order).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from postrain import losses, models
from postrain.train import algorithms
from postrain.train._types import RLBatch, TrainState


def make_optimizer(
  *,
  lr: float,
  steps: int,
  warmup_steps: int,
  min_lr_ratio: float,
  weight_decay: float,
  b1: float,
  b2: float,
  grad_clip: float,
) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay to `lr * min_lr_ratio` and global-norm clipping."""
  warmup = max(min(warmup_steps, steps - 1), 0)
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0 if warmup else lr,
    peak_value=lr,
    warmup_steps=warmup,
    decay_steps=max(steps, warmup + 1),
    end_value=lr * min_lr_ratio,
  )
  return optax.chain(
    optax.clip_by_global_norm(grad_clip),
    optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay),
  )


@dataclasses.dataclass(frozen=True)
class RLSpec:
  """Static settings of the RL loss (hashable: part of the jit cache key)."""

  algorithm: str
  group_size: int
  eps_low: float
  eps_high: float
  dual_clip: float | None
  agg: str
  max_len: int | None
  kl_coef: float
  kl_kind: str
  entropy_coef: float
  conspo_tau: float
  logprob_impl: str
  # The algorithm's own hyperparameters (`algorithms.loss_kwargs`), sorted (key, value) pairs.
  loss_kwargs: tuple[tuple[str, Any], ...] = ()


def _forward_logp(graphdef, params, rest, batch, spec):
  model = nnx.merge(graphdef, params, rest)
  # Micro-batches hold whole groups of `spec.group_size` rows (`_micro_split`): a prompt's rows
  # stay together when its group divides them.
  group = batch.prompt_group if spec.group_size % batch.prompt_group == 0 else 1
  return models.logprobs(
    model, batch.tokens, batch.mask, valid=batch.valid, return_entropy=True,
    impl=spec.logprob_impl, score_from=batch.score_from, prefix_group=group,
  )  # fmt: skip


def mask_counts(mask: jax.Array, prefix: str = "") -> dict[str, jax.Array]:
  """{prefix + "tokens": Σ mask, prefix + "rows": #rows with Σ_t mask > 0} (float32 scalars)."""
  row = jnp.sum(mask.astype(jnp.float32), axis=-1)
  return {
    f"{prefix}tokens": jnp.sum(row),
    f"{prefix}rows": jnp.sum((row > 0).astype(jnp.float32)),
  }


def rl_counts(batch: RLBatch | dict[str, jax.Array], spec: RLSpec) -> dict[str, jax.Array]:
  """The normalisers of every term of `rl_loss` on `batch` (see the module docstring): tokens and
  non-empty rows of `loss_mask` (w) and `mask` (m), plus the algorithm's own counts
  (`algorithms.Algorithm.counts`, e.g. ConSPO's groups, positives and negatives)."""
  batch = RLBatch.of(batch)
  out = {**mask_counts(batch.loss_mask, "w_"), **mask_counts(batch.mask, "m_")}
  return {**out, **algorithms.counts(batch, spec)}


def _scaler(batch_counts, totals):
  """value -> value · max(n, 1) / max(N, 1) for a term normalised by count `kind` (identity
  without `totals`: the unsplit loss is computed exactly as before)."""
  if totals is None:
    return lambda value, kind: value
  return lambda value, kind: (
    value * (jnp.maximum(batch_counts[kind], 1.0) / jnp.maximum(totals[kind], 1.0))
  )


def rl_loss(
  params,
  graphdef,
  rest,
  batch: RLBatch | dict[str, jax.Array],
  margin: jax.Array,
  spec: RLSpec,
  totals: dict[str, jax.Array] | None = None,
):
  """The policy loss of `spec.algorithm` (`algorithms.REGISTRY`) on one minibatch, plus KL and
  entropy terms.

  batch: an `RLBatch` (or a dict of its fields): tokens i32[B, T], valid bool[B, T], mask
  f32[B, T] (response tokens), loss_mask f32[B, T] (mask times any token weighting, e.g. the
  temporal window), old_logp f32[B, T], advantages f32[B] or f32[B, T], rewards f32[B], ref_logp
  f32[B, T] when `spec.kl_coef > 0`, and optional is_weights f32[B, T] (F-TIS).

  totals: `rl_counts` of the whole minibatch when `batch` is one of its micro-batches (whole
  groups): each term is then this micro-batch's share of the minibatch's term.
  """
  batch = RLBatch.of(batch)
  logp, entropy = _forward_logp(graphdef, params, rest, batch, spec)
  scale = _scaler(rl_counts(batch, spec) if totals is not None else None, totals)
  loss, aux = algorithms.policy_loss(logp, batch, spec, margin)  # the registry's loss
  loss_kind, aux_kinds = algorithms.normalisers(spec)
  loss = scale(loss, loss_kind)
  aux = {k: scale(v, aux_kinds.get(k, "w_tokens")) for k, v in aux.items()}
  mask = batch.mask
  if spec.kl_coef > 0:
    kl = losses.aggregate(
      losses.kl_penalty(logp, batch.ref_logp, mask, kind=spec.kl_kind), mask, agg="token_mean"
    )
    kl = scale(kl, "m_tokens")
    loss = loss + spec.kl_coef * kl
    aux["kl_ref"] = kl
  mean_entropy = scale(losses.aggregate(entropy, mask, agg="token_mean"), "m_tokens")
  if spec.entropy_coef > 0:
    loss = loss - spec.entropy_coef * mean_entropy
  aux["entropy"] = mean_entropy
  aux["loss"] = loss
  return loss, aux


def sft_counts(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The normaliser of `sft_loss`: the tokens of `loss_mask`."""
  return mask_counts(batch["loss_mask"], "w_")


def sft_loss(
  params,
  graphdef,
  rest,
  batch: dict[str, jax.Array],
  impl: str,
  totals: dict[str, jax.Array] | None = None,
):
  """Token-mean cross-entropy on the reference-solution tokens (batch: tokens, valid, loss_mask);
  `totals`: `sft_counts` of the whole minibatch when `batch` is one of its micro-batches."""
  model = nnx.merge(graphdef, params, rest)
  logp = models.logprobs(
    model, batch["tokens"], batch["loss_mask"], valid=batch["valid"], impl=impl
  )
  nll = losses.aggregate(-logp, batch["loss_mask"], agg="token_mean")
  nll = _scaler(sft_counts(batch) if totals is not None else None, totals)(nll, "w_tokens")
  return nll, {"loss": nll}


def _micro_split(x: jax.Array, num: int, group_size: int) -> jax.Array:
  """[B, ...] -> [num, B // num, ...]: micro-batch j holds the groups j, j + num, j + 2 num, ...
  (whole groups, contiguous inside; strided over the batch, so a batch split over devices in
  contiguous blocks stays split evenly in every micro-batch)."""
  groups = x.shape[0] // group_size
  x = x.reshape(groups // num, num, group_size, *x.shape[1:])
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(num, (groups // num) * group_size, *x.shape[3:])


def accumulated_grads(
  loss_fn: Callable[..., Any],
  params,
  graphdef,
  rest,
  batch,
  *extra,
  counts_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
  microbatch_rows: int = 0,
  group_size: int = 1,
  dropout: tuple[float, jax.Array] | None = None,
):
  """(grads, aux) of `loss_fn` on `batch`, in micro-batches of `microbatch_rows` rows (0 or >= the
  batch: one pass) whose gradients and aux are summed in a `lax.scan` (float32 accumulators).

  With micro-batches `loss_fn` is called with `totals=counts_fn(batch)` (see the module
  docstring), so the sum equals the gradient and aux of the whole batch.

  dropout: (rate, key) of LoRA adapter dropout (`models.lora_dropout`) in the loss's forward
  pass; micro-batch j (0 without micro-batches) draws its masks with fold_in(key, j).
  """
  rows = jax.tree.leaves(batch)[0].shape[0]
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if dropout is not None:
    rate, key = dropout
    plain = grad_fn

    def grad_fn(*args, micro_index=0, **kwargs):
      with models.lora_dropout(rate, jax.random.fold_in(key, micro_index)):
        return plain(*args, **kwargs)

  if not microbatch_rows or microbatch_rows >= rows:
    return grad_fn(params, graphdef, rest, batch, *extra)
  if counts_fn is None:
    raise ValueError("micro-batches need the loss's counts_fn (its normalisers).")
  if rows % microbatch_rows or microbatch_rows % group_size:
    raise ValueError(
      f"microbatch_rows={microbatch_rows} must divide the minibatch's {rows} rows and be a "
      f"multiple of the group size {group_size} (groups are never split)."
    )
  num = rows // microbatch_rows
  totals = counts_fn(batch)
  micro = jax.tree.map(lambda x: _micro_split(x, num, group_size), batch)

  def one(mb, j=0):
    kw = {} if dropout is None else {"micro_index": j}
    return grad_fn(params, graphdef, rest, mb, *extra, totals=totals, **kw)

  def body(acc, mb_j):
    out = one(*mb_j)
    return jax.tree.map(lambda a, x: a + x.astype(a.dtype), acc, out), None

  shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro))
  acc_dtype = lambda d: jnp.promote_types(d, jnp.float32)  # noqa: E731
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, acc_dtype(s.dtype)), shapes)
  (grads, aux), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(num)))
  grads = jax.tree.map(lambda g, s: g.astype(s.dtype), grads, shapes[0])
  return grads, aux


def optimizer_step(
  loss_fn: Callable[..., Any],
  tx: optax.GradientTransformation,
  graphdef,
  *,
  counts_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
  microbatch_rows: int = 0,
  group_size: int = 1,
  lora_dropout: float = 0.0,
  dropout_key: jax.Array | None = None,
) -> Callable[..., Any]:
  """The pure (unjitted) `(params, opt_state, rest, batch, *extra) -> (params, opt_state, aux)`:
  one optimiser step of `tx` on the gradient of `loss_fn` over the batch, accumulated over
  micro-batches of `microbatch_rows` rows when that is set (`accumulated_grads`); aux gains the
  gradient's global norm "grad_norm".

  `lora_dropout` > 0: LoRA adapter dropout in the loss's forward pass, the masks of optimiser step
  n (the optimiser state's `count`, `optimizer_count`) drawn under fold_in(`dropout_key`, n) (then
  per micro-batch, `accumulated_grads`): a function of the checkpointed state, so a resumed run
  draws the same masks."""
  if lora_dropout and dropout_key is None:
    raise ValueError("optimizer_step: lora_dropout > 0 needs a dropout_key.")

  def step(params, opt_state, rest, batch, *extra):
    dropout = None
    if lora_dropout:
      dropout = (lora_dropout, jax.random.fold_in(dropout_key, optimizer_count(opt_state)))
    grads, aux = accumulated_grads(
      loss_fn,
      params,
      graphdef,
      rest,
      batch,
      *extra,
      counts_fn=counts_fn,
      microbatch_rows=microbatch_rows,
      group_size=group_size,
      dropout=dropout,
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    aux = dict(aux, grad_norm=optax.tree.norm(grads))
    return params, opt_state, aux

  return step


def make_update(
  loss_fn: Callable[..., Any],
  tx: optax.GradientTransformation,
  graphdef,
  rest,
  *,
  counts_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
  microbatch_rows: int = 0,
  group_size: int = 1,
  lora_dropout: float = 0.0,
  dropout_key: jax.Array | None = None,
):
  """A jitted `(params, opt_state, batch, *static-free extras) -> (params, opt_state, aux)`: one
  optimiser step on the batch (`optimizer_step`; `lora_dropout` / `dropout_key` as there), for
  code that keeps params and optimiser state apart (the trainer itself uses `make_state_update`
  over its `TrainState`).

  `rest=None` (LoRA): the model's other state is an argument, not a constant of the compiled
  step: `(params, opt_state, rest, batch, *extras)`, where params are the trainable adapters and
  rest the frozen (possibly quantised) base with the non-parameter state; only params get
  gradients and optimiser state."""
  step = optimizer_step(
    loss_fn,
    tx,
    graphdef,
    counts_fn=counts_fn,
    microbatch_rows=microbatch_rows,
    group_size=group_size,
    lora_dropout=lora_dropout,
    dropout_key=dropout_key,
  )

  if rest is None:

    @jax.jit
    def update_with_rest(params, opt_state, rest, batch, *extra):
      return step(params, opt_state, rest, batch, *extra)

    return update_with_rest

  @jax.jit
  def update(params, opt_state, batch, *extra):
    return step(params, opt_state, rest, batch, *extra)

  return update


def make_state_update(
  loss_fn: Callable[..., Any],
  tx: optax.GradientTransformation,
  graphdef,
  rest,
  *,
  counts_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
  microbatch_rows: int = 0,
  group_size: int = 1,
  after: Callable[[TrainState], TrainState] | None = None,
  lora_dropout: float = 0.0,
  dropout_key: jax.Array | None = None,
):
  """The pure (unjitted) `update(state, batch, *extra) -> (state, aux)` over a `TrainState`: one
  optimiser step (`optimizer_step`) of `state.params` / `state.opt_state`, then `after(state)`
  (OPD / MOPD: the EMA teacher follows the new parameters). `state.step` is left alone: it
  counts trainer steps, and one trainer step may make several updates (`TrainState`).

  Jit it with the state donated (`sharding.shard_state_update`, `MeshContext.shard_state_update`).
  `rest=None` (LoRA): `update(state, rest, batch, *extra)`, the frozen base an argument of the
  compiled update, never part of the (donated) state nor a constant. `lora_dropout` /
  `dropout_key`: as in `optimizer_step`."""
  step = optimizer_step(
    loss_fn,
    tx,
    graphdef,
    counts_fn=counts_fn,
    microbatch_rows=microbatch_rows,
    group_size=group_size,
    lora_dropout=lora_dropout,
    dropout_key=dropout_key,
  )

  def apply(state, frozen, batch, extra):
    params, opt_state, aux = step(state.params, state.opt_state, frozen, batch, *extra)
    state = state.replace(params=params, opt_state=opt_state)
    return (state if after is None else after(state)), aux

  if rest is None:

    def update_with_rest(state, rest, batch, *extra):
      return apply(state, rest, batch, extra)

    return update_with_rest

  def update(state, batch, *extra):
    return apply(state, rest, batch, extra)

  return update


# `jax.random.fold_in(run key, DROPOUT_STREAM)`: the LoRA dropout keys' stream, apart from the
# step keys (fold_in(run key, step)) and the evaluation's (fold_in(run key, 2**30)).
DROPOUT_STREAM = 2**30 + 1
_DROPOUT_PHASES = ("sft", "rl", "distill")


def lora_dropout_kwargs(config: Any, phase: str) -> dict[str, Any]:
  """`make_update`'s LoRA dropout arguments for a run's `phase` ("sft", "rl", "distill"): {} when
  `config.model.lora` is off or its dropout 0; else the rate and the key
  fold_in(fold_in(key(config.seed), DROPOUT_STREAM), phase index) (the run's key is
  key(config.seed), `TrainState.rng`)."""
  lora = config.model.lora
  if lora.rank <= 0 or not lora.dropout:
    return {}
  key = jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM)
  key = jax.random.fold_in(key, _DROPOUT_PHASES.index(phase))
  return dict(lora_dropout=float(lora.dropout), dropout_key=key)


def optimizer_count(opt_state: Any) -> jax.Array:
  """The number of optimiser steps taken: the first `count` leaf of the optax state (Adam's;
  ValueError for an optimiser without one)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    if path and getattr(path[-1], "name", None) == "count":
      return leaf
  raise ValueError("LoRA dropout needs an optimiser state with a step `count` (optax Adam).")


def make_logprob_fn(
  graphdef, rest, impl: str, *, adapters: bool = True, score_from: int = 0, prefix_group: int = 1
):
  """Jitted per-token log-probs of a batch under given parameters (reference model).

  `rest=None` (LoRA): `params` is the pair (adapters, frozen base and rest), both arguments;
  `adapters=False`: the LoRA adapters are switched off (the base model: the KL reference).
  `score_from` / `prefix_group`: the batch layout `models.logprobs` exploits (an `RLBatch`'s
  `score_from` / `prompt_group`); the defaults score every column of every row whole."""

  @jax.jit
  def fn(params, tokens, mask, valid):
    if rest is None:
      params, frozen = params
    else:
      frozen = rest
    model = nnx.merge(graphdef, params, frozen)
    with contextlib.nullcontext() if adapters else models.lora_disabled():
      return models.logprobs(
        model, tokens, mask, valid=valid, impl=impl, score_from=score_from,
        prefix_group=prefix_group,
      )  # fmt: skip

  return fn
