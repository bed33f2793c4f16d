"""MOPD (arXiv 2605.12652): OPD whose teacher reads the student's own group as context.

Each prompt gets a group of 8 student samples, scored by the verifier; every rollout's teacher
prompt adds up to 2 successful peers and (context=contrastive) 1 failed peer, and the teacher
scores the rollout's own tokens under that richer prompt. Loss: top-k + tail JSD (α = 0.5),
as in the MOPD code. Teacher first (or `:teacher=ema` for self-distillation, no teacher run):

  python -m postrain.train --config configs/chain_sum_teacher.py --workdir runs/teacher
  python -m postrain.train --config configs/chain_sum_mopd.py --workdir runs/mopd \\
      --config.teacher.path=runs/teacher
  python -m postrain.train --config configs/chain_sum_mopd.py:context=positive \\
      --workdir runs/mopd_pos --config.teacher.path=runs/teacher
  python -m postrain.train --config configs/chain_sum_mopd.py:teacher=ema --workdir runs/mopd_ema
"""

import importlib.util
import os

from postrain.train import config as base


def get_config(arg: str | None = None):
  arg = base.parse_arg(arg, scale="default", context="contrastive", teacher="workdir")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chain_sum_opd.py")
  spec = importlib.util.spec_from_file_location("chain_sum_opd", path)
  opd = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(opd)
  c = opd.student_config("mopd", arg.scale)
  c.distill.context = arg.context
  c.distill.loss = "topk"
  c.distill.topk = 16
  c.distill.alpha = 0.5
  c.teacher.source = arg.teacher
  if arg.teacher == "ema":
    c.teacher.path = ""
  return c
