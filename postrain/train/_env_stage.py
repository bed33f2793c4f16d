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

One process only: the conversation runs on the trainer's sharded sampler, whose multi-process row
split does not cover conversations yet; the trainer refuses a multi-process run with an
environment (NotImplementedError naming config.env.name).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections as mlc

from postrain import envs, sampling


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
  """Multi-turn rollouts of `config.env` with the run's sampler (a `sampling.Sampler` or, in a
  one-process run, the trainer's `sharding.ShardedSampler`); the caller keeps its parameters
  current (`sampler.update`)."""

  def __init__(self, config: mlc.ConfigDict, data: Any, sampler: Any):
    self.config, self.data, self.sampler = config, data, sampler
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
  ) -> tuple[sampling.SampleOutput, list[str], float, envs.EpisodeStats]:
    """`n` episodes per problem (problem p's in rows [p n, (p + 1) n)); returns (SampleOutput
    [B, rl.cache_size], the final model turn of each row, seconds, EpisodeStats)."""
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
    e = self.config.env
    out, stats = envs.run_episodes(
      conv, rows, prompts, encode=tok.encode, decode=tok.decode, key=key,
      max_new_tokens=max_new_tokens, max_turns=e.max_turns,
      max_total_tokens=e.max_total_tokens or self.cache_size,
      stop_tokens=(tok.eos_id,), temperature=temperature,
      top_p=None if top_p >= 1.0 else top_p, top_k=top_k or None,
    )  # fmt: skip
    return out, stats.final_texts, time.perf_counter() - start, stats
