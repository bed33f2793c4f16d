"""An unreadable newest checkpoint is moved aside and written again (issue 15 item 1)."""

import glob
import os

import jax.numpy as jnp
import numpy as np
import pytest

from postrain.train import _checkpoint


def _state(value):
  return {"w": jnp.full((64,), value, jnp.float32), "b": jnp.arange(3, dtype=jnp.float32) + value}


def _corrupt(step_dir, how):
  files = [
    f
    for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
    if os.path.isfile(f) and os.path.getsize(f) > 0
  ]
  assert files
  rng = np.random.default_rng(0)
  for f in files:
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
      fh.write(rng.bytes(size) if how == "random" else b"")


@pytest.mark.parametrize("how", ["random", "truncate"])
def test_corrupt_newest_checkpoint_is_moved_aside_and_rewritten(tmp_path, how):
  directory = str(tmp_path / "ckpt")
  ckpt = _checkpoint.Checkpointer(directory, every=2, keep=3)
  for step in (2, 4):
    assert ckpt.maybe_save(step, _state(float(step)), {"step": step})
  ckpt.close()
  _corrupt(os.path.join(directory, "4"), how)

  ckpt = _checkpoint.Checkpointer(directory, every=2, keep=3)
  step, state, meta = ckpt.restore_latest(_checkpoint.abstract_like(_state(0.0)))
  assert step == 2 and meta == {"step": 2}
  np.testing.assert_array_equal(state["w"], np.full(64, 2.0, np.float32))
  aside = [d for d in os.listdir(directory) if d.startswith("4.corrupt-")]
  assert len(aside) == 1, os.listdir(directory)
  assert ckpt.steps() == [2]
  # The retrained step 4 is saved again (on main, `maybe_save` skipped it forever).
  assert ckpt.maybe_save(4, _state(4.0), {"step": 4})
  ckpt.close()

  step, state, _ = _checkpoint.Checkpointer(directory, every=2, keep=3).restore_latest(
    _checkpoint.abstract_like(_state(0.0))
  )
  assert step == 4
  np.testing.assert_array_equal(state["b"], np.arange(3, dtype=np.float32) + 4.0)


def test_no_readable_checkpoint_fails_naming_the_directory_and_moves_nothing(tmp_path):
  directory = str(tmp_path / "ckpt")
  ckpt = _checkpoint.Checkpointer(directory, every=1, keep=2)
  ckpt.maybe_save(1, _state(1.0), {"step": 1})
  ckpt.close()
  wrong = {"w": jnp.zeros((5,), jnp.float32)}  # another model: every restore fails
  with pytest.raises(ValueError, match="can be restored") as err:
    _checkpoint.Checkpointer(directory, every=1, keep=2).restore_latest(
      _checkpoint.abstract_like(wrong)
    )
  assert directory in str(err.value)
  assert sorted(os.listdir(directory)) == ["1"]


def test_workdir_of_an_older_postrain_without_a_new_key_still_resumes(tmp_path):
  from postrain.train.config import base_config

  old = base_config()
  recorded = old.to_dict()
  del recorded["sft"]["allow_truncation"]  # a key added after the run started
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  import json

  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(recorded, f)
  _checkpoint.check_workdir_config(workdir, old.to_json(sort_keys=True))  # at its default: fine
  old.sft.allow_truncation = True
  with pytest.raises(ValueError, match=r"sft\.allow_truncation"):
    _checkpoint.check_workdir_config(workdir, old.to_json(sort_keys=True))
