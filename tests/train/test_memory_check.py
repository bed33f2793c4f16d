"""The trainer's startup memory check: the compiler's plan of the update is printed, and a config
whose update exceeds the limit is refused with the keys to lower named."""

import pytest
from trainutil import load_config

from postrain import train


def _config(**memory):
  c = load_config()
  c.sft.steps = 0
  c.memory.check = "on"
  c.memory.update(memory)
  return c


def test_refuses_an_update_over_the_limit(tmp_path, capsys):
  with pytest.raises(MemoryError, match=r"rl\.microbatch_rows.*model\.remat"):
    train.Trainer(_config(limit_gb=1e-6), str(tmp_path))
  assert "[memory] rl update: peak" in capsys.readouterr().out


def test_prints_the_plan_and_micro_batches_lower_it(tmp_path):
  c = _config(limit_gb=64.0)
  whole = train.Trainer(c, str(tmp_path / "a")).update_memory["rl"]
  rows = c.rl.prompts_per_step * c.rl.group_size // c.rl.updates_per_batch
  c.rl.microbatch_rows = c.rl.group_size
  assert rows > c.rl.microbatch_rows
  micro = train.Trainer(c, str(tmp_path / "b")).update_memory["rl"]
  assert 0 < micro.temporaries < whole.temporaries
  assert whole.peak > whole.arguments
