"""The environment interface and the tool environment.

An environment runs one episode at a time:

    messages = env.reset(problem)              # [{"role": "system" | "user", "content": ...}]
    observation, reward, done = env.step(model_text)   # after each model turn

`observation` is the text appended to the context before the model's next turn (for a chat format
it includes the next assistant header), or None when the episode ends; `reward` is a per-turn
shaping term (the trainer adds `config.env.shaping_coef` times their sum to the verifier's reward
of the final answer); `done` ends the episode.

`ToolEnv` is the environment of tool calls: each model turn is parsed with its `Format`; a turn
without a call is the final answer (done); each call runs its tool and the results are the
observation. A malformed call, an unknown tool, bad arguments or a tool timeout are error results
the model sees, counted in `episode_stats()`; nothing a model writes can crash the run.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from postrain.envs._formats import MAX_CALLS_PER_TURN, Format, ParsedCall, get_format
from postrain.envs._tools import Tool, ToolResult, get_tool, run_tool


class Env:
  """The interface: subclass and implement `reset` and `step` (see the module docstring).

  `episode_stats()` may return counts of the current episode for the trainer's metrics:
  "tool_calls", "tool_errors" (ints), "tool_seconds" (float), "calls_per_tool" ({name: int}),
  "errors_per_kind" ({kind: int}), "tool_results" (the texts of the successful calls, in order).
  """

  def reset(self, problem: Any) -> list[dict[str, str]]:
    raise NotImplementedError

  def step(self, model_text: str) -> tuple[str | None, float, bool]:
    raise NotImplementedError

  def episode_stats(self) -> dict[str, Any]:
    return {}

  def corpus(self) -> list[str]:
    """Texts the environment writes (system prompt, observations), added to the corpus a
    from-scratch tokenizer is trained on so that they encode without unknown pieces."""
    return []

  def demonstration(self, problem: Any) -> list[dict[str, Any]] | None:
    """An SFT demonstration of an episode on `problem` after `reset`: the assistant and tool
    messages that follow the prompt (`Format.render_turns` renders them), or None."""
    del problem
    return None


def question_of(problem: Any) -> str:
  """The question text of a `tasks.Problem` (its `question`) or a string."""
  question = getattr(problem, "question", problem)
  if not isinstance(question, str):
    raise TypeError(f"`problem` must be a Problem or str, got {type(problem).__name__}")
  return question


class ToolEnv(Env):
  """Tool calls in a chosen format.

  Args:
    tools: `Tool`s or registered tool names.
    format: "hermes", "compact" or a `Format`.
    timeout_s: per-call timeout (`tool_timeout_s`).
    system: an optional system text before the tool descriptions.
    success_reward / error_reward: per-turn shaping, paid for each successful / failed call.
  """

  def __init__(
    self,
    tools: Sequence[Tool | str],
    *,
    format: str | Format = "hermes",
    timeout_s: float = 5.0,
    system: str | None = None,
    success_reward: float = 0.0,
    error_reward: float = 0.0,
  ):
    self.tools = {t.name: t for t in (get_tool(t) if isinstance(t, str) else t for t in tools)}
    if not self.tools:
      raise ValueError("ToolEnv needs at least one tool")
    if timeout_s <= 0:
      raise ValueError(f"`timeout_s` must be > 0, got {timeout_s}")
    self.format = get_format(format)
    self.timeout_s = float(timeout_s)
    self.system = system
    self.success_reward, self.error_reward = float(success_reward), float(error_reward)
    self.messages: list[dict[str, str]] = []
    self._stats = self._empty_stats()

  @staticmethod
  def _empty_stats() -> dict[str, Any]:
    return {
      "tool_calls": 0,
      "tool_errors": 0,
      "tool_seconds": 0.0,
      "calls_per_tool": collections.Counter(),
      "errors_per_kind": collections.Counter(),
    }

  def reset(self, problem: Any) -> list[dict[str, str]]:
    self._stats = self._empty_stats()
    system = self.format.system_prompt(list(self.tools.values()), self.system)
    self.messages = [
      {"role": "system", "content": system},
      {"role": "user", "content": question_of(problem)},
    ]
    return list(self.messages)

  def step(self, model_text: str) -> tuple[str | None, float, bool]:
    self.messages.append({"role": "assistant", "content": model_text})
    calls = self.format.parse(model_text)
    if not calls:
      return None, 0.0, True
    results = [self.call(c) for c in calls[:MAX_CALLS_PER_TURN]]
    results += [
      ToolResult(c.name, f"too many calls in one turn (at most {MAX_CALLS_PER_TURN})", "malformed")
      for c in calls[MAX_CALLS_PER_TURN:]
    ]
    reward = 0.0
    for r in results:
      st = self._stats
      st["tool_calls"] += 1
      st["tool_seconds"] += r.seconds
      st["calls_per_tool"][r.name if r.name in self.tools else "<unknown>"] += 1
      if r.error:
        st["tool_errors"] += 1
        st["errors_per_kind"][r.error] += 1
      reward += self.error_reward if r.error else self.success_reward
      self.messages.append({"role": "tool", "name": r.name, "content": r.text, "error": r.error})
    return self.format.observation(results), reward, False

  def call(self, call: ParsedCall) -> ToolResult:
    """The result of one parsed call (errors as results, never raised)."""
    if call.error:
      return ToolResult(call.name, call.error, "malformed")
    tool = self.tools.get(call.name)
    if tool is None:
      known = ", ".join(self.tools)
      return ToolResult(call.name, f"unknown tool {call.name!r} (tools: {known})", "unknown_tool")
    args = call.arguments
    if isinstance(args, str):  # a compact call's raw input: the tool's one required parameter
      required = list(tool.parameters.get("required", ()))
      if len(required) != 1:
        return ToolResult(
          tool.name, f"{tool.name} takes JSON arguments {sorted(required)}", "bad_arguments"
        )
      args = {required[0]: args}
    return run_tool(tool, args, timeout_s=self.timeout_s)

  def demonstration(self, problem: Any) -> list[dict[str, Any]] | None:
    """With a `calculator` tool and a problem whose metadata holds its `expression` (reasoning-gym
    chain_sum / basic_arithmetic): one call on the expression, its real result, then the answer
    line `answer: <result>`. None otherwise."""
    meta = getattr(problem, "metadata", None) or {}
    expression = meta.get("expression")
    if "calculator" not in self.tools or not isinstance(expression, str):
      return None
    expression = expression.strip().rstrip("=").strip()
    result = run_tool(
      self.tools["calculator"], {"expression": expression}, timeout_s=self.timeout_s
    )
    if result.error:
      return None
    return [
      {"role": "assistant", "content": self.format.render_call("calculator", {"expression": expression})},
      {"role": "tool", "name": "calculator", "content": result.text, "error": None},
      {"role": "assistant", "content": f"answer: {result.text}"},
    ]  # fmt: skip

  def episode_stats(self) -> dict[str, Any]:
    st = dict(self._stats)
    st["calls_per_tool"] = dict(st["calls_per_tool"])
    st["errors_per_kind"] = dict(st["errors_per_kind"])
    st["tool_results"] = [
      m["content"] for m in self.messages if m["role"] == "tool" and not m.get("error")
    ]
    return st

  def corpus(self) -> list[str]:
    fmt, tools = self.format, list(self.tools.values())
    examples = [fmt.render_call(t.name, {"x": "0"}) for t in tools]
    results = [ToolResult("", "12.5"), ToolResult("", "division by zero", "tool_error")]
    return [fmt.system_prompt(tools, self.system), *examples, fmt.observation(results)]
