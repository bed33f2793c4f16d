"""Self-play loop pieces (arXiv 2605.22217 §2.3–2.5) on hand-made votes and pools."""

import numpy as np
import pytest

from postrain.tasks.selfplay._gate import GateVerdict
from postrain.tasks.selfplay._loop_parts import (
  Task,
  TaskPool,
  admit,
  canonicalize,
  grounded_reward,
  is_trivial_output,
  majority_vote,
  proposer_reward,
  self_consistency_reward,
  selfplay_metrics,
  solver_accuracy,
)


def test_self_consistency_reward_on_hand_made_votes():
  answers = [
    ["[1, 2]", "[1,2]", " [1, 2] ", "[2, 1]"],  # 3 agree after canonicalisation
    ["a", "b", "c", "d"],  # all distinct
    ["7", None, "7", ""],  # unparsable answers get 0 but count in G
    ["'x'", '"x"', "x", "x"],  # the literal 'x' and the bare word x differ
  ]
  r = self_consistency_reward(answers)
  np.testing.assert_allclose(
    r,
    [[0.75, 0.75, 0.75, 0.25], [0.25] * 4, [0.5, 0.0, 0.5, 0.0], [0.5, 0.5, 0.5, 0.5]],
  )
  assert r.dtype == np.float32
  # Σ_i vote_share_i = Σ_clusters size² / G.
  np.testing.assert_allclose(r[0].sum(), (3**2 + 1**2) / 4)
  np.testing.assert_allclose(self_consistency_reward([["5"] * 6]), np.ones((1, 6)))
  with pytest.raises(ValueError, match="group size"):
    self_consistency_reward([["1", "2"], ["1"]])


def test_grounded_reward_accuracy_and_majority():
  answers = [["3", "3.0", "03", "4"], ["'ab'", '"ab"', None, "ab"]]
  labels = ["3", "'ab'"]
  np.testing.assert_allclose(grounded_reward(answers, labels), [[1, 0, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_allclose(solver_accuracy(answers, labels), [0.25, 0.5])
  np.testing.assert_allclose(grounded_reward([["1"]], [None]), [[0.0]])
  assert majority_vote(["b", "a", "a", "b", None]) == ("b", 0.4)  # tie: first seen
  assert majority_vote(["[1,2]", "[1, 2]", "3"]) == ("[1, 2]", 2 / 3)
  assert majority_vote([None, ""]) == (None, 0.0)
  assert canonicalize("  {'a':1} ") == "{'a': 1}" and canonicalize("   ") is None


def test_proposer_reward():
  acc = np.array([0.0, 0.25, 0.5, 1.0, 1.2])
  np.testing.assert_allclose(proposer_reward(acc), [1.0, 0.75, 0.5, 0.0, 0.0])
  np.testing.assert_allclose(proposer_reward(acc, mode="medium"), [0.0, 0.5, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(
    proposer_reward(acc, [True, False, True, True, True], coef=2.0, cap=1.5),
    [1.5, 0.0, 1.0, 0.0, 0.0],
  )
  with pytest.raises(ValueError, match="mode"):
    proposer_reward(acc, mode="easy")


def test_pool_admission_dedup_and_fifo():
  ok = lambda out: GateVerdict(True, "ok", out)  # noqa: E731
  pool = TaskPool(max_size=3)
  pool, stats = admit(
    pool,
    [
      "def f(x): return x+1",
      "def f(x):  return x+1",
      "def f(x): return 1/0",
      "def f(x): return -x",
    ],
    ["1", " 1", "1", "2"],
    [ok("2"), ok("2"), GateVerdict(False, "crash"), ok("-2")],
  )
  assert [t.output for t in pool.tasks] == ["2", "-2"]
  assert stats["proposed"] == 4 and stats["admitted"] == 2
  assert stats["admitted_fraction"] == 0.5
  assert stats["duplicates"] == 1 and stats["duplicate_rate"] == 0.25
  assert stats["reject/crash"] == 1
  pool, stats = admit(
    pool,
    ["def f(x): return x*3", "def f(x): return x*4", "def f(x): return x+1"],
    ["1", "1", "1"],
    [ok("3"), GateVerdict(True, "crash", None, leaked=True), ok("2")],
  )
  assert stats["leaked"] == 1 and stats["duplicates"] == 1
  assert len(pool) == 3  # FIFO cap: the oldest task is gone
  assert [t.output for t in pool.tasks] == ["-2", "3", None]


def test_trivial_outputs_and_metrics():
  assert is_trivial_output("[]") and is_trivial_output("None") and is_trivial_output(None)
  assert is_trivial_output("[1, 2]", inputs="[1,2]")  # identity
  assert not is_trivial_output("[2, 1]", inputs="[1, 2]")
  pool = TaskPool(
    tasks=(
      Task("def f(x): return x", "[1, 2]", "[1, 2]"),
      Task("def f(x): return x[::-1]", "[1, 2]", "[2, 1]"),
      Task("def f(x): return 0", "5", "0"),
      Task("def f(x): return x[::-1]", "[3, 4]", "[4, 3]"),
    )
  )
  answers = [["[2, 1]", "[2,1]", "[1, 2]", None], ["0", "0", "0", "0"]]
  m = selfplay_metrics(pool, solver_answers=answers, labels=["[2, 1]", "1"])
  assert m["pool/size"] == 4
  assert m["pool/trivial_output_rate"] == 0.5
  assert m["pool/unique_output_rate"] == 1.0
  assert m["pool/duplicate_rate"] == 0.0
  vote = np.array([[0.5, 0.5, 0.25, 0.0], [1.0] * 4])
  grounded = np.array([[1, 1, 0, 0], [0] * 4])
  assert m["solver/vote_share"] == pytest.approx(vote.mean())
  assert m["solver/grounded_accuracy"] == pytest.approx(grounded.mean())
  assert m["solver/gap"] == pytest.approx((vote - grounded).mean())
  assert m["solver/abs_gap"] == pytest.approx(np.abs(vote - grounded).mean())
  assert m["solver/valid_answer_ratio"] == pytest.approx(7 / 8)
  assert m["solver/unique_answers"] == pytest.approx(1.5)
  assert m["solver/majority_share"] == pytest.approx((0.5 + 1.0) / 2)
  assert selfplay_metrics(TaskPool())["pool/size"] == 0.0
