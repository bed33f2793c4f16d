"""Two RL steps of the SmolLM2-135M GSPO config on CPU, with the real GGUF weights."""

import json
import os

import pytest

from postrain.train import config as config_lib

CONFIG = os.path.join(
  os.path.dirname(__file__), "..", "..", "configs", "smollm2_arithmetic_gspo.py"
)


@pytest.mark.slow
def test_two_rl_steps_of_smollm2(tmp_path):
  from postrain import train

  cfg = config_lib.load_config_file(CONFIG, "scale=smoke")
  cfg.progress_bar = False
  report = train.train(cfg, str(tmp_path))
  assert report["final"]["step"] == 2
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  rl = [r for r in records if r["kind"] == "train"]
  assert len(rl) == 2
  for r in rl:
    assert r["grad_norm"] is not None and r["entropy"] > 0 and r["response_len"] > 0
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())[-1] == 2
