"""OPD / MOPD through the Trainer: the teacher is the session's `scale=test` run (conftest)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from trainutil import load_config

from postrain import train

pytestmark = pytest.mark.slow


def _student(teacher_dir, mode, **distill):
  c = load_config()  # the teacher's task and sizes: its tokenizer is reused
  c.mode = mode
  c.teacher.source, c.teacher.path = "workdir", teacher_dir
  c.sft.steps, c.rl.steps, c.checkpoint.every = 0, 2, 1
  c.progress_bar = False
  c.distill.update(distill)
  return c


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_mopd_without_peers_equals_opd_through_the_trainer_step(trained_run, tmp_path):
  teacher_dir, _ = trained_run
  runs = {
    "opd": _student(teacher_dir, "opd"),
    "no_peers": _student(teacher_dir, "mopd", max_peers=0, max_failures=0),
    "mopd": _student(teacher_dir, "mopd", context="contrastive"),
  }
  params, metrics = {}, {}
  for name, cfg in runs.items():
    tr = train.Trainer(cfg, str(tmp_path / name))
    tr._enter_rl()
    metrics[name] = tr._distill_step()
    params[name] = _leaves(tr.params)
    if name == "opd":
      # The teacher is the trained run's newest checkpoint (read through another restore path).
      ref = train.Trainer(load_config(), teacher_dir)
      ref._restore()
      for a, b in zip(_leaves(tr.distiller.teacher_params), _leaves(ref.params)):
        np.testing.assert_array_equal(a, b)
  for a, b in zip(params["opd"], params["no_peers"]):
    np.testing.assert_allclose(a, b, atol=1e-7)
  assert metrics["no_peers"]["peer_frac"] == 0.0
  np.testing.assert_allclose(metrics["no_peers"]["loss"], metrics["opd"]["loss"], rtol=1e-6)
  # With peers the teacher reads other prompts, so the update differs.
  assert metrics["mopd"]["peer_frac"] > 0
  assert any(not np.allclose(a, b, atol=1e-7) for a, b in zip(params["opd"], params["mopd"]))


@pytest.mark.parametrize(
  "mode, settings",
  [
    ("opd", dict(loss="topk", topk=8, release=True)),
    ("mopd", dict(loss="pg", context="positive")),
  ],
)
def test_short_run_writes_metrics_checkpoints_and_resumes_exactly(
  trained_run, tmp_path, mode, settings
):
  teacher_dir, _ = trained_run
  cfg = _student(teacher_dir, mode, **settings)
  cfg.sft.steps = 2
  if mode == "mopd":
    cfg.teacher.source, cfg.teacher.path = "ema", ""  # self-distillation: EMA state is saved
  first = str(tmp_path / "first")
  report = train.train(cfg, first)
  total = cfg.sft.steps + cfg.rl.steps
  assert report["final"]["step"] == total
  with open(os.path.join(first, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  rows = [r for r in records if r["kind"] == "train" and r["step"] > cfg.sft.steps]
  assert [r["step"] for r in rows] == [3, 4]
  expected = {"loss", "accuracy", "reward_mean", "response_len", "grad_norm"}
  expected |= {"release_frac", "release_kept", "reverse_kl"} if mode == "opd" else {"peer_frac"}
  for r in rows:
    assert expected <= set(r) and all(np.isfinite(r[k]) for k in expected), set(r)
  ckpts = sorted(int(d) for d in os.listdir(os.path.join(first, "checkpoints")) if d.isdigit())
  assert ckpts[-1] == total

  # Resume from the step-3 checkpoint: the rerun must end exactly where the first run ended.
  second = str(tmp_path / "second")
  shutil.copytree(first, second)
  shutil.rmtree(os.path.join(second, "checkpoints", str(total)))
  with open(os.path.join(second, "metrics.jsonl")) as f:
    kept = [line for line in f if json.loads(line)["step"] < total]
  with open(os.path.join(second, "metrics.jsonl"), "w") as f:
    f.writelines(kept)
  train.train(cfg, second)
  done = []
  for wd in (first, second):
    tr = train.Trainer(cfg, wd)
    tr._restore()
    assert tr.step == total
    done.append(tr)
  for a, b in zip(_leaves(done[0]._state()), _leaves(done[1]._state())):
    np.testing.assert_allclose(a, b, atol=1e-6)
  if mode == "mopd":  # the EMA teacher (a field of the state) moved and was restored exactly
    assert "teacher_params" in done[1]._state()
    for a, b in zip(_leaves(done[0].state.teacher), _leaves(done[1].state.teacher)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(
      not np.allclose(t, p) for t, p in zip(_leaves(done[1].state.teacher), _leaves(done[1].params))
    )
