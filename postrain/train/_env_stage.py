"""The multi-turn rollout stage: one environment per row, turns sampled over one KV cache.

With `config.env.name != "none"` this stage replaces the single-turn sampler call of the RL step
(`_rl_step.py`) and of evaluation (`_rollout.evaluate`):

  problems --env.reset--> prompts (the env's system text + the question, in the task's prompt
  format) --sampling.Conversation + envs.run_episodes--> SampleOutput (response_mask 1 on model
  tokens only; tool results and headers are context) + EpisodeStats

Rewards (`_rl_step.py`): the task's verifier on the final model turn of each episode, plus the
sum of the environment's per-turn rewards (`ToolEnv`: `env.success_reward` per successful call,
`env.error_reward` per failed one; both 0 by default, so the reward is the verifier's alone).

Config (`config.env`): `name` ("none", "calculator", "python", "tools" with `tools`, a registered
name or "package.module:attr"), `format` ("auto": "hermes" for chat prompts, "compact" for
plain ones), `max_turns`, `max_total_tokens` (tokens after the prompt; 0: only the cache
`rl.cache_size` bounds it), `tool_timeout_s`. Each turn generates at most `rl.max_new_tokens`
(`eval.max_new_tokens` in evaluation).

Several processes (as single-turn RL, `_rl_step.py`): each process holds the environments of its
own share of whole groups (`MeshContext.item_slice`) and runs only their `env.step`s. The
conversation is one global computation on the sharded sampler: each turn every process
all-gathers the prompts / observation token ids of the rows it owns (`ProcessRows`; small host
lists) so that all pass the same global batch, the driver's batch-wide decisions take the maximum
over processes (`run_episodes(reduce_max=)`), and each process reads back its own rows. The
episodes, their tokens and the metrics (`gather_stats`) equal those of one process holding every
row.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from postrain import envs, sampling
from postrain.train import _distributed


def env_format(config: mlc.ConfigDict) -> str:
  """`config.env.format` with "auto" resolved by the prompt format (chat: hermes, plain: compact)."""
  if config.env.format != "auto":
    return config.env.format
  return "hermes" if config.task.prompt_format == "chat" else "compact"


def env_options(config: mlc.ConfigDict) -> dict[str, Any]:
  """The keyword options an environment factory receives (those its signature accepts)."""
  e = config.env
  return dict(
    format=env_format(config),
    timeout_s=float(e.tool_timeout_s),
    tools=tuple(t.strip() for t in e.tools.split(",") if t.strip()),
    success_reward=float(e.success_reward),
    error_reward=float(e.error_reward),
  )


def make_env(config: mlc.ConfigDict) -> envs.Env | None:
  """A fresh environment of `config.env` (None for "none")."""
  return envs.make_env(config.env.name, **env_options(config))


def enabled(config: mlc.ConfigDict) -> bool:
  return config.env.name != "none"


def validate_env(c: mlc.ConfigDict, need: Any) -> None:
  """The `config.env` keys (the name must resolve; the stages it cannot be combined with)."""
  need(
    c.env.format in ("auto", "hermes", "compact"),
    "env.format",
    f"must be auto, hermes or compact, got {c.env.format!r}",
  )
  need(c.env.max_turns >= 1, "env.max_turns", f"must be >= 1, got {c.env.max_turns}")
  need(c.env.max_total_tokens >= 0, "env.max_total_tokens", "must be >= 0 (0: the cache bounds it)")
  need(c.env.tool_timeout_s > 0, "env.tool_timeout_s", "must be > 0")
  if not enabled(c):
    return
  envs.resolve(c.env.name)  # ValueError naming config.env.name
  name = c.env.name
  need(c.mode in ("rl", "sft"), "env.name", f"{name!r} needs mode rl or sft, got {c.mode!r}")
  need(c.rl.algorithm != "scrl", "env.name", f"{name!r} cannot be combined with rl.algorithm=scrl")
  need(not c.rl.smepo.enabled, "env.name", f"{name!r} cannot be combined with rl.smepo.enabled")
  need(not c.rl.ftis.path, "env.name", f"{name!r} cannot be combined with rl.ftis.path")


class EnvRollouts:
  """Multi-turn rollouts of `config.env` with the run's sampler (a `sampling.Sampler` or the
  trainer's `sharding.ShardedSampler`); the caller keeps its parameters current
  (`sampler.update`). `mesh`: the run's `MeshContext` (several processes: `prompt_offset`)."""

  def __init__(self, config: mlc.ConfigDict, data: Any, sampler: Any, mesh: Any = None):
    self.config, self.data, self.sampler, self.mesh = config, data, sampler, mesh
    self.cache_size = int(config.rl.cache_size)

  def generate(
    self,
    problems: list[Any],
    *,
    key: jax.Array,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    prompt_offset: int | None = None,
  ) -> tuple[sampling.SampleOutput, list[str], float, envs.EpisodeStats]:
    """`n` episodes per problem (problem p's in rows [p n, (p + 1) n)); returns (SampleOutput
    [B, rl.cache_size], the final model turn of each row, seconds, EpisodeStats).

    `prompt_offset` (several processes): `problems` are this process's share of the batch's,
    starting at that index; every process calls together, and the results hold its rows only
    (`gather_stats` gives the whole batch's statistics).
    """
    start = time.perf_counter()
    rows = [make_env(self.config) for _ in range(len(problems) * n)]
    prompts = []
    for i, env in enumerate(rows):
      text = envs.prompt_text(
        env.reset(problems[i // n]),
        chat_template=self.data.chat_template,
        instruction=self.data.instruction,
      )
      prompts.append(self.data.encode_prompt(text))
    tok = self.data.tokenizer
    conv = sampling.Conversation(
      self.sampler, cache_size=self.cache_size, pad_id=max(tok.pad_id, 0)
    )
    reduce_max = None
    if prompt_offset is not None and jax.process_count() > 1:
      conv = ProcessRows(conv, prompt_offset * n, len(rows))
      reduce_max = _distributed.max_over_processes
    e = self.config.env
    out, stats = envs.run_episodes(
      conv, rows, prompts, encode=tok.encode, decode=tok.decode, key=key,
      max_new_tokens=max_new_tokens, max_turns=e.max_turns,
      max_total_tokens=e.max_total_tokens or self.cache_size,
      stop_tokens=(tok.eos_id,), temperature=temperature,
      top_p=None if top_p >= 1.0 else top_p, top_k=top_k or None, reduce_max=reduce_max,
    )  # fmt: skip
    return out, stats.final_texts, time.perf_counter() - start, stats


class ProcessRows:
  """One process's rows `[offset, offset + count)` of a `sampling.Conversation` over the whole
  batch (several processes): `start` / `extend` take and return this process's rows only; the
  prompts and observations of all rows are all-gathered (token-id lists, small) so that every
  process runs the same global conversation; `result()` is this process's rows of it."""

  def __init__(self, conversation: sampling.Conversation, offset: int, count: int):
    self.conversation, self.rows = conversation, slice(offset, offset + count)

  @property
  def remaining(self) -> int:
    return self.conversation.remaining  # identical on every process (one global cache)

  def start(self, prompts: Sequence[Sequence[int]], **kwargs: Any) -> sampling.Turn:
    return self._mine(self.conversation.start(self._everyone(prompts), **kwargs))

  def extend(self, observations: Sequence[Sequence[int] | None], **kwargs: Any) -> sampling.Turn:
    return self._mine(self.conversation.extend(self._everyone(observations), **kwargs))

  def result(self) -> sampling.SampleOutput:
    out, r = self.conversation.result(), self.rows
    fields = ("tokens", "response_mask", "lengths", "sample_logp", "model_logp", "positions",
              "valid", "prompt_lengths")  # fmt: skip
    return dataclasses.replace(out, **{f: getattr(out, f)[r] for f in fields})

  def _everyone(self, local: Sequence[Any]) -> list[Any]:
    """Every process's rows (token-id lists or None) -> the whole batch's, in row order."""
    local = [None if x is None else [int(t) for t in x] for x in local]
    if len(local) != self.rows.stop - self.rows.start:
      raise ValueError(f"{len(local)} rows given for this process's rows {self.rows}")
    everyone: dict[int, Any] = {}
    for start, rows in _distributed.allgather_json([self.rows.start, local]):
      everyone.update((start + i, row) for i, row in enumerate(rows))
    if sorted(everyone) != list(range(len(everyone))):
      raise ValueError("the processes' rows leave a gap in the batch")
    return [everyone[i] for i in range(len(everyone))]

  def _mine(self, turn: sampling.Turn) -> sampling.Turn:
    r = self.rows
    return sampling.Turn(
      turn.tokens[r], turn.sample_logp[r], turn.model_logp[r], turn.stopped[r], turn.active[r]
    )


def gather_stats(stats: envs.EpisodeStats, offset: int) -> envs.EpisodeStats:
  """The whole batch's `EpisodeStats` from every process's rows (`offset`: the index of this
  process's first row); one process: `stats`. Row arrays and texts are concatenated in row order,
  counts and seconds summed."""
  if jax.process_count() == 1:
    return stats
  rows = ("turns", "tool_calls", "tool_errors", "generated_tokens", "context_tokens",
          "truncated", "shaping")  # fmt: skip
  local = {f: np.asarray(getattr(stats, f)).tolist() for f in rows}
  local.update(
    offset=offset,
    final_texts=stats.final_texts,
    texts=stats.texts,
    tool_results=stats.tool_results,
    calls_per_tool={k: np.asarray(v).tolist() for k, v in stats.calls_per_tool.items()},
    errors_per_kind=stats.errors_per_kind,
    seconds=[stats.tool_seconds, stats.env_seconds],
  )
  parts = sorted(_distributed.allgather_json(local), key=lambda p: p["offset"])
  sizes = [len(p["turns"]) for p in parts]
  merged = {
    f: np.concatenate([np.asarray(p[f], getattr(stats, f).dtype) for p in parts]) for f in rows
  }
  per_tool: dict[str, np.ndarray] = {}
  kinds: dict[str, int] = {}
  at = 0
  for p, size in zip(parts, sizes):
    for name, counts in p["calls_per_tool"].items():
      per_tool.setdefault(name, np.zeros(sum(sizes), np.int32))[at : at + size] = counts
    for kind, count in p["errors_per_kind"].items():
      kinds[kind] = kinds.get(kind, 0) + int(count)
    at += size
  return envs.EpisodeStats(
    **merged,
    final_texts=[t for p in parts for t in p["final_texts"]],
    texts=[t for p in parts for t in p["texts"]],
    tool_results=[r for p in parts for r in p["tool_results"]],
    calls_per_tool=per_tool,
    errors_per_kind=kinds,
    tool_seconds=float(sum(p["seconds"][0] for p in parts)),
    env_seconds=float(sum(p["seconds"][1] for p in parts)),
  )
