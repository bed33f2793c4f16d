"""SMEPO as a trainer option (arXiv 2605.25198): a masked expert trace in front of RL prompts.

With `config.rl.smepo.enabled`, a seeded `fraction` of each step's prompts get the task's
reference solution (the SFT target, `tasks.reference_solution`) with its reward-relevant spans
masked (`tasks.smepo.mask_trace`: answers -> [ANSWER], numbers -> [NUMBER], code -> [CODE]) in
front of the policy. Only the prompt changes: rewards, advantages and the loss are those of the
configured algorithm, and evaluation uses the plain prompts (as the paper's code does).

A trace is not used (the prompt stays plain, and the step's metrics count it) when the problem
has no reference solution, when `tasks.smepo.check_answer_leak` finds the answer in the masked
trace, or when the guided prompt would not leave room for `rl.max_new_tokens` in the cache.

Templates (`rl.smepo.template`): "auto" picks the paper's chat template (the trace as an earlier
assistant turn, `tasks.smepo.DEFAULT_TEMPLATE`) for chat prompts, and `PLAIN_TEMPLATE` (the trace
before the plain "Question: ... Answer:" prompt, so the prompt still ends where an SFT-trained
model starts its solution) for plain prompts; any other string is a template with the fields
{prompt} and {trace}.

In a multi-process run the guided problems are drawn over the step's global problem indices, and
each process guides those of its share (`guide_share`); the counts are summed over processes. With
SCRL, a guided problem's original-prompt samples get the guided prompt (its curriculum samples
keep the curriculum prompt).
"""

from __future__ import annotations

from typing import Any

import ml_collections as mlc
import numpy as np

from postrain import tasks
from postrain.tasks import smepo

# `data` below is the run's `_data.TaskData` (not imported: `_data` imports PLAIN_TEMPLATE).
PLAIN_TEMPLATE = "Here is an example solution:\n{trace}\n\n{prompt}"


def template_for(data: Any, template: str) -> str:
  """The guided-prompt template of `rl.smepo.template` ("auto" or a format string)."""
  if template != "auto":
    return template
  return smepo.DEFAULT_TEMPLATE if data.chat_template is not None else PLAIN_TEMPLATE


def guided_text(data: Any, problem: tasks.Problem, cfg: mlc.ConfigDict) -> tuple[str, str]:
  """(guided prompt text, reason): reason is "ok", "no_trace" or "leak" (text is then plain)."""
  prompt = data.prompt(problem)
  trace = tasks.reference_solution(problem)
  if trace is None:
    return prompt, "no_trace"
  masked, report = smepo.mask_and_check(trace, problem.answer)
  if report.leaks:
    return prompt, "leak"
  text = smepo.guided_prompt(
    prompt, masked, template=template_for(data, cfg.template), prefix_ratio=cfg.prefix_ratio
  )
  return text, "ok"


def guide_prompts(
  data: Any,
  problems: list[tasks.Problem],
  prompts: list[list[int]],
  *,
  cfg: mlc.ConfigDict,
  seed: int,
  step: int,
  max_prompt_len: int,
) -> tuple[list[list[int]], dict[str, float]]:
  """Replaces a seeded `cfg.fraction` of `prompts` (token ids, one per problem) by guided ones.

  The chosen prompts are a function of (seed, step), so a resumed run guides the same ones.
  Returns the new prompt list and metrics: "smepo/guided_frac" (prompts actually guided),
  "smepo/leak_rejected", "smepo/no_trace", "smepo/too_long" (counts of chosen prompts left plain).
  """
  out, counts = guide_share(
    data, problems, prompts, cfg=cfg, seed=seed, step=step, max_prompt_len=max_prompt_len
  )
  return out, metrics_from_counts(counts, len(problems))


def chosen_problems(num_problems: int, fraction: float, *, seed: int, step: int) -> list[int]:
  """The step's guided problem indices (sorted): round(fraction * num_problems) of them, drawn
  by a generator seeded with (seed, step) over the whole step's problem list."""
  k = min(num_problems, int(np.floor(fraction * num_problems + 0.5)))
  rng = np.random.default_rng([seed, step, 0x53E9])
  return sorted(rng.choice(num_problems, size=k, replace=False).tolist()) if k else []


def guide_share(
  data: Any,
  problems: list[tasks.Problem],
  prompts: list[list[int]],
  *,
  cfg: mlc.ConfigDict,
  seed: int,
  step: int,
  max_prompt_len: int,
  offset: int = 0,
  total: int | None = None,
) -> tuple[list[list[int]], dict[str, int]]:
  """`guide_prompts` on one process's share of the step's problems.

  `problems` / `prompts` are items `[offset, offset + len(problems))` of the step's `total`
  problems (default: all of them). The guided set is drawn over all `total` global indices
  (`chosen_problems`), so every process of a multi-process run guides exactly the prompts a
  one-process run guides in its share. Returns the new prompts and this share's counts ("ok",
  "leak", "no_trace", "too_long"): summed over processes they are the whole step's.
  """
  total = len(problems) if total is None else total
  stop = offset + len(problems)
  chosen = [
    i - offset
    for i in chosen_problems(total, cfg.fraction, seed=seed, step=step)
    if offset <= i < stop
  ]
  out = list(prompts)
  counts = {"ok": 0, "leak": 0, "no_trace": 0, "too_long": 0}
  for i in chosen:
    text, reason = guided_text(data, problems[i], cfg)
    if reason == "ok":
      ids = data.encode_prompt(text)
      if len(ids) > max_prompt_len:
        reason = "too_long"
      else:
        out[i] = ids
    counts[reason] += 1
  return out, counts


def smepo_stage(
  data: Any,
  problems: list[tasks.Problem],
  prompts: list[list[int]],
  *,
  rl: mlc.ConfigDict,
  seed: int,
  step: int,
  mesh: Any,
  offset: int,
  total: int,
) -> tuple[list[list[int]], dict[str, float]]:
  """The SMEPO prompt stage of one RL step on this process's share (items `[offset, offset +
  len(problems))` of the step's `total`): (the prompts, some guided; the whole step's metrics,
  the counts summed over processes by `mesh.sum_over_processes`)."""
  prompts, counts = guide_share(
    data,
    problems,
    prompts,
    cfg=rl.smepo,
    seed=seed,
    step=step,
    max_prompt_len=rl.cache_size - rl.max_new_tokens,
    offset=offset,
    total=total,
  )
  summed = mesh.sum_over_processes(list(counts.values()))
  counts = {name: int(c) for name, c in zip(counts, np.atleast_1d(summed))}
  return prompts, metrics_from_counts(counts, total)


def metrics_from_counts(counts: dict[str, int], num_problems: int) -> dict[str, float]:
  """The step's SMEPO metrics from its counts (`guide_share`, summed over processes)."""
  return {
    "smepo/guided_frac": counts["ok"] / max(num_problems, 1),
    "smepo/leak_rejected": float(counts["leak"]),
    "smepo/no_trace": float(counts["no_trace"]),
    "smepo/too_long": float(counts["too_long"]),
  }
