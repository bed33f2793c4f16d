"""The RL step of a multi-process run with per-process data loading.

Every process computes the step's problem list (a function of (seed, step), cheap) and takes its
contiguous share of whole groups (`MeshContext.item_slice`): items `[a, b)` fill rows
`[a * G, b * G)` of the global batch, the rows its devices hold under the batch sharding (with
`jax.make_mesh`'s process-ordered devices: process 0's rows, then process 1's, ...). It tokenizes,
samples (`ShardedSampler(..., prompt_offset=a)`: one global sampling computation, each process
reading back only its rows), decodes and verifies only those rows; the global update batch is
assembled from the processes' rows (`jax.make_array_from_process_local_data`) and split into
minibatches on the mesh. Only B rewards and B lengths are all-gathered (group/batch statistics
and metrics of the whole batch), so the numbers equal a one-process run's.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from postrain.train import _mesh, _rollout


def rl_step(
  tr: Any, problems: list[Any], key: jax.Array, progress: float, rl_step: int
) -> dict[str, float]:
  """One RL step of a multi-process run, each process on its own contiguous share of the step's
  problems (whole groups): it tokenizes, samples, decodes and scores only those; the global
  batch (process 0's rows, then process 1's, ... as the batch sharding lays rows on devices) is
  assembled on the mesh from the processes' rows. Group advantages use the all-gathered rewards
  (B floats), and every metric is a statistic of the whole batch, as on one process."""
  cfg, rl, mesh = tr.config, tr.config.rl, tr.mesh
  mine = mesh.item_slice(len(problems), rl.group_size)
  problems = problems[mine]
  tr._record_problems("rl", problems)
  num_rows = rl.prompts_per_step * rl.group_size
  rows = slice(mine.start * rl.group_size, mine.stop * rl.group_size)
  out, texts, sample_s = _rollout.generate_groups(
    tr.sampler, tr.data, tr.data.encode_prompts(problems), rl, key=key, prompt_offset=mine.start
  )
  rewards, vstats = _rollout.score(
    tr.data, problems, texts, rl.group_size, cfg.task.verifier_timeout_s
  )
  lengths, valid = np.asarray(out.lengths), np.asarray(out.valid)
  everyone = mesh.gather_rows(
    {"rewards": rewards.astype(np.float32), "lengths": lengths.astype(np.int32)}, num_rows
  )
  batch, metrics = _rollout.rl_batch(out, everyone["rewards"], rl=rl, progress=progress, rows=rows)
  metrics["response_len"] = float(np.mean(everyone["lengths"]))
  batch = mesh.from_local(_mesh.as_numpy(batch), num_rows)
  if tr.ref_params is not None:
    batch["ref_logp"] = tr.ref_logprobs(
      tr.ref_params, batch["tokens"], batch["mask"], batch["valid"]
    )
  update_s = tr.rl_updates(mesh.device_minibatches(batch, rl.updates_per_batch), rl_step, metrics)
  timeouts, errors, train_tokens = mesh.sum_over_processes(
    [vstats.timeouts, vstats.errors, int(valid.sum())]
  )
  metrics.update(
    accuracy=float(np.mean(everyone["rewards"] > 0.5)),
    sample_tokens_per_s=float(everyone["lengths"].sum()) / sample_s,
    train_tokens_per_s=float(train_tokens) / update_s,
    verifier_timeouts=float(timeouts),
    verifier_errors=float(errors),
  )
  return metrics
