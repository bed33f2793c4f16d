"""Data selection: score a run's training data with its checkpoint by HES and keep the top 20%.

  python -m postrain.select --config configs/select_hes.py --config.checkpoint=runs/default \
    --workdir runs/select_hes
  python -m postrain.select --config configs/select_hes.py:scorer=grace,fraction=0.1 \
    --config.checkpoint=runs/default --workdir runs/select_grace
  python -m postrain.select --config configs/select_hes.py --config.checkpoint=runs/gsm8k \
    --config.data.source=jsonl --config.data.jsonl_path=train.jsonl --workdir runs/select_gsm8k

Writes `selected.jsonl` (GSM8K format: train on it with `task.name=jsonl`), `scores.jsonl`,
`histogram.png`, `metrics.json` and the tfds dataset `tfds/postrain_tasks/<output.name>`.
"""

import ml_collections as mlc

from postrain.train import config as base


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scorer="hes", fraction=0.2)
  c = mlc.ConfigDict()
  c.checkpoint = ""  # a postrain workdir: its latest orbax checkpoint, tokenizer and task
  c.model = mlc.ConfigDict()
  c.model.source = "checkpoint"  # "checkpoint", "hf" (safetensors dir) or "gguf" (file)
  c.model.path = ""  # for hf / gguf
  c.model.tokenizer_path = ""  # for hf / gguf: "" = the model's own
  c.model.dtype = "float32"
  c.data = mlc.ConfigDict()
  c.data.source = "task"  # "task": the run's training split; "jsonl": a GSM8K-format file
  c.data.jsonl_path = ""
  c.data.max_examples = 0  # 0: the whole pool
  c.scorer = arg.scorer  # "hes" or "grace"
  c.fraction = arg.fraction  # keep the top fraction, in (0, 1]
  c.rounding = "round"  # k = round(fraction * N) ("ceil": GRACE's ⌈ρ|D|⌉, "floor")
  c.hes = mlc.ConfigDict()
  c.hes.ratio = 0.005  # ρ: the top 0.5% of each solution's token entropies are summed
  c.hes.min_tokens = 1
  c.hes.rounding = "ceil"
  c.grace = mlc.ConfigDict()
  c.grace.alpha = 0.7  # answer alignment weight (1 - alpha on trajectory consistency)
  c.grace.step_rule = "line"  # "line", "paragraph" or "marker" (the paper's rule is unknown)
  c.grace.max_steps = 16
  c.grace.normalize_history = False
  c.batch_size = 32
  c.max_len = 128  # tokens of prompt + solution; longer rows are truncated (HES) or skipped
  c.output = mlc.ConfigDict()
  c.output.tfds = True
  c.output.name = "selected"  # tfds config name
  c.progress_bar = True
  return c
