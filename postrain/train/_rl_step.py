"""One RL step, top to bottom: prompts -> sample -> score -> advantages -> update.

    state, metrics = rl_step(state, parts, problems, rl_index=i)

`state` is the `TrainState` (params, optimiser state, step, key); `parts` the fixed parts of the
step (`RLStepParts`: config, mesh, task data, sampler, the jitted update and log-prob functions,
the F-TIS stage). Nothing else is read or changed: the new state is returned.

The optional stages are small functions with explicit inputs and outputs, switched by their
config keys. Those of the registry (`stages.py`: function, place, config section with defaults,
checks; a user's stage by import string in `rl.stages`) run at their place through `stages.run`:

  stage                         where                              place / config
  guided prompts (SMEPO)        `stages` -> `_smepo.smepo_stage`   "prompts", rl.smepo.enabled
  DAPO dynamic-sampling filter  `stages.dapo_filter`               "loss_mask", rl.dynamic_sampling
  temporal credit window        `stages.temporal_credit`           "loss_mask", rl.temporal.enabled
  a user's stage                `rl.stages` ("pkg.mod:ENTRY")      its place, rl.<its name>

Those whose inputs are the trainer's own objects are called by name here:

  curriculum prompts (SCRL)     `_scrl_stage.curriculum_prompts`  rl.algorithm == "scrl"
  subproblem rewards and span   `_scrl_stage.scrl_stage`          rl.algorithm == "scrl"
    advantages (SCRL; the "rewards" stages do not run on its batch)
  foreign rows (F-TIS)          `_ftis.ForeignRollouts`           rl.ftis.path
  multi-turn episodes           `_env_stage.EnvRollouts`          env.name

One code path for one process and for many. Every process computes the step's problem list (a
function of (seed, step)) and takes its contiguous share of whole groups (`MeshContext.item_slice`;
one process: all of them): items `[a, b)` fill rows `[a * G, b * G)` of the global batch, the rows
its devices hold under the batch sharding. It tokenizes, samples (`prompt_offset=`: one global
sampling computation, each process reading back only its rows), decodes and verifies only those
rows; only per-row scalars are all-gathered (rewards, lengths; SCRL's [B, K] subproblem rewards
and format flags), so group statistics and metrics equal a one-process run's. The batch stays on
the devices from the sampler to the update (one process: no host round-trip of its arrays).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from postrain import advantages, losses
from postrain.train import _env_stage, _rollout, _scrl_stage, algorithms, stages
from postrain.train._types import RLBatch, TrainState


@dataclasses.dataclass(frozen=True)
class RLStepParts:
  """The fixed parts of an RL step (built once by the `Trainer`).

  config       the run's config (`config.rl`, `config.seed`, `config.task.verifier_timeout_s`)
  mesh         the run's `MeshContext` (`_mesh_context.py`): shardings, per-process slices, gathers
  data         the run's `TaskData` (prompts, tokenizer, verifier)
  sampler      the `ShardedSampler` (its parameters are set from the state each step)
  graphdef, rest   the model's structure and non-parameter state (`nnx.split`)
  update       jitted `(TrainState, RLBatch, margin) -> (TrainState, aux)`, the state donated
  logprobs     jitted `(params, tokens, mask, valid, score_from=0, prefix_group=1) -> f32[B, T]`
               (the keywords: the batch layout, `models.logprobs`)
  num_rl_steps the RL phase's length (temporal window progress, ConSPO margin schedule)
  foreign      the F-TIS stage or None
  env          the multi-turn rollout stage (`_env_stage.EnvRollouts`, config.env) or None
  """

  config: mlc.ConfigDict
  mesh: Any
  data: Any
  sampler: Any
  graphdef: Any
  rest: Any
  update: Callable[..., Any]
  logprobs: Callable[..., Any]
  num_rl_steps: int
  foreign: Any = None
  # The model the sampler runs for given params (LoRA: a merged copy); default merge(graphdef,
  # params, rest).
  sampling_model: Callable[[Any], Any] | None = None
  # LoRA with rl.kl_coef > 0: `logprobs` of the base with the adapters off (the KL reference).
  base_logprobs: Callable[..., Any] | None = None

  def policy_model(self, params: Any) -> Any:
    """The model to sample from with `params`."""
    if self.sampling_model is not None:
      return self.sampling_model(params)
    return nnx.merge(self.graphdef, params, self.rest)

  env: Any = None


def rl_step(
  state: TrainState,
  parts: RLStepParts,
  problems: list[Any],
  *,
  rl_index: int,
  ref_params: Any = None,
  record: Callable[[list[Any]], None] | None = None,
) -> tuple[TrainState, dict[str, float]]:
  """One RL step on the step's `problems` (all processes pass the same list): returns the state
  after `rl.updates_per_batch` optimiser steps and the step's metrics (whole-batch statistics).
  `state.step` is this step's index, unchanged (the loop advances it, `TrainState`).

  rl_index: the step's index in the RL phase; ref_params: the frozen KL reference (`rl.kl_coef`);
  record: receives the problems this process sampled (the trainer's per-process data log).
  """
  cfg, rl, mesh, data = parts.config, parts.config.rl, parts.mesh, parts.data
  g, timeout_s = rl.group_size, cfg.task.verifier_timeout_s
  total, num_rows = len(problems), len(problems) * g
  progress = rl_index / max(parts.num_rl_steps, 1)

  # 1. Prompts: this process's share of whole groups; SMEPO guidance; SCRL curriculum prompts.
  mine = mesh.item_slice(total, g)
  problems = problems[mine]
  if record is not None:
    record(problems)
  rows = slice(mine.start * g, mine.stop * g)
  prompts = data.encode_prompts(problems)
  ctx = stages.StageContext(
    rl=rl, config=cfg, data=data, problems=problems, mesh=mesh, step=int(state.step),
    progress=progress, offset=mine.start, total=total,
  )  # fmt: skip
  prompts, stage_metrics = stages.run("prompts", prompts, ctx)  # SMEPO guidance, ...
  chains, n, offset = None, g, mine.start
  if rl.algorithm == "scrl":  # mixed groups: G/2 curriculum samples, then G/2 of the original
    chains, prompts = _scrl_stage.curriculum_prompts(
      data, problems, prompts, num_subproblems=rl.scrl_num_subproblems
    )
    n, offset = g // 2, 2 * mine.start

  # 2. Sample: G responses per prompt with the current parameters (with an environment: G
  # multi-turn episodes, `_env_stage.py`; `texts` are then the final turns the verifier scores).
  model = parts.policy_model(state.params)
  key = jax.random.fold_in(state.rng, state.step)
  parts.sampler.update(model)
  episodes = None
  if parts.env is not None:
    out, texts, sample_s, episodes = parts.env.generate(
      problems, key=key, n=g, max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
      top_k=rl.top_k, top_p=rl.top_p, prompt_offset=offset if mesh.multi_process else None,
    )  # fmt: skip
  else:
    out, texts, sample_s = _rollout.generate_groups(
      parts.sampler, data, prompts, rl, key=key, n=n,
      prompt_offset=offset if mesh.multi_process else None,
    )  # fmt: skip

  # 3. Score and 4. advantages (SCRL: subproblem rewards and span advantages).
  if chains is not None:
    batch, metrics, rewards, lengths, vstats = _scrl_stage.scrl_stage(
      data, out, texts, problems, chains, rl=rl, mesh=mesh, timeout_s=timeout_s, rows=rows,
      num_rows=num_rows,
    )  # fmt: skip
  else:
    rewards, vstats = _rollout.score(data, problems, texts, g, timeout_s)
    verified = rewards
    if episodes is not None:  # + the environment's per-turn rewards (shaping)
      rewards = rewards + episodes.shaping
    local = {"rewards": rewards.astype(np.float32), "lengths": np.asarray(out.lengths, np.int32)}
    if episodes is not None:
      local["verified"] = np.asarray(verified, np.float32)
    everyone = mesh.gather_rows(local, num_rows)
    rewards, lengths = everyone["rewards"], everyone["lengths"]
    rewards, more = stages.run("rewards", rewards, ctx.replace(lengths=lengths))
    stage_metrics.update(more)
    # The update runs each prompt once for its n samples (`RLBatch.prompt_group`); an
    # environment's episodes are laid out by `_env_stage`, so every row runs whole there.
    prompt_group = n if rl.share_prompt and episodes is None else 1
    batch, metrics = rl_batch(
      out, rewards, rl=rl, progress=progress, rows=rows, prompt_group=prompt_group
    )
  metrics["response_len"] = float(np.mean(lengths))

  # The global batch on the mesh (F-TIS: the foreign groups as a block after the own rows).
  if parts.foreign is not None:
    batch, ftis_metrics = parts.foreign.extend_global(
      batch, num_rows, rl_index, mesh=mesh,
      logprobs=lambda t, m, v: parts.logprobs(state.params, t, m, v),
    )  # fmt: skip
    metrics.update(ftis_metrics)
  else:
    batch = mesh.place_rows(batch, num_rows)
  # The reference pass reads the batch's layout as the update does (responses only, each prompt
  # once per group).
  layout = dict(score_from=batch.score_from, prefix_group=batch.prompt_group)
  if parts.base_logprobs is not None:  # LoRA: the KL reference is the base, adapters off
    batch = batch.replace(
      ref_logp=parts.base_logprobs(state.params, batch.tokens, batch.mask, batch.valid, **layout)
    )
  elif ref_params is not None:
    batch = batch.replace(
      ref_logp=parts.logprobs(ref_params, batch.tokens, batch.mask, batch.valid, **layout)
    )

  # 5. Update: one optimiser step per minibatch, with this step's ConSPO margin.
  margin = losses.margin_schedule(
    rl_index, parts.num_rl_steps, max_margin=rl.conspo_margin,
    warmup_frac=rl.conspo_margin_warmup,
  )  # fmt: skip
  start, auxes = time.perf_counter(), []
  for minibatch in mesh.device_minibatches(batch, rl.updates_per_batch):
    state, aux = parts.update(state, minibatch, margin)
    auxes.append(aux)
  metrics.update(mesh.mean_metrics(auxes), margin=float(margin))
  update_s = time.perf_counter() - start

  metrics.update(_rollout.rollout_metrics(mesh, out, vstats, rewards, lengths, sample_s, update_s))
  metrics.update(stage_metrics)
  if episodes is not None:  # the whole batch's episodes (every process's rows)
    episodes = _env_stage.gather_stats(episodes, rows.start)
    metrics.update(episodes.metrics(), accuracy=float(np.mean(everyone["verified"] > 0.5)))
  return state, metrics


# -- the advantage stage of the plain batch ---------------------------------------------------


def rl_batch(
  out,
  rewards: np.ndarray,
  *,
  rl: mlc.ConfigDict,
  progress: float,
  rows: slice | None = None,
  prompt_group: int = 1,
) -> tuple[RLBatch, dict[str, float]]:
  """The update batch of one rollout: tokens, masks, old log-probs, advantages (device arrays).

  Advantages are `rl.advantage`'s estimator over the groups of `rewards` f32[B]; then the
  "loss_mask" stages (`stages.py`: the DAPO filter, the temporal window) select its tokens.

  `rows` (a multi-process step): `out` holds rows `rows` of the step's batch and `rewards` all of
  them, so group and batch statistics and the reward metrics are those of the whole batch; the
  returned arrays are `out`'s rows ("response_len" is then the mean over `out`'s rows only).
  `prompt_group`: the batch's `RLBatch.prompt_group` (rows per shared prompt).
  """
  rewards_j = jnp.asarray(rewards, jnp.float32)
  mask = out.response_mask.astype(jnp.float32)
  adv = algorithms.compute_advantages(rl, rewards_j)  # rl.advantage: group_normalized | rloo
  zero_var = advantages.zero_variance_groups(rewards_j, group_size=rl.group_size)
  zero_var_frac = jnp.mean(zero_var.astype(jnp.float32))
  if rows is not None:
    adv, zero_var, rewards_j = adv[rows], zero_var[rows], rewards_j[rows]
  ctx = stages.StageContext(rl=rl, progress=progress, zero_variance=zero_var)
  loss_mask, stage_metrics = stages.run("loss_mask", mask, ctx)
  batch = RLBatch.from_rollout(
    out, loss_mask=loss_mask, advantages=adv, rewards=rewards_j, prompt_group=prompt_group
  )
  metrics = {
    **stage_metrics,
    "reward_mean": float(np.mean(rewards)),
    "reward_std": float(np.std(rewards)),
    "zero_variance_frac": float(zero_var_frac),
    "response_len": float(np.mean(np.asarray(out.lengths))),
  }
  return batch, metrics
