"""Deadline-guarded batch verification: slow, raising or crashing scorers give 0 and are counted."""

import collections
import math
import os
import random
import shutil
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
  problems = task.generate("train", 9)
  # Items after the crash in the same chunk still get their real scores.
  answers = ["0", "sleep", "2", "raise", "4", "crash", "6", "0", None]
  start = time.monotonic()
  rewards, stats = tasks.score_answers(task, problems, answers, timeout_s=1.0, pool=verifier_pool)
  assert time.monotonic() - start < 50  # the 60 s sleep was cut off
  np.testing.assert_array_equal(rewards, [1, 0, 1, 0, 1, 0, 1, 0, 0])
  assert (stats.timeouts, stats.errors, stats.no_answer, stats.scored) == (1, 2, 1, 5)
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


# A `_worker.py` from another version of the protocol (it exits on any message it does not know).
_OTHER_VERSION_WORKER = """
import pathlib, sys
from multiprocessing.connection import Connection

pathlib.Path(__file__).with_name("OTHER_VERSION_STARTED").touch()
conn = Connection(int(sys.argv[1]))
while True:
  message = conn.recv()
  if message[0] == "task":
    conn.send(("ready",))
  elif message[0] != "init":
    sys.exit(f"unknown message {message[0]!r}")
"""


def test_worker_runs_the_code_its_parent_loaded(tmp_path, monkeypatch):
  """Regression: a trainer's restarted workers ran `_worker.py` as edited on disk mid-run, which
  no longer spoke the trainer's protocol (`for i, answer, problem in message[1]` -> TypeError), so
  every answer was scored 0 and counted as a verifier error."""
  import postrain

  # `postrain.tasks._worker` now resolves to another version (the copy in the cwd), as after an
  # edit of the checkout or an upgrade while this process keeps the protocol it imported.
  shutil.copytree(
    os.path.dirname(postrain.__file__),
    tmp_path / "postrain",
    ignore=shutil.ignore_patterns("__pycache__"),
  )
  (tmp_path / "postrain" / "tasks" / "_worker.py").write_text(_OTHER_VERSION_WORKER)
  monkeypatch.chdir(tmp_path)
  task = ScriptedTask()
  problems = task.generate("train", 2)
  with tasks.VerifierPool(num_workers=1) as pool:
    rewards, stats = tasks.score_answers(task, problems, ["0", "9"], timeout_s=30, pool=pool)
  np.testing.assert_array_equal(rewards, [1, 0])
  assert (stats.scored, stats.errors, stats.timeouts) == (2, 0, 0)
  assert not (tmp_path / "postrain" / "tasks" / "OTHER_VERSION_STARTED").exists()


# The pool only pickles tasks and problems and calls `prepare`/`score`: this duck-typed scorer (the
# problem is the reference answer string) imports nothing heavy, so a worker starts in ~0.1 s and
# the multi-worker tests below stay fast on a loaded machine.
_LIGHT_SCORER = """
import os, time


class LightTask:
  def __init__(self, startup_s=0.0):
    self.startup_s = startup_s

  def prepare(self):
    time.sleep(self.startup_s)

  def score(self, answer, problem):
    if answer.startswith("nap"):  # "nap0.5:3": sleeps 0.5 s, then answers "3".
      seconds, answer = answer[3:].split(":")
      time.sleep(float(seconds))
    if answer == "sleep":
      time.sleep(60)
    if answer == "raise":
      raise RuntimeError("verifier bug")
    if answer == "crash":
      os._exit(3)
    return float(answer == problem)
"""


@pytest.fixture(scope="session")
def light_scorer(tmp_path_factory):
  """The `_LIGHT_SCORER` module, importable here and (through the sent sys.path) in workers."""
  import importlib
  import sys

  root = tmp_path_factory.mktemp("light_scorer")
  (root / "light_scorer.py").write_text(_LIGHT_SCORER)
  sys.path.insert(0, str(root))
  yield importlib.import_module("light_scorer")
  sys.path.remove(str(root))


def _sockets(pid: int) -> int:
  fds = os.listdir(f"/proc/{pid}/fd")
  return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds)


def test_interrupted_call_leaves_no_stale_answers(light_scorer):
  """A call that raises with items in flight must not hand their answers to the next call."""
  task = light_scorer.LightTask()
  problems = ["0", "1", "2", lambda: 0]  # A lambda cannot travel to a worker.
  with tasks.VerifierPool(num_workers=2) as pool:
    # Items 0-1 go to worker 0 and are answered; sending items 2-3 to worker 1 fails.
    with pytest.raises(TypeError, match=r"problems\[3\]"):
      tasks.score_answers(task, problems, ["0", "1", "2", "3"], timeout_s=30, pool=pool)
    rewards, stats = tasks.score_answers(task, problems[:2], ["9", "1"], timeout_s=30, pool=pool)
    np.testing.assert_array_equal(rewards, [0, 1])
    assert (stats.scored, stats.errors, stats.timeouts) == (2, 0, 0)
    if os.path.isdir("/proc/self/fd"):  # Each worker holds its own socket, no other worker's.
      pids = [worker.proc.pid for worker in pool._workers if worker is not None]
      assert len(pids) == 2 and [_sockets(pid) for pid in pids] == [1, 1]


def test_answer_waiting_during_another_workers_restart_is_not_a_timeout(light_scorer):
  """Worker 0 crashes and its restart (2 s) blocks the parent past worker 1's deadline, but worker
  1 answered in time: its answer is scored, not counted as a timeout."""
  task = light_scorer.LightTask(startup_s=2.0)
  with tasks.VerifierPool(num_workers=2) as pool:
    rewards, stats = tasks.score_answers(
      task, ["0", "1"], ["crash", "nap0.5:1"], timeout_s=1.0, pool=pool
    )
  np.testing.assert_array_equal(rewards, [0, 1])
  assert (stats.errors, stats.timeouts, stats.scored) == (1, 0, 1)


def test_many_calls_with_random_failures_keep_exact_accounting(light_scorer):
  """Sequential calls of varying sizes with crashing, raising, hanging and unanswerable items on
  two workers: every call's rewards and counts are exactly those of its own items."""
  rng = random.Random(0)
  task = light_scorer.LightTask()
  kinds = ["right", "wrong", "none", "raise", "crash", "sleep"]
  weights = [60, 25, 10, 2, 2, 1]
  with tasks.VerifierPool(num_workers=2) as pool:
    for n in [4, 16, 1, 9, 64, 4, 100, 16, 3, 33, 8, 16]:
      problems = [str(i) for i in range(n)]
      chosen = rng.choices(kinds, weights, k=n)
      answer = {"right": str, "wrong": lambda i: "x", "none": lambda i: None}
      answers = [answer[k](i) if k in answer else k for i, k in enumerate(chosen)]
      rewards, stats = tasks.score_answers(task, problems, answers, timeout_s=2.0, pool=pool)
      np.testing.assert_array_equal(rewards, [k == "right" for k in chosen])
      count = collections.Counter(chosen)
      assert (stats.total, stats.scored, stats.no_answer, stats.timeouts, stats.errors) == (
        n,
        count["right"] + count["wrong"],
        count["none"],
        count["sleep"],
        count["raise"] + count["crash"],
      )


class SlowExtractTask(ScriptedTask):
  """Extraction itself hangs on the completion "hang" (module-level: workers import it)."""

  def extract(self, completion, **kwargs):
    if completion == "hang":
      time.sleep(60)
    return super().extract(completion, **kwargs)


def test_extraction_runs_under_the_deadline(verifier_pool):
  task = SlowExtractTask()
  problems = task.generate("train", 3)
  rewards, stats = tasks.score_batch(
    task, problems, ["answer: 0", "hang", "answer: 2"], timeout_s=1.0, pool=verifier_pool
  )
  np.testing.assert_array_equal(rewards, [1, 0, 1])
  assert (stats.timeouts, stats.errors, stats.scored, stats.no_answer) == (1, 0, 2, 0)


def test_pathological_completion_is_scored_in_the_worker(verifier_pool):
  task = ScriptedTask()
  problems = task.generate("train", 3)
  junk = r"\boxed{" * 6000  # 42 KB of unclosed boxes
  completions = [junk + "answer: 0", junk, junk + "\nanswer: 9"]
  rewards, stats = tasks.score_batch(task, problems, completions, pool=verifier_pool)
  np.testing.assert_array_equal(rewards, [1, 0, 0])
  assert (stats.timeouts, stats.no_answer, stats.scored) == (0, 1, 2)


# What SmolLM2-135M-Instruct writes (chat template) for the three problems below.
_SMOL = [
  "To find the sum, add the numbers: 3 + 4 = 7.",  # right, unmarked
  "Let's calculate it step by step.\n\n8 - 5 = 3\n\nanswer: 3",  # right, marked
  "The result of 6 * 2 is 14.\n\nFinal Answer: 14",  # wrong, marked
  "I think it is 11",  # wrong, unmarked
  "I can't compute that.",  # no number at all
]


@pytest.mark.parametrize("inline", [False, True])
def test_modes_and_format_reward(verifier_pool, inline):
  task = tasks.get_task("basic_arithmetic")
  problems = [
    tasks.Problem(f"p/{i}", q, a, {}, "basic_arithmetic")
    for i, (q, a) in enumerate(
      [("3 + 4 =", "7"), ("8 - 5 =", "3"), ("6 * 2 =", "12"), ("5 + 5 =", "10"), ("1 + 1 =", "2")]
    )
  ]
  kw = dict(timeout_s=None) if inline else dict(pool=verifier_pool)
  rewards, stats = tasks.score_batch(task, problems, _SMOL, **kw)  # "marked"
  np.testing.assert_array_equal(rewards, [0, 1, 0, 0, 0])
  assert (stats.no_answer, stats.scored, stats.marked) == (3, 2, 2)
  rewards, stats = tasks.score_batch(task, problems, _SMOL, mode="any", **kw)
  np.testing.assert_array_equal(rewards, [1, 1, 0, 0, 0])
  assert (stats.no_answer, stats.scored, stats.marked) == (1, 4, 2)
  rewards, stats = tasks.score_batch(task, problems, _SMOL, mode="any", format_reward=0.1, **kw)
  np.testing.assert_allclose(rewards, [1, 1, 0.1, 0, 0])
  assert rewards.dtype == np.float32
  rewards, _ = tasks.score_batch(task, problems, _SMOL, mode="last_number", **kw)
  np.testing.assert_array_equal(rewards, [1, 1, 0, 0, 0])
  with pytest.raises(ValueError, match="format_reward"):
    tasks.score_batch(task, problems, _SMOL, format_reward=2.0, **kw)
  with pytest.raises(ValueError, match="mode"):
    tasks.score_batch(task, problems, _SMOL, mode="first", **kw)
