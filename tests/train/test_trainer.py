"""End-to-end trainer tests on the `scale=test` default config (seconds per stage)."""

import glob
import json
import os

import numpy as np
import pytest
from trainutil import load_config

from postrain.train import _metrics_log


def test_run_writes_report_metrics_tensorboard_plot_and_checkpoints(trained_run):
  workdir, report = trained_run
  cfg = load_config()
  assert set(report) >= {"after_sft", "final", "evals"}
  assert report["after_sft"]["step"] == cfg.sft.steps
  assert report["final"]["step"] == cfg.sft.steps + cfg.rl.steps
  for result in (report["after_sft"], report["final"]):
    for key in ("pass1_greedy", "pass1_sampled", f"pass{cfg.eval.k}"):
      assert 0.0 <= result[key] <= 1.0
    # pass@k from k samples can never be below the sampled pass@1.
    assert result[f"pass{cfg.eval.k}"] >= result["pass1_sampled"] - 1e-9
  records = _metrics_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert all(isinstance(r["step"], int) for r in records)
  assert not any(k == "step" for r in records if r["kind"] == "eval" for k in list(r)[2:])
  train_steps = [r["step"] for r in records if r["kind"] == "train"]
  assert train_steps == list(range(1, cfg.sft.steps + cfg.rl.steps + 1))
  rl = [r for r in records if r["kind"] == "train" and "reward_mean" in r]
  assert len(rl) == cfg.rl.steps
  for key in (
    "reward_std",
    "accuracy",
    "zero_variance_frac",
    "entropy",
    "clip_frac_low",
    "clip_frac_high",
    "response_len",
    "sample_tokens_per_s",
    "train_tokens_per_s",
  ):
    assert all(r[key] is not None and np.isfinite(r[key]) for r in rl), key
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  with open(os.path.join(workdir, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == cfg.sft.steps + cfg.rl.steps and len(steps) <= cfg.checkpoint.keep
  with open(os.path.join(workdir, "report.json")) as f:
    assert json.load(f)["final"] == report["final"]


def test_rerun_of_finished_workdir_resumes_and_does_not_retrain(trained_run):
  from postrain import train

  workdir, report = trained_run
  before = os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
  again = train.Trainer(load_config(), workdir)
  again._restore()
  cfg = load_config()
  assert again.step == cfg.sft.steps + cfg.rl.steps
  assert os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) == before
  del report


@pytest.mark.parametrize(
  "override, message",
  [
    ({"rl.group_size": 1}, "rl.group_size"),
    ({"rl.updates_per_batch": 3}, "rl.updates_per_batch"),
    ({"rl.algorithm": "ppo2"}, "rl.algorithm"),
    ({"mode": "dpo"}, "config.mode"),
    ({"rl.top_p": 1.5}, "rl.top_p"),
  ],
)
def test_bad_config_values_fail_with_the_key(override, message, tmp_path):
  from postrain import train

  cfg = load_config()
  for key, value in override.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    train.Trainer(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_workdir_of_a_different_config_is_refused(trained_run):
  from postrain import train

  workdir, _ = trained_run
  cfg = load_config()
  cfg.rl.lr = cfg.rl.lr * 2
  with pytest.raises(ValueError, match=r"different config.*rl\.lr"):
    train.Trainer(cfg, workdir)


def test_missing_jsonl_file_is_a_clear_error(tmp_path):
  from postrain import train

  cfg = load_config()
  cfg.task.name = "jsonl"
  cfg.task.jsonl_path = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
    train.Trainer(cfg, str(tmp_path / "w"))


def _write_gsm8k(path, n, with_answers=True):
  import json as _json

  with open(path, "w") as f:
    for i in range(n):
      a, b = i % 9 + 1, (3 * i) % 7 + 2
      answer = (
        f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}" if with_answers else "no idea"
      )
      f.write(
        _json.dumps(
          {"question": f"Tom has {a} apples and buys {b}. How many now?", "answer": answer}
        )
        + "\n"
      )


def test_trains_on_a_user_gsm8k_jsonl_file(tmp_path):
  from postrain import train

  data = tmp_path / "gsm8k.jsonl"
  _write_gsm8k(data, 60)
  cfg = load_config()
  cfg.task.name, cfg.task.jsonl_path = "jsonl", str(data)
  cfg.task.num_train, cfg.task.num_eval = 40, 8
  cfg.rl.steps = 2
  report = train.train(cfg, str(tmp_path / "w"))
  assert report["final"]["step"] == cfg.sft.steps + 2


def test_jsonl_without_verifiable_answers_is_a_clear_error(tmp_path):
  from postrain import train

  data = tmp_path / "bad.jsonl"
  _write_gsm8k(data, 10, with_answers=False)
  cfg = load_config()
  cfg.task.name, cfg.task.jsonl_path = "jsonl", str(data)
  with pytest.raises(ValueError, match=r"bad\.jsonl"):
    train.Trainer(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.mark.parametrize("terse_frac", [0.0, 0.5, 1.0])
def test_sft_batch_shows_a_fixed_share_of_problems_without_working(trained_run, terse_frac):
  from postrain.train import _data

  workdir, _ = trained_run
  data = _data.load_task_data(load_config(), workdir)
  problems = data.train[:64]
  batch = _data.sft_batch(data, problems, 96, terse_frac=terse_frac)
  targets = data.decode_responses(batch["tokens"], batch["loss_mask"] > 0)
  terse = [t.strip() == f"answer: {p.answer}" for t, p in zip(targets, problems)]
  worked = [
    t.count("=") >= 2 and t.strip().endswith(f"answer: {p.answer}")
    for t, p in zip(targets, problems)
  ]
  assert all(a != b for a, b in zip(terse, worked))  # every row is one form or the other
  assert terse == [_data.is_terse(p, terse_frac) for p in problems]
  assert {0.0: 0, 1.0: 64}.get(terse_frac, sum(terse)) == sum(terse)
  assert 16 <= sum(terse) <= 48 or terse_frac != 0.5
  again = _data.sft_batch(data, problems[::-1], 96, terse_frac=terse_frac)
  assert np.array_equal(again["tokens"][::-1], batch["tokens"])  # a problem's form never changes
