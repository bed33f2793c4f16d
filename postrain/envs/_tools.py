"""Tools: plain Python functions with a JSON-schema description of their arguments, and a registry.

    from postrain import envs

    def lookup(word: str) -> str:
      "Looks a word up."
      return DICTIONARY.get(word, "not found")

    envs.register_tool(envs.Tool("lookup", lookup, "Looks a word up in the dictionary.",
                                 {"type": "object", "properties": {"word": {"type": "string"}},
                                  "required": ["word"]}))
    # then --config.env.name=tools --config.env.tools=lookup,calculator

`run_tool` validates the arguments against the schema (`jsonschema`, Draft 2020-12), calls the
function under a wall-clock timeout and returns a `ToolResult`: the text the model sees and
whether it is an error. Nothing a tool does (an exception, bad arguments, a timeout) escapes.

Shipped tools: `calculator` (`_calculator.py`, safe `ast` arithmetic) and `python` (runs code in
the self-play sandbox of `postrain.tasks.selfplay`: a subprocess with CPU, memory and file-size
limits, no writes outside its temporary directory; the printed output is the result).
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema

from postrain._validation import import_attr
from postrain.envs._calculator import CALCULATOR_SCHEMA, calculator

MAX_RESULT_CHARS = 2000  # longer tool outputs are cut (with a note) before the model sees them


@dataclasses.dataclass(frozen=True)
class Tool:
  """A tool: `fn(**arguments) -> str` (any value is `str()`-ed), its description and argument
  schema (a JSON-schema object). `timed=False` skips the thread-based timeout (for tools that
  enforce their own, like `python`). `timeout_arg`: the keyword that receives the per-call
  timeout in seconds, if the tool wants it."""

  name: str
  fn: Callable[..., Any]
  description: str
  parameters: Mapping[str, Any]
  timed: bool = True
  timeout_arg: str | None = None

  def __post_init__(self):
    if not self.name or not self.name.replace("_", "").isalnum():
      raise ValueError(f"tool name must be a non-empty identifier, got {self.name!r}")
    if not callable(self.fn):
      raise TypeError(f"tool {self.name!r}: `fn` must be callable")
    jsonschema.Draft202012Validator.check_schema(dict(self.parameters))

  def spec(self) -> dict[str, Any]:
    """The OpenAI / Hermes function description: {"type": "function", "function": {...}}."""
    return {
      "type": "function",
      "function": {
        "name": self.name,
        "description": self.description,
        "parameters": dict(self.parameters),
      },
    }


@dataclasses.dataclass(frozen=True)
class ToolResult:
  """What one call gave: `text` for the model; `error` None or one of "malformed", "unknown_tool",
  "bad_arguments", "timeout", "tool_error"; `seconds` spent in the tool."""

  name: str
  text: str
  error: str | None = None
  seconds: float = 0.0


ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "timeout", "tool_error")

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="postrain-tool")


def run_tool(tool: Tool, arguments: Any, *, timeout_s: float) -> ToolResult:
  """Validates `arguments` against `tool.parameters` and calls the tool under `timeout_s`.

  A thread that runs past the timeout cannot be killed: it is abandoned (the call reports
  "timeout"); tools that may hang should enforce their own limit (`timed=False`), as `python` does.
  """
  start = time.perf_counter()
  try:
    jsonschema.validate(arguments, dict(tool.parameters))
  except jsonschema.ValidationError as err:
    where = "/".join(str(p) for p in err.absolute_path) or "arguments"
    return ToolResult(tool.name, f"invalid arguments ({where}): {err.message}", "bad_arguments")
  kwargs = dict(arguments)
  if tool.timeout_arg:
    kwargs[tool.timeout_arg] = timeout_s
  try:
    if tool.timed:
      future = _POOL.submit(tool.fn, **kwargs)
      try:
        value = future.result(timeout=timeout_s)
      except concurrent.futures.TimeoutError:
        future.cancel()
        return ToolResult(tool.name, f"timed out after {timeout_s:g}s", "timeout", timeout_s)
    else:
      value = tool.fn(**kwargs)
  except ToolTimeout as err:
    return ToolResult(tool.name, str(err), "timeout", time.perf_counter() - start)
  except Exception as err:  # a tool's failure is an observation, never a crash of the run
    text = str(err) or type(err).__name__
    return ToolResult(tool.name, text[:MAX_RESULT_CHARS], "tool_error", time.perf_counter() - start)
  text = str(value)
  if len(text) > MAX_RESULT_CHARS:
    text = text[:MAX_RESULT_CHARS] + f"... [{len(text) - MAX_RESULT_CHARS} more characters]"
  return ToolResult(tool.name, text, None, time.perf_counter() - start)


class ToolTimeout(RuntimeError):
  """Raised by a tool that enforces its own time limit (reported as a "timeout" error)."""


# -- the python tool ----------------------------------------------------------------------------

# Runs the model's code with print() captured; the sandbox's entry function returns the output.
_PYTHON_RUNNER = """
def f(src):
  import io, sys
  buf = io.StringIO()
  sys.stdout = buf
  try:
    exec(compile(src, "<tool>", "exec"), {"__name__": "__main__"})
  finally:
    sys.stdout = sys.__stdout__
  return buf.getvalue()
"""


def python(code: str, timeout_s: float = 5.0, memory_mb: int = 512) -> str:
  """Runs `code` in the self-play sandbox (`tasks.selfplay.run_program`: subprocess, CPU time and
  address-space limits, writes only inside its temporary directory) and returns what it printed.

  Raises `ToolTimeout` past `timeout_s` (wall and CPU), `RuntimeError` with the error for a
  crash, a memory error or a sandbox violation.
  """
  from postrain.tasks import selfplay  # the sandbox lives with the self-play task

  cfg = selfplay.SandboxConfig(
    timeout_s=float(timeout_s),
    cpu_s=max(1, int(timeout_s)),
    memory_mb=memory_mb,
    limits_in="bootstrap",  # the trainer is multithreaded (JAX): no Python in the forked child
  )
  result = selfplay.run_program(_PYTHON_RUNNER, repr(code), cfg)
  if result.status == "ok":
    out = ast.literal_eval(result.output)
    return out.rstrip("\n") if out.strip() else "(no output; print() the result)"
  if result.status == "timeout":
    raise ToolTimeout(f"timed out ({result.error})")
  kinds = {"memory": "out of memory", "sandbox_violation": "not allowed"}
  raise RuntimeError(f"{kinds.get(result.status, 'error')}: {result.error}".strip())


PYTHON_SCHEMA = {
  "type": "object",
  "properties": {
    "code": {"type": "string", "description": "Python code; print() what you want to see."}
  },
  "required": ["code"],
  "additionalProperties": False,
}

# -- the registry -------------------------------------------------------------------------------

TOOLS: dict[str, Tool] = {}


def register_tool(tool: Tool, *, overwrite: bool = False) -> Tool:
  """Adds `tool` to the registry under `tool.name` (ValueError if taken, unless `overwrite`)."""
  if tool.name in TOOLS and not overwrite:
    raise ValueError(f"a tool named {tool.name!r} is already registered")
  TOOLS[tool.name] = tool
  return tool


def get_tool(name: str) -> Tool:
  """A registered tool by name, or `"package.module:attr"` naming a `Tool` (ValueError if not)."""
  if name in TOOLS:
    return TOOLS[name]
  if ":" in name:
    obj = import_attr(name, "cannot import tool")
    if not isinstance(obj, Tool):
      raise ValueError(f"{name!r} is a {type(obj).__name__}, not an envs.Tool")
    return obj
  raise ValueError(f"unknown tool {name!r}; registered: {sorted(TOOLS)}")


register_tool(
  Tool(
    "calculator",
    calculator,
    "Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses.",
    CALCULATOR_SCHEMA,
  )
)
register_tool(
  Tool(
    "python",
    python,
    "Runs Python code in a sandbox and returns what it printed.",
    PYTHON_SCHEMA,
    timed=False,
    timeout_arg="timeout_s",
  )
)
