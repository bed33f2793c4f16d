"""Environments and tools for multi-turn, tool-using rollouts.

from postrain import envs
env = envs.make_env("calculator", format="compact", timeout_s=2.0)
messages = env.reset(problem)                   # system (tool descriptions) + user
observation, reward, done = env.step("call: calculator(12345 + 678)")   # "result: 13023\\n"
out, stats = envs.run_episodes(conversation, env_rows, prompts, encode=..., decode=..., key=...,
                               max_new_tokens=32, max_turns=4, max_total_tokens=128,
                               stop_tokens=(eos,))
"""

from postrain.envs._calculator import CalculatorError, calculator, evaluate, format_number
from postrain.envs._env_base import Env, ToolEnv, question_of
from postrain.envs._env_registry import ENVS, make_env, register_env, resolve
from postrain.envs._episodes import EpisodeStats, prompt_text, run_episodes
from postrain.envs._formats import (
  FORMATS,
  CompactFormat,
  Format,
  HermesFormat,
  ParsedCall,
  get_format,
)
from postrain.envs._tools import (
  ERROR_KINDS,
  TOOLS,
  Tool,
  ToolResult,
  ToolTimeout,
  get_tool,
  python,
  register_tool,
  run_tool,
)

__all__ = [
  "ENVS",
  "ERROR_KINDS",
  "FORMATS",
  "TOOLS",
  "CalculatorError",
  "CompactFormat",
  "Env",
  "EpisodeStats",
  "Format",
  "HermesFormat",
  "ParsedCall",
  "Tool",
  "ToolEnv",
  "ToolResult",
  "ToolTimeout",
  "calculator",
  "evaluate",
  "format_number",
  "get_format",
  "get_tool",
  "make_env",
  "prompt_text",
  "python",
  "question_of",
  "register_env",
  "register_tool",
  "resolve",
  "run_episodes",
  "run_tool",
]
