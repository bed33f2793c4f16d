"""F-TIS ingestion: RL on rollouts written by another model (arXiv 2605.22537).

A generator run writes rollouts (`write_rollouts`, or `python -m postrain.train.generate`): the
sampler's left-padded `prompt ++ response` tokens, the generator's per-token log-probs of what it
sampled, and the verifier rewards, in groups of `group_size`. A learner with
`config.rl.ftis.path` set adds `rl.ftis.prompts_per_step` of these groups to every RL batch:

  A_i      = group-normalised reward inside the generator's group (as at the generator)
  ρ̄_{i,t}  = sg[min(π_θ(y_t) / π_gen(y_t), C)]                     (`advantages.ftis_correction`)
  Â_i      = 0 if A_i < 0 and KL_i(π_θ ‖ π_gen) >= g, else A_i       (the KL filter)
  loss     = ppo_clip(logp, old_logp = log π_θ at the start of the step, Â, mask, is_weights=ρ̄)

The learner's own samples go through the same loss with π_gen = π_θ (ρ̄ = 1, nothing filtered).
ρ̄ and the filter are computed once per batch with the parameters before the step's first update.

Batch layout (one process or many): the foreign groups are a block after all own rows,
`[own; foreign]` (`ForeignRollouts.extend_global`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from postrain import advantages
from postrain.train import algorithms
from postrain.train._types import RLBatch

_ARRAYS = ("tokens", "valid", "response_mask", "generator_logp", "rewards")


def write_rollouts(
  path: str,
  out: Any,
  rewards: np.ndarray,
  *,
  group_size: int,
  max_new_tokens: int,
  vocab_size: int,
  problem_ids: list[str] | None = None,
  generator: str = "",
) -> None:
  """Writes a sampler output (`postrain.sampling.SampleOutput`) and its rewards as an .npz.

  The generator log-probs are `out.sample_logp`, the log-probs of the distribution actually
  sampled from (after temperature / top-k / top-p): the behaviour policy of the importance weights.
  """
  tokens = np.asarray(out.tokens)
  if tokens.shape[0] % group_size:
    raise ValueError(f"`group_size`={group_size} does not divide the {tokens.shape[0]} rollouts.")
  np.savez(
    path,
    tokens=tokens.astype(np.int32),
    valid=np.asarray(out.valid, bool),
    response_mask=np.asarray(out.response_mask, np.float32),
    generator_logp=np.asarray(out.sample_logp, np.float32),
    rewards=np.asarray(rewards, np.float32),
    group_size=np.int32(group_size),
    max_new_tokens=np.int32(max_new_tokens),
    vocab_size=np.int32(vocab_size),
    problem_ids=np.asarray(problem_ids or [], dtype=str),
    generator=np.asarray(generator),
  )


def load_rollouts(path: str) -> dict[str, np.ndarray]:
  """Reads and checks an .npz written by `write_rollouts`."""
  with np.load(path) as f:
    data = {k: f[k] for k in f.files}
  missing = [k for k in (*_ARRAYS, "group_size", "max_new_tokens", "vocab_size") if k not in data]
  if missing:
    raise ValueError(f"config.rl.ftis.path: {path!r} lacks {missing}; write it with write_rollouts")
  b, t = data["tokens"].shape
  for k in _ARRAYS[1:4]:
    if data[k].shape != (b, t):
      raise ValueError(f"config.rl.ftis.path: {k} has shape {data[k].shape}, tokens {(b, t)}")
  if data["rewards"].shape != (b,):
    raise ValueError(f"config.rl.ftis.path: rewards has shape {data['rewards'].shape}, want {(b,)}")
  return data


def realign(x: np.ndarray, resp_len: int, prompt_width: int, new_resp_len: int, fill: Any = 0):
  """Moves [B, Tp + R] sampler-layout arrays to prompt width `prompt_width` (left padding) and
  response length `new_resp_len` (right padding)."""
  tp = x.shape[1] - resp_len
  return np.pad(
    np.asarray(x),
    ((0, 0), (prompt_width - tp, new_resp_len - resp_len)),
    constant_values=fill,
  )


def ftis_batch(
  rollouts: dict[str, np.ndarray],
  learner_logp: jnp.ndarray,
  *,
  group_size: int,
  adv_scale: str,
  ftis: Any,
  estimator: str = "group_normalized",
) -> tuple[RLBatch, dict[str, float]]:
  """The RL batch of foreign rollouts (already aligned): F-TIS advantages and IS weights.

  Args:
    rollouts: tokens, valid, response_mask, generator_logp ([B, T]) and rewards [B].
    learner_logp: f32[B, T] the learner's log-probs of the tokens (before the update).
    group_size, adv_scale: the generator's groups and the advantage scaling.
    estimator: `config.rl.advantage`, a name of `train.algorithms.ADVANTAGES`.
    ftis: `config.rl.ftis` (cap, kl_threshold, level, use_is, use_filter, kl_estimator, kl_reduce).
  """
  mask = jnp.asarray(rollouts["response_mask"], jnp.float32)
  rewards = jnp.asarray(rollouts["rewards"], jnp.float32)
  generator_logp = jnp.asarray(rollouts["generator_logp"], jnp.float32)
  adv = algorithms.ADVANTAGES[estimator](rewards, group_size=group_size, scale=adv_scale)
  res = advantages.ftis_correction(
    learner_logp,
    generator_logp,
    adv,
    mask,
    cap=ftis.cap,
    kl_threshold=ftis.kl_threshold,
    level=ftis.level,
    use_is=ftis.use_is,
    use_filter=ftis.use_filter,
    kl_estimator=ftis.kl_estimator,
    kl_reduce=ftis.kl_reduce,
  )
  batch = RLBatch(
    tokens=jnp.asarray(rollouts["tokens"]),
    valid=jnp.asarray(rollouts["valid"]),
    mask=mask,
    loss_mask=mask,
    old_logp=learner_logp,  # π_old: the learner, recomputed
    advantages=res.advantages,
    rewards=rewards,
    sampler_logp=generator_logp,  # the generator that sampled them
    is_weights=res.is_weights,
  )
  metrics = {f"ftis_{k}": float(v) for k, v in res.metrics.items()}
  metrics["ftis_reward_mean"] = float(jnp.mean(rewards))
  return batch, metrics


class ForeignRollouts:
  """The F-TIS stage: this step's foreign groups appended to the RL batch (`rl.ftis.path` set).

  Inputs are explicit: the RL config, the learner's vocabulary and pad id here; per step the own
  batch, the step index and the learner's log-prob function (`extend` / `extend_global`).
  """

  def __init__(self, rl: Any, *, vocab_size: int, pad_id: int):
    self.rl, self.pad_id = rl, pad_id
    self.data = load_rollouts(rl.ftis.path)
    g, r = int(self.data["group_size"]), int(self.data["max_new_tokens"])
    if g != rl.group_size:
      raise ValueError(
        f"config.rl.ftis.path: rollouts have group_size {g}, rl.group_size is {rl.group_size}"
      )
    if r > rl.max_new_tokens:
      raise ValueError(
        f"config.rl.ftis.path: rollouts have {r} new tokens > rl.max_new_tokens {rl.max_new_tokens}"
      )
    vocab = int(self.data["vocab_size"])
    if vocab != vocab_size:
      raise ValueError(
        f"config.rl.ftis.path: rollouts use a vocabulary of {vocab} tokens, the learner "
        f"{vocab_size}"
      )
    self.resp_len = r
    self.num_groups = self.data["tokens"].shape[0] // g

  def rows(self, rl_step: int) -> np.ndarray:
    """Rows of this step's foreign groups (a deterministic function of the step)."""
    n, g = self.rl.ftis.prompts_per_step, self.rl.group_size
    groups = (rl_step * n + np.arange(n)) % self.num_groups
    return (groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)

  def prompt_width(self, own_prompt_width: int) -> int:
    """The common prompt width of own and foreign rows (both left-padded to it)."""
    return max(own_prompt_width, self.data["tokens"].shape[1] - self.resp_len)

  def align_own(self, batch: RLBatch, width: int) -> dict[str, np.ndarray]:
    """Own rows (sampler layout, host or device arrays) -> numpy at prompt width `width`, with
    `is_weights` = the response mask and `sampler_logp` = `old_logp` (generator = learner: ρ̄ = 1
    on response tokens)."""
    resp, fill = self.rl.max_new_tokens, self._fills()
    fields = batch.fields()
    own = {}
    for k, v in fields.items():
      v = np.asarray(v)
      if v.ndim == 2 and v.shape[1] == fields["tokens"].shape[1]:
        v = realign(v, resp, width, resp, fill.get(k, 0))
      own[k] = v
    own["is_weights"] = own["mask"]
    own["sampler_logp"] = own["old_logp"]
    return own

  def foreign_block(
    self,
    rl_step: int,
    width: int,
    learner_logprobs: Any,
    dtypes: dict[str, Any],
  ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """This step's foreign groups at prompt width `width` with their F-TIS fields (numpy, all
    rows, the same on every process) and the F-TIS metrics.

    learner_logprobs: `(tokens, mask, valid) -> f32[Bf, T]`, the learner's log-probs of the
      foreign tokens with the parameters before the step's first update.
    dtypes: the own batch's field -> dtype (the foreign fields are cast to them; the field sets
      must be equal).
    """
    resp, fill = self.rl.max_new_tokens, self._fills()
    idx = self.rows(rl_step)
    foreign = {
      k: realign(self.data[k][idx], self.resp_len, width, resp, fill.get(k, 0)) for k in _ARRAYS[:4]
    }
    foreign["rewards"] = self.data["rewards"][idx]
    learner_logp = learner_logprobs(foreign["tokens"], foreign["response_mask"], foreign["valid"])
    fb, metrics = ftis_batch(
      foreign,
      learner_logp,
      group_size=self.rl.group_size,
      adv_scale=self.rl.adv_scale,
      ftis=self.rl.ftis,
      estimator=self.rl.get("advantage", "group_normalized"),
    )
    fb = fb.fields()
    if set(dtypes) != set(fb):
      missing = sorted(set(dtypes) ^ set(fb))
      raise ValueError(f"rl.ftis: cannot merge batches with fields {missing}")
    return {k: np.asarray(fb[k]).astype(dtypes[k]) for k in dtypes}, metrics

  def extend(
    self, batch: RLBatch, rl_step: int, logprobs: Callable[..., Any]
  ) -> tuple[RLBatch, dict[str, float]]:
    """Own RL batch (sampler layout, all rows on this host) + this step's foreign groups, aligned,
    with F-TIS weights: the `[own; foreign]` rows of `extend_global`, as process-local arrays.

    logprobs: `(tokens, mask, valid) -> f32[Bf, T]`, the learner's log-probs before the update."""
    width = self.prompt_width(batch.tokens.shape[1] - self.rl.max_new_tokens)
    own = self.align_own(batch, width)

    def learner(tokens, mask, valid):
      return logprobs(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(valid))

    fb, metrics = self.foreign_block(rl_step, width, learner, {k: v.dtype for k, v in own.items()})
    merged = {k: jnp.concatenate([jnp.asarray(own[k]), fb[k]], axis=0) for k in own}
    return RLBatch(**merged), metrics

  def extend_global(
    self,
    own: RLBatch,
    num_rows: int,
    rl_step: int,
    *,
    mesh: Any,
    logprobs: Callable[..., Any],
  ) -> tuple[RLBatch, dict[str, float]]:
    """This process's own rows (sampler layout) -> the step's global batch on the mesh: the
    `num_rows` own rows, then the foreign block, and the F-TIS metrics.

    mesh: the run's `MeshContext`; logprobs: `(tokens, mask, valid) -> f32[Bf, T]` on global
    arrays, the learner's log-probs with the parameters before the step's first update.

    Layout: the foreign rows form their own block after the own rows, `[own_0 .. own_{B-1};
    foreign_0 .. foreign_{Bf-1}]`, exactly the one-process batch, whatever the process count. Each
    process places its own rows of the first block (`MeshContext.from_local`); every process
    holds the whole (small) foreign block, computes its F-TIS fields identically (the learner
    log-probs are one sharded computation, then all-gathered) and places its slices of it
    (`MeshContext.from_host`); the blocks are joined on the mesh (`MeshContext.concat_rows`), so
    consecutive minibatches cut the same rows as on one process. Needs `Bf =
    ftis.prompts_per_step * group_size` rows that split over the batch mesh axes (checked by
    `_mesh_context.mesh_context`).
    """
    width = self.prompt_width(own.tokens.shape[1] - self.rl.max_new_tokens)
    own = self.align_own(own, width)

    def learner(tokens, mask, valid):
      placed = mesh.from_host({"tokens": tokens, "mask": mask, "valid": valid})
      logp = logprobs(placed["tokens"], placed["mask"], placed["valid"])
      # Several processes: all-gathered, so the F-TIS fields are host math on every process. One
      # process keeps the mesh array (its metrics reduce over the devices, as they always did).
      return mesh.to_host(logp) if mesh.multi_process else logp

    fb, metrics = self.foreign_block(rl_step, width, learner, {k: v.dtype for k, v in own.items()})
    batch = mesh.concat_rows(mesh.from_local(own, num_rows), mesh.from_host(fb))
    return RLBatch(**batch), metrics

  def _fills(self) -> dict[str, Any]:
    return {"tokens": max(self.pad_id, 0), "valid": False}
