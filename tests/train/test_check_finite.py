"""`check_finite`: the first non-finite metric and its step, before that step is checkpointed
(issue 15 item 8)."""

import math
import os

import pytest
from trainutil import load_config

from postrain.train import _metrics_log


def test_check_finite_names_the_first_non_finite_metric_and_step():
  _metrics_log.check_finite({"loss": 1.0, "grad_norm": 2.0}, step=3, kind="train")
  with pytest.raises(FloatingPointError, match=r"train metric 'grad_norm' is nan at step 7"):
    _metrics_log.check_finite(
      {"loss": 1.0, "grad_norm": math.nan, "x": math.inf}, step=7, kind="train"
    )


@pytest.mark.slow
def test_trainer_check_finite_stops_at_the_first_nan_step(tmp_path):
  from postrain import train

  cfg = load_config()
  cfg.check_finite = True
  cfg.sft.lr = math.nan  # step 1's update makes every parameter NaN: step 2's loss is NaN
  cfg.sft.steps, cfg.rl.steps, cfg.checkpoint.every = 2, 0, 2
  workdir = str(tmp_path / "w")
  with pytest.raises(FloatingPointError, match=r"'sft_loss' is nan at step 2"):
    train.train(cfg, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert not [d for d in os.listdir(checkpoints) if d.isdigit()]  # the NaN state is not saved
