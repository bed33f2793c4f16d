"""The Trainer and `python -m postrain.train` on a device mesh (8 fake CPU devices, see conftest):
same numbers as one device, checkpoints that resume under another mesh, bad meshes refused early."""

import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
import trainer_case as case
from jax.sharding import PartitionSpec as P

from postrain import train


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """Workdir of the unsharded run: the CLI in a one-device process."""
  if jax.device_count() < 8:  # this process cannot host the mesh: conftest runs the tests in an
    return None  # 8-device child process, which builds its own fixtures
  workdir = str(tmp_path_factory.mktemp("one_device") / "w")
  case.run_one_device(workdir)
  return workdir


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
  """(workdir, trainer) of the same run in this process on a data=2 x fsdp=2 x tensor=2 mesh."""
  if jax.device_count() < 8:  # this process cannot host the mesh: conftest runs the tests in an
    return None  # 8-device child process, which builds its own fixtures
  workdir = str(tmp_path_factory.mktemp("mesh222") / "w")
  trainer = train.Trainer(case.config(data=2, fsdp=2, tensor=2), workdir)
  trainer.run()
  return workdir, trainer


def _assert_trees_equal(actual, expected, what):
  a, e = case.flat(actual), case.flat(expected)
  assert a.keys() == e.keys(), what
  for key in e:
    np.testing.assert_array_equal(a[key], e[key], err_msg=f"{what} {key}")


@pytest.mark.slow
def test_trainer_on_a_2x2x2_mesh_matches_one_device(reference_run, mesh_run):
  workdir, trainer = mesh_run
  assert dict(trainer.mesh.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  # The parameters really are split: the embedding [V, D] over (tensor, fsdp), the batch over 4.
  emb = trainer.params["embedding"].get_value()
  assert emb.sharding.spec == P("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 2, emb.shape[1] // 2)
  assert trainer.mesh.batch_ways == 4
  mu = jax.tree.leaves(trainer.opt_state)[1]  # an Adam moment mirrors its parameter's sharding
  assert len(mu.sharding.device_set) == 8 and not mu.sharding.is_fully_replicated

  steps = case.checkpoint_steps(reference_run)
  assert steps == case.checkpoint_steps(workdir) == [2, 4, 5]
  case.assert_records_close(case.train_records(workdir), case.train_records(reference_run))
  ref = case.restore_numpy(reference_run, 5)
  case.assert_trees_close(jax.device_get(trainer.params), ref["params"], "final params")
  case.assert_trees_close(jax.device_get(trainer.opt_state), ref["opt_state"], "final Adam state")
  # The mesh run's own checkpoint holds exactly its final state.
  saved = case.restore_numpy(workdir, 5)
  _assert_trees_equal(jax.device_get(trainer.params), saved["params"], "saved")


@pytest.mark.slow
def test_checkpoint_resumes_under_another_mesh(mesh_run, tmp_path):
  workdir, trainer = mesh_run
  resumed = str(tmp_path / "w")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "5"))  # resume from step 4 (RL state)
  new = train.Trainer(case.config(data=2, fsdp=4, tensor=1), resumed)
  new._restore()
  assert new.step == 4
  saved = case.restore_numpy(resumed, 4)
  state = new._state()
  assert set(state) == {"params", "opt_state", "ref_params"}  # the KL term's frozen reference too
  _assert_trees_equal(jax.device_get(state), saved, "restored")
  for x, s in zip(jax.tree.leaves(new.params), jax.tree.leaves(new.param_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
    assert dict(x.sharding.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  emb = new.params["embedding"].get_value()
  assert emb.addressable_shards[0].data.shape == (emb.shape[0], emb.shape[1] // 4)

  new.run()  # the last RL step on the new mesh
  assert case.checkpoint_steps(resumed) == [2, 4, 5]
  case.assert_records_close(case.train_records(resumed), case.train_records(workdir))
  case.assert_trees_close(
    jax.device_get(new.params), jax.device_get(trainer.params), "final params"
  )


# -- bad meshes stop before anything is written or compiled ---------------------------------------


@pytest.mark.parametrize(
  "mesh, match",
  [
    ({"data": 2, "fsdp": 2}, r"config\.mesh.*has 4 devices, but there are 8"),
    ({"data": -1, "fsdp": -1}, r"config\.mesh: axes \['data', 'fsdp'\] are all -1"),
    ({"data": 3, "fsdp": -1}, r"config\.mesh.*'fsdp'=-1.*product 3 does not divide the 8"),
    ({"tensor": 0}, r"config\.mesh\.tensor: must be a positive int or -1"),
  ],
)
def test_bad_mesh_is_refused_before_the_workdir_is_touched(mesh, match, tmp_path):
  workdir = str(tmp_path / "w")
  with pytest.raises(ValueError, match=match):
    train.Trainer(case.config(**mesh), workdir)
  assert not os.path.exists(workdir)


def test_unknown_mesh_axis_is_refused(tmp_path):
  cfg = case.config()
  cfg.mesh.pipeline = 2
  with pytest.raises(ValueError, match=r"config\.mesh\.pipeline: unknown mesh axis"):
    train.Trainer(cfg, str(tmp_path / "w"))


def test_bad_rules_are_refused(tmp_path):
  cfg = case.config()
  cfg.sharding_rules = [("attn/q$", "embed")]
  with pytest.raises(ValueError, match=r"config\.sharding_rules\[0\]"):
    train.Trainer(cfg, str(tmp_path / "w"))
  cfg = case.config()
  cfg.logical_axis_rules = [("embed", "model")]
  with pytest.raises(ValueError, match=r"config\.logical_axis_rules\[0\]"):
    train.Trainer(cfg, str(tmp_path / "w"))


def test_batch_the_mesh_does_not_divide_is_refused(tmp_path):
  cfg = case.config(data=8)
  cfg.sft.batch_size = 12
  with pytest.raises(ValueError, match=r"config\.sft\.batch_size: 12 rows.*8 pieces"):
    train.Trainer(cfg, str(tmp_path / "w"))
  cfg = case.config(data=8)
  cfg.rl.prompts_per_step = 2  # 2 * 4 / 2 = 4 rows per update
  with pytest.raises(ValueError, match=r"config\.rl\.prompts_per_step.*4 rows"):
    train.Trainer(cfg, str(tmp_path / "w"))


def test_parameter_the_mesh_does_not_divide_is_refused(tmp_path):
  # One KV head cannot be split over tensor=2: the error names the parameter and the way out.
  overrides = [(k, v) for k, v in case.OVERRIDES if k != "model.overrides.num_kv_heads"]
  cfg = case.config(overrides, data=4, tensor=2)
  with pytest.raises(ValueError, match=r"'layers/0/attn/k'.*sharding_allow_replication"):
    train.Trainer(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_cli_bad_mesh_is_one_clear_line(tmp_path):
  workdir = str(tmp_path / "w")
  env = case.one_device_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
    [*case.cli_args(workdir), "--config.mesh.fsdp=3"],
    env=env,
    cwd=case.REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "error: config.mesh" in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(workdir)
