"""A larger tiny teacher for distillation, trained by postrain itself (SFT on chain sums, offline).

Train it first, then distil it into the smaller student of `chain_sum_opd.py` / `chain_sum_mopd.py`:

  python -m postrain.train --config configs/chain_sum_teacher.py --workdir runs/teacher
  python -m postrain.train --config configs/chain_sum_opd.py --workdir runs/opd \\
      --config.teacher.path=runs/teacher
  python -m postrain.train --config configs/chain_sum_mopd.py --workdir runs/mopd \\
      --config.teacher.path=runs/teacher

The student reads the teacher's sentencepiece tokenizer (same token ids), so both runs must use
the same task settings. `:mode=rl` adds GSPO after the SFT warm start; `:scale=smoke` is a
one-minute check.
"""

from postrain.train import config as base

# The task every distillation config shares: chain sums of 3 one-digit terms.
TASK_KWARGS = dict(min_terms=3, max_terms=3, min_digits=1, max_digits=1)


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default", mode="sft")
  c = base.base_config()
  c.mode = arg.mode
  c.task.name = "chain_sum"
  c.task.kwargs = dict(TASK_KWARGS)
  c.task.num_train = 2500  # the 3-term one-digit space has ~3000 distinct problems
  c.task.num_eval = 200
  c.task.instruction = ""
  c.tokenizer.vocab_size = 256

  # Twice the student's width (chain_sum_opd.py: d=64).
  c.model.name = "tiny"
  c.model.overrides = dict(
    embed_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32, mlp_dim=512
  )
  c.sft.steps = 500
  c.sft.batch_size = 64
  c.sft.lr = 3e-3
  c.sft.max_len = 96

  base.set_algorithm(c, "gspo")
  c.rl.steps = 60 if arg.mode == "rl" else 0
  c.rl.max_new_tokens = 40
  c.rl.cache_size = 128
  c.eval.every = 100
  c.eval.num_problems = 200
  c.eval.max_new_tokens = 40
  c.checkpoint.every = 100
  if arg.scale == "smoke":
    c.task.num_train, c.task.num_eval = 300, 32
    c.sft.steps, c.eval.num_problems, c.eval.k = 20, 32, 2
    c.rl.steps = min(c.rl.steps, 4)
  return c
