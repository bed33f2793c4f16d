"""Reference step-by-step solutions for SFT warm starts (and the steps SCRL chains are made of).

Each supported problem gets a list of `Step`s, one per solution line, and the solution text is
those lines plus a final answer line, e.g. for chain_sum "12 + 7 - 4":

  12 + 7 = 19
  19 - 4 = 15
  answer: 15

Sources: chain_sum / basic_arithmetic / countdown evaluate `metadata["expression"]` step by step
(`postrain.tasks._arith`); gsm_symbolic uses the generator's own `metadata["answer_cot"]`; GSM8K
JSONL problems use their solution text (calculator annotations `<<a*b=c>>` give the equations).
A solution is only returned when its steps reproduce the problem's answer.
"""

from __future__ import annotations

import dataclasses
import re

from postrain.tasks._arith import evaluate_steps, format_number, parse_number
from postrain.tasks._problem import Problem

ANSWER_FORMATS = ("answer", "boxed")

_EQUATION = re.compile(r"((?:[-(]\s*)*\d[0-9.\s+\-*/×÷()]*?)=\s*(-?\d[\d,]*(?:\.\d+)?)")
_CURRENCY = re.compile(r"[$€£]")
_TIMES = re.compile(r"(?<=\d)\s*[x×]\s*(?=[\d(])")
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_FINAL = re.compile(r"^\s*####\s*(.+?)\s*$", re.M)


@dataclasses.dataclass(frozen=True)
class Step:
  """One line of a reference solution.

  Attributes:
    text: the line as written in the solution.
    expression: a self-contained arithmetic sub-expression the line evaluates (e.g. "56 + -33"),
      or None for a line without a checked equation.
    value: canonical text of the expression's exact value (e.g. "23"), None with `expression`.
  """

  text: str
  expression: str | None = None
  value: str | None = None


def final_answer_line(answer: str, answer_format: str = "answer") -> str:
  """The closing line of a completion: "answer: X" or "\\boxed{X}"."""
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(
      f"`answer_format` must be one of {list(ANSWER_FORMATS)}, got {answer_format!r}."
    )
  return f"answer: {answer}" if answer_format == "answer" else f"\\boxed{{{answer}}}"


def _expression_steps(expression: str, answer: str, division: str) -> list[Step] | None:
  try:
    value, steps = evaluate_steps(expression, division=division)
  except ValueError:
    return None
  if value != parse_number(answer):
    return None
  return [Step(s.text, s.expression, format_number(s.value)) for s in steps]


def _checked_equation(lhs: str, rhs: str) -> tuple[str, str] | None:
  """(expression, value) if `lhs` is an arithmetic expression with >= 1 operation equal to rhs."""
  lhs = " ".join(lhs.split())
  while lhs.count("(") > lhs.count(")") and lhs.startswith("("):
    lhs = lhs[1:].lstrip()
  expected = parse_number(rhs)
  if not lhs or expected is None:
    return None
  try:
    value, steps = evaluate_steps(lhs)
  except ValueError:
    return None
  if not steps or value != expected:
    return None
  return lhs, format_number(value)


def _cot_steps(cot: str, answer: str) -> list[Step] | None:
  """Steps of a "... #### N" chain of thought (gsm_symbolic's answer_cot, GSM8K solutions)."""
  final = _FINAL.search(cot)
  if final is None or parse_number(final.group(1)) != parse_number(answer):
    return None
  steps = []
  for raw in cot[: final.start()].splitlines():
    if not raw.strip():
      continue
    calcs = _CALC.findall(raw)
    text = _CALC.sub("", raw).rstrip()
    plain = _TIMES.sub(" * ", _CURRENCY.sub("", text))
    pairs = calcs if calcs else _EQUATION.findall(plain)
    checked = [eq for eq in (_checked_equation(lhs, rhs) for lhs, rhs in pairs) if eq]
    expression, value = checked[-1] if checked else (None, None)
    steps.append(Step(text, expression, value))
  return steps or None


def reference_steps(problem: Problem) -> list[Step] | None:
  """The reference solution's steps for `problem`, or None if the task has no derivable solution.

  Supported: chain_sum, basic_arithmetic (floor division, as reasoning-gym evaluates `/`),
  countdown (true division; the final answer is the expression itself), gsm_symbolic (from
  `answer_cot`), and any problem whose metadata has a GSM8K-style "solution" ending in "#### N".
  """
  meta = problem.metadata
  if problem.task in ("chain_sum", "basic_arithmetic") and "expression" in meta:
    division = "floor" if problem.task == "basic_arithmetic" else "true"
    return _expression_steps(meta["expression"], problem.answer, division)
  if problem.task == "countdown" and "expression" in meta and "target" in meta:
    return _expression_steps(meta["expression"], str(meta["target"]), "true")
  if problem.task == "gsm_symbolic" and isinstance(meta.get("answer_cot"), str):
    return _cot_steps(meta["answer_cot"], problem.answer)
  if isinstance(meta.get("solution"), str):
    return _cot_steps(meta["solution"], problem.answer)
  return None


def reference_solution(problem: Problem, *, answer_format: str = "answer") -> str | None:
  """The full reference completion: the step lines, then the final answer line; or None.

  Args:
    problem: a generated problem.
    answer_format: "answer" ("answer: X" last line) or "boxed" ("\\boxed{X}" last line).
  """
  final_answer_line("", answer_format)  # validates answer_format
  steps = reference_steps(problem)
  if steps is None:
    return None
  lines = [s.text for s in steps] + [final_answer_line(problem.answer, answer_format)]
  return "\n".join(lines)
