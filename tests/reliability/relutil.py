"""Helpers of the kill / corrupt suite (imported as `relutil`; pytest puts this directory on
sys.path): the CLI run of the tiny test config, the paused harness, and the comparisons."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = os.path.join(REPO, "configs", "default.py") + ":scale=test"
# The unit tests' `scale=test` run, shortened: 4 SFT + 4 RL steps, checkpoints every 2 steps
# (keep 3), evaluations at the RL start, every 2 RL steps and at the end on 4 problems.
OVERRIDES = (
  "--config.progress_bar=False",
  "--config.task.num_train=64",
  "--config.task.num_eval=8",
  "--config.eval.num_problems=4",
  "--config.checkpoint.keep=3",
)
TOTAL_STEPS = 8


def _cmd(workdir, module):
  return [sys.executable, *module, f"--config={CONFIG}", f"--workdir={workdir}", *OVERRIDES]


def _env(**extra):
  # The suite's persistent compilation cache (shared with the in-process tests): an executable
  # loaded from it computes the same bits as a fresh compile (checked: three runs, cold and warm,
  # bitwise-equal parameters and metrics), and it saves most of each run's compile time.
  env = dict(os.environ)
  env.update(
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    JAX_COMPILATION_CACHE_DIR=os.path.join(REPO, ".jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  env.update(extra)
  return env


def run(workdir, timeout=600):
  """The plain CLI, to the end: CompletedProcess (stdout and stderr together)."""
  return subprocess.run(
    _cmd(workdir, ["-m", "postrain.train"]),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    timeout=timeout,
    env=_env(),
    cwd=REPO,
  )


def run_paused(workdir, at, sig, *, timeout=600):
  """Runs the CLI under `_harness.py`, pausing at `at` ("step:K" or "checkpoint:K"); once the
  pause is reached (its marker file exists) sends `sig`. Returns (returncode, output)."""
  marker = os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + ".paused")
  until = "kill" if sig == signal.SIGKILL else "signal"
  proc = subprocess.Popen(
    _cmd(workdir, [os.path.join(HERE, "_harness.py")]),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=_env(HARNESS_MARKER=marker, HARNESS_AT=at, HARNESS_UNTIL=until),
    cwd=REPO,
  )
  try:
    deadline = time.monotonic() + timeout  # a hang guard only: pass/fail never depends on it
    while not os.path.exists(marker):
      if proc.poll() is not None:
        raise AssertionError(f"run ended before {at}:\n{proc.stdout.read()}")
      if time.monotonic() > deadline:
        raise AssertionError(f"{at} not reached in {timeout} s")
      time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc.returncode, out


def copy_workdir(src, dst):
  shutil.copytree(src, dst, symlinks=True)
  return dst


def checkpoint_steps(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def final_params(workdir, step=TOTAL_STEPS):
  """{path: np.ndarray} of the parameters in the checkpoint of `step` (restored without a
  target structure: plain numpy arrays)."""
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "state"))
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  import jax

  flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


# Wall-clock throughput is a timing, not a result.
_TIMINGS = ("train_tokens_per_s", "sample_tokens_per_s", "update_s", "rollout_s", "seconds")


def assert_same_run(workdir, reference):
  """Final parameters bitwise equal; metrics.jsonl holds each (step, kind) exactly once, the
  same keys as the reference's, and equal values (timings aside); report.json's final equal."""
  ref_params, params = final_params(reference), final_params(workdir)
  assert params.keys() == ref_params.keys()
  for name, value in ref_params.items():
    assert params[name].dtype == value.dtype and params[name].shape == value.shape, name
    assert np.array_equal(params[name].view(np.uint8), value.view(np.uint8)), name
  got, want = records(workdir), records(reference)
  keys = [(r["step"], r["kind"]) for r in got]
  assert len(keys) == len(set(keys)), f"duplicated records: {sorted(keys)}"
  assert keys == [(r["step"], r["kind"]) for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g["step"], g["kind"])
    for name, value in w.items():
      if any(t in name for t in _TIMINGS) or name.endswith("_per_s"):
        continue
      # Metrics are float32 device values logged as Python floats: bitwise-equal parameters
      # and the same executables give the same numbers.
      assert g[name] == value, (g["step"], g["kind"], name, g[name], value)
  with (
    open(os.path.join(workdir, "report.json")) as f,
    open(os.path.join(reference, "report.json")) as r,
  ):
    report, ref_report = json.load(f), json.load(r)
  assert report["final"] == ref_report["final"]
  assert "preempted" not in report
  assert [e["step"] for e in report["evals"]] == [e["step"] for e in ref_report["evals"]]


def corrupt_arrays(step_dir):
  """Overwrites every array data file of `step_dir/state` (orbax's OCDBT `d/` files) with random
  bytes of the same size, as a bad disk would: the metadata still says "complete"."""
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  assert files, f"no array files under {step_dir}/state"
  rng = np.random.default_rng(0)
  for f in files:
    size = os.path.getsize(f)
    with open(f, "wb") as fh:
      fh.write(rng.bytes(size))
