"""Tool-call formats: how the model writes a call, and how results come back as context.

Two formats:

  "hermes"   Qwen3 / Hermes (Qwen3's chat template with tools). The system message lists the
             tools as JSON in `<tools></tools>`; the model writes
             `<tool_call>\\n{"name": "calculator", "arguments": {"expression": "2+3"}}\\n</tool_call>`
             and ends its turn (`<|im_end|>`); the results come back as `tool` messages, which
             the template renders inside one user turn as `<tool_response>\\n...\\n</tool_response>`,
             followed by the next assistant header.
  "compact"  for the tiny from-scratch models (few tokens, no special tokens): the model writes a
             line `call: calculator(2 + 3)` (or `call: NAME({"arg": ...})` with JSON arguments) and
             ends its turn; the result comes back as the line `result: 5` (`error: ...` for an
             error), and the model continues.

A format parses a turn's text into `ParsedCall`s (none: the turn is a final answer), renders the
observation text of the results (what the driver tokenizes and appends to the context), renders a
call (demonstrations), and renders a whole conversation from messages (`render_turns`), so
`prompt + turn_1 + observation_1 + ... == render_turns(messages)` holds for every episode.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from postrain.envs._tools import Tool, ToolResult

MAX_CALLS_PER_TURN = 8  # calls past this in one turn are answered with an error


@dataclasses.dataclass(frozen=True)
class ParsedCall:
  """A call found in a turn: `name` and `arguments` (a dict, or the raw text of a compact call);
  `error` is the reason when the call could not be parsed (then `name` may be "")."""

  name: str
  arguments: Any = None
  error: str | None = None


class Format:
  """The interface of a tool-call format (see the module docstring)."""

  name: str = ""
  # The text the stop token decodes to at the end of a model turn ("" for a plain eos).
  end_of_turn: str = ""

  def system_prompt(self, tools: Sequence[Tool], system: str | None = None) -> str:
    raise NotImplementedError

  def parse(self, text: str) -> list[ParsedCall]:
    raise NotImplementedError

  def observation(self, results: Sequence[ToolResult]) -> str:
    raise NotImplementedError

  def render_call(self, name: str, arguments: dict[str, Any]) -> str:
    raise NotImplementedError

  def render_turns(self, messages: Sequence[dict[str, str]]) -> str:
    """The text after the prompt of `messages` (assistant and tool messages, in order): each
    assistant content ends with `end_of_turn`; each run of tool messages renders as the
    observation of their results."""
    out, pending = [], []
    for m in messages:
      if m["role"] == "tool":
        pending.append(ToolResult(m.get("name", ""), m["content"], m.get("error")))
        continue
      if pending:
        out.append(self.observation(pending))
        pending = []
      if m["role"] != "assistant":
        raise ValueError(f"render_turns: only assistant and tool messages, got {m['role']!r}")
      out.append(m["content"] + self.end_of_turn)
    if pending:
      out.append(self.observation(pending))
    return "".join(out)


class HermesFormat(Format):
  """Qwen3 / Hermes tool calls (`<tool_call>` JSON, `<tool_response>` results in a user turn)."""

  name = "hermes"
  end_of_turn = "<|im_end|>"
  _CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

  def system_prompt(self, tools: Sequence[Tool], system: str | None = None) -> str:
    head = f"{system}\n\n" if system else ""
    specs = "".join("\n" + json.dumps(t.spec(), ensure_ascii=False) for t in tools)
    return (
      f"{head}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n"
      f"<tools>{specs}\n</tools>\n\n"
      "For each function call, return a json object with function name and arguments within "
      "<tool_call></tool_call> XML tags:\n<tool_call>\n"
      '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )

  def parse(self, text: str) -> list[ParsedCall]:
    calls = []
    for body in self._CALL.findall(text):
      calls.append(_parse_json_call(body.strip()))
    closed = self._CALL.sub("", text)
    if "<tool_call>" in closed:  # an opened call that never closes
      calls.append(ParsedCall("", None, "unclosed <tool_call> (expected </tool_call>)"))
    return calls

  def observation(self, results: Sequence[ToolResult]) -> str:
    body = "".join(f"\n<tool_response>\n{r.text}\n</tool_response>" for r in results)
    return f"\n<|im_start|>user{body}<|im_end|>\n<|im_start|>assistant\n"

  def render_call(self, name: str, arguments: dict[str, Any]) -> str:
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def _parse_json_call(body: str) -> ParsedCall:
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as err:
    return ParsedCall("", None, f"malformed JSON in the tool call: {err.msg}")
  if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
    return ParsedCall("", None, 'a tool call must be {"name": ..., "arguments": {...}}')
  args = obj.get("arguments", {})
  if isinstance(args, str):  # some models write the arguments as a JSON string
    try:
      args = json.loads(args)
    except json.JSONDecodeError as err:
      return ParsedCall(obj["name"], None, f"malformed JSON in the arguments: {err.msg}")
  return ParsedCall(obj["name"], args)


class CompactFormat(Format):
  """`call: NAME(INPUT)` lines; results as `result: ...` / `error: ...` lines."""

  name = "compact"
  end_of_turn = ""
  _LINE = re.compile(r"^\s*call:(.*)$", re.MULTILINE)
  _CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)

  def system_prompt(self, tools: Sequence[Tool], system: str | None = None) -> str:
    names = ", ".join(t.name for t in tools)
    head = f"{system}\n" if system else ""
    return f"{head}tools: {names}. write call: NAME(INPUT) to use one."

  def parse(self, text: str) -> list[ParsedCall]:
    calls = []
    for rest in self._LINE.findall(text):
      m = self._CALL.match(rest)
      if m is None:
        calls.append(ParsedCall("", None, "malformed call (expected call: NAME(INPUT))"))
        continue
      name, inner = m.group(1), m.group(2).strip()
      if inner.startswith("{"):
        try:
          args = json.loads(inner)
        except json.JSONDecodeError as err:
          calls.append(ParsedCall(name, None, f"malformed JSON in the arguments: {err.msg}"))
          continue
        calls.append(ParsedCall(name, args))
      else:
        calls.append(ParsedCall(name, inner))  # raw text: bound to the tool's one parameter
    return calls

  def observation(self, results: Sequence[ToolResult]) -> str:
    return "".join(
      f"{'error' if r.error else 'result'}: {' '.join(r.text.split())}\n" for r in results
    )

  def render_call(self, name: str, arguments: dict[str, Any]) -> str:
    if len(arguments) == 1 and isinstance(next(iter(arguments.values())), str):
      return f"call: {name}({next(iter(arguments.values()))})"
    return f"call: {name}({json.dumps(arguments, ensure_ascii=False)})"


FORMATS: dict[str, Format] = {"hermes": HermesFormat(), "compact": CompactFormat()}


def get_format(name: str | Format) -> Format:
  """A format by name ("hermes", "compact") or a `Format` instance."""
  if isinstance(name, Format):
    return name
  if name not in FORMATS:
    raise ValueError(f"unknown tool-call format {name!r}; one of {sorted(FORMATS)}")
  return FORMATS[name]
