"""Task generation: deterministic, disjoint splits; knobs pass through; own scorer, binarised."""

import pytest

from postrain import tasks
from postrain.tasks._problem import split_of

# Small sizes: countdown's generator costs ~30 ms per candidate.
SIZES = {
  "chain_sum": (40, 10),
  "basic_arithmetic": (40, 10),
  "gsm_symbolic": (30, 8),
  "countdown": (4, 2),
}


@pytest.fixture(scope="module")
def gym_tasks():
  return {name: tasks.get_task(name) for name in tasks.GYM_TASKS}


@pytest.mark.parametrize("name", tasks.GYM_TASKS)
def test_generate_deterministic_and_disjoint(gym_tasks, name):
  task = gym_tasks[name]
  n_train, n_test = SIZES[name]
  train = task.generate("train", n_train, seed=0)
  assert train == task.generate("train", n_train, seed=0)
  test = task.generate("test", n_test, seed=0)
  assert len(train) == n_train and len(test) == n_test
  train_q, test_q = {p.question for p in train}, {p.question for p in test}
  assert len(train_q) == n_train and len(test_q) == n_test  # unique within a split
  assert not train_q & test_q
  # Held-out membership is a property of the question, not of the seed.
  other_seed = task.generate("train", n_train, seed=1)
  assert {p.question for p in other_seed} != train_q
  assert not {p.question for p in other_seed} & test_q
  for p in train + test:
    assert p.task == name and p.id.startswith(name + "/")
    assert task.score(p.answer if name != "countdown" else p.metadata["expression"], p) == 1.0


def test_generate_is_prefix_stable(gym_tasks):
  task = gym_tasks["chain_sum"]
  assert task.generate("train", 5, seed=3) == task.generate("train", 12, seed=3)[:5]


def test_split_membership_by_hash():
  task = tasks.get_task("chain_sum", heldout_fraction=0.3)
  for split in ("train", "test"):
    assert all(split_of(p.question, 0.3) == split for p in task.generate(split, 30, seed=0))


def test_difficulty_knobs_pass_through():
  task = tasks.get_task("chain_sum", min_terms=3, max_terms=3, min_digits=2, max_digits=2)
  for p in task.generate("train", 20, seed=0):
    assert p.metadata["num_terms"] == 3 and p.metadata["num_digits"] == 2
    assert len(p.metadata["expression"].split()) == 5
  countdown = tasks.get_task("countdown", min_numbers=3, max_numbers=3)
  assert all(len(p.metadata["numbers"]) == 3 for p in countdown.generate("train", 2, seed=0))


def test_bad_arguments():
  with pytest.raises(ValueError, match="max_termz"):
    tasks.get_task("chain_sum", max_termz=3)
  with pytest.raises(ValueError, match="not_a_task"):
    tasks.get_task("not_a_task")
  with pytest.raises(ValueError, match="min_terms"):
    tasks.get_task("chain_sum", min_terms=5, max_terms=2)
  task = tasks.get_task("chain_sum")
  with pytest.raises(ValueError, match="split"):
    task.generate("validation", 3)
  with pytest.raises(ValueError, match="`n`"):
    task.generate("train", -1)


def test_too_small_question_space_raises():
  # 1-digit, 2-term chain sums: at most 10 * 2 * 10 = 200 distinct questions.
  task = tasks.get_task("chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1)
  with pytest.raises(ValueError, match="too small"):
    task.generate("train", 500, seed=0)
  lenient = tasks.get_task(
    "chain_sum", min_terms=2, max_terms=2, min_digits=1, max_digits=1, unique=False
  )
  assert len(lenient.generate("train", 500, seed=0)) == 500


def test_wrong_answers_score_zero_and_raw_partial_credit():
  task = tasks.get_task("chain_sum")
  problem = tasks.Problem(
    "chain_sum/x", "State ... 1 + 5 =", "6", {"expression": "1 + 5"}, "chain_sum"
  )
  assert task.score("6", problem) == 1.0
  assert task.score("+06.00", problem) == 1.0  # the task's own scorer tolerates this form
  assert task.score("7", problem) == 0.0
  assert task.score(None, problem) == 0.0
  # reasoning-gym gives len(oracle)/len(answer) when the oracle is a substring: not a reward.
  assert task.raw_score("16", problem) == pytest.approx(0.5)
  assert task.score("16", problem) == 0.0
  raw = tasks.get_task("chain_sum", binary=False)
  assert raw.score("16", problem) == pytest.approx(0.5)


def test_countdown_wrong_expression_scores_zero(gym_tasks):
  task = gym_tasks["countdown"]
  problem = task.generate("test", 1, seed=0)[0]
  numbers = problem.metadata["numbers"]
  wrong = " + ".join(str(x) for x in numbers)  # uses every number, wrong value (almost surely)
  if sum(numbers) != problem.metadata["target"]:
    assert task.raw_score(wrong, problem) > 0.0  # reasoning-gym's consolation credit
    assert task.score(wrong, problem) == 0.0
  assert task.score(problem.metadata["expression"], problem) == 1.0
