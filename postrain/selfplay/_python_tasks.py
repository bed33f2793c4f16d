"""Text formats and seed tasks of Python output-prediction self-play (arXiv 2605.22217, the
paper's coding setting, AZR's `pred_code_o`).

A task is a short Python function `f` of one argument and an input literal; the label is
`repr(f(input))` as returned by the sandboxed execution gate (`selfplay.execution_gate`), never
by running anything in this process.

Proposer turn (K reference tasks from the pool, then a new one):
  "Propose a new program and input.\\nprogram: def f(x): return sorted(x)[::2]\\ninput: [3, 1, 2]
  \\n...program:" -> " def f(x): return x[::-1].upper()\\ninput: 'abc'"
Solver turn:
  "program: def f(x): return x[::-1].upper()\\ninput: 'abc'\\noutput:" -> " 'CBA'"

Seed programs are one-liners from a template generator (lists, ints and strings); a proposal may
also span several lines (an indented body), as long as its last line is "input: <literals>".
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

import numpy as np

from postrain.selfplay._dsl_tasks import (  # noqa: F401  the DSL's prompt and target formats
  PROPOSER_HEAD,
  proposer_prompt,
  proposer_target,
  solver_prompt,
  solver_target,
)
from postrain.tasks import selfplay

# Program: the first line (non-empty) up to the last "\ninput:" line; input: one non-empty line.
_PROPOSAL_RE = re.compile(r"^[ \t]*(\S[^\n]*(?:\n[^\n]*)*?)\ninput:[ \t]*(\S[^\n]*?)[ \t]*$")

# `{e}` is the argument expression; other fields are random small constants.
_LIST_MAPS = (
  "sorted({e})",
  "{e}[::-1]",
  "[v * {a} for v in {e}]",
  "[v + {a} for v in {e}]",
  "[v for v in {e} if v % 2 == {r}]",
  "[v % {m} for v in {e}]",
  "{e}[{k}:]",
  "{e}[:{k}]",
  "{e}[::2]",
)
_LIST_REDUCE = (
  "sum({e})",
  "len({e})",
  "max({e}, default={a})",
  "min({e}, default={a})",
  "{e}.count({d})",
)
_INT_FNS = (
  "x * {a} + {b}",
  "x // {m} + x % {b}",
  "sum(range(x))",
  "[i * {a} for i in range(x % 6)]",
  "x * x - {a}",
  "abs(x - {b})",
  "str(x) * {k}",
  "x % {m} == {r}",
)
_STR_MAPS = (
  "{e}[::-1]",
  "{e}.upper()",
  "''.join(sorted({e}))",
  "{e}.replace('{c}', '{c2}')",
  "{e}[{k}:] + {e}[:{k}]",
  "{e} + '{c}'",
)
_STR_REDUCE = (
  "len(set({e}))",
  "{e}.count('{c}')",
  "{e}.find('{c}')",
  "[ord(ch) - 97 for ch in {e}]",
)
_LETTERS = "abcde"


def _fill(rng: np.random.Generator, template: str, e: str) -> str:
  letters = rng.choice(list(_LETTERS), size=2, replace=False)
  return template.format(
    e=e,
    a=int(rng.integers(1, 10)),
    b=int(rng.integers(0, 10)),
    m=int(rng.integers(2, 5)),
    r=int(rng.integers(0, 2)),
    k=int(rng.integers(1, 4)),
    d=int(rng.integers(0, 10)),
    c=letters[0],
    c2=letters[1],
  )


def _atom(e: str) -> str:
  return f"({e})" if " + " in e else e  # so that a postfix [..] / .method applies to all of e


def random_program(rng: np.random.Generator, depth: int = 2) -> tuple[str, str]:
  """A random one-line function `f(x)` and an input literal for it: (program, input).

  x is a list of ints (up to `depth` maps, then maybe a reduction), an int, or a string of the
  letters a-e (up to `depth` maps, then maybe a reduction). The program may still fail the gate
  (e.g. when its text contains its output); `seed_tasks` keeps only admitted ones.
  """
  kind = rng.choice(["list", "int", "str"], p=[0.5, 0.2, 0.3])
  if kind == "int":
    return f"def f(x): return {_fill(rng, str(rng.choice(_INT_FNS)), 'x')}", str(
      int(rng.integers(0, 21))
    )
  maps, reduce = (_LIST_MAPS, _LIST_REDUCE) if kind == "list" else (_STR_MAPS, _STR_REDUCE)
  e = "x"
  for _ in range(int(rng.integers(1, max(depth, 1) + 1))):
    e = _fill(rng, str(rng.choice(maps)), _atom(e))
  if rng.random() < 0.5:
    e = _fill(rng, str(rng.choice(reduce)), _atom(e))
  size = int(rng.integers(2, 7))
  if kind == "list":
    inputs = repr([int(v) for v in rng.integers(0, 10, size=size)])
  else:
    inputs = repr("".join(rng.choice(list(_LETTERS), size=size)))
  return f"def f(x): return {e}", inputs


def sandbox_config(
  *, timeout_s: float = 5.0, cpu_s: int = 2, memory_mb: int = 512
) -> selfplay.SandboxConfig:
  """Sandbox limits for the loop: limits set by the child itself ("bootstrap"), since the
  parent runs JAX threads (fork + Python code in the child can deadlock there)."""
  return selfplay.SandboxConfig(
    timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb, limits_in="bootstrap"
  )


def gate_batch(
  programs: Sequence[str],
  inputs: Sequence[str],
  *,
  config: selfplay.SandboxConfig | None = None,
  check_determinism: bool = True,
  reject_output_leak: bool = True,
  workers: int = 4,
) -> list[selfplay.GateVerdict]:
  """The strict execution gate (ε = 0) over a batch: each task runs in fresh sandboxed
  subprocesses (twice with the determinism check), `workers` at a time."""
  if not programs:
    return []
  return selfplay.execution_gate_batch(
    list(programs),
    list(inputs),
    max_workers=workers,
    config=config or sandbox_config(),
    check_determinism=check_determinism,
    n_runs=2 if check_determinism else 1,
    reject_output_leak=reject_output_leak,
  )


def seed_tasks(
  n: int,
  seed: int,
  depth: int = 2,
  *,
  config: selfplay.SandboxConfig | None = None,
  check_determinism: bool = True,
  workers: int = 4,
) -> list[selfplay.Task]:
  """`n` distinct gate-admitted tasks from `random_program`, labelled by the sandboxed executor.

  Candidates come from one rng stream and are gated in batches; the admitted ones are kept in
  stream order, so `seed_tasks(k, s)` is a prefix of `seed_tasks(n, s)` for k < n.
  """
  rng = np.random.default_rng(seed)
  out, seen = [], set()
  while len(out) < n:
    cand = []
    while len(cand) < (n - len(out)) * 5 // 4 + 4:
      pair = random_program(rng, depth)
      if pair not in seen:
        seen.add(pair)
        cand.append(pair)
    verdicts = gate_batch(
      [p for p, _ in cand],
      [i for _, i in cand],
      config=config,
      check_determinism=check_determinism,
      workers=workers,
    )
    for (program, inputs), v in zip(cand, verdicts):
      if v.admitted and len(out) < n:
        out.append(selfplay.Task(program, inputs, v.output, "python"))
  return out


def parse_proposal(text: str) -> tuple[str, str] | None:
  """(program, input) of a proposer completion, or None when it is not in the format: a
  non-empty program (one or more lines), then a last line "input: <literals>"."""
  m = _PROPOSAL_RE.match(text.strip("\n") if text else "")
  return (m.group(1).rstrip(), m.group(2).strip()) if m else None


def canonical_answer(text: str | None) -> str | None:
  """κ for Python answers: `repr(literal_eval(first line))` ("[1,2]" -> "[1, 2]", '"a"' ->
  "'a'"), None when the first line is not a Python literal."""
  if not text or not text.strip():
    return None
  first = text.strip().splitlines()[0].strip()
  try:
    return repr(ast.literal_eval(first))
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return None
