"""`python -m postrain.select --config configs/select_hes.py[:arg] [--config.key=value ...] --workdir DIR`."""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a selection config (e.g. configs/select_hes.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output directory: selected.jsonl, scores, histogram, metrics, tfds."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  from postrain.select import run

  try:
    metrics = run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as err:  # a bad config or input: one clear line
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  summary = {k: metrics[k] for k in ("scorer", "n_pool", "n_scored", "n_selected", "score")}
  print(json.dumps(summary))
  print(f"selected examples written to {_WORKDIR.value}/selected.jsonl")


if __name__ == "__main__":
  app.run(main)
