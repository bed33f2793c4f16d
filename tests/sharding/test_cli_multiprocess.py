"""`python -m postrain.train` as two processes (2 CPU devices each) joined by `jax.distributed`
on localhost: one (data=2, fsdp=2) mesh, one SFT and one RL step, one checkpoint written together,
equal to the one-process run."""

import os

import process_group
import pytest
import trainer_case as case

ANY_DEVICES = True  # spawns its own processes: runs in-process whatever this process's devices
TIMEOUT_S = 600
OVERRIDES = (
  ("sft.steps", 1),
  ("rl.steps", 1),
  ("rl.entropy_coef", 0.01),  # a gradient in the RL step although every advantage is 0 here
  ("eval.num_problems", 4),
  ("checkpoint.every", 2),
  ("progress_bar", False),
)


def _run_two_processes(workdir, tmp_path):
  port = process_group.free_port()
  args = case.cli_args(workdir, (*OVERRIDES, ("mesh.data", 2), ("mesh.fsdp", 2)))
  envs = [
    case.one_device_env(
      XLA_FLAGS="--xla_force_host_platform_device_count=2",
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
    )
    for i in range(2)
  ]
  return process_group.run([args, args], envs, tmp_path, timeout_s=TIMEOUT_S, cwd=case.REPO)


@pytest.mark.slow
def test_two_process_cli_run_writes_one_checkpoint_equal_to_one_process(tmp_path):
  reference = str(tmp_path / "one_process")
  case.run_one_device(reference, OVERRIDES)
  workdir = str(tmp_path / "two_processes")
  outs = _run_two_processes(workdir, tmp_path)
  assert "jax.distributed: process 0 of 2" in outs[0]
  assert "jax.distributed: process 1 of 2" in outs[1]
  # Process 0 prints the summary and writes the run's files; both write the checkpoint.
  assert "final     (step 2)" in outs[0] and "final" not in outs[1]
  assert case.checkpoint_steps(workdir) == case.checkpoint_steps(reference) == [2]
  records = case.train_records(workdir)
  assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]  # written once
  case.assert_records_close(records, case.train_records(reference))
  saved, ref = case.restore_numpy(workdir, 2), case.restore_numpy(reference, 2)
  assert any(k.startswith("opt_state") for k in case.flat(saved))
  case.assert_trees_close(saved, ref, "checkpoint")
  assert os.path.exists(os.path.join(workdir, "report.json"))
