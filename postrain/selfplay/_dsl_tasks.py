"""Text formats and seed tasks of DSL self-play (arXiv 2605.22217's deterministic DSL twin).

Proposer turn (K reference tasks from the pool, then a new one):
  "Propose a new program and input.\\nprogram: (sum x)\\ninput: [3 1 2]\\n...program:"
  -> " (add (len x) 3)\\ninput: [4 5]"
Solver turn:
  "program: (add (len x) 3)\\ninput: [4 5]\\noutput:" -> " 5"
"""

from __future__ import annotations

import re

import numpy as np

from postrain.tasks import selfplay

PROPOSER_HEAD = "Propose a new program and input.\n"
_PROGRAM_RE = re.compile(r"^\s*(\([^\n]*\)|x)\s*\ninput:\s*([^\n]+?)\s*$", re.S)

_INT_OPS2 = ("add", "sub", "mul", "max", "min", "mod", "div")
_LIST_OPS1 = ("rev", "sort")


def random_list(rng: np.random.Generator) -> str:
  return selfplay.format_value([int(v) for v in rng.integers(0, 10, size=rng.integers(2, 6))])


def _int_expr(rng: np.random.Generator, depth: int) -> str:
  r = rng.random()
  if depth <= 0 or r < 0.25:
    return (
      str(int(rng.integers(1, 10))) if rng.random() < 0.5 else f"({rng.choice(['len', 'sum'])} x)"
    )
  if r < 0.55:
    return f"({rng.choice(['len', 'sum'])} {_list_expr(rng, depth - 1)})"
  op = rng.choice(_INT_OPS2)
  return f"({op} {_int_expr(rng, depth - 1)} {_int_expr(rng, depth - 1)})"


def _list_expr(rng: np.random.Generator, depth: int) -> str:
  r = rng.random()
  if depth <= 0 or r < 0.35:
    return "x"
  if r < 0.65:
    return f"({rng.choice(_LIST_OPS1)} {_list_expr(rng, depth - 1)})"
  if r < 0.9:
    return (
      f"({rng.choice(['take', 'drop'])} {int(rng.integers(1, 4))} {_list_expr(rng, depth - 1)})"
    )
  return f"(cat {_list_expr(rng, depth - 1)} {_list_expr(rng, depth - 1)})"


def random_program(rng: np.random.Generator, depth: int = 2) -> str:
  """A random well-typed DSL program over a list input `x` (int- or list-valued)."""
  return _int_expr(rng, depth) if rng.random() < 0.6 else _list_expr(rng, depth)


def seed_tasks(n: int, seed: int, depth: int = 2) -> list[selfplay.Task]:
  """`n` distinct gate-admitted tasks (program, input, executor output) from `random_program`."""
  rng = np.random.default_rng(seed)
  out, seen = [], set()
  while len(out) < n:
    program, inputs = random_program(rng, depth), random_list(rng)
    verdict = selfplay.dsl_gate(program, inputs)
    if program != "x" and verdict.admitted and (program, inputs) not in seen:
      seen.add((program, inputs))
      out.append(selfplay.Task(program, inputs, verdict.output, "dsl"))
  return out


def proposer_prompt(refs: list[selfplay.Task]) -> str:
  body = "".join(f"program: {t.program}\ninput: {t.inputs}\n" for t in refs)
  return f"{PROPOSER_HEAD}{body}program:"


def proposer_target(task: selfplay.Task) -> str:
  return f" {task.program}\ninput: {task.inputs}"


def solver_prompt(task: selfplay.Task) -> str:
  return f"program: {task.program}\ninput: {task.inputs}\noutput:"


def solver_target(task: selfplay.Task) -> str:
  return f" {task.output}"


def parse_proposal(text: str) -> tuple[str, str] | None:
  """(program, input) of a proposer completion, or None when it is not in the format."""
  m = _PROGRAM_RE.match(text.strip("\n") if text else "")
  return (m.group(1).strip(), m.group(2).strip()) if m else None


def canonical_answer(text: str | None) -> str | None:
  """κ for DSL answers: the canonical literal ("[1 2 3]", "5"), None when it is not one."""
  if not text or not text.strip():
    return None
  first = text.strip().splitlines()[0].strip()
  try:
    return selfplay.format_value(selfplay.parse_value(first))
  except selfplay.DslError:
    return None
