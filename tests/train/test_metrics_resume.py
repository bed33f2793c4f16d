"""metrics.jsonl after a resume holds each (step, kind) record once; a torn last line is dropped
with a warning naming the file (issue 15 item 3)."""

import json
import logging
import os

import pytest

from postrain.train import _metrics_log


def _write(path, records, tail=""):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
    f.write(tail)


def _log(workdir):
  return _metrics_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


RECORDS = [{"step": s, "kind": "train", "loss": float(s)} for s in (1, 2, 3, 4)] + [
  {"step": 4, "kind": "eval", "acc": 0.5},
  {"step": 5, "kind": "train", "loss": 5.0},
  {"step": 6, "kind": "train", "loss": 6.0},
  {"step": 6, "kind": "eval", "acc": 0.6},
]


def test_resume_at_an_eval_step_logs_that_eval_once(tmp_path):
  workdir = str(tmp_path)
  _write(os.path.join(workdir, "metrics.jsonl"), RECORDS)
  writer = _metrics_log.MetricsWriter(workdir, resume_step=4)  # the checkpoint of step 4
  writer.write(4, {"acc": 0.5}, kind="eval")  # the trainer re-runs the eval of the resumed step
  writer.write(5, {"loss": 5.0})
  writer.close()
  keys = [(r["step"], r["kind"]) for r in _log(workdir)]
  assert keys == [(1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "eval"), (5, "train")]


@pytest.mark.parametrize(
  "tail", ['{"step": 7, "kind": "tra', '{"step": 7, "kind": "train", "loss": 7.0', "\xff\xfe"]
)
def test_torn_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path, caplog, tail):
  workdir = str(tmp_path)
  path = os.path.join(workdir, "metrics.jsonl")
  if tail == "\xff\xfe":  # bytes that are not UTF-8 (a disk error)
    _write(path, RECORDS)
    with open(path, "ab") as f:
      f.write(b"\xff\xfe")
  else:
    _write(path, RECORDS, tail)
  with caplog.at_level(logging.WARNING):
    writer = _metrics_log.MetricsWriter(workdir, resume_step=6)
  writer.write(7, {"loss": 7.0})
  writer.close()
  assert any(path in rec.getMessage() and "torn" in rec.getMessage() for rec in caplog.records)
  keys = [(r["step"], r["kind"]) for r in _log(workdir)]
  assert keys == [(r["step"], r["kind"]) for r in RECORDS[:-1]] + [(7, "train")]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path):
  path = os.path.join(str(tmp_path), "metrics.jsonl")
  _write(path, RECORDS[:2])
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"step": 3, "ki\n' + json.dumps(RECORDS[3]) + "\n")
  with pytest.raises(ValueError, match=f"{path}:3"):
    _metrics_log.MetricsWriter(str(tmp_path), resume_step=4)
