"""The `Problem` record and the `Task` interface shared by every task source.

A task turns a seed into problems (`generate`) and a completion's extracted answer into a reward
(`score`). Train and held-out splits are disjoint by construction: a question belongs to the
held-out split iff a hash of its text falls in the held-out bucket (`heldout_fraction` of the hash
space), so no seed, size or later call can leak a held-out question into training.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from postrain.tasks._extract import MAX_EXTRACT_CHARS, extract_answer_source

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One verifiable problem.

  Attributes:
    id: stable identifier, `"{task}/{sha256(question)[:16]}"`.
    question: the problem statement shown to the model.
    answer: the reference answer as a string (what the task's scorer compares against).
    metadata: JSON-compatible dict (the generator's metadata, normalised through JSON so that a
      round trip through storage gives an equal Problem).
    task: the name of the task that generated and scores it.
  """

  id: str
  question: str
  answer: str
  metadata: dict[str, Any]
  task: str


class Task(abc.ABC):
  """A source of verifiable problems with its own scorer.

  Subclasses set `name` and implement `generate` and `score`. `prepare()` does the heavy imports
  once (the verifier worker calls it before its first deadline starts).
  """

  name: str

  @abc.abstractmethod
  def generate(self, split: str, n: int, seed: int = 0) -> list[Problem]:
    """Returns `n` problems of `split` ("train" or "test"), the same ones for the same seed."""

  @abc.abstractmethod
  def score(self, completion_answer: str | None, problem: Problem) -> float:
    """Reward in [0, 1] for an already-extracted answer (None: nothing could be extracted)."""

  def prepare(self) -> None:
    """Loads whatever `score` needs (imports, generator objects). Default: nothing."""
    return None

  def extract(
    self, completion: str, *, mode: str = "marked", max_chars: int = MAX_EXTRACT_CHARS
  ) -> tuple[str | None, str | None]:
    """(answer, source) of a completion: `postrain.tasks.extract_answer_source` by default.

    The verifier runs this in its worker, under the same deadline as `score`; a task whose
    answers need another reading overrides it.
    """
    return extract_answer_source(completion, mode=mode, max_chars=max_chars)


def json_normalize(metadata: Any) -> Any:
  """Returns `metadata` as it reads back from JSON (tuples -> lists, odd scalars -> str)."""
  return json.loads(json.dumps(metadata, sort_keys=True, default=str))


def question_hash(question: str) -> str:
  return hashlib.sha256(question.encode("utf-8")).hexdigest()


def problem_id(task: str, question: str) -> str:
  return f"{task}/{question_hash(question)[:16]}"


def split_of(question: str, heldout_fraction: float) -> str:
  """ "test" iff the question's hash lands in the held-out bucket, else "train"."""
  bucket = int(question_hash(question)[:12], 16) / float(16**12)
  return "test" if bucket < heldout_fraction else "train"


def derive_seed(*parts: Any) -> int:
  """A 31-bit seed from any printable parts (stable across processes, unlike `hash`)."""
  digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
  return int(digest[:8], 16) & 0x7FFFFFFF


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}.")


def check_count(n: Any) -> None:
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"`n` must be a non-negative int, got {n!r}.")


def collect_split(
  candidates: Iterator[Problem],
  split: str,
  n: int,
  *,
  heldout_fraction: float,
  unique: bool,
  max_candidates: int,
  what: Callable[[], str],
) -> list[Problem]:
  """Draws from `candidates` the first `n` problems that belong to `split`.

  Raises ValueError (with `what()` describing the source) when `max_candidates` candidates do not
  yield `n` problems: the question space is too small for the split and size asked for.
  """
  out: list[Problem] = []
  seen: set[str] = set()
  tried = 0
  while len(out) < n and tried < max_candidates:
    problem = next(candidates, None)
    if problem is None:
      break
    tried += 1
    if split_of(problem.question, heldout_fraction) != split:
      continue
    if unique:
      if problem.question in seen:
        continue
      seen.add(problem.question)
    out.append(problem)
  if len(out) < n:
    raise ValueError(
      f"{what()}: only {len(out)} of the n={n} requested {'unique ' if unique else ''}problems "
      f"for split {split!r} were found in {tried} candidates. The question space is too small: "
      "widen the difficulty knobs, lower n, or pass unique=False."
    )
  return out
