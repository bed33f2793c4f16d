"""End-to-end tests of `python -m postrain.select` (HES and GRACE selection from a checkpoint)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from selectutil import REPO

from postrain import select, selection, tasks
from postrain.train import _data

CONFIG = os.path.join(REPO, "configs", "select_hes.py")


def _config(checkpoint, **kw):
  from postrain.train.config import load_config_file

  c = load_config_file(CONFIG)
  c.checkpoint = checkpoint
  c.progress_bar = False
  c.batch_size = 16
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def scorer(sft_run):
  return select.load_checkpoint(sft_run)


def test_hes_selection_matches_independent_scores(sft_run, scorer, tmp_path):
  c = _config(sft_run, fraction=0.3)
  out = str(tmp_path / "hes")
  metrics = select.run(c, out, scorer=scorer)
  problems = scorer.data.train
  n = len(problems)
  assert metrics["n_pool"] == n == 40
  rows = _read_jsonl(os.path.join(out, "selected.jsonl"))
  assert len(rows) == round(0.3 * n) == 12

  # Independent scores: select.model_hes on the SFT rows, one problem at a time (no padding
  # batch, a different batch shape than the command's).
  model = scorer.model
  ref = []
  for p in problems:
    b = _data.sft_batch(scorer.data, [p], c.max_len)
    ref.append(
      float(
        select.model_hes(
          model, b["tokens"], b["loss_mask"], valid=b["valid"], ratio=0.005, impl="naive"
        )[0]
      )
    )
  ref = np.asarray(ref)
  by_id = {r["id"]: r["score"] for r in _read_jsonl(os.path.join(out, "scores.jsonl"))}
  np.testing.assert_allclose([by_id[p.id] for p in problems], ref, rtol=1e-4, atol=1e-5)
  # The selected rows are the highest-scoring ones (ties resolved by index, so compare values).
  chosen = sorted(ref, reverse=True)[:12]
  got = sorted((ref[[p.id for p in problems].index(r["id"])] for r in rows), reverse=True)
  np.testing.assert_allclose(got, chosen, rtol=1e-6)
  assert min(r["score"] for r in rows) >= np.sort(ref)[-13] - 1e-5
  # Rows are in descending score order and readable as a GSM8K JSONL task.
  assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
  loaded = tasks.load_gsm8k_jsonl(os.path.join(out, "selected.jsonl"))
  assert len(loaded) == 12
  for q, r in zip(loaded, rows):
    src = next(p for p in problems if p.id == r["id"])
    assert q.question == src.question and q.answer == src.answer
    assert tasks.reference_solution(q) is not None
  # Histogram, metrics, tfds dataset.
  png = os.path.join(out, "histogram.png")
  assert os.path.getsize(png) > 1000
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["n_selected"] == 12
  assert saved["intrinsic"]["selected"]["n_examples"] == 12.0
  assert saved["intrinsic"]["pool"]["n_examples"] == 40.0
  source_dir = os.path.join(out, "tfds")
  back = tasks.load_task_problems(source_dir, "selected", "train")
  assert sorted(p.question for p in back) == sorted(r["question"] for r in rows)


def test_grace_selection_matches_independent_scores(sft_run, scorer, tmp_path):
  c = _config(sft_run, scorer="grace", fraction=0.25)
  out = str(tmp_path / "grace")
  select.run(c, out, scorer=scorer)
  problems = scorer.data.train
  rows = _read_jsonl(os.path.join(out, "selected.jsonl"))
  assert len(rows) == 10
  model, tok = scorer.model, scorer.data.tokenizer
  ref = []
  for p in problems:  # independent packing: whole-solution lines, then model_grace_scores
    prompt, target = tasks.sft_example(p, instruction=scorer.data.instruction)
    lines = target.strip("\n").split("\n")
    steps = [tok.encode("\n" + line) for line in lines[:-1]]
    packed = selection.pack_steps(
      [tok.bos_id] * (tok.bos_id >= 0) + tok.encode(prompt),
      steps,
      [*tok.encode("\n" + lines[-1]), tok.eos_id],
      length=c.max_len,
    )
    g = select.model_grace_scores(
      model,
      packed["tokens"][None],
      packed["segment_ids"][None],
      packed["answer_mask"][None],
      num_steps=len(steps),
      valid=packed["valid"][None],
    )
    ref.append(float(g.value[0]))
  ref = np.asarray(ref)
  by_id = {r["id"]: r["score"] for r in _read_jsonl(os.path.join(out, "scores.jsonl"))}
  np.testing.assert_allclose([by_id[p.id] for p in problems], ref, rtol=1e-4, atol=1e-5)
  top = set(np.argsort(-ref, kind="stable")[:10])
  assert {r["id"] for r in rows} == {problems[i].id for i in top}


def test_selection_from_jsonl_pool(sft_run, scorer, tmp_path):
  src = tmp_path / "pool.jsonl"
  problems = scorer.data.train[:10]
  select.write_jsonl(str(src), problems, np.zeros(10))
  c = _config(sft_run, fraction=0.5, **{"data.source": "jsonl", "data.jsonl_path": str(src)})
  c.output.tfds = False
  metrics = select.run(c, str(tmp_path / "out"), scorer=scorer)
  assert metrics["n_pool"] == 10 and metrics["n_selected"] == 5
  assert len(_read_jsonl(str(tmp_path / "out" / "selected.jsonl"))) == 5


@pytest.mark.parametrize(
  ("key", "value", "match"),
  [
    ("scorer", "perplexity", "config.scorer"),
    ("fraction", 0.0, "config.fraction"),
    ("fraction", 1.5, "config.fraction"),
    ("rounding", "up", "config.rounding"),
    ("data.source", "hub", "config.data.source"),
  ],
)
def test_bad_config_values(key, value, match):
  c = _config("/nonexistent", **{key: value})
  with pytest.raises(ValueError, match=match):
    select.validate(c)


def test_missing_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    select.run(_config(str(tmp_path / "nope")), str(tmp_path / "out"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="not a postrain workdir"):
    select.run(_config(str(empty)), str(tmp_path / "out"))
  (empty / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    select.run(_config(str(empty)), str(tmp_path / "out"))


def test_num_selected():
  assert select.num_selected(10, 0.2) == 2
  assert select.num_selected(40, 0.3) == 12
  assert select.num_selected(7, 0.5) == 4  # half up
  assert select.num_selected(7, 0.5, "floor") == 3
  assert select.num_selected(7, 0.01) == 1  # at least one
  assert select.num_selected(0, 0.5) == 0


def test_cli_end_to_end_and_errors(sft_run, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "postrain.select", f"--config={CONFIG}"]
  out = tmp_path / "cli"
  proc = subprocess.run(
    [*base, f"--config.checkpoint={sft_run}", "--config.fraction=0.1", f"--workdir={out}"],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(_read_jsonl(str(out / "selected.jsonl"))) == 4
  assert (out / "histogram.png").exists()
  bad = subprocess.run(
    [*base, f"--config.checkpoint={sft_run}", "--config.scorer=ppl", f"--workdir={out}"],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert bad.returncode == 2 and "config.scorer" in bad.stderr
  typo = subprocess.run(
    [*base, "--config.fractoin=0.2", f"--workdir={out}"],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert typo.returncode != 0
