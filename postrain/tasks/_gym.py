"""Tasks generated offline by `reasoning-gym`, scored by its own scorers.

`reasoning_gym.create_dataset(name, seed=, size=, **config)` gives entries `{question, answer,
metadata}`; `dataset.score_answer(answer, entry)` scores them. Difficulty knobs are the fields of
the dataset's config dataclass (e.g. `chain_sum`: min_terms, max_terms, min_digits, max_digits,
allow_negation) and are passed through unchanged.

reasoning-gym is imported lazily: importing it registers ~100 generators and takes seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from postrain.tasks._problem import (
  Problem,
  Task,
  check_count,
  check_split,
  collect_split,
  derive_seed,
  json_normalize,
  problem_id,
)

# The tasks the project tests end to end (any registered reasoning-gym name works).
GYM_TASKS = ("chain_sum", "basic_arithmetic", "gsm_symbolic", "countdown")

# Items are drawn from fixed-size chunks with derived seeds, so `generate(n)` is a prefix of
# `generate(m > n)` for the same seed.
_CHUNK = 256


def _registry() -> dict[str, tuple[type, type]]:
  import reasoning_gym.factory  # lazy: registering ~100 generators is slow

  return reasoning_gym.factory.DATASETS


class ReasoningGymTask(Task):
  """A reasoning-gym dataset as a `Task`.

  Args:
    name: a registered reasoning-gym dataset name (e.g. "chain_sum", "countdown").
    heldout_fraction: fraction of the question-hash space reserved for the "test" split. Test
      generation draws ~1/heldout_fraction candidates per problem (countdown costs ~30 ms each).
    binary: if True (default) the reward is 1.0 when the task's scorer gives full credit, else
      0.0. reasoning-gym scorers give partial credit to some wrong answers (countdown 0.01/0.05
      for a wrong expression; chain_sum len(oracle)/len(answer) when the oracle is a substring,
      e.g. "6" inside "16"), which is a misleading RL signal; binary=False returns the raw score.
    unique: deduplicate questions within a split.
    **config: difficulty knobs, passed to `reasoning_gym.create_dataset` (fields of the
      dataset's config dataclass other than seed and size).
  """

  def __init__(
    self,
    name: str,
    *,
    heldout_fraction: float = 0.2,
    binary: bool = True,
    unique: bool = True,
    **config: Any,
  ):
    registry = _registry()
    if name not in registry:
      raise ValueError(f"`name` must be a registered reasoning-gym dataset, got {name!r}.")
    if not 0.0 < heldout_fraction < 1.0:
      raise ValueError(f"`heldout_fraction` must be in (0, 1), got {heldout_fraction}.")
    fields = {f.name for f in dataclasses.fields(registry[name][1])} - {"seed", "size"}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(
        f"Unknown config option(s) {unknown} for reasoning-gym task {name!r}; "
        f"valid options: {sorted(fields)}."
      )
    self.name = name
    self.config = dict(config)
    self.heldout_fraction = float(heldout_fraction)
    self.binary = bool(binary)
    self.unique = bool(unique)
    self._scorer = None
    try:  # Validate the knobs now, not in the middle of a run.
      self._dataset(seed=0, size=1)
    except (AssertionError, TypeError, ValueError) as e:
      raise ValueError(f"Invalid config {self.config} for reasoning-gym task {name!r}: {e}") from e

  def __repr__(self) -> str:
    return f"ReasoningGymTask({self.name!r}, {self.config})"

  def __getstate__(self) -> dict[str, Any]:
    # The dataset object is rebuilt lazily; only the (picklable) settings travel to workers.
    state = dict(self.__dict__)
    state["_scorer"] = None
    return state

  def _dataset(self, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(self.name, seed=seed, size=size, **self.config)

  def prepare(self) -> None:
    if self._scorer is None:
      self._scorer = self._dataset(seed=0, size=1)

  def _candidates(self, split: str, seed: int) -> Iterator[Problem]:
    chunk = 0
    while True:
      dataset = self._dataset(seed=derive_seed(self.name, split, seed, chunk), size=_CHUNK)
      for i in range(_CHUNK):
        entry = dataset[i]
        question = entry["question"]
        yield Problem(
          id=problem_id(self.name, question),
          question=question,
          answer=str(entry["answer"]),
          metadata=json_normalize(entry.get("metadata", {})),
          task=self.name,
        )
      chunk += 1

  def generate(self, split: str, n: int, seed: int = 0) -> list[Problem]:
    """Returns `n` problems of `split`; deterministic in (config, split, n, seed).

    Train and test are disjoint by question hash (see `postrain.tasks._problem`).
    """
    check_split(split)
    check_count(n)
    share = self.heldout_fraction if split == "test" else 1.0 - self.heldout_fraction
    return collect_split(
      self._candidates(split, seed),
      split,
      n,
      heldout_fraction=self.heldout_fraction,
      unique=self.unique,
      max_candidates=max(1000, int(20 * n / share)),
      what=lambda: repr(self),
    )

  def raw_score(self, completion_answer: str | None, problem: Problem) -> float:
    """The reasoning-gym scorer's own value (partial credit included)."""
    self.prepare()
    entry = {"question": problem.question, "answer": problem.answer, "metadata": problem.metadata}
    return float(self._scorer.score_answer(completion_answer, entry))

  def score(self, completion_answer: str | None, problem: Problem) -> float:
    if completion_answer is None:
      return 0.0
    raw = self.raw_score(completion_answer, problem)
    if self.binary:
      return 1.0 if raw >= 1.0 - 1e-9 else 0.0
    return raw
