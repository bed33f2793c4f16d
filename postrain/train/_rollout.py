"""Rollouts and evaluation: sample groups with the in-JAX sampler and score them on the host with
the task's verifier (the sample and score helpers of the RL and distillation steps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from postrain import tasks
from postrain.sampling import Sampler
from postrain.train._data import TaskData

EVAL_BATCH_SIZE = 64  # problems per evaluation sampler call


def generate(
  sampler: Sampler,
  data: TaskData,
  prompts: list[list[int]],
  *,
  key: jax.Array,
  n: int,
  max_new_tokens: int,
  temperature: float,
  top_k: int = 0,
  top_p: float = 1.0,
  prompt_offset: int | None = None,
):
  """Samples `n` responses per prompt (token ids); returns (SampleOutput, texts, seconds).

  `prompt_offset` (a `sharding.ShardedSampler` of a multi-process run): `prompts` are this
  process's share of the step's prompts, starting at that index; the output holds their rows only.
  """
  start = time.perf_counter()
  local = {} if prompt_offset is None else {"prompt_offset": prompt_offset}
  out = sampler(
    prompts,
    key=key,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_k=top_k or None,
    top_p=None if top_p >= 1.0 else top_p,
    n=n,
    stop_tokens=(data.tokenizer.eos_id,),
    pad_id=max(data.tokenizer.pad_id, 0),
    **local,
  )
  tokens, mask = np.asarray(out.tokens), np.asarray(out.response_mask)
  texts = data.decode_responses(tokens, mask)
  return out, texts, time.perf_counter() - start


def generate_groups(
  sampler: Sampler,
  data: TaskData,
  prompts: list[list[int]],
  rl: mlc.ConfigDict,
  *,
  key: jax.Array,
  n: int | None = None,
  prompt_offset: int | None = None,
):
  """`generate` with the RL config's sampling settings; `n` samples per prompt (default
  `rl.group_size`)."""
  return generate(
    sampler,
    data,
    prompts,
    key=key,
    n=rl.group_size if n is None else n,
    max_new_tokens=rl.max_new_tokens,
    temperature=rl.temperature,
    top_k=rl.top_k,
    top_p=rl.top_p,
    prompt_offset=prompt_offset,
  )


def score(
  data: TaskData,
  problems: list[tasks.Problem],
  texts: list[str],
  n: int,
  timeout_s: float,
  *,
  format_reward: float | None = None,
) -> tuple[np.ndarray, tasks.VerifierStats]:
  """Rewards f32[len(problems) * n] of the texts (problem p's n samples contiguous).

  Answers are extracted with `data.extract` (config.task.extract); a marked wrong answer earns
  `format_reward` (default: `data.format_reward`, the training reward; evaluation passes 0).
  """
  repeated = [p for p in problems for _ in range(n)]
  return tasks.score_batch(
    data.task,
    repeated,
    texts,
    mode=data.extract,
    max_chars=data.extract_max_chars,
    format_reward=data.format_reward if format_reward is None else format_reward,
    timeout_s=timeout_s,
  )


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


def _accuracy(data, problems, texts, n, timeout_s) -> np.ndarray:
  """Evaluation rewards: the task's score alone (no format reward)."""
  return score(data, problems, texts, n, timeout_s, format_reward=0.0)[0]


def evaluate(
  sampler: Sampler,
  data: TaskData,
  problems: list[tasks.Problem],
  *,
  key: jax.Array,
  k: int,
  max_new_tokens: int,
  timeout_s: float,
  batch_size: int = EVAL_BATCH_SIZE,
  mesh: Any = None,
  record: Callable[[list[tasks.Problem]], None] | None = None,
  env: Any = None,
) -> dict[str, float]:
  """Held-out pass@1 (greedy and sampled at temperature 1), unbiased pass@k from k samples, and
  the mean response lengths (tokens) of both.

  `mesh` (a `MeshContext` of a multi-process run): each process samples (`prompt_offset`) and
  verifies only its equal contiguous share of every batch of `batch_size` problems, and the
  per-problem results are all-gathered; the batches, their keys and the global rows the sampler
  draws are those of one process, so the metrics are too. `record` receives the problems this
  process evaluated.

  `env` (config.env, an `_env_stage.EnvRollouts`): every sample is a multi-turn episode, scored
  on its final turn; the metrics add the greedy episodes' `tool_calls_per_episode_greedy`,
  `tool_error_rate_greedy`, `tool_use_greedy` (share of episodes with a successful call) and
  `tool_correct_greedy` (share whose last successful tool result the verifier scores right: the
  call computed the answer, whatever the final turn says).
  """
  multi = mesh is not None and mesh.multi_process
  batches, mine = [], []
  for start in range(0, len(problems), batch_size):
    chunk = problems[start : start + batch_size]
    key, k_sample = jax.random.split(key)
    offset = None
    if multi:
      share = mesh.process_share(len(chunk))
      chunk, offset = chunk[share], share.start
    mine.extend(chunk)
    if env is not None:
      kw = dict(max_new_tokens=max_new_tokens, key=k_sample, prompt_offset=offset)
      out, texts, _, stats = env.generate(chunk, n=1, temperature=0.0, **kw)
      ok_calls = stats.tool_calls - stats.tool_errors
      # A correct call: the episode's last successful tool result is the right answer.
      results = [f"answer: {r[-1]}" if r else "" for r in stats.tool_results]
      correct = _accuracy(data, chunk, results, 1, timeout_s) > 0.5
      tool = {"calls": stats.tool_calls, "errors": stats.tool_errors, "used": ok_calls > 0,
              "correct": correct}  # fmt: skip
      greedy = (out, texts)
      sampled = env.generate(chunk, n=k, temperature=1.0, **kw)[:2]
    else:
      prompts = data.encode_prompts(chunk)
      kw = dict(max_new_tokens=max_new_tokens, prompt_offset=offset)
      greedy = generate(sampler, data, prompts, key=k_sample, n=1, temperature=0.0, **kw)[:2]
      sampled = generate(sampler, data, prompts, key=k_sample, n=k, temperature=1.0, **kw)[:2]
    out, texts = greedy
    rows = {"greedy": _accuracy(data, chunk, texts, 1, timeout_s), "greedy_len": out.lengths}
    if env is not None:
      rows.update({f"tool_{name}": x for name, x in tool.items()})
    out, texts = sampled
    rows["sampled"] = _accuracy(data, chunk, texts, k, timeout_s).reshape(len(chunk), k)
    rows["sampled_len"] = np.asarray(out.lengths).reshape(len(chunk), k)
    rows = {name: np.asarray(x) for name, x in rows.items()}
    if multi:  # the whole batch's results, in the global problem order
      rows = mesh.concat_over_processes(rows)
    batches.append(rows)
  if record is not None:
    record(mine)
  greedy_r, sampled_r, greedy_len, sampled_len = (
    np.concatenate([r[name] for r in batches])
    for name in ("greedy", "sampled", "greedy_len", "sampled_len")
  )
  correct = (sampled_r > 0.5).sum(-1)
  metrics = {
    "pass1_greedy": float(np.mean(greedy_r > 0.5)),
    "pass1_sampled": float(np.mean(sampled_r > 0.5)),
    f"pass{k}": float(np.mean(tasks.pass_at_k(np.full_like(correct, k), correct, k))),
    "response_len_greedy": float(np.mean(greedy_len)),
    "response_len_sampled": float(np.mean(sampled_len)),
  }
  if env is not None:
    calls, errors, used, correct = (
      np.concatenate([r[f"tool_{name}"] for r in batches])
      for name in ("calls", "errors", "used", "correct")
    )
    metrics["tool_calls_per_episode_greedy"] = float(np.mean(calls))
    metrics["tool_error_rate_greedy"] = float(errors.sum()) / max(int(calls.sum()), 1)
    metrics["tool_use_greedy"] = float(np.mean(used))
    metrics["tool_correct_greedy"] = float(np.mean(correct))
  return metrics
