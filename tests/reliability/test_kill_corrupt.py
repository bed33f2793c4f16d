"""Kill / corrupt suite (issue 15): a run hit by kill -9 mid-step or mid-checkpoint-write, by a
corrupt newest checkpoint, a torn metrics line or SIGTERM, and then rerun with the same command,
ends exactly like an uninterrupted run: bitwise-equal final parameters and a metrics.jsonl with
each (step, kind) record once and the same values.

Every interruption lands at a fixed point of the run (`_harness.py` pauses there and says so
with a file; the test signals once the file exists), so nothing depends on timing or load. The
runs go two at a time (2 cores): the independent first runs, then the reruns. One test function
checks every scenario and reports each failing one, so `pytest -n 2` runs the suite once.
"""

import concurrent.futures
import glob
import json
import os
import signal

import relutil


def _first_runs(root):
  """The uninterrupted reference and the interrupted runs: {name: (returncode, output)}."""
  jobs = {
    "reference": lambda: _completed(relutil.run(os.path.join(root, "reference"))),
    # Paused inside step 6 (counter at 5), just before its update: checkpoint 4 is on disk.
    "kill_step": lambda: relutil.run_paused(
      os.path.join(root, "kill_step"), "step:5", signal.SIGKILL
    ),
    # Paused inside the save of step 6: its arrays are written, the directory not yet committed.
    "kill_checkpoint": lambda: relutil.run_paused(
      os.path.join(root, "kill_checkpoint"), "checkpoint:6", signal.SIGKILL
    ),
    # SIGTERM during step 6: the trainer finishes the step, saves and exits 143.
    "sigterm": lambda: relutil.run_paused(os.path.join(root, "sigterm"), "step:5", signal.SIGTERM),
  }
  return _parallel(jobs)


def _completed(proc):
  return proc.returncode, proc.stdout


def _parallel(jobs):
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    futures = {name: pool.submit(job) for name, job in jobs.items()}
    return {name: f.result() for name, f in futures.items()}


def _all_runs(root):
  first = _first_runs(root)
  code, out = first["reference"]
  assert code == 0, out
  ref = os.path.join(root, "reference")
  kill_step = os.path.join(root, "kill_step")
  assert first["kill_step"][0] == -signal.SIGKILL, first["kill_step"][1]
  assert first["kill_checkpoint"][0] == -signal.SIGKILL, first["kill_checkpoint"][1]

  # What the interruptions left behind, before the reruns change it.
  state = {
    "kill_step_checkpoints": relutil.checkpoint_steps(kill_step),
    "kill_checkpoint_checkpoints": relutil.checkpoint_steps(os.path.join(root, "kill_checkpoint")),
    "kill_checkpoint_tmp": glob.glob(os.path.join(root, "kill_checkpoint", "checkpoints", "6.*")),
  }
  with open(os.path.join(root, "sigterm", "report.json")) as f:
    state["sigterm_report"] = json.load(f)
  # Torn metrics line: the killed run's log ends in half a record (a kill or a full disk mid-write).
  torn = relutil.copy_workdir(kill_step, os.path.join(root, "torn"))
  with open(os.path.join(torn, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write('{"step": 6, "kind": "train", "reward_me')
  # Corrupt newest checkpoint: the finished reference's step-8 arrays overwritten with noise.
  corrupt = relutil.copy_workdir(ref, os.path.join(root, "corrupt"))
  relutil.corrupt_arrays(os.path.join(corrupt, "checkpoints", "8"))

  names = ("kill_step", "kill_checkpoint", "sigterm", "torn", "corrupt")
  reruns = _parallel(
    {n: (lambda n=n: _completed(relutil.run(os.path.join(root, n)))) for n in names}
  )
  return root, first, reruns, state


def _check_rerun(runs, name):
  root, _, reruns, _ = runs
  code, out = reruns[name]
  assert code == 0, out
  relutil.assert_same_run(os.path.join(root, name), os.path.join(root, "reference"))
  return out


def _kill9_mid_step(runs):
  assert runs[3]["kill_step_checkpoints"] == [2, 4]
  _check_rerun(runs, "kill_step")


def _kill9_mid_checkpoint_write(runs):
  root, _, _, state = runs
  assert 6 not in state["kill_checkpoint_checkpoints"]  # never committed ...
  assert state["kill_checkpoint_tmp"], "no temporary directory of step 6 was left"  # ... but begun
  _check_rerun(runs, "kill_checkpoint")
  # The unfinished directory is cleaned up; the rerun wrote step 6 in full.
  leftovers = [d for d in os.listdir(os.path.join(root, "kill_checkpoint", "checkpoints"))]
  assert sorted(leftovers, key=str) == ["4", "6", "8"], leftovers


def _corrupt_newest_checkpoint(runs):
  root = runs[0]
  out = _check_rerun(runs, "corrupt")
  assert "unreadable" in out
  names = os.listdir(os.path.join(root, "corrupt", "checkpoints"))
  assert len([d for d in names if d.startswith("8.corrupt-")]) == 1, names
  assert relutil.checkpoint_steps(os.path.join(root, "corrupt")) == [4, 6, 8]


def _torn_metrics_line(runs):
  root = runs[0]
  out = _check_rerun(runs, "torn")
  path = os.path.join(root, "torn", "metrics.jsonl")
  assert any(path in line and "torn" in line for line in out.splitlines()), out[-3000:]


def _sigterm(runs):
  _, first, _, state = runs
  code, out = first["sigterm"]
  assert code == 143, out
  assert "preempted at step 6" in out
  assert state["sigterm_report"]["preempted"] == {"step": 6, "signal": signal.SIGTERM}
  assert "final" not in state["sigterm_report"]
  _check_rerun(runs, "sigterm")


def test_kill_corrupt_then_rerun_equals_uninterrupted(tmp_path):
  runs = _all_runs(str(tmp_path))
  failures = {}
  for check in (
    _kill9_mid_step,
    _kill9_mid_checkpoint_write,
    _corrupt_newest_checkpoint,
    _torn_metrics_line,
    _sigterm,
  ):
    try:
      check(runs)
    except AssertionError as err:
      failures[check.__name__.lstrip("_")] = str(err)[-2000:]
  assert not failures, "\n\n".join(f"{name}: {msg}" for name, msg in failures.items())
