"""Host-side pieces of the proposer/solver self-play loop (arXiv 2605.22217 §2.3–2.5).

Pure functions on Python/numpy values that a trainer calls once per step: the task pool with
admission (FIFO cap, de-duplication), solver rewards (grounded, or self-consistency vote share),
the proposer's difficulty reward 1 − α̂, and metrics that flag collapse (duplicate rate, trivial
outputs, low output diversity, the intrinsic–grounded gap).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from postrain import _validation as V
from postrain.tasks.selfplay._gate import GateVerdict

Answers = Sequence[Sequence[str | None]]  # [P][G] solver answers; None = unparsable


class Task(NamedTuple):
  """An admitted task: program text, input literals, label (executor output), kind."""

  program: str
  inputs: str
  output: str | None
  kind: str = "python"


def canonicalize(answer: str | None) -> str | None:
  """κ: the canonical form of an answer, or None if there is none.

  Python literals compare by value (`[1,2]` == `[1, 2]`, `'a'` == `"a"`); anything else by its
  whitespace-collapsed text.
  """
  if answer is None:
    return None
  s = answer.strip()
  if not s:
    return None
  try:
    return repr(ast.literal_eval(s))
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return re.sub(r"\s+", " ", s)


def _canon_grid(answers: Answers) -> list[list[str | None]]:
  rows = [[canonicalize(a) for a in row] for row in answers]
  if rows and len({len(r) for r in rows}) != 1:
    raise ValueError("`answers` rows must all have the same group size G.")
  return rows


def self_consistency_reward(answers: Answers) -> np.ndarray:
  """R_S^i(a_i) = (1/G) Σ_j 1[κ(a_j) = κ(a_i)], 0 for an unparsable a_i (the count includes
  a_i itself and the denominator is the full G). f32[P, G]."""
  rows = _canon_grid(answers)
  out = np.zeros((len(rows), len(rows[0]) if rows else 0), np.float32)
  for p, row in enumerate(rows):
    counts = Counter(a for a in row if a is not None)
    for i, a in enumerate(row):
      out[p, i] = counts[a] / len(row) if a is not None else 0.0
  return out


def grounded_reward(answers: Answers, labels: Sequence[str | None]) -> np.ndarray:
  """R_S^g(a_i) = 1[κ(a_i) = κ(o*)], f32[P, G]; a task without a label gives 0."""
  rows = _canon_grid(answers)
  if len(labels) != len(rows):
    raise ValueError(f"`labels` has {len(labels)} entries for {len(rows)} answer rows.")
  out = np.zeros((len(rows), len(rows[0]) if rows else 0), np.float32)
  for p, (row, label) in enumerate(zip(rows, labels)):
    gold = canonicalize(label)
    out[p] = [gold is not None and a == gold for a in row]
  return out


def majority_vote(row: Sequence[str | None]) -> tuple[str | None, float]:
  """The most frequent canonical answer (ties: first seen) and its share of the G answers."""
  canon = [canonicalize(a) for a in row]
  counts = Counter(a for a in canon if a is not None)
  if not counts:
    return None, 0.0
  best = max(counts.values())
  answer = next(a for a in canon if a is not None and counts[a] == best)
  return answer, best / len(canon)


def solver_accuracy(answers: Answers, labels: Sequence[str | None]) -> np.ndarray:
  """α̂ per task: the share of its solver samples matching the label, f32[P]."""
  return grounded_reward(answers, labels).mean(axis=1) if len(labels) else np.zeros(0, np.float32)


def proposer_reward(
  accuracy: Any,
  well_formed: Any | None = None,
  *,
  mode: str = "hard",
  target: float = 0.5,
  width: float = 0.5,
  coef: float = 1.0,
  cap: float = 1.0,
) -> np.ndarray:
  """Difficulty reward of the proposer, R_P = min(coef · d(α̂), cap), 0 if malformed. f32[N].

  mode "hard": d = 1 − clip(α̂, 0, 1) (the paper's R_P = 1 − α̂); "medium": d = max(0,
  1 − |α̂ − target| / width) (peaks at the target accuracy).
  """
  V.check_choice("mode", mode, ("hard", "medium"))
  acc = np.clip(np.asarray(accuracy, np.float64), 0.0, 1.0)
  if mode == "hard":
    d = 1.0 - acc
  else:
    V.check_positive("width", width)
    d = np.maximum(0.0, 1.0 - np.abs(acc - target) / width)
  r = np.minimum(coef * d, cap)
  if well_formed is not None:
    ok = np.asarray(well_formed, bool)
    V.check_shape("well_formed", ok, acc.shape, like="accuracy")
    r = np.where(ok, r, 0.0)
  return r.astype(np.float32)


def _key(program: str, inputs: str) -> tuple[str, str]:
  return re.sub(r"\s+", " ", program).strip(), re.sub(r"\s+", "", inputs)


@dataclasses.dataclass(frozen=True)
class TaskPool:
  """Admitted tasks, oldest first, at most `max_size` (FIFO eviction; paper: 16384)."""

  tasks: tuple[Task, ...] = ()
  max_size: int = 16384

  def __len__(self) -> int:
    return len(self.tasks)


def admit(
  pool: TaskPool,
  programs: Sequence[str],
  inputs: Sequence[str],
  verdicts: Sequence[GateVerdict],
  *,
  kind: str = "python",
  dedupe: bool = True,
) -> tuple[TaskPool, dict[str, float]]:
  """Adds the gate-admitted proposals to the pool; returns the new pool and admission stats.

  A proposal whose (whitespace-normalised program, input) is already in the pool or earlier in
  the batch is a duplicate: counted, and not added again when `dedupe`.
  Stats: "proposed", "admitted", "admitted_fraction", "duplicates", "duplicate_rate",
  "leaked" (admitted only through ε) and "reject/<reason>" counts.
  """
  if not len(programs) == len(inputs) == len(verdicts):
    raise ValueError("`programs`, `inputs` and `verdicts` must have the same length.")
  seen = {_key(t.program, t.inputs) for t in pool.tasks}
  new, stats = [], Counter()
  for program, inp, verdict in zip(programs, inputs, verdicts):
    key = _key(program, inp)
    dup = key in seen
    stats["duplicates"] += dup
    seen.add(key)
    if not verdict.admitted:
      stats[f"reject/{verdict.reason}"] += 1
      continue
    stats["leaked"] += verdict.leaked
    if dup and dedupe:
      continue
    stats["admitted"] += 1
    new.append(Task(program, inp, verdict.output, kind))
  tasks = (pool.tasks + tuple(new))[-pool.max_size :] if pool.max_size > 0 else ()
  n = max(len(programs), 1)
  out = {"proposed": float(len(programs)), "admitted": float(stats["admitted"])}
  out["admitted_fraction"] = stats["admitted"] / n
  out["duplicates"] = float(stats["duplicates"])
  out["duplicate_rate"] = stats["duplicates"] / n
  out["leaked"] = float(stats["leaked"])
  out.update({k: float(v) for k, v in stats.items() if k.startswith("reject/")})
  return dataclasses.replace(pool, tasks=tasks), out


_TRIVIAL = {"None", "0", "1", "-1", "True", "False", "''", "[]", "()", "{}", "set()", "[ ]"}


def is_trivial_output(output: str | None, inputs: str | None = None) -> bool:
  """Outputs that carry no computation: None/empty/0/±1/booleans/empty containers, a DSL empty
  list, or the input returned unchanged."""
  if output is None:
    return True
  canon = canonicalize(output)
  if canon is None or canon in _TRIVIAL:
    return True
  return inputs is not None and canon == canonicalize(inputs)


def selfplay_metrics(
  pool: TaskPool,
  *,
  solver_answers: Answers | None = None,
  labels: Sequence[str | None] | None = None,
) -> dict[str, float]:
  """Pool and solver diagnostics; the collapse indicators of the paper's analysis.

  Pool: "pool/size", "pool/unique_output_rate" (distinct outputs / size; low = collapse to a
  few answers), "pool/trivial_output_rate" (`is_trivial_output`), "pool/duplicate_rate" (same
  normalised program and input more than once), "pool/mean_program_chars".
  Solver (with `solver_answers`): "solver/vote_share" (mean self-consistency reward),
  "solver/valid_answer_ratio", "solver/unique_answers", "solver/majority_share"; with `labels`
  as well: "solver/grounded_accuracy" and "solver/gap" = mean(vote share − grounded), its
  absolute value "solver/abs_gap" (gap → 1: a self-consistent but wrong attractor).
  Merge with the stats of `admit` for the admitted fraction.
  """
  tasks = pool.tasks
  n = max(len(tasks), 1)
  keys = [_key(t.program, t.inputs) for t in tasks]
  out = {
    "pool/size": float(len(tasks)),
    "pool/unique_output_rate": len({canonicalize(t.output) for t in tasks}) / n if tasks else 0.0,
    "pool/trivial_output_rate": sum(is_trivial_output(t.output, t.inputs) for t in tasks) / n,
    "pool/duplicate_rate": (len(keys) - len(set(keys))) / n,
    "pool/mean_program_chars": float(np.mean([len(t.program) for t in tasks])) if tasks else 0.0,
  }
  if solver_answers is not None and len(solver_answers):
    vote = self_consistency_reward(solver_answers)
    rows = _canon_grid(solver_answers)
    out["solver/vote_share"] = float(vote.mean())
    out["solver/valid_answer_ratio"] = float(np.mean([[a is not None for a in r] for r in rows]))
    out["solver/unique_answers"] = float(
      np.mean([len({a for a in r if a is not None}) for r in rows])
    )
    out["solver/majority_share"] = float(np.mean([majority_vote(r)[1] for r in solver_answers]))
    if labels is not None:
      grounded = grounded_reward(solver_answers, labels)
      out["solver/grounded_accuracy"] = float(grounded.mean())
      out["solver/gap"] = float((vote - grounded).mean())
      out["solver/abs_gap"] = float(np.abs(vote - grounded).mean())
  return out
