"""The RL step with per-process data loading: one code path for one process and for many.

Every process computes the step's problem list (a function of (seed, step), cheap) and takes its
contiguous share of whole groups (`MeshContext.item_slice`; one process: all of them): items
`[a, b)` fill rows `[a * G, b * G)` of the global batch, the rows its devices hold under the batch
sharding (with `jax.make_mesh`'s process-ordered devices: process 0's rows, then process 1's, ...).
It tokenizes, samples (`ShardedSampler(..., prompt_offset=)`: one global sampling computation, each
process reading back only its rows), decodes and verifies only those rows; the global update batch
is assembled from the processes' rows (`jax.make_array_from_process_local_data`) and split into
minibatches on the mesh. Only per-row scalars are all-gathered (rewards, lengths; SCRL's [B, K]
subproblem rewards and format flags) for the group / batch statistics and the metrics of the whole
batch, so the numbers equal a one-process run's.

Every RL variant runs this way; what depends on a row's or problem's place in the step uses its
global index:
  * SCRL (`_scrl.py`): problem i's mixed group (G/2 curriculum, G/2 original samples) is rows
    `[i * G, (i + 1) * G)` (interleaved prompts, sampler offset 2a); the subproblem columns K are
    the step's longest chain over all processes; advantages are normalised with the gathered
    rewards.
  * SMEPO (`_smepo.py`): the guided problems are drawn over the step's global indices; each
    process guides those in its share and the counts are summed.
  * F-TIS (`_ftis.py`): the foreign groups are a block after all own rows, `[own; foreign]`, as on
    one process (`ForeignRollouts.extend_global`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from postrain.train import _mesh, _rollout, _scrl, _smepo


def rl_step(
  tr: Any, problems: list[Any], key: jax.Array, progress: float, rl_step: int
) -> dict[str, float]:
  """One RL step, each process on its own contiguous share of the step's problems (whole groups;
  one process: all of them): it tokenizes, samples, decodes and scores only those; the global
  batch (process 0's rows, then process 1's, ... as the batch sharding lays rows on devices; then
  the F-TIS foreign block) is assembled on the mesh from the processes' rows. Advantages use the
  all-gathered per-row rewards, and every metric is a statistic of the whole batch, as on one
  process."""
  cfg, rl, mesh = tr.config, tr.config.rl, tr.mesh
  g, timeout_s = rl.group_size, cfg.task.verifier_timeout_s
  total, num_rows = len(problems), len(problems) * rl.group_size
  mine = mesh.item_slice(total, g)
  problems = problems[mine]
  tr._record_problems("rl", problems)
  rows = slice(mine.start * g, mine.stop * g)
  prompts, n, offset, chains, smepo_metrics = _step_prompts(tr, problems, mine.start, total)
  out, texts, sample_s = _rollout.generate_groups(
    tr.sampler,
    tr.data,
    prompts,
    rl,
    key=key,
    n=n,
    prompt_offset=offset if mesh.multi_process else None,
  )
  lengths = np.asarray(out.lengths).astype(np.int32)
  if chains is not None:  # SCRL: subproblem rewards of the curriculum rows, outcome of the rest
    k = mesh.max_over_processes(max(c.num_subproblems for c in chains))
    sub, outcome, span_ids, fmt, _, vstats = _scrl.scrl_batch_rewards(
      tr.data, out, texts, problems, chains, group_size=g, timeout_s=timeout_s, num_subproblems=k
    )
    everyone = mesh.gather_rows(
      {"rewards": outcome, "lengths": lengths, "sub": sub, "format_ok": fmt}, num_rows
    )
    is_curr = np.tile(np.arange(g) < g // 2, total)
    batch, metrics, rewards = _scrl.scrl_rl_batch(
      out,
      everyone["sub"],
      everyone["rewards"],
      span_ids,
      everyone["format_ok"],
      is_curr,
      rl=rl,
      rows=rows,
    )
  else:
    rewards, vstats = _rollout.score(tr.data, problems, texts, g, timeout_s)
    everyone = mesh.gather_rows(
      {"rewards": rewards.astype(np.float32), "lengths": lengths}, num_rows
    )
    rewards = everyone["rewards"]
    batch, metrics = _rollout.rl_batch(out, rewards, rl=rl, progress=progress, rows=rows)
  metrics["response_len"] = float(np.mean(everyone["lengths"]))
  if tr.ftis is not None:  # the foreign groups: a block after the own rows
    batch, ftis_metrics = tr.ftis.extend_global(_mesh.as_numpy(batch), num_rows, rl_step)
    metrics.update(ftis_metrics)
  else:
    batch = mesh.from_local(_mesh.as_numpy(batch), num_rows)
  if tr.ref_params is not None:
    batch["ref_logp"] = tr.ref_logprobs(
      tr.ref_params, batch["tokens"], batch["mask"], batch["valid"]
    )
  update_s = tr.rl_updates(mesh.device_minibatches(batch, rl.updates_per_batch), rl_step, metrics)
  metrics.update(
    rollout_metrics(mesh, out, vstats, rewards, everyone["lengths"], sample_s, update_s)
  )
  metrics.update(smepo_metrics)
  return metrics


def rollout_metrics(
  mesh: Any,
  out: Any,
  vstats: Any,
  rewards: np.ndarray,
  lengths: np.ndarray,
  sample_s: float,
  update_s: float,
) -> dict[str, float]:
  """Whole-batch accuracy, throughput and verifier counts of a step: `rewards` / `lengths` are
  all B rows (all-gathered), `out` / `vstats` this process's rows (summed over processes)."""
  timeouts, errors, train_tokens = mesh.sum_over_processes(
    [vstats.timeouts, vstats.errors, int(np.asarray(out.valid).sum())]
  )
  return {
    "accuracy": float(np.mean(rewards > 0.5)),
    "sample_tokens_per_s": float(lengths.sum()) / sample_s,
    "train_tokens_per_s": float(train_tokens) / update_s,
    "verifier_timeouts": float(timeouts),
    "verifier_errors": float(errors),
  }


def _step_prompts(
  tr: Any, problems: list[Any], first: int, total: int
) -> tuple[list[list[int]], int, int, list[Any] | None, dict[str, float]]:
  """This process's prompts (token ids) of problems `[first, first + len(problems))` of the
  step's `total`: (prompts, samples per prompt, index of the first prompt in the step's prompt
  list, SCRL chains or None, SMEPO metrics of the whole step)."""
  cfg, rl, mesh = tr.config, tr.config.rl, tr.mesh
  prompts = tr.data.encode_prompts(problems)
  smepo_metrics: dict[str, float] = {}
  if rl.smepo.enabled:  # SMEPO: masked expert traces in front of some prompts; nothing else
    prompts, counts = _smepo.guide_share(
      tr.data,
      problems,
      prompts,
      cfg=rl.smepo,
      seed=cfg.seed,
      step=tr.step,
      max_prompt_len=rl.cache_size - rl.max_new_tokens,
      offset=first,
      total=total,
    )
    summed = mesh.sum_over_processes(list(counts.values()))
    counts = {name: int(c) for name, c in zip(counts, np.atleast_1d(summed))}
    smepo_metrics = _smepo.metrics_from_counts(counts, total)
  if rl.algorithm == "scrl":  # mixed groups: G/2 curriculum samples, then G/2 of the original
    chains = _scrl.chains_for(problems, rl.scrl_num_subproblems)
    prompts = _scrl.interleaved_prompts(tr.data, problems, chains, originals=prompts)
    return prompts, rl.group_size // 2, 2 * first, chains, smepo_metrics
  return prompts, rl.group_size, first, None, smepo_metrics
