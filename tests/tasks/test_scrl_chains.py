"""SCRL subproblem chains (arXiv 2605.22074): structure, answers, the subproblem scorer."""

from fractions import Fraction

import numpy as np
import pytest

from postrain import tasks


def _chain_sum(expr: str) -> tasks.Problem:
  return tasks.Problem(
    "c/x", f"State the final answer: {expr} =", str(eval(expr)), {"expression": expr}, "chain_sum"
  )


@pytest.fixture(scope="module")
def chain_sum_task():
  return tasks.get_task("chain_sum")


def test_hand_written_chain():
  chain = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  assert [(s.question, s.answer) for s in chain.subproblems] == [
    ("Compute 12 + 7.", "19"),
    ("Compute 12 + 7 - 4.", "15"),
    ("State the final answer: 12 + 7 - 4 + 5 =", "20"),
  ]
  assert chain.answer_strings() == ["answer_1: 19", "answer_2: 15", "answer_3: 20"]
  assert chain.answer_strings("blocks")[0] == "\\boxed{19}"
  assert tasks.scrl_reference_completion(chain) == (
    "12 + 7 = 19\nanswer_1: 19\n19 - 4 = 15\nanswer_2: 15\n15 + 5 = 20\nanswer_3: 20"
  )
  last_two = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"), num_subproblems=2)
  assert last_two.subproblems == chain.subproblems[-2:]
  single = tasks.scrl_chain(_chain_sum("1 + 2"))
  assert [s.answer for s in single.subproblems] == ["3"]  # only the original problem


@pytest.mark.parametrize(
  "name, n", [("chain_sum", 15), ("basic_arithmetic", 15), ("gsm_symbolic", 15), ("countdown", 3)]
)
def test_generated_chains(name, n):
  task = tasks.get_task(name)
  for p in task.generate("train", n, seed=1):
    chain = tasks.scrl_chain(p)
    last = chain.subproblems[-1]
    assert (last.question, last.answer) == (p.question, p.answer)  # the last is the original
    for sub in chain.subproblems[:-1]:
      expr = sub.question.removeprefix("Compute ").removesuffix(".")
      if name == "basic_arithmetic":
        assert Fraction(eval(expr.replace("/", "//"))) == Fraction(sub.answer)
      else:
        assert eval(expr) == pytest.approx(float(Fraction(sub.answer)))
      # The chain's intermediate answers are the reference steps' results.
      assert sub.answer == chain.steps[sub.step].value
    assert [s.step for s in chain.subproblems] == sorted({s.step for s in chain.subproblems})
    ones = tasks.score_subproblems(task, chain, tasks.scrl_reference_completion(chain))
    np.testing.assert_array_equal(ones, np.ones(chain.num_subproblems, np.float32))
    blocks = tasks.scrl_reference_completion(chain, completion_format="blocks")
    np.testing.assert_array_equal(
      tasks.score_subproblems(task, chain, blocks, completion_format="blocks"),
      np.ones(chain.num_subproblems, np.float32),
    )


@pytest.mark.parametrize(
  "completion, strict, expected",
  [
    ("answer_1: 19\nanswer_2: 15\nanswer_3: 20", True, [1, 1, 1]),
    ("12+7=19\nanswer_1: 19.0\nanswer_2: 14\n**answer_3:** 20", True, [1, 0, 1]),
    ("answer_1: 18\nanswer_2: 15\nanswer_3: 21", True, [0, 1, 0]),
    ("answer_1: 19\nanswer_3: 20\nanswer_2: 15", True, [0, 0, 0]),  # out of order
    ("answer_1: 19\nanswer_3: 20\nanswer_2: 15", False, [1, 1, 1]),
    ("answer_1: 19\nanswer_2: 15", True, [0, 0, 0]),  # missing the last
    ("answer_1: 19\nanswer_2: 15", False, [1, 1, 0]),
    ("answer_1: 19\nanswer_1: 19\nanswer_2: 15\nanswer_3: 20", True, [0, 0, 0]),  # repeated
    ("answer: 20", True, [0, 0, 0]),
    ("answer_1: \\boxed{19}\nanswer_2: 30/2\nanswer_3: 20", True, [1, 1, 1]),
  ],
)
def test_score_subproblems_lines(chain_sum_task, completion, strict, expected):
  chain = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  rewards = tasks.score_subproblems(chain_sum_task, chain, completion, strict_format=strict)
  assert rewards.dtype == np.float32
  np.testing.assert_array_equal(rewards, np.asarray(expected, np.float32))


def test_score_subproblems_blocks(chain_sum_task):
  chain = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  good = "<p1>12+7 \\boxed{19}</p1><p2>\\boxed{15}</p2>\n<p3>so \\boxed{20}</p3>"
  half = "<p1>\\boxed{19}</p1><p2>\\boxed{16}</p2><p3>\\boxed{20}</p3>"
  unboxed = "<p1>19</p1><p2>\\boxed{15}</p2><p3>\\boxed{20}</p3>"
  score = lambda c: tasks.score_subproblems(chain_sum_task, chain, c, completion_format="blocks")  # noqa: E731
  np.testing.assert_array_equal(score(good), [1, 1, 1])
  np.testing.assert_array_equal(score(half), [1, 0, 1])
  np.testing.assert_array_equal(score(unboxed), [0, 0, 0])


def test_spans_and_token_ids():
  completion = "12+7=19\nanswer_1: 19\n19-4=15\nanswer_2: 15"
  spans = tasks.scrl_char_spans(completion, 2)
  first_end = completion.index("answer_1: 19") + len("answer_1: 19")
  assert spans == [(0, first_end), (first_end, len(completion))]
  assert tasks.scrl_char_spans("answer_2: 1", 2) is None
  blocks = "x<p1>a \\boxed{1}</p1> y <p2>\\boxed{2}</p2>"
  assert tasks.scrl_char_spans(blocks, 2, completion_format="blocks") == [
    (1, blocks.index("</p1>") + 5),
    (blocks.index("<p2>"), len(blocks)),
  ]
  offsets = [(0, 1), (1, 5), (5, 12), (12, 19), (19, 21), (21, 30)]
  ids = tasks.token_span_ids([(1, 12), (19, 30)], offsets)
  np.testing.assert_array_equal(ids, np.array([-1, 0, 0, -1, 1, 1], np.int32))
  np.testing.assert_array_equal(tasks.token_span_ids(None, offsets), -np.ones(6, np.int32))


def test_batch_pads_short_chains_and_flags_format(chain_sum_task):
  long = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  short = tasks.scrl_chain(_chain_sum("3 + 4 + 5"))  # Compute 3 + 4. ; original
  completions = [
    "answer_1: 19\nanswer_2: 15\nanswer_3: 20",
    "answer_1: 7\nanswer_2: 13",
    "answer_1: 8\nanswer_2: 12",
    "answer_2: 12",
  ]
  chains = [long, short, short, short]
  rewards, ok, stats = tasks.score_subproblems_batch(
    chain_sum_task, chains, completions, timeout_s=None
  )
  np.testing.assert_array_equal(
    rewards, np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)
  )
  np.testing.assert_array_equal(ok, [True, True, True, False])
  assert stats.format_errors == 1 and stats.no_answer == 1 and stats.scored == 3
  with pytest.raises(ValueError, match="num_subproblems"):
    tasks.score_subproblems_batch(
      chain_sum_task, chains, completions, num_subproblems=2, timeout_s=None
    )
  with pytest.raises(ValueError, match="completions"):
    tasks.score_subproblems_batch(chain_sum_task, chains, completions[:2], timeout_s=None)


def test_batch_through_worker(chain_sum_task, verifier_pool):
  chain = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  rewards, ok, stats = tasks.score_subproblems_batch(
    chain_sum_task,
    [chain, chain],
    ["answer_1: 19\nanswer_2: 15\nanswer_3: 20", "answer_1: 19\nanswer_2: 15\nanswer_3: 2"],
    pool=verifier_pool,
  )
  np.testing.assert_array_equal(rewards, [[1, 1, 1], [1, 1, 0]])
  assert ok.all() and stats.timeouts == 0 and stats.errors == 0


def test_prompt_lists_problems_in_order():
  chain = tasks.scrl_chain(_chain_sum("12 + 7 - 4 + 5"))
  prompt = tasks.format_scrl_prompt(chain)
  assert prompt.endswith("Problem 3: State the final answer: 12 + 7 - 4 + 5 =\nAnswer:")
  assert prompt.index("Problem 1: Compute 12 + 7.") < prompt.index("Problem 2: Compute 12 + 7 - 4.")
  assert "answer_k" in prompt
  assert "<p3></p3>" in tasks.format_scrl_prompt(chain, completion_format="blocks")
  chat = tasks.format_scrl_prompt(chain, chat_template=lambda m: m[-1]["content"])
  assert chat == tasks.scrl_prompt_text(chain)
  with pytest.raises(ValueError, match="completion_format"):
    tasks.format_scrl_prompt(chain, completion_format="xml")
  with pytest.raises(ValueError, match="num_subproblems"):
    tasks.scrl_chain(_chain_sum("1 + 2"), num_subproblems=0)
