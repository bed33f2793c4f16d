"""The OPD / MOPD step with per-process data loading (`_rl_step.rl_step` for the distillation modes):
one code path for one process and for many.

Every process computes the step's problem list (a function of (seed, step)) and takes its
contiguous share of whole groups (`MeshContext.item_slice`; one process: all of them): items `[a, b)` fill rows
`[a * G, b * G)` of the global batch, process 0's rows, then process 1's, ... It samples
(`prompt_offset=a`), decodes, verifies, builds the MOPD teacher prompts and the sentence segments
of only those rows. The teacher inputs and the update batch are assembled on the mesh from the
processes' rows (`MeshContext.from_local`), one sharded teacher pass scores the global batch, and
the minibatches are cut on the devices. Choices that depend on a row's place use its global index:
MOPD's "random" peer order seeds group i with `seed + i` (global group index), and the teacher
prompts are padded to the longest prompt over all processes. Only small per-row host values are
all-gathered (rewards, lengths, peer flags, prompt lengths, release statistics), so the metrics
are statistics of the whole batch and equal a one-process run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postrain import advantages, sharding
from postrain.train import _rollout, _teacher
from postrain.train._types import TrainState


def shard_teacher_fn(
  fn: Callable[..., Any], mesh: Any, teacher_shardings: Any, student_shardings: Any
) -> Callable[..., Any]:
  """`make_teacher_fn(..., jit=False)` jitted on the mesh: teacher and student parameters in
  their shardings, every batch input and output split on the batch dimension."""
  b = mesh.batch
  return sharding.shard_batch_fn(
    fn,
    (teacher_shardings, b, b, student_shardings, b, b, b),
    b,
    logical_rules=mesh.logical_rules,
  )


def distill_step(
  dist: Any,
  state: TrainState,
  parts: Any,
  problems: list[Any],
  *,
  record: Callable[[list[Any]], None] | None = None,
) -> tuple[TrainState, dict[str, float]]:
  """One OPD / MOPD step (`Distiller.step`): each process samples, verifies and prepares only its
  share of the step's groups (one process: all of them); metrics are of the whole batch.

  dist: the `Distiller`; state: the student's `TrainState`; parts: the RL step's fixed parts
  (`_rl_step.RLStepParts`: config, mesh, data, sampler, graphdef, rest); problems: the step's."""
  cfg, rl, mesh, data = parts.config, parts.config.rl, parts.mesh, parts.data
  num_rows = len(problems) * rl.group_size
  mine = mesh.item_slice(len(problems), rl.group_size)
  problems = problems[mine]
  if record is not None:
    record(problems)
  parts.sampler.update(parts.policy_model(state.params))
  key = jax.random.fold_in(state.rng, state.step)
  offset = mine.start if mesh.multi_process else None
  out, texts, sample_s = _rollout.generate_groups(
    parts.sampler, data, data.encode_prompts(problems), rl, key=key, prompt_offset=offset
  )
  rewards, vstats = _rollout.score(
    data, problems, texts, rl.group_size, cfg.task.verifier_timeout_s
  )
  batch, metrics, everyone = local_batch(
    dist, state, parts, out, texts, problems, rewards, group_offset=mine.start, num_rows=num_rows
  )
  start = time.perf_counter()
  auxes = []
  for mb in mesh.device_minibatches(batch, rl.updates_per_batch):
    state, aux = dist.update(state, mb)  # EMA teacher: moved inside (`_distill.ema_step`)
    auxes.append(aux)
  metrics.update(mesh.mean_metrics(auxes))
  update_s = time.perf_counter() - start
  all_rewards, lengths = everyone["rewards"], everyone["lengths"]
  metrics.update(reward_mean=float(np.mean(all_rewards)), response_len=float(np.mean(lengths)))
  metrics.update(
    _rollout.rollout_metrics(mesh, out, vstats, all_rewards, lengths, sample_s, update_s)
  )
  return state, metrics


def local_batch(
  dist: Any,
  state: TrainState,
  parts: Any,
  out: Any,
  texts: list[str],
  problems: list[Any],
  rewards: np.ndarray,
  *,
  group_offset: int,
  num_rows: int,
) -> tuple[dict[str, jax.Array], dict[str, float], dict[str, np.ndarray]]:
  """The update batch from this process's rows of a rollout: (the global batch on the mesh: student
  sequences, targets, teacher outputs and weights; the batch metrics; the all-gathered per-row
  host values "rewards" and "lengths").

  `out` / `texts` / `problems` / `rewards` are this process's groups, the first being global group
  `group_offset`; the batch has `num_rows` rows in all.
  """
  cfg, d, mesh, data = parts.config, parts.config.distill, parts.mesh, parts.data
  resp_len = cfg.rl.max_new_tokens
  tokens, valid = np.asarray(out.tokens), np.asarray(out.valid)
  targets = tokens[:, -resp_len:]
  mask = np.asarray(out.response_mask[:, -resp_len:], np.float32)
  weights = np.ones_like(mask)
  rows = {
    "rewards": np.asarray(rewards, np.float32),
    "lengths": np.asarray(out.lengths, np.int32),
  }
  metrics: dict[str, float] = {}
  student = mesh.from_local({"tokens": tokens, "valid": valid, "targets": targets}, num_rows)
  if cfg.mode == "mopd":
    t_prompts, has_peer, truncated = _teacher.mopd_teacher_prompts(
      data,
      problems,
      texts,
      rewards,
      group_size=cfg.rl.group_size,
      d=d,
      # Group i of the batch draws its random peer order from seed + i: the global index.
      seed=cfg.seed * 100_003 + int(state.step) + group_offset,
    )
    rows.update(has_peer=has_peer, t_len=np.asarray([len(p) for p in t_prompts], np.int32))
    rows = mesh.gather_rows(rows, num_rows)
    (truncated,) = mesh.sum_over_processes([truncated])
    t_tokens, t_valid = _teacher.teacher_layout(
      t_prompts,
      targets,
      valid[:, -resp_len:],
      pad_id=max(data.tokenizer.pad_id, 0),
      longest=int(rows["t_len"].max()),  # one teacher width for all processes' rows
    )
    if d.drop_no_peer:
      weights = weights * has_peer[:, None]
    metrics.update(
      peer_frac=float(np.mean(rows["has_peer"])),
      teacher_prompt_len=float(np.mean(rows["t_len"])),
      teacher_prompt_truncated=float(truncated),
    )
    teacher_in = mesh.from_local({"tokens": t_tokens, "valid": t_valid}, num_rows)
  else:
    rows = mesh.gather_rows(rows, num_rows)
    teacher_in = student
  tout = dist.teacher_fn(
    dist.teacher_of(state),
    teacher_in["tokens"],
    teacher_in["valid"],
    state.params,
    student["tokens"],
    student["valid"],
    student["targets"],
  )
  if d.release:
    n_seg = int(d.release_num_segments)
    local = mesh.item_slice(num_rows)  # this process's rows of the global batch
    margin = mesh.to_host(tout.pop("margin"))[local]
    seg = _teacher.segment_ids(targets, mask, data.tokenizer, n_seg)
    keep, info = advantages.teachability_release(
      jnp.asarray(margin), jnp.asarray(seg), jnp.asarray(mask), num_segments=n_seg
    )
    weights = weights * np.asarray(advantages.release_weights(keep, jnp.asarray(mask)))
    stats = mesh.gather_rows(
      {
        "release": np.asarray(info["release"]),
        "kept": np.asarray(keep) * mask,
        "mask": mask,
      },
      num_rows,
    )
    kept = float(np.sum(stats["kept"]) / max(stats["mask"].sum(), 1.0))
    metrics.update(release_frac=float(np.mean(stats["release"])), release_kept=kept)
  host = {
    "mask": mask,
    "weights": np.asarray(weights, np.float32),
    "old_logp": np.asarray(out.model_logp[:, -resp_len:], np.float32),
  }
  batch = {**student, **mesh.from_local(host, num_rows), **tout}
  return batch, metrics, {"rewards": rows["rewards"], "lengths": rows["lengths"]}
