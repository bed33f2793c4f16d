"""The trainer's two pytrees: the RL update batch (`RLBatch`) and the training state (`TrainState`).

Both are registered dataclasses (`flax.struct.dataclass`): they pass through `jax.jit`,
`jax.tree.map` and the sharded update as a whole, and their arrays stay on the device between
the stages of a step. Optional fields are `None` (an empty subtree) when a step does not fill them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RLBatch:
  """One RL update batch, B rows of T tokens (`prompt ++ response`, the sampler's layout).

  tokens        i32[B, T]   prompt and response token ids
  valid         bool[B, T]  real (non-padding) positions
  mask          f32[B, T]   response tokens (the KL and entropy terms average over these)
  loss_mask     f32[B, T]   the tokens the policy loss averages over: `mask` with the tokens the
                            optional stages leave out set to 0 (DAPO filter: rows of groups without
                            reward variance; temporal window: the tokens before the window)
  old_logp      f32[B, T]   π_old: log-probs of the tokens under the policy at the start of the
                            step (the ratio's denominator)
  advantages    f32[B] or f32[B, T] (token advantages, SCRL)
  rewards       f32[B]      the rows' rewards (ConSPO reads them)
  ref_logp      f32[B, T] | None   the frozen reference model's log-probs (KL term, `rl.kl_coef`)
  sampler_logp  f32[B, T] | None   log-probs of the tokens under the model that sampled them,
                            when it is not the policy of `old_logp`; None: the same as `old_logp`
  is_weights    f32[B, T] | None   per-token importance weights inside the policy loss (F-TIS)
  score_from    int (static)  no column before it is scored (`mask` is 0 there): the sampler's
                            padded prompt width for a rollout batch (`from_rollout`), so the
                            update's log-probs skip the output projection over the prompts
                            (`models.logprobs(score_from=)`); 0 for a batch built field by field
  prompt_group  int (static)  each `prompt_group` consecutive rows share their columns before
                            `score_from` (a prompt's samples): the update runs those columns once
                            per group (`models.logprobs(prefix_group=)`); 1 (every row whole) for a
                            batch built field by field

  Old and sampler log-probs. The sampler runs the training policy (LoRA: a merged copy of it;
  mixed precision: the same bf16 forward), so its log-probs of the raw model are π_old itself:
  `old_logp` is the sampler's `model_logp`, one array, and `sampler_logp` stays None (no copy).
  They differ only where the trainer recomputes π_old with the training model because another
  model sampled: F-TIS foreign rows (`_ftis.py`: `old_logp` the learner's log-probs before the
  step, `sampler_logp` the generator's; on the own rows of such a batch both are the sampler's).

  Token weights: two fields, because they enter the loss differently. `loss_mask` selects tokens
  (0 or 1): the loss is a mean over the selected tokens, so the stages that drop tokens (DAPO
  filter, temporal window) change the normaliser. `is_weights` scales each token's term inside that
  mean and leaves the normaliser alone (F-TIS's capped ratio ρ̄ = min(π_θ / π_gen, C), 1 on own
  rows). One field could not serve both without changing the numbers.
  """

  tokens: jax.Array
  valid: jax.Array
  mask: jax.Array
  loss_mask: jax.Array
  old_logp: jax.Array
  advantages: jax.Array
  rewards: jax.Array
  ref_logp: jax.Array | None = None
  sampler_logp: jax.Array | None = None
  is_weights: jax.Array | None = None
  score_from: int = struct.field(pytree_node=False, default=0)
  prompt_group: int = struct.field(pytree_node=False, default=1)

  @classmethod
  def of(cls, batch: RLBatch | Mapping[str, Any]) -> RLBatch:
    """`batch` itself, or the `RLBatch` of a mapping with these field names (ValueError naming
    an unknown or missing key)."""
    if isinstance(batch, cls):
      return batch
    names = {f.name for f in cls.__dataclass_fields__.values()}
    unknown = sorted(set(batch) - names)
    required = ("tokens", "valid", "mask", "loss_mask", "old_logp", "advantages", "rewards")
    missing = sorted(n for n in required if n not in batch)
    if unknown or missing:
      raise ValueError(
        f"RL batch: unknown keys {unknown}, missing keys {missing} (fields: {sorted(names)})"
      )
    return cls(**batch)

  @classmethod
  def from_rollout(cls, out, *, loss_mask, advantages, rewards, prompt_group: int = 1) -> RLBatch:
    """The batch of a sampler output `out` (tokens, valid, response_mask, model_logp as the old
    log-probs) with its loss mask f32[B, T], advantages f32[B] or [B, T] and rewards f32[B];
    `score_from` is `out.prompt_len` (every response starts there). `prompt_group`: the sampler's
    samples per prompt `n` when the update may run each prompt once (`RLBatch.prompt_group`),
    else 1."""
    return cls(
      tokens=out.tokens,
      valid=out.valid,
      mask=out.response_mask.astype(jnp.float32),
      loss_mask=loss_mask,
      old_logp=out.model_logp,
      advantages=advantages,
      rewards=rewards,
      score_from=int(out.prompt_len),
      prompt_group=prompt_group,
    )

  def fields(self) -> dict[str, jax.Array]:
    """The filled array fields by name (None fields and the static ones left out)."""
    arrays = [f.name for f in dataclasses.fields(self) if f.metadata.get("pytree_node", True)]
    out = {name: getattr(self, name) for name in arrays}
    return {k: v for k, v in out.items() if v is not None}


@struct.dataclass
class TrainState:
  """What one trainer step changes: parameters, optimiser state, step, the run's key (and the EMA
  teacher of OPD / MOPD). All fields are pytree leaves: the compiled update takes and returns the
  whole state (`update(state, batch, *extra) -> (state, aux)`, the state donated).

  params     the model's `nnx.Param` state (a pytree, in its shardings; LoRA: the adapters)
  opt_state  the optax state of the phase's optimiser (SFT or RL)
  rng        the run's base key; step s samples with `jax.random.fold_in(rng, s)`
  step       i32[] the number of trainer steps taken (SFT, RL, OPD / MOPD), on the device
  teacher    the EMA teacher's parameters (OPD / MOPD with `teacher.source="ema"`), else None

  Where the step counts: one trainer step may hold several optimiser steps (an RL or OPD step
  makes `rl.updates_per_batch` of them, one per minibatch; optax counts those inside
  `opt_state`). The compiled update and the step functions (`rl_step`, `distill_step`, the SFT
  step) leave `step` alone, so during a step it is that step's index (its sampling key, its
  problems); the loop advances it once per trainer step (`Trainer.run`: `state.advance()`).
  The host reads `int(state.step)` only where it needs a Python int: `Trainer.step` (the step's
  problems, checkpoint and evaluation cadence, data position) and the MOPD / SMEPO seeds.
  """

  params: Any
  opt_state: Any
  rng: jax.Array
  step: jax.Array
  teacher: Any = None

  @classmethod
  def create(cls, params: Any, opt_state: Any, rng: jax.Array, teacher: Any = None) -> TrainState:
    """The state at step 0."""
    return cls(params, opt_state, rng, jnp.zeros((), jnp.int32), teacher)

  def advance(self) -> TrainState:
    """The state with `step + 1` (the end of a trainer step)."""
    return self.replace(step=_next_step(self.step))


# One compiled increment for every step (its operand may be a global array over several processes).
_next_step = jax.jit(lambda step: step + 1)
