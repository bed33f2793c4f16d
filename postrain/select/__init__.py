"""`python -m postrain.select`: score a dataset with a checkpoint by HES or GRACE, keep the top
fraction (arXiv 2605.22389, 2605.13130), write it as JSONL / tfds with a histogram and the
intrinsic dataset metrics (arXiv 2605.13290).

  python -m postrain.select --config configs/select_hes.py --config.checkpoint=runs/default \
    --workdir runs/select_hes

The pure scoring functions live in `postrain.selection`; this package is the command around them.
"""

from postrain.select._load import Scorer, load_checkpoint, load_imported, load_run_config
from postrain.select._score_pool import (
  grace_row,
  hes_batch,
  num_selected,
  plot_histogram,
  pool_problems,
  run,
  score_pool,
  validate,
  write_jsonl,
)
from postrain.select._scoring import model_entropy, model_grace_scores, model_hes

__all__ = [
  "Scorer",
  "grace_row",
  "hes_batch",
  "load_checkpoint",
  "load_imported",
  "load_run_config",
  "model_entropy",
  "model_grace_scores",
  "model_hes",
  "num_selected",
  "plot_histogram",
  "pool_problems",
  "run",
  "score_pool",
  "validate",
  "write_jsonl",
]
