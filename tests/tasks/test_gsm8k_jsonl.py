"""GSM8K-format JSONL loader, its numeric scorer, and its errors."""

import json

import numpy as np
import pytest

from postrain import tasks

ROWS = [
  {
    "question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
    "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72 clips.\n#### 72",
  },
  {
    "question": "A shirt costs $1,200 and a hat $50. Total?",
    "answer": "1200+50 = <<1200+50=1250>>1250\n#### 1,250",
  },
  {"question": "Half of 5?", "answer": "5/2 = <<5/2=2.5>>2.5\n#### 2.5", "source": "hand"},
]


def _write(path, rows, raw_lines=()):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
  return path


def test_load_and_score(tmp_path):
  path = _write(tmp_path / "gsm.jsonl", ROWS)
  problems = tasks.load_gsm8k_jsonl(path)
  assert [p.answer for p in problems] == ["72", "1250", "2.5"]
  assert problems[0].metadata["line"] == 1 and problems[2].metadata["source"] == "hand"
  assert problems[0].task == "gsm8k"
  task = tasks.get_task("gsm8k")
  for completion, expected in [
    ("answer: 72", 1.0),
    ("answer: 72.0", 1.0),
    ("answer: $72", 1.0),
    ("answer: 73", 0.0),
    ("answer: seventy-two", 0.0),
    ("no idea", 0.0),
  ]:
    assert task.score(tasks.extract_answer(completion), problems[0]) == expected, completion
  assert task.score("1,250", problems[1]) == 1.0
  assert task.score("5/2", problems[2]) == 1.0
  rewards, stats = tasks.score_batch(
    task, problems, ["answer: 72", "\\boxed{1250}", "answer: 3"], timeout_s=None
  )
  np.testing.assert_array_equal(rewards, [1, 1, 0])
  assert stats.scored == 3 and stats.errors == 0
  # The GSM8K solution is a reference solution (SFT) and gives an SCRL chain.
  for p in problems:
    assert task.score(tasks.extract_answer(tasks.reference_solution(p)), p) == 1.0
  chain = tasks.scrl_chain(problems[0])
  assert [(s.question, s.answer) for s in chain.subproblems] == [
    ("Compute 48/2.", "24"),
    (problems[0].question, "72"),
  ]


def test_jsonl_task_splits(tmp_path):
  rows = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(40)]
  path = _write(tmp_path / "all.jsonl", rows)
  task = tasks.JsonlTask(str(path), heldout_fraction=0.25)
  train, test = task.generate("train"), task.generate("test")
  assert len(train) + len(test) == 40 and test
  assert not {p.question for p in train} & {p.question for p in test}
  assert task.generate("train", 5, seed=1) == task.generate("train", 5, seed=1)
  assert task.generate("train", 5, seed=1) != task.generate("train", 5, seed=2)
  with pytest.raises(ValueError, match="exceeds"):
    task.generate("train", 1000)
  both = tasks.get_task("gsm8k", train=str(path), test=str(_write(tmp_path / "t.jsonl", ROWS)))
  assert len(both.generate("test")) == 3 and len(both.generate("train")) == 40


def test_errors_name_path_and_line(tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
    tasks.load_gsm8k_jsonl(missing)
  no_final = _write(tmp_path / "a.jsonl", [ROWS[0], {"question": "q", "answer": "just text"}])
  with pytest.raises(ValueError, match=r"a\.jsonl:2: no verifiable answer"):
    tasks.load_gsm8k_jsonl(no_final)
  not_number = _write(tmp_path / "b.jsonl", [{"question": "q", "answer": "#### seven"}])
  with pytest.raises(ValueError, match=r"b\.jsonl:1: no verifiable answer"):
    tasks.load_gsm8k_jsonl(not_number)
  bad_json = _write(tmp_path / "c.jsonl", ROWS[:2], ["{not json\n"])
  with pytest.raises(ValueError, match=r"c\.jsonl:3: invalid JSON"):
    tasks.load_gsm8k_jsonl(bad_json)
  missing_field = _write(tmp_path / "d.jsonl", [{"question": "q"}])
  with pytest.raises(ValueError, match=r"d\.jsonl:1: missing string field 'answer'"):
    tasks.load_gsm8k_jsonl(missing_field)
  empty = _write(tmp_path / "e.jsonl", [], ["\n"])
  with pytest.raises(ValueError, match=r"e\.jsonl: no problems"):
    tasks.load_gsm8k_jsonl(empty)
  with pytest.raises(ValueError, match="no files"):
    tasks.JsonlTask().generate("train")
