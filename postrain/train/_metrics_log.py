"""Metrics: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL log, and a PNG plot."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)


class MetricsWriter:
  """Writes scalars to `workdir/tensorboard` and one JSON object per record to `workdir/metrics.jsonl`.

  On resume (`resume_step` given) the log is cut back to what the checkpoint of that step had
  seen: train records up to the step and evaluations *before* it (the evaluation at the resumed
  step runs again after the restore), so each (step, kind) record appears exactly once. A torn
  last line (a kill or a full disk mid-write) is dropped with a warning naming the file; an
  unreadable line before the last is an error naming the file and line.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    from tensorboardX import SummaryWriter  # imported lazily: pure-function users never need it

    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None:
      _truncate_jsonl(self.jsonl_path, resume_step)
    elif os.path.exists(self.jsonl_path):
      os.remove(self.jsonl_path)
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")

  def write(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> None:
    record = {"step": int(step), "kind": kind}
    for name, value in metrics.items():
      value = float(np.asarray(value))
      record[name] = value if math.isfinite(value) else None
      self._tb.add_scalar(f"{kind}/{name}", value, int(step))
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    self._tb.close()
    self._jsonl.close()


def check_finite(metrics: Mapping[str, Any], *, step: int, kind: str) -> None:
  """Raises FloatingPointError naming the first non-finite metric (in `metrics` order) and the
  step: the trainer's `check_finite` option (one host-side check of the already logged values)."""
  for name, value in metrics.items():
    value = float(np.asarray(value))
    if not math.isfinite(value):
      raise FloatingPointError(
        f"check_finite: {kind} metric {name!r} is {value} at step {step} (the first non-finite "
        "value; the state of this step is not checkpointed)"
      )


def _truncate_jsonl(path: str, last_step: int) -> None:
  if not os.path.exists(path):
    return
  records = _read_records(path, tolerate_torn_tail=True)
  kept = [
    line
    for line, r in records
    if r.get("step", 0) < last_step or (r.get("step") == last_step and r.get("kind") != "eval")
  ]
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _read_records(path: str, *, tolerate_torn_tail: bool) -> list[tuple[str, dict[str, Any]]]:
  """(line, record) pairs of a JSONL file; a torn last line is dropped with a warning when
  `tolerate_torn_tail`, any other bad line raises ValueError naming the file and line."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  out = []
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      record = json.loads(raw.decode("utf-8"))
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      if tolerate_torn_tail and i == last:
        _LOG.warning(
          "%s:%d: dropping a torn last line (%s): %r",
          path,
          i + 1,
          err,
          raw[:80].decode("utf-8", "replace"),
        )
        continue
      raise ValueError(f"{path}:{i + 1}: unreadable metrics line ({err})") from None
    out.append((raw.decode("utf-8") + "\n", record))
  return out


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl (a torn last line is dropped with a warning)."""
  return [r for _, r in _read_records(path, tolerate_torn_tail=True)]


def plot_curves(jsonl_path: str, png_path: str, *, title: str = "") -> None:
  """Plots training reward and held-out accuracy over steps into `png_path`."""
  # A bare Figure renders with Agg without touching pyplot's global backend (notebooks keep theirs).
  from matplotlib.figure import Figure

  records = read_jsonl(jsonl_path)
  train = [r for r in records if r["kind"] == "train" and r.get("reward_mean") is not None]
  evals = [r for r in records if r["kind"] == "eval"]
  fig = Figure(figsize=(7, 4), dpi=110)
  ax = fig.subplots()
  if train:
    ax.plot(
      [r["step"] for r in train],
      [r["reward_mean"] for r in train],
      lw=1,
      alpha=0.6,
      label="train reward (mean)",
    )
  for key, style in (("pass1_greedy", "o-"), ("pass1_sampled", "s--")):
    pts = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
    if pts:
      ax.plot(*zip(*pts), style, label=f"held-out {key}")
  ax.set_xlabel("step")
  ax.set_ylabel("reward / accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(png_path)
