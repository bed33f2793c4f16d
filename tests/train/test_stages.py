"""The stage registry (`postrain.train.stages`), and the "Add a stage" recipe of
docs/architecture.md followed to the letter: a reward stage with its own config section and
check, defined here, chosen by a config file, its key set from the command line, run at
`:scale=test`."""

import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest
from trainutil import REPO, load_config, run_cli

from postrain.train import config, rl_batch, stages

# -- the documented example: a length penalty on the rewards -----------------------------------


def penalize(rewards, ctx):
  """rewards f32[B], ctx.lengths i32[B] -> rewards - coef * lengths (and the mean penalty)."""
  penalty = ctx.rl.length_penalty.coef * np.asarray(ctx.lengths, np.float32)
  return rewards - penalty, {"length_penalty": float(np.mean(penalty))}


def _check(c, need):
  coef = c.rl.length_penalty.coef
  need(coef >= 0, "rl.length_penalty.coef", f"must be >= 0, got {coef}")


LENGTH_PENALTY = stages.Stage(
  "length_penalty", penalize, "rewards", section=dict(coef=0.0), check=_check
)
PATH = f"{__name__}:LENGTH_PENALTY"


def test_a_user_stage_brings_its_config_section_and_check():
  c = stages.use(config.base_config(), PATH)
  assert c.rl.stages == (PATH,) and c.rl.length_penalty.coef == 0.0
  config.validate(c)
  c.rl.length_penalty.coef = -1.0
  with pytest.raises(ValueError, match=r"config\.rl\.length_penalty\.coef: must be >= 0"):
    config.validate(c)
  with pytest.raises(ValueError, match="is taken"):
    stages.use(c, PATH)
  bad = config.base_config()
  bad.rl.stages = (f"{__name__}:penalize",)  # not a Stage
  with pytest.raises(ValueError, match=r"config\.rl\.stages: .* is not a"):
    config.validate(bad)


def test_stages_run_at_their_place_in_registry_order():
  c = stages.use(config.base_config(), PATH)
  c.rl.length_penalty.coef = 0.5
  rewards, lengths = np.array([1.0, 0.0, 1.0, 1.0], np.float32), np.array([2, 4, 6, 0])
  ctx = stages.StageContext(rl=c.rl, lengths=lengths)
  out, metrics = stages.run("rewards", rewards, ctx)
  np.testing.assert_allclose(out, [0.0, -2.0, -2.0, 1.0])  # by hand: r - 0.5 * len
  assert metrics == {"length_penalty": 1.5}
  same, none = stages.run("prompts", [[1, 2]], ctx)  # nothing enabled at this place
  assert same == [[1, 2]] and none == {}


def test_loss_mask_stages_of_the_registry():
  """DAPO's filter and the temporal window through `rl_batch`, against a numpy loop."""
  c = config.base_config()
  c.rl.group_size, c.rl.dynamic_sampling = 2, True
  c.rl.temporal.enabled, c.rl.temporal.start_frac, c.rl.temporal.end_progress = True, 0.5, 1.0
  b, t = 4, 6
  mask = np.zeros((b, t), np.float32)
  mask[:, 2:] = 1.0  # responses of 4 tokens
  out = types.SimpleNamespace(
    tokens=jnp.zeros((b, t), jnp.int32),
    valid=jnp.ones((b, t), bool),
    response_mask=jnp.asarray(mask),
    model_logp=jnp.zeros((b, t)),
    lengths=np.full(b, 4),
    prompt_len=2,
  )
  rewards = np.array([1.0, 1.0, 0.0, 1.0], np.float32)  # group 0 without variance
  batch, _ = rl_batch(out, rewards, rl=c.rl, progress=0.0)
  want = mask.copy()
  want[:2] = 0.0  # DAPO: the zero-variance group
  for i in range(b):  # window at progress 0: rho = 1 - start_frac, P = min(floor(rho L), L - 1)
    p = min(int(np.floor(0.5 * 4)), 3)
    want[i, 2 : 2 + p] = 0.0
  np.testing.assert_array_equal(np.asarray(batch.loss_mask), want)
  np.testing.assert_array_equal(np.asarray(batch.mask), mask)


def _pythonpath_for_this_module():
  """The sys.path entry that makes `__name__` importable (pytest's rootdir-relative name)."""
  root = os.path.dirname(os.path.abspath(__file__))
  for _ in range(__name__.count(".")):
    root = os.path.dirname(root)
  return root


@pytest.mark.slow
def test_the_documented_recipe_from_the_command_line(tmp_path):
  """A config file chooses the stage, the command line sets its key, a `scale=test` run applies
  it: with the test-scale model every verifier reward is 0, so the logged reward mean is exactly
  -coef x the mean response length."""
  cfg = tmp_path / "with_penalty.py"
  cfg.write_text(
    "from postrain.train import config, stages\n\n\n"
    "def get_config(arg=None):\n"
    f"  c = config.load_config_file({os.path.join(REPO, 'configs', 'default.py')!r}, arg)\n"
    f"  return stages.use(c, {PATH!r})\n"
  )
  workdir = str(tmp_path / "run")
  path = os.pathsep.join(
    filter(None, [_pythonpath_for_this_module(), os.environ.get("PYTHONPATH")])
  )
  done = run_cli(
    workdir,
    "--config.rl.length_penalty.coef=0.25",
    "--config.sft.steps=0",
    "--config.rl.steps=2",
    "--config.rl.prompts_per_step=2",
    "--config.eval.num_problems=2",
    "--config.eval.k=1",
    config=str(cfg),
    env={"PYTHONPATH": path},
  )
  assert done.returncode == 0, done.stdout + done.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if json.loads(line)["kind"] == "train"]
  assert len(rows) == 2, rows
  for r in rows:
    assert r["length_penalty"] > 0
    np.testing.assert_allclose(r["length_penalty"], 0.25 * r["response_len"], rtol=1e-5)
    np.testing.assert_allclose(r["reward_mean"], -r["length_penalty"], rtol=1e-5, atol=1e-6)
  with open(os.path.join(workdir, "config.json")) as f:
    recorded = json.load(f)
  assert recorded["rl"]["length_penalty"] == {"coef": 0.25} and recorded["rl"]["stages"] == [PATH]


def test_base_config_sections_come_from_the_registry():
  c = load_config()
  for entry in stages.REGISTRY.values():
    if entry.section:
      assert c.rl[entry.name].to_dict() == dict(entry.section)
