"""Deadline-guarded batch verification: slow, raising or crashing scorers give 0 and are counted."""

import math
import os
import time

import numpy as np
import pytest

from postrain import tasks


class ScriptedTask(tasks.Task):
  """A scorer whose behaviour the answer selects (module-level: workers import it by path)."""

  name = "scripted"

  def generate(self, split, n, seed=0):
    return [tasks.Problem(f"scripted/{i}", f"q{i}", str(i), {}, self.name) for i in range(n)]

  def score(self, completion_answer, problem):
    if completion_answer == "sleep":
      time.sleep(60)
    if completion_answer == "raise":
      raise RuntimeError("verifier bug")
    if completion_answer == "crash":
      os._exit(3)
    if completion_answer == "nan":
      return math.nan
    return float(completion_answer == problem.answer)


def test_chain_sum_batch(verifier_pool):
  task = tasks.get_task("chain_sum")
  problems = task.generate("train", 6, seed=0)
  completions = [
    f"{p.answer} is it\nanswer: {p.answer}"
    if i % 3 == 0
    else f"\\boxed{{{int(p.answer) + 1}}}"
    if i % 3 == 1
    else "I don't know"
    for i, p in enumerate(problems)
  ]
  rewards, stats = tasks.score_batch(task, problems, completions, pool=verifier_pool)
  assert rewards.dtype == np.float32 and rewards.shape == (6,)
  np.testing.assert_array_equal(rewards, [1, 0, 0, 1, 0, 0])
  assert (stats.total, stats.scored, stats.no_answer, stats.timeouts, stats.errors) == (
    6,
    4,
    2,
    0,
    0,
  )
  # The fallback finds the number in the last completion.
  fallback, _ = tasks.score_batch(
    task,
    problems[2:3],
    [f"it is {problems[2].answer}"],
    last_number_fallback=True,
    pool=verifier_pool,
  )
  np.testing.assert_array_equal(fallback, [1])


def test_slow_raising_and_crashing_scorers_are_counted(verifier_pool):
  task = ScriptedTask()
  problems = task.generate("train", 7)
  answers = ["0", "sleep", "2", "raise", "4", "crash", None]
  start = time.monotonic()
  rewards, stats = tasks.score_answers(task, problems, answers, timeout_s=1.0, pool=verifier_pool)
  assert time.monotonic() - start < 50  # the 60 s sleep was cut off
  np.testing.assert_array_equal(rewards, [1, 0, 1, 0, 1, 0, 0])
  assert (stats.timeouts, stats.errors, stats.no_answer, stats.scored) == (1, 2, 1, 3)
  # The pool recovered: the next batch is scored normally.
  rewards, stats = tasks.score_answers(task, problems[:2], ["0", "9"], pool=verifier_pool)
  np.testing.assert_array_equal(rewards, [1, 0])
  assert stats.errors == stats.timeouts == 0


def test_inline_scoring_counts_errors():
  task = ScriptedTask()
  problems = task.generate("train", 4)
  rewards, stats = tasks.score_answers(task, problems, ["0", "raise", "nan", "7"], timeout_s=None)
  np.testing.assert_array_equal(rewards, [1, 0, 0, 0])
  assert (stats.errors, stats.scored) == (2, 2)


def test_stats_merge_and_metrics():
  a = tasks.VerifierStats(total=3, scored=2, timeouts=1)
  b = tasks.VerifierStats(total=2, errors=1, no_answer=1)
  merged = a.merge(b)
  assert (merged.total, merged.scored, merged.timeouts, merged.errors, merged.no_answer) == (
    5,
    2,
    1,
    1,
    1,
  )
  assert merged.as_dict()["verifier/timeouts"] == 1.0


class FailsToLoad(ScriptedTask):
  def prepare(self):
    raise ImportError("a module the scorer needs is missing")


def test_task_that_cannot_load_raises_then_pool_recovers(verifier_pool):
  problems = ScriptedTask().generate("train", 2)
  with pytest.raises(RuntimeError, match=r"could not load the task.*missing"):
    tasks.score_answers(FailsToLoad(), problems, ["0", "1"], pool=verifier_pool)
  verifier_pool.warmup(ScriptedTask())
  rewards, stats = tasks.score_answers(ScriptedTask(), problems, ["0", "1"], pool=verifier_pool)
  np.testing.assert_array_equal(rewards, [1, 1])
  assert stats.scored == 2


class _Unpicklable(ScriptedTask):
  def __init__(self):
    self.fn = lambda x: x


def test_bad_inputs(verifier_pool):
  task = ScriptedTask()
  problems = task.generate("train", 2)
  with pytest.raises(ValueError, match="completions"):
    tasks.score_batch(task, problems, ["a"], pool=verifier_pool)
  with pytest.raises(ValueError, match="timeout_s"):
    tasks.score_answers(task, problems, ["0", "1"], timeout_s=0)
  with pytest.raises(TypeError, match="pickle"):
    tasks.score_answers(_Unpicklable(), problems, ["0", "1"], pool=verifier_pool)
  with pytest.raises(ValueError, match="num_workers"):
    tasks.VerifierPool(0)
