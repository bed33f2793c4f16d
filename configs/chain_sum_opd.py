"""On-policy distillation (OPD) of the chain-sum teacher into a smaller student, on CPU, offline.

The student (d=64, 2 layers) is warm-started by SFT on the dataset's solutions, then samples its
own responses and is pulled, token by token, towards the teacher at its own states
(arXiv 2605.22731): reverse KL over the full vocabulary by default. Teacher first:

  python -m postrain.train --config configs/chain_sum_teacher.py --workdir runs/teacher
  python -m postrain.train --config configs/chain_sum_opd.py --workdir runs/opd \\
      --config.teacher.path=runs/teacher
  # other per-token losses and the teachability release (arXiv 2605.13643):
  python -m postrain.train --config configs/chain_sum_opd.py:loss=topk --workdir runs/opd_topk \\
      --config.teacher.path=runs/teacher
  python -m postrain.train --config configs/chain_sum_opd.py:loss=pg,release=true \\
      --workdir runs/opd_pg_release --config.teacher.path=runs/teacher
  # imported weights instead: --config.teacher.source=hf --config.teacher.path=DIR (same vocab)
"""

import importlib.util
import os

from postrain.train import config as base


def _teacher_module():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain_sum_teacher.py")
  spec = importlib.util.spec_from_file_location("chain_sum_teacher", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def student_config(mode: str, scale: str = "default"):
  """The shared student setup of the OPD / MOPD configs."""
  c = base.base_config()
  c.mode = mode
  c.task.name = "chain_sum"
  c.task.kwargs = dict(_teacher_module().TASK_KWARGS)
  c.task.num_train = 2500  # the 3-term one-digit space has ~3000 distinct problems
  c.task.num_eval = 200
  c.task.instruction = ""
  c.tokenizer.vocab_size = 256
  c.model.name = "tiny"
  c.model.overrides = dict(
    embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=256
  )
  c.sft.steps = 150
  c.sft.batch_size = 64
  c.sft.lr = 3e-3
  c.sft.max_len = 96

  c.teacher.source = "workdir"
  c.teacher.path = "runs/teacher"

  c.rl.steps = 60
  c.rl.prompts_per_step = 8
  c.rl.group_size = 8
  c.rl.updates_per_batch = 1
  c.rl.lr = 5e-4
  c.rl.max_new_tokens = 40
  c.rl.cache_size = 128
  c.rl.temperature = 1.0

  c.eval.every = 20
  c.eval.num_problems = 200
  c.eval.k = 4
  c.eval.max_new_tokens = 40
  c.checkpoint.every = 20
  if scale == "smoke":
    c.task.num_train, c.task.num_eval = 300, 32
    c.sft.steps, c.rl.steps = 10, 3
    c.rl.prompts_per_step, c.rl.group_size = 4, 4
    c.eval.every, c.eval.num_problems, c.eval.k = 2, 32, 2
  return c


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default", loss="reverse_kl", release=False)
  c = student_config("opd", arg.scale)
  c.distill.loss = arg.loss
  c.distill.release = arg.release
  return c
