"""Metrics: TensorBoard event files (tensorboardX, no TensorFlow), a JSONL log, and a PNG plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


class MetricsWriter:
  """Writes scalars to `workdir/tensorboard` and one JSON object per record to `workdir/metrics.jsonl`.

  On resume (`resume_step` given), JSONL records past the restored step are dropped so the log
  matches the checkpoint the run continues from.
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


def _truncate_jsonl(path: str, last_step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(kept)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


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
