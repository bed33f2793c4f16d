"""User problems from JSONL files in GSM8K format, scored numerically.

Each line is `{"question": str, "answer": str}` where the answer ends with `#### <number>`
(GSM8K: the reasoning, with calculator annotations `<<a*b=c>>`, then `#### 72`). The number
becomes `Problem.answer`; the reasoning is kept in `metadata["solution"]` (so
`reference_solution` works for SFT).
"""

from __future__ import annotations

import json
import os
import random
import re
from typing import Any

from postrain.tasks._arith import parse_number
from postrain.tasks._problem import (
  Problem,
  Task,
  check_count,
  check_split,
  json_normalize,
  problem_id,
  split_of,
)

_FINAL = re.compile(r"####\s*([^\n]+?)\s*$")


def numeric_score(completion_answer: str | None, answer: str) -> float:
  """1.0 iff both parse to the same exact number ("1,000" == "1000.0" == "$1000"), else 0.0."""
  if completion_answer is None:
    return 0.0
  got = parse_number(completion_answer.strip().strip("$%").strip())
  expected = parse_number(answer)
  return 1.0 if got is not None and expected is not None and got == expected else 0.0


def load_gsm8k_jsonl(path: str | os.PathLike, *, task: str = "gsm8k") -> list[Problem]:
  """Reads a GSM8K-format JSONL file into Problems.

  Raises:
    FileNotFoundError: the file does not exist (names the path).
    ValueError: a line is not a JSON object with string "question" and "answer", an answer has
      no numeric `#### <number>`, or the file holds no problem; the message names `path:line`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GSM8K JSONL file not found: {path}")
  problems = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
          "re-encode the file as UTF-8."
        ) from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg}).") from e
      if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}.")
      for key in ("question", "answer"):
        if not isinstance(record.get(key), str):
          raise ValueError(f"{where}: missing string field {key!r}.")
      final = _FINAL.search(record["answer"])
      if final is None or parse_number(final.group(1)) is None:
        raise ValueError(
          f"{where}: no verifiable answer: the 'answer' field must end with '#### <number>', "
          f"got {record['answer'][-60:]!r}."
        )
      answer = final.group(1).replace(",", "")
      extra = {k: v for k, v in record.items() if k not in ("question", "answer")}
      metadata: dict[str, Any] = {
        "solution": record["answer"],
        "source": path,
        "line": lineno,
        **extra,
      }
      problems.append(
        Problem(
          id=problem_id(task, record["question"]),
          question=record["question"],
          answer=answer,
          metadata=json_normalize(metadata),
          task=task,
        )
      )
  if not problems:
    raise ValueError(f"{path}: no problems (the file is empty).")
  return problems


class JsonlTask(Task):
  """GSM8K-format JSONL problems as a Task with a numeric scorer.

  Args:
    train: path of the training file (optional when only scoring).
    test: path of the held-out file; without it the train file is split by question hash
      (`heldout_fraction` of the hash space goes to "test").
    name: the task name stored in each Problem.
    heldout_fraction: used only when `test` is None.
  """

  def __init__(
    self,
    train: str | None = None,
    test: str | None = None,
    *,
    name: str = "gsm8k",
    heldout_fraction: float = 0.2,
  ):
    if not 0.0 < heldout_fraction < 1.0:
      raise ValueError(f"`heldout_fraction` must be in (0, 1), got {heldout_fraction}.")
    self.name = name
    self.paths = {"train": train, "test": test}
    self.heldout_fraction = heldout_fraction
    self._cache: dict[str, list[Problem]] = {}

  def __getstate__(self) -> dict[str, Any]:
    return {**self.__dict__, "_cache": {}}

  def problems(self, split: str) -> list[Problem]:
    """Every problem of `split`, in file order."""
    check_split(split)
    if split not in self._cache:
      if self.paths["train"] is None and self.paths["test"] is None:
        raise ValueError("JsonlTask has no files: pass `train` (and optionally `test`).")
      if self.paths["test"] is not None and split == "test":
        loaded = load_gsm8k_jsonl(self.paths["test"], task=self.name)
      elif self.paths["test"] is not None:
        if self.paths["train"] is None:
          raise ValueError("JsonlTask has no `train` file.")
        loaded = load_gsm8k_jsonl(self.paths["train"], task=self.name)
      else:
        path = self.paths["train"]
        all_problems = load_gsm8k_jsonl(path, task=self.name)
        loaded = [p for p in all_problems if split_of(p.question, self.heldout_fraction) == split]
      self._cache[split] = loaded
    return self._cache[split]

  def generate(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
    """`n` problems of `split` in a seed-determined order (all of them if n is None)."""
    problems = list(self.problems(split))
    random.Random(seed).shuffle(problems)
    if n is None:
      return problems
    check_count(n)
    if n > len(problems):
      raise ValueError(f"`n`={n} exceeds the {len(problems)} {split!r} problems of {self.paths}.")
    return problems[:n]

  def score(self, completion_answer: str | None, problem: Problem) -> float:
    return numeric_score(completion_answer, problem.answer)
