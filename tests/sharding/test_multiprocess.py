"""Two CPU processes (2 devices each) joined by `jax.distributed` train two RL updates on a
(data=2, fsdp=2) mesh and write one orbax checkpoint, equal to the unsharded single-process run."""

import json
import os
import sys

import jax
import numpy as np
import process_group
import pytest
import sharding_case as case
from jax.sharding import SingleDeviceSharding

from postrain.train import _checkpoint

ANY_DEVICES = True  # spawns its own processes: runs in-process whatever this process's devices
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_two_process_worker.py")
TIMEOUT_S = 600


@pytest.mark.slow
def test_two_processes_train_and_checkpoint(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
  port = process_group.free_port()
  cmds = [[sys.executable, WORKER, str(port), str(i), str(tmp_path)] for i in range(2)]
  process_group.run(cmds, [env, env], tmp_path, timeout_s=TIMEOUT_S)

  done = [json.loads((tmp_path / f"done_{i}.json").read_text()) for i in range(2)]
  assert [d["rows"] for d in done] == [[0, 4], [4, 8]]  # each process fed its half of the batch
  ref = case.reference()
  ref_losses = [s[0] for s in ref["steps"]]
  for d in done:
    np.testing.assert_allclose(d["losses"], ref_losses, rtol=1e-5, atol=1e-6)

  ckpt = _checkpoint.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=1)
  assert ckpt.steps() == [2]
  _, _, ref_params, ref_opt = ref["steps"][1]
  expected = {"params": ref_params, "opt_state": ref_opt}
  dev = SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=dev), expected
  )
  step, restored, meta = ckpt.restore_latest(target)
  assert step == 2
  np.testing.assert_allclose(meta["losses"], ref_losses, rtol=1e-5, atol=1e-6)
  assert len(jax.tree.leaves(restored)) == len(jax.tree.leaves(expected))
  for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
