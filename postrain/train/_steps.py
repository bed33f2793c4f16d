"""The jitted steps: SFT cross-entropy update and the RL policy-loss update for every algorithm.

Model parameters are handled functionally: `nnx.split(model, nnx.Param, ...)` gives a graphdef and
a pure parameter pytree that optax updates; the steps merge them back inside the jit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx

from postrain import losses, models
from postrain.train import algorithms


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


def _forward_logp(graphdef, params, rest, batch, impl):
  model = nnx.merge(graphdef, params, rest)
  return models.logprobs(
    model, batch["tokens"], batch["mask"], valid=batch["valid"], return_entropy=True, impl=impl
  )


def rl_loss(params, graphdef, rest, batch: dict[str, jax.Array], margin: jax.Array, spec: RLSpec):
  """The policy loss of `spec.algorithm` (`algorithms.REGISTRY`) on one minibatch, plus KL and
  entropy terms.

  batch: tokens i32[B, T], valid bool[B, T], mask f32[B, T] (response tokens), loss_mask f32[B, T]
  (mask times any token weighting, e.g. the temporal window), old_logp f32[B, T], advantages
  f32[B] or f32[B, T], rewards f32[B], ref_logp f32[B, T] when `spec.kl_coef > 0`, and optional
  is_weights f32[B, T] (F-TIS, ppo_clip algorithms).
  """
  logp, entropy = _forward_logp(graphdef, params, rest, batch, spec.logprob_impl)
  loss, aux = algorithms.policy_loss(logp, batch, spec, margin)  # the registry's loss
  aux = dict(aux)
  mask = batch["mask"]
  if spec.kl_coef > 0:
    kl = losses.aggregate(
      losses.kl_penalty(logp, batch["ref_logp"], mask, kind=spec.kl_kind), mask, agg="token_mean"
    )
    loss = loss + spec.kl_coef * kl
    aux["kl_ref"] = kl
  mean_entropy = losses.aggregate(entropy, mask, agg="token_mean")
  if spec.entropy_coef > 0:
    loss = loss - spec.entropy_coef * mean_entropy
  aux["entropy"] = mean_entropy
  aux["loss"] = loss
  return loss, aux


def sft_loss(params, graphdef, rest, batch: dict[str, jax.Array], impl: str):
  """Token-mean cross-entropy on the reference-solution tokens (batch: tokens, valid, loss_mask)."""
  model = nnx.merge(graphdef, params, rest)
  logp = models.logprobs(
    model, batch["tokens"], batch["loss_mask"], valid=batch["valid"], impl=impl
  )
  nll = losses.aggregate(-logp, batch["loss_mask"], agg="token_mean")
  return nll, {"loss": nll}


def make_update(loss_fn: Callable[..., Any], tx: optax.GradientTransformation, graphdef, rest):
  """A jitted `(params, opt_state, batch, *static-free extras) -> (params, opt_state, aux)`."""

  @jax.jit
  def update(params, opt_state, batch, *extra):
    grad_fn = jax.grad(loss_fn, has_aux=True)
    grads, aux = grad_fn(params, graphdef, rest, batch, *extra)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    aux = dict(aux, grad_norm=optax.tree.norm(grads))
    return params, opt_state, aux

  return update


def make_logprob_fn(graphdef, rest, impl: str):
  """Jitted per-token log-probs of a batch under given parameters (reference model)."""

  @jax.jit
  def fn(params, tokens, mask, valid):
    model = nnx.merge(graphdef, params, rest)
    return models.logprobs(model, tokens, mask, valid=valid, impl=impl)

  return fn
