"""Orbax checkpoints for the trainer: save every N steps, keep K, resume from the newest readable one.

A checkpoint is written to a temporary directory and renamed when complete (orbax's atomic commit),
so a run killed mid-save leaves an unfinished directory that is never picked up (and is removed
on the next start). A directory that is complete but unreadable (a truncated or overwritten
file, a disk error) is moved aside to `<step>.corrupt-<unix time>` and the previous checkpoint is
restored, so the run retrains that step and writes a fresh checkpoint in its place. When no
checkpoint can be restored at all (more likely a changed model than a bad disk) nothing is moved
and the run stops with an error naming the directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

_LOG = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores `(state pytree, metadata dict)` pairs under `directory/<step>`.

  Args:
    directory: where step directories go (created if absent).
    every: save interval in steps (`maybe_save` is a no-op in between).
    keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, *, every: int, keep: int):
    if every < 1:
      raise ValueError(f"`checkpoint.every` must be >= 1, got {every}.")
    if keep < 1:
      raise ValueError(f"`checkpoint.keep` must be >= 1, got {keep}.")
    self.every = every
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True
      ),
      item_names=("state", "meta"),
    )

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints on disk, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def maybe_save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Saves when `step` is a multiple of `every` (or `force`); returns whether it saved."""
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    return True

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint into the structure/shardings of `abstract_state`.

    Returns `(step, state, meta)`, or None when there is no checkpoint. Unreadable checkpoints
    newer than the restored one are moved aside (`<step>.corrupt-<time>`) so the run writes them
    again; if none is readable, raises ValueError and moves nothing.
    """
    failed: list[tuple[int, Exception]] = []
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
          ),
        )
      except Exception as err:
        _LOG.warning("checkpoint at step %d is unreadable (%s); trying the previous one", step, err)
        failed.append((step, err))
        continue
      self._move_aside([s for s, _ in failed])
      return step, restored.state, dict(restored.meta)
    if failed:
      step, err = failed[0]
      raise ValueError(
        f"no checkpoint in {self.directory} can be restored (step {step}: "
        f"{type(err).__name__}: {str(err)[:300]}). If the model or config changed, use a new "
        "--workdir; to start this run over, move the checkpoints directory aside."
      )
    return None

  def _move_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories to `<step>.corrupt-<time>` (process 0 only)."""
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = int(time.time())
      for step in steps:
        path = os.path.join(self.directory, str(step))
        target = f"{path}.corrupt-{stamp}"
        try:
          os.rename(path, target)
        except FileNotFoundError:
          continue
        _LOG.warning(
          "moved the unreadable checkpoint of step %d aside to %s; it will be written again",
          step,
          target,
        )
    if jax.process_count() > 1:  # the others list the directory only after process 0 renamed
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("postrain_checkpoint_move_aside")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any) -> Any:
  """The `jax.ShapeDtypeStruct` tree (with shardings) orbax restores into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class StopFlag:
  """Turns SIGTERM (and SIGINT) into a flag the loop polls, so it can save and exit cleanly."""

  def __init__(self):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}
    self.signum: int | None = None  # the signal that asked to stop

  def __enter__(self) -> StopFlag:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    _LOG.warning("received signal %d: saving a checkpoint and stopping", signum)
    if self.signum is None:
      self.signum = signum
    self._event.set()

  @property
  def stop_requested(self) -> bool:
    return self._event.is_set()


def check_workdir_config(workdir: str, config_json: str) -> None:
  """Records the run's config in `workdir`, or refuses a workdir that belongs to another config.

  Keys under `allowed_to_differ` may change between restarts (e.g. logging cadence); the rest must
  match so a resumed run continues the same experiment.
  """
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    current = json.loads(config_json)
    diff = sorted(_diff_keys(previous, current, defaults=_defaults()))
    if diff:
      raise ValueError(
        f"workdir {workdir!r} belongs to a different config (keys differ: {', '.join(diff)}). "
        "Use a new --workdir, or restore the original settings to resume."
      )
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(config_json)
  os.replace(tmp, path)


# Settings that do not change the experiment; a resumed run may alter them.
_MAY_DIFFER = {"log_every", "checkpoint.every", "checkpoint.keep", "progress_bar", "eval.every"}
_MAY_DIFFER |= {"check_finite"}  # a debug switch
# The layout over devices and processes: a checkpoint restores into any mesh (same values).
_MAY_DIFFER |= {
  "mesh",
  "sharding_rules",
  "logical_axis_rules",
  "sharding_allow_replication",
  "distributed",
}


def _defaults() -> dict[str, Any]:
  from postrain.train.config import base_config

  return json.loads(base_config().to_json())


def _diff_keys(a: Any, b: Any, prefix: str = "", defaults: Any = None) -> set[str]:
  """Keys whose values differ between the recorded config `a` and the current `b`. A key that
  `a` lacks and `b` holds at its default (`defaults`: the schema's) is a key added to postrain
  after the run started: not a difference, so older workdirs still resume."""
  if isinstance(a, dict) and isinstance(b, dict):
    defaults = defaults if isinstance(defaults, dict) else {}
    out: set[str] = set()
    for key in set(a) | set(b):
      name = f"{prefix}{key}"
      if name in _MAY_DIFFER:
        continue
      if key not in a and key in defaults and b[key] == defaults[key]:
        continue
      if key not in a or key not in b:
        out.add(name)
      else:
        out |= _diff_keys(a[key], b[key], name + ".", defaults.get(key))
    return out
  return set() if a == b else {prefix.rstrip(".")}
