"""tfds round trip without TensorFlow: write with the builder, read with data_source."""

import json
import sys

import tensorflow_datasets as tfds

from postrain import tasks


def test_round_trip(tmp_path):
  splits = {"train": 6, "test": 3}
  kwargs = {"min_terms": 3, "max_terms": 4}
  builder = tasks.prepare_task_dataset(
    "chain_sum", data_dir=tmp_path, splits=splits, seed=5, task_kwargs=kwargs, name="cs_small"
  )
  task = tasks.get_task("chain_sum", **kwargs)
  for split, n in splits.items():
    expected = task.generate(split, n, seed=5)
    source = builder.as_data_source(split)
    assert len(source) == n
    records = [source[i] for i in range(n)]
    assert [tasks.problem_from_record(r) for r in records] == expected  # order kept
    assert [r["reference"].decode() for r in records] == [
      tasks.reference_solution(p) for p in expected
    ]
    assert json.loads(records[0]["metadata"]) == expected[0].metadata
    # The generic reader (tfds.data_source) sees the same records.
    assert tasks.load_task_problems(tmp_path, "cs_small", split) == expected
    source2 = tfds.data_source("postrain_tasks/cs_small", data_dir=str(tmp_path), split=split)
    assert tasks.problem_from_record(source2[n - 1]) == expected[-1]
  assert list(tmp_path.glob("postrain_tasks/cs_small/1.0.0/*.array_record*"))
  # Preparing again reuses the files.
  again = tasks.prepare_task_dataset(
    "chain_sum", data_dir=tmp_path, splits=splits, seed=5, task_kwargs=kwargs, name="cs_small"
  )
  assert len(again.as_data_source("train")) == 6
  assert "tensorflow" not in sys.modules


def test_jsonl_task_to_tfds(tmp_path):
  path = tmp_path / "train.jsonl"
  rows = [
    {
      "question": f"What is {i} + {i}?",
      "answer": f"{i}+{i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}",
    }
    for i in range(5)
  ]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  builder = tasks.prepare_task_dataset(
    "gsm8k",
    data_dir=tmp_path / "data",
    splits={"train": None},
    task_kwargs={"train": str(path), "test": str(path)},
  )
  problems = [tasks.problem_from_record(r) for r in builder.as_data_source("train")]
  assert sorted(p.answer for p in problems) == ["0", "2", "4", "6", "8"]
  assert all(tasks.reference_solution(p).endswith(f"answer: {p.answer}") for p in problems)


def test_default_config_names_differ(tmp_path):
  from postrain.tasks._tfds import default_config_name

  a = default_config_name("chain_sum", {}, {"train": 2}, 0)
  assert a != default_config_name("chain_sum", {"max_terms": 3}, {"train": 2}, 0)
  assert a != default_config_name("chain_sum", {}, {"train": 2}, 1)
  assert a.startswith("chain_sum_")
