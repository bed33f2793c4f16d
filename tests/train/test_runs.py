"""The public run API: `load_run(workdir)` gives the run's config, tokenizer and newest-checkpoint
model; `python -m postrain.train.generate` reads a run through it."""

import jax
import numpy as np
import pytest
from flax import nnx

from postrain import train

pytestmark = pytest.mark.slow


def test_load_run_equals_the_trainers_own_restore(trained_run):
  workdir, report = trained_run
  run = train.load_run(workdir)
  assert run.step == report["final"]["step"]
  assert run.config.rl.algorithm == "gspo" and run.tokenizer.vocab_size > 0
  ref = train.Trainer(run.config, workdir)
  ref._restore()
  got = jax.tree.leaves(train.load_run(workdir).model)
  want = jax.tree.leaves(nnx.merge(ref.graphdef, ref.params, ref.rest))
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  data = run.task_data()
  assert data.test and data.tokenizer is run.tokenizer


def test_load_run_errors_name_the_argument(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config\.teacher\.path: no such directory"):
    train.load_run(str(tmp_path / "nope"), what="config.teacher.path")
  with pytest.raises(FileNotFoundError, match="not a postrain workdir"):
    train.load_run(str(tmp_path))


def test_generate_writes_scored_rollouts_of_the_newest_checkpoint(trained_run, tmp_path):
  from postrain.train import generate

  workdir, report = trained_run
  out = str(tmp_path / "rollouts.npz")
  stats = generate.generate_rollouts(
    workdir, out, num_prompts=2, group_size=2, max_new_tokens=4, seed=0
  )
  assert stats["num_rollouts"] == 4 and stats["checkpoint_step"] == report["final"]["step"]
  data = np.load(out)
  assert data["tokens"].shape[0] == 4 and data["rewards"].shape == (4,)
