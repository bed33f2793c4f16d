"""`get_task(name, **kwargs)`: one entry point for configs and the trainer."""

from __future__ import annotations

from typing import Any

from postrain.tasks._gym import ReasoningGymTask
from postrain.tasks._jsonl import JsonlTask
from postrain.tasks._problem import Task

JSONL_TASKS = ("gsm8k", "gsm8k_jsonl", "jsonl")


def get_task(name: str, **kwargs: Any) -> Task:
  """Builds a task by name.

  Args:
    name: "gsm8k" / "gsm8k_jsonl" / "jsonl" for `JsonlTask(train=, test=, ...)`; any other name
      is a reasoning-gym dataset (`ReasoningGymTask(name, **kwargs)`), e.g. "chain_sum",
      "basic_arithmetic", "gsm_symbolic", "countdown".
    **kwargs: the task's options (difficulty knobs, file paths, heldout_fraction, ...).
  """
  if not isinstance(name, str):
    raise TypeError(f"`name` must be a str, got {type(name).__name__}.")
  if name in JSONL_TASKS:
    kwargs.setdefault("name", "gsm8k")
    return JsonlTask(**kwargs)
  return ReasoningGymTask(name, **kwargs)
