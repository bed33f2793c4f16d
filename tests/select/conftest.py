"""Shared fixture: a tiny model trained for a few SFT steps by the Trainer (once per session)."""

import os

import pytest
from selectutil import REPO


def tiny_config():
  from postrain.train.config import load_config_file

  c = load_config_file(os.path.join(REPO, "configs", "default.py"), "scale=test")
  c.mode = "sft"
  c.task.num_train, c.task.num_eval = 40, 8
  c.sft.steps, c.sft.batch_size = 3, 8
  c.checkpoint.every = 3
  c.eval.num_problems, c.eval.k = 4, 1
  c.progress_bar = False
  return c


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
  """Workdir of a finished 3-step SFT run of the `scale=test` model on 40 chain sums."""
  from postrain import train

  workdir = str(tmp_path_factory.mktemp("sft_run"))
  train.train(tiny_config(), workdir)
  return workdir
